//! The ledger: which notifications exist, under which id, and what a room holds after a
//! cursor. Synchronous and free of I/O, so every promise of the contract about ids, cursors,
//! dedupe and gaps is unit-tested here without sockets or a broker.
//!
//! - **Ids.** Without RabbitMQ, an id is `<epoch>-<n>`: `n` from a per-process sequence, the
//!   epoch random per start, so a cursor from before a restart is unknown (contract section 3).
//!   With RabbitMQ it is `s-<n>` where `n - 1` is the notification's offset in the stream: the
//!   same on every instance and across restarts. The copies of one notification in several
//!   rooms share its id, and ids follow one order across all rooms.
//! - **Dedupe.** A notification whose `messageId` is within the last `DEDUPE_WINDOW` accepted
//!   ones is a duplicate; with the stream that check runs again on read, so a record appended
//!   twice (an ack lost in a failover) is emitted once.
//! - **Reads.** [`Ledger::plan`] answers, for one room and a cursor, one of: the items after it
//!   (all held in memory), the items plus a range to fetch from the stream first, or a reset
//!   (the cursor is unknown, or something after it can no longer be replayed).

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;

use crate::config::HistoryConfig;
use crate::dedupe::Window;
use crate::envelope::Envelope;
use crate::history::{HistoryStore, Item, MemoryStore, StoreSize};
use crate::rooms::Room;

/// Prefix of stream ids.
const STREAM_TAG: &str = "s";
/// Prefix of the stream-less mode's ids.
const FANOUT_TAG: &str = "f";

/// How ids are made and read back.
#[derive(Debug, Clone)]
pub struct Ids {
    tag: Arc<str>,
    /// Ids come from stream offsets (shared by instances) rather than this process.
    shared: bool,
}

impl Ids {
    /// Per-process ids with a fresh random epoch.
    pub fn local() -> Self {
        Self::with_epoch(&random_epoch())
    }

    pub fn with_epoch(epoch: &str) -> Self {
        Self {
            tag: epoch.into(),
            shared: false,
        }
    }

    /// Ids from stream offsets.
    pub fn stream() -> Self {
        Self {
            tag: STREAM_TAG.into(),
            shared: true,
        }
    }

    /// Ids given by the active instance in the stream-less mode (contract v3 section 3):
    /// shared by instances like stream ids, numbered from the time in µs.
    pub fn fanout() -> Self {
        Self {
            tag: FANOUT_TAG.into(),
            shared: true,
        }
    }

    /// The id of the notification at stream `offset`.
    pub fn of_offset(offset: u64) -> u64 {
        offset + 1
    }

    /// The stream offset to read from to get what follows id `id`.
    pub fn next_offset(id: u64) -> u64 {
        id
    }

    pub fn format(&self, id: u64) -> String {
        let mut out = String::with_capacity(self.tag.len() + 21);
        self.write(&mut out, id);
        out
    }

    /// Appends the id's text to `out`.
    pub fn write(&self, out: &mut String, id: u64) {
        use std::fmt::Write;
        out.push_str(&self.tag);
        out.push('-');
        // Writing to a String cannot fail.
        let _ = write!(out, "{id}");
    }

    /// The number in a cursor of ours, or `None` for anything else.
    fn parse(&self, cursor: &str) -> Option<u64> {
        let (tag, n) = cursor.rsplit_once('-')?;
        if tag != &*self.tag || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }
}

/// Six base-36 characters: a restart is recognised unless two starts draw the same one
/// (about one chance in two billion).
fn random_epoch() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A cursor, as the ledger understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// No cursor: from the start of what is held.
    Start,
    /// A known position.
    At(u64),
    /// A valid stream cursor this instance has not read up to yet: it is treated as current.
    Ahead(u64),
    /// Malformed, from another epoch, or from this epoch's future: unknown.
    Unknown,
}

/// What became of a notification offered to the ledger.
#[derive(Debug)]
pub enum Accepted {
    /// New: store and emit it under this id.
    New(Item),
    /// Its `messageId` was seen within the dedupe window.
    Duplicate,
    /// A stream position at or before one already read (a re-read after a reconnect).
    AlreadyRead,
}

/// How to answer a read of one room after a cursor.
#[derive(Debug)]
pub enum Plan {
    /// Everything after the cursor is held: these items.
    Held(Vec<Item>),
    /// Ids in `(after, upto]` are no longer held but may be in the stream: fetch them for
    /// this room, then these held items follow.
    Fetch {
        after: u64,
        upto: u64,
        then: Vec<Item>,
    },
    /// The cursor is unknown, or what follows it can no longer be replayed: the retained
    /// history, with `reset: true`.
    Reset(Vec<Item>),
}

pub struct Ledger {
    ids: Ids,
    /// The last id accepted (or skipped): the head cursor.
    head: u64,
    message_ids: Window<Arc<str>>,
    store: Box<dyn HistoryStore>,
    /// Most stream records one fetch may read (`RABBITMQ_REPLAY_MAX`); 0 without a stream.
    replay_max: u64,
    /// With the stream: the first id read since start, below which memory holds nothing.
    first_read: Option<u64>,
}

impl Ledger {
    /// The in-memory ledger of `ENABLE_RABBITMQ=false`.
    pub fn local(history: HistoryConfig, dedupe_window: usize) -> Self {
        Self::new(Ids::local(), history, dedupe_window, 0)
    }

    /// The ledger of an instance that reads the stream.
    pub fn streamed(history: HistoryConfig, dedupe_window: usize, replay_max: u64) -> Self {
        Self::new(Ids::stream(), history, dedupe_window, replay_max)
    }

    pub fn new(ids: Ids, history: HistoryConfig, dedupe_window: usize, replay_max: u64) -> Self {
        Self {
            ids,
            head: 0,
            message_ids: Window::new(dedupe_window),
            store: Box::new(MemoryStore::new(history)),
            replay_max,
            first_read: None,
        }
    }

    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    #[cfg(test)]
    fn head_cursor(&self) -> String {
        self.ids.format(self.head)
    }

    pub fn size(&self) -> StoreSize {
        self.store.size()
    }

    /// Was this `messageId` accepted within the window? (The active consumer asks before
    /// appending to the stream.)
    pub fn seen_message_id(&self, message_id: &str) -> bool {
        self.message_ids.contains(&Arc::from(message_id))
    }

    /// Offers a notification. Without a stream `offset` it gets the next local id.
    pub fn accept(
        &mut self,
        offset: Option<u64>,
        envelope: Arc<Envelope>,
        now: Instant,
    ) -> Accepted {
        let id = match offset {
            Some(offset) => {
                let id = Ids::of_offset(offset);
                if id <= self.head {
                    return Accepted::AlreadyRead;
                }
                if self.first_read.is_none() {
                    self.first_read = Some(id);
                    // Memory starts here: anything before was never read by this instance.
                    self.store.forget_through(id - 1);
                }
                id
            }
            None => self.head + 1,
        };
        // Even a duplicate moves the head: its position is read.
        self.head = id;
        if let Some(message_id) = &envelope.message_id
            && self.message_ids.check_and_insert(Arc::from(&**message_id))
        {
            return Accepted::Duplicate;
        }
        let item = Item { id, envelope };
        self.store.append(item.clone(), now);
        Accepted::New(item)
    }

    /// A stream position that carried no notification (a marker, a record of another writer
    /// that does not parse): it is read, so the head moves past it.
    pub fn skip(&mut self, offset: u64) {
        self.head = self.head.max(Ids::of_offset(offset));
    }

    /// Ids up to `id` were never held and cannot be (expired from the stream unread).
    pub fn forget_through(&mut self, id: u64) {
        self.store.forget_through(id);
        self.head = self.head.max(id);
    }

    pub fn parse_cursor(&self, cursor: Option<&str>) -> Cursor {
        let Some(cursor) = cursor else {
            return Cursor::Start;
        };
        match self.ids.parse(cursor) {
            None => Cursor::Unknown,
            Some(n) if n <= self.head => Cursor::At(n),
            // A stream cursor from an instance that is further along, or from before this
            // instance caught up: valid, just not read here yet.
            Some(n) if self.ids.shared => Cursor::Ahead(n),
            Some(_) => Cursor::Unknown,
        }
    }

    /// How to answer a read of `room` after `cursor`, up to `limit` items.
    pub fn plan(&self, room: &Room, cursor: Cursor, limit: usize) -> Plan {
        let after = match cursor {
            Cursor::Unknown => return Plan::Reset(self.store.retained(room, limit)),
            Cursor::Ahead(_) => return Plan::Held(Vec::new()),
            Cursor::Start => 0,
            Cursor::At(n) => n,
        };
        let slice = self.store.after(room, after, limit);
        let Some(upto) = slice.missing_upto else {
            return Plan::Held(slice.items);
        };
        // No cursor means "what is retained": nothing is promised before it.
        if cursor == Cursor::Start {
            return Plan::Held(slice.items);
        }
        if self.can_fetch(after, upto) {
            Plan::Fetch {
                after,
                upto,
                then: slice.items,
            }
        } else {
            Plan::Reset(self.store.retained(room, limit))
        }
    }

    /// Can the stream still give `(after, upto]`? Only a stream ledger can, within
    /// `RABBITMQ_REPLAY_MAX` records. (Whether the stream's retention still holds them is
    /// known only by reading it.)
    fn can_fetch(&self, after: u64, upto: u64) -> bool {
        self.ids.shared && upto - after <= self.replay_max
    }

    /// While a replay reads the stream up to `id`, keep what follows it for `room`.
    pub fn pin(&mut self, room: &Room, id: u64) {
        self.store.pin(room, id);
    }

    pub fn unpin(&mut self, room: &Room, id: u64) {
        self.store.unpin(room, id);
    }

    /// The retained history of `room`, for a reset after a failed fetch.
    pub fn retained(&self, room: &Room, limit: usize) -> Vec<Item> {
        self.store.retained(room, limit)
    }

    pub fn evict_idle(&mut self, now: Instant) -> usize {
        self.store.evict_idle(now)
    }
}

/// How much one page may hold.
#[derive(Debug, Clone, Copy)]
pub struct PageBounds {
    pub limit: usize,
    /// Bytes, as the page's `cost` counts them; the first item is taken whatever its size.
    pub max_bytes: usize,
    /// Nothing after this id is known for every room (a read of one stopped short there).
    pub horizon: u64,
}

/// Merges the items of several rooms into one page: oldest first, within `bounds`, with the
/// cursor to continue from. The cursor is the last returned id, or the head when nothing is
/// returned, and never older than the cursor asked with.
pub fn page(
    mut items: Vec<(Room, Item)>,
    bounds: PageBounds,
    cost: impl Fn(&Item) -> usize,
    head: u64,
    asked: Cursor,
) -> (Vec<(Room, Item)>, u64) {
    let PageBounds {
        limit,
        max_bytes,
        horizon,
    } = bounds;
    items.retain(|(_, item)| item.id <= horizon);
    items.sort_by_key(|(_, item)| item.id);
    items.truncate(limit);
    let mut bytes = 0;
    let within = items
        .iter()
        .take_while(|(_, item)| {
            bytes += cost(item);
            bytes <= max_bytes
        })
        .count()
        .max(1);
    items.truncate(within);
    let floor = match asked {
        Cursor::At(n) | Cursor::Ahead(n) => n,
        Cursor::Start | Cursor::Unknown => 0,
    };
    let cursor = items.last().map_or(head, |(_, item)| item.id).max(floor);
    (items, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{self, CategoryFrom, Limits, Source};
    use std::time::Duration;

    fn history(per_room: usize) -> HistoryConfig {
        HistoryConfig {
            per_room,
            max_rooms: 1000,
            max_total: 100_000,
            max_bytes: 64 << 20,
            room_idle: Duration::from_secs(3600),
        }
    }

    fn note(body: &str) -> Arc<Envelope> {
        let source = Source {
            category: CategoryFrom::RoutingKey("notification.customer"),
            message_id: None,
            timestamp: None,
        };
        let limits = Limits {
            max_bytes: 1 << 20,
            max_rooms: 1000,
        };
        Arc::new(envelope::parse(body.as_bytes(), source, &limits).unwrap())
    }

    fn to(customer: u32) -> Arc<Envelope> {
        note(&format!(r#"{{"type":"t","recipients":[{customer}]}}"#))
    }

    fn room(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    fn ids(items: &[Item]) -> Vec<u64> {
        items.iter().map(|i| i.id).collect()
    }

    fn accept(ledger: &mut Ledger, offset: Option<u64>, envelope: Arc<Envelope>) -> Option<u64> {
        match ledger.accept(offset, envelope, Instant::now()) {
            Accepted::New(item) => Some(item.id),
            _ => None,
        }
    }

    fn unbounded(limit: usize) -> PageBounds {
        PageBounds {
            limit,
            max_bytes: usize::MAX,
            horizon: u64::MAX,
        }
    }

    #[test]
    fn a_page_is_bounded_in_bytes_and_by_the_room_read_that_stopped_short() {
        let mut ledger = Ledger::local(history(100), 100);
        for _ in 0..10 {
            accept(&mut ledger, None, to(1)); // customer:1 and cms:dashboard
        }
        let items = |r: &str| -> Vec<(Room, Item)> {
            let r = room(r);
            held_items(ledger.plan(&r, Cursor::At(2), 100))
                .into_iter()
                .map(|i| (r.clone(), i))
                .collect()
        };
        // Each item costs 10: 35 bytes hold three.
        let bounds = PageBounds {
            limit: 100,
            max_bytes: 35,
            horizon: u64::MAX,
        };
        let (got, cursor) = page(items("customer:1"), bounds, |_| 10, 10, Cursor::At(2));
        assert_eq!(got.iter().map(|(_, i)| i.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(cursor, 5, "the next page starts after what was returned");
        // The first item is returned whatever its size.
        let tiny = PageBounds {
            max_bytes: 1,
            ..bounds
        };
        let (got, _) = page(items("customer:1"), tiny, |_| 10, 10, Cursor::At(2));
        assert_eq!(got.len(), 1);
        // One room's read stopped at 6: the other room's items after it wait for the next page,
        // or the first room's 7.. would be skipped.
        let mut both = items("customer:1");
        both.retain(|(_, i)| i.id <= 6);
        both.extend(items("cms:dashboard"));
        let short = PageBounds {
            horizon: 6,
            ..unbounded(100)
        };
        let (got, cursor) = page(both, short, |_| 10, 10, Cursor::At(2));
        assert!(got.iter().all(|(_, i)| i.id <= 6));
        assert_eq!(got.len(), 8, "3..=6 in both rooms");
        assert_eq!(cursor, 6);
    }

    fn held_items(plan: Plan) -> Vec<Item> {
        match plan {
            Plan::Held(items) => items,
            other => panic!("expected held items, got {other:?}"),
        }
    }

    fn held(plan: Plan) -> Vec<u64> {
        match plan {
            Plan::Held(items) => ids(&items),
            other => panic!("expected held items, got {other:?}"),
        }
    }

    #[test]
    fn ids_increase_are_shared_by_room_copies_and_carry_the_epoch() {
        let mut ledger = Ledger::new(Ids::with_epoch("k3x9"), history(10), 100, 0);
        assert_eq!(ledger.head_cursor(), "k3x9-0");
        let first = accept(&mut ledger, None, to(1)).unwrap();
        let second = accept(&mut ledger, None, to(1)).unwrap();
        assert_eq!((first, second), (1, 2));
        assert_eq!(ledger.ids().format(second), "k3x9-2");
        // One notification, three rooms, one id.
        let c = ledger.parse_cursor(Some("k3x9-2"));
        assert_eq!(c, Cursor::At(2));
        let cms = held(ledger.plan(&room("cms:dashboard"), Cursor::Start, 100));
        assert_eq!(cms, [1, 2]);
        for unknown in ["k3x9-3", "other-1", "k3x9", "", "k3x9-x", "k3x9--1", "s-1"] {
            assert_eq!(
                ledger.parse_cursor(Some(unknown)),
                Cursor::Unknown,
                "{unknown}"
            );
        }
    }

    #[test]
    fn reads_are_in_order_after_the_cursor_and_exactly_once_across_pages() {
        let mut ledger = Ledger::local(history(100), 100);
        for _ in 0..10 {
            accept(&mut ledger, None, to(1));
        }
        let r = room("customer:1");
        let mut cursor = Cursor::Start;
        let mut seen = Vec::new();
        loop {
            let items = match ledger.plan(&r, cursor, 3) {
                Plan::Held(items) => items,
                other => panic!("{other:?}"),
            };
            let asked = cursor;
            let (items, next) = page(
                items.into_iter().map(|i| (r.clone(), i)).collect(),
                PageBounds {
                    limit: 3,
                    max_bytes: usize::MAX,
                    horizon: u64::MAX,
                },
                |_| 1,
                ledger.head(),
                asked,
            );
            if items.is_empty() {
                assert_eq!(next, 10, "an empty page answers the head");
                break;
            }
            seen.extend(items.iter().map(|(_, i)| i.id));
            cursor = Cursor::At(next);
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn a_message_id_is_emitted_once_within_the_window() {
        let mut ledger = Ledger::local(history(100), 2);
        let with_id = |id: &str| note(&format!(r#"{{"type":"t","messageId":"{id}"}}"#));
        assert!(accept(&mut ledger, None, with_id("a")).is_some());
        assert!(matches!(
            ledger.accept(None, with_id("a"), Instant::now()),
            Accepted::Duplicate
        ));
        assert!(ledger.seen_message_id("a"));
        accept(&mut ledger, None, with_id("b"));
        accept(&mut ledger, None, with_id("c"));
        // The window holds two ids: "a" was forgotten.
        assert!(accept(&mut ledger, None, with_id("a")).is_some());
    }

    #[test]
    fn a_stream_record_read_twice_or_appended_twice_is_emitted_once() {
        let mut ledger = Ledger::streamed(history(100), 100, 1000);
        let twice = note(r#"{"type":"t","messageId":"m-1"}"#);
        assert_eq!(accept(&mut ledger, Some(0), twice.clone()), Some(1));
        // The same offset again (a reconnect re-reads a chunk): already read.
        assert!(matches!(
            ledger.accept(Some(0), twice.clone(), Instant::now()),
            Accepted::AlreadyRead
        ));
        // The same message appended again at a later offset (its ack was lost in a failover).
        assert!(matches!(
            ledger.accept(Some(1), twice, Instant::now()),
            Accepted::Duplicate
        ));
        assert_eq!(ledger.head(), 2, "the duplicate's position is read");
        assert_eq!(ledger.head_cursor(), "s-2");
    }

    #[test]
    fn a_gap_resets_a_cursor_before_it_even_in_a_room_whose_items_are_all_older() {
        // A stream-less reconnect (or records expired unread) loses ids 4..=5 for this
        // instance: customer:1 may have had one of them.
        let mut ledger = Ledger::local(history(100), 100);
        for _ in 0..3 {
            accept(&mut ledger, None, to(1));
        }
        ledger.forget_through(5);
        assert_eq!(accept(&mut ledger, None, to(1)), Some(6));
        let r = room("customer:1");
        match ledger.plan(&r, Cursor::At(3), 100) {
            Plan::Reset(items) => assert_eq!(ids(&items), [1, 2, 3, 6], "the retained history"),
            other => panic!("a cursor before the gap must reset, got {other:?}"),
        }
        assert_eq!(held(ledger.plan(&r, Cursor::At(5), 100)), [6]);
        assert!(held(ledger.plan(&r, Cursor::At(6), 100)).is_empty());
    }

    #[test]
    fn replay_and_live_never_overlap() {
        // A join at cursor C replays ids > C; live delivery only brings ids > head. Together
        // they are every id once.
        let mut ledger = Ledger::local(history(100), 100);
        for _ in 0..5 {
            accept(&mut ledger, None, to(1));
        }
        let r = room("customer:1");
        let replayed = held(ledger.plan(&r, Cursor::At(2), 100));
        let head_at_join = ledger.head();
        let live: Vec<u64> = (0..3)
            .filter_map(|_| accept(&mut ledger, None, to(1)))
            .collect();
        assert_eq!(replayed, [3, 4, 5]);
        assert!(live.iter().all(|id| *id > head_at_join));
        let mut all = replayed;
        all.extend(live);
        assert_eq!(all, (3..=8).collect::<Vec<_>>());
    }

    #[test]
    fn the_per_room_cap_turns_an_old_cursor_into_a_reset_without_a_stream() {
        let mut ledger = Ledger::local(history(3), 100);
        for _ in 0..10 {
            accept(&mut ledger, None, to(1));
        }
        let r = room("customer:1");
        match ledger.plan(&r, Cursor::At(5), 100) {
            Plan::Reset(items) => assert_eq!(ids(&items), [8, 9, 10]),
            other => panic!("a cursor before the window is a gap: {other:?}"),
        }
        // The last evicted item is not a gap: nothing after it was lost.
        assert_eq!(held(ledger.plan(&r, Cursor::At(7), 100)), [8, 9, 10]);
        // An unknown cursor is a reset too.
        assert!(matches!(
            ledger.plan(&r, ledger.parse_cursor(Some("junk")), 100),
            Plan::Reset(_)
        ));
    }

    #[test]
    fn an_empty_rooms_head_cursor_is_not_a_gap() {
        let mut ledger = Ledger::local(history(3), 100);
        for _ in 0..10 {
            accept(&mut ledger, None, to(1));
        }
        // customer:2 never got anything: any known cursor is complete for it.
        assert_eq!(
            held(ledger.plan(&room("customer:2"), Cursor::At(1), 100)),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn with_a_stream_a_gap_within_replay_max_is_fetched_and_beyond_it_is_a_reset() {
        let mut ledger = Ledger::streamed(history(3), 100, 5);
        for offset in 100..110 {
            accept(&mut ledger, Some(offset), to(1));
        }
        let r = room("customer:1");
        // Ids 101..=110 were read; the window keeps 108..=110; 107 was the last evicted.
        match ledger.plan(&r, Cursor::At(103), 100) {
            Plan::Fetch { after, upto, then } => {
                assert_eq!((after, upto, ids(&then)), (103, 107, vec![108, 109, 110]));
            }
            other => panic!("{other:?}"),
        }
        // 101 is 6 records before the window: more than RABBITMQ_REPLAY_MAX = 5.
        assert!(matches!(
            ledger.plan(&r, Cursor::At(101), 100),
            Plan::Reset(_)
        ));
        // Before this instance's first read (it started mid-stream): fetched from the stream.
        match ledger.plan(&room("customer:2"), Cursor::At(98), 100) {
            Plan::Fetch { after, upto, then } => {
                assert_eq!((after, upto), (98, 100));
                assert!(then.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pinned_window_keeps_what_follows_a_replay_in_progress() {
        let mut ledger = Ledger::streamed(history(3), 100, 1000);
        for offset in 0..5 {
            accept(&mut ledger, Some(offset), to(1));
        }
        let r = room("customer:1");
        // A join reading the stream up to id 2 pins there; live traffic keeps coming.
        ledger.pin(&r, 2);
        for offset in 5..20 {
            accept(&mut ledger, Some(offset), to(1));
        }
        assert_eq!(
            held(ledger.plan(&r, Cursor::At(2), 100)),
            (3..=20).collect::<Vec<_>>()
        );
        ledger.unpin(&r, 2);
        assert_eq!(held(ledger.plan(&r, Cursor::Start, 100)), [18, 19, 20]);
        assert!(matches!(
            ledger.plan(&r, Cursor::At(2), 100),
            Plan::Fetch { .. }
        ));
    }

    #[test]
    fn a_stream_cursor_this_instance_has_not_reached_is_current_not_unknown() {
        let mut ledger = Ledger::streamed(history(10), 100, 1000);
        accept(&mut ledger, Some(0), to(1));
        let ahead = ledger.parse_cursor(Some("s-50"));
        assert_eq!(ahead, Cursor::Ahead(50));
        assert_eq!(
            held(ledger.plan(&room("customer:1"), ahead, 100)),
            Vec::<u64>::new()
        );
        // The answer's cursor is never older than the one asked with.
        let (_, cursor) = page(Vec::new(), unbounded(100), |_| 1, ledger.head(), ahead);
        assert_eq!(cursor, 50);
    }

    #[test]
    fn bytes_are_capped_and_a_fan_out_holds_its_data_once() {
        let data = "x".repeat(10_000);
        let mut config = history(100);
        config.max_bytes = 100_000;
        let mut ledger = Ledger::local(config, 100);
        // 50 rooms, 10 KB of data: held once, not 50 times.
        let recipients: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        let fan_out = note(&format!(
            r#"{{"type":"t","data":"{data}","recipients":[{}]}}"#,
            recipients.join(",")
        ));
        accept(&mut ledger, None, fan_out);
        let size = ledger.size();
        assert!(
            size.bytes < 30_000,
            "held once, not 50 times (500 KB): {size:?}"
        );
        assert_eq!(size.entries, 51);
        for _ in 0..100 {
            accept(
                &mut ledger,
                None,
                note(&format!(
                    r#"{{"type":"t","data":"{data}","recipients":[1]}}"#
                )),
            );
            assert!(ledger.size().bytes <= 100_000, "{:?}", ledger.size());
        }
        // The oldest went first, from every room: the fan-out is gone, the newest are held.
        assert!(held(ledger.plan(&room("customer:49"), Cursor::Start, 100)).is_empty());
        let kept = held(ledger.plan(&room("customer:1"), Cursor::Start, 100));
        assert_eq!(kept.last(), Some(&101));
        // And a cursor from before the eviction is an honest gap.
        assert!(matches!(
            ledger.plan(&room("customer:49"), Cursor::At(0), 100),
            Plan::Reset(_)
        ));
    }

    #[test]
    fn dropped_rooms_remember_what_they_lost() {
        let mut config = history(10);
        config.max_rooms = 3;
        let mut ledger = Ledger::local(config, 100);
        // Each also goes to cms:dashboard.
        accept(
            &mut ledger,
            None,
            note(r#"{"type":"t","rooms":["customer:a"]}"#),
        ); // 1
        accept(
            &mut ledger,
            None,
            note(r#"{"type":"t","rooms":["customer:b"]}"#),
        ); // 2
        // A fourth room drops the least recently written one: customer:a.
        accept(
            &mut ledger,
            None,
            note(r#"{"type":"t","rooms":["customer:c"]}"#),
        ); // 3
        assert!(matches!(
            ledger.plan(&room("customer:a"), Cursor::At(0), 10),
            Plan::Reset(_)
        ));
        // A cursor past what a dropped room lost is still complete.
        assert_eq!(
            held(ledger.plan(&room("customer:a"), Cursor::At(1), 10)),
            Vec::<u64>::new()
        );
        // A room that never had anything is not a gap.
        assert_eq!(
            held(ledger.plan(&room("customer:z"), Cursor::At(0), 10)),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn idle_rooms_are_evicted_and_their_cursors_stay_honest() {
        let mut ledger = Ledger::local(history(10), 100);
        let start = Instant::now();
        ledger.accept(None, to(1), start);
        ledger.accept(None, to(2), start + Duration::from_secs(3000));
        let evicted = ledger.evict_idle(start + Duration::from_secs(3700));
        assert_eq!(evicted, 1);
        assert!(matches!(
            ledger.plan(&room("customer:1"), Cursor::At(0), 10),
            Plan::Reset(_)
        ));
        assert_eq!(
            held(ledger.plan(&room("customer:2"), Cursor::At(0), 10)),
            [2]
        );
    }

    #[test]
    fn several_rooms_merge_into_one_page_in_id_order() {
        let mut ledger = Ledger::local(history(10), 100);
        accept(&mut ledger, None, to(1)); // 1: customer:1 + dashboard
        accept(
            &mut ledger,
            None,
            note(r#"{"type":"t","rooms":["cms:stations"]}"#),
        ); // 2
        accept(&mut ledger, None, to(2)); // 3
        let rooms = [room("customer:1"), room("cms:stations"), room("customer:2")];
        let mut items = Vec::new();
        for r in &rooms {
            if let Plan::Held(held) = ledger.plan(r, Cursor::Start, 2) {
                items.extend(held.into_iter().map(|i| (r.clone(), i)));
            }
        }
        let (page, cursor) = page(items, unbounded(2), |_| 1, ledger.head(), Cursor::Start);
        let got: Vec<(String, u64)> = page.iter().map(|(r, i)| (r.to_string(), i.id)).collect();
        assert_eq!(
            got,
            [
                ("customer:1".to_string(), 1),
                ("cms:stations".to_string(), 2)
            ]
        );
        assert_eq!(cursor, 2);
    }
}
