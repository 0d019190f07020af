//! Per-room history of delivered notifications, for polling and replay (contract sections 3, 5, 6).
//!
//! Every emitted copy gets the next number of one per-instance sequence; its id is
//! `<epoch>-<seq>`, where the epoch is random per process start, so a cursor from before a
//! restart is recognised as unknown. Memory is bounded three ways: `HISTORY_PER_ROOM` items per
//! room, `HISTORY_MAX_ROOMS` rooms (least recently written evicted first) and `HISTORY_MAX_TOTAL`
//! items overall (oldest evicted first); rooms idle for `HISTORY_ROOM_IDLE_SECS` are dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::value::RawValue;

use crate::config::HistoryConfig;
use crate::rooms::Room;

/// One emitted copy, serialized once: the same bytes go to sockets and to polling clients.
#[derive(Debug)]
pub struct Stored {
    pub seq: u64,
    pub json: Box<RawValue>,
}

struct RoomLog {
    items: VecDeque<Arc<Stored>>,
    /// Key of this room in [`History::by_last_write`].
    last_seq: u64,
    last_write: Instant,
}

/// Result of a read: items oldest first, the cursor to continue from, and whether the given
/// cursor was unknown (so the whole retained history was returned instead).
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Stored>>,
    pub cursor: String,
    pub reset: bool,
}

pub struct History {
    epoch: Box<str>,
    /// Last sequence number handed out.
    head: u64,
    config: HistoryConfig,
    rooms: HashMap<Room, RoomLog>,
    /// Rooms by the sequence of their last write: the first entry is the least recently written.
    by_last_write: BTreeMap<u64, Room>,
    /// Every stored item in sequence order, for the total cap. Entries of items already evicted
    /// by the per-room cap stay until they reach the front or the queue is compacted.
    order: VecDeque<(u64, Room)>,
    total: usize,
}

impl History {
    pub fn new(config: HistoryConfig) -> Self {
        Self::with_epoch(config, random_epoch())
    }

    pub fn with_epoch(config: HistoryConfig, epoch: String) -> Self {
        Self {
            epoch: epoch.into(),
            head: 0,
            config,
            rooms: HashMap::new(),
            by_last_write: BTreeMap::new(),
            order: VecDeque::new(),
            total: 0,
        }
    }

    /// Hands out the next sequence number and its id.
    pub fn next_id(&mut self) -> (u64, String) {
        self.head += 1;
        (self.head, self.id_of(self.head))
    }

    pub fn head_cursor(&self) -> String {
        self.id_of(self.head)
    }

    fn id_of(&self, seq: u64) -> String {
        format!("{}-{}", self.epoch, seq)
    }

    /// The sequence number of a cursor issued by this process, or `None` for anything else.
    pub fn parse_cursor(&self, cursor: &str) -> Option<u64> {
        let (epoch, seq) = cursor.rsplit_once('-')?;
        let seq: u64 = seq.parse().ok()?;
        (epoch == &*self.epoch && seq <= self.head).then_some(seq)
    }

    /// `(rooms, items)` currently held.
    pub fn size(&self) -> (usize, usize) {
        (self.rooms.len(), self.total)
    }

    pub fn push(&mut self, room: &Room, item: Arc<Stored>, now: Instant) {
        if self.config.per_room == 0 {
            return;
        }
        let seq = item.seq;
        if !self.rooms.contains_key(room) {
            while self.rooms.len() >= self.config.max_rooms {
                let Some((_, lru)) = self.by_last_write.pop_first() else {
                    break;
                };
                self.drop_room(&lru);
            }
            let log = RoomLog {
                items: VecDeque::new(),
                last_seq: seq,
                last_write: now,
            };
            self.rooms.insert(room.clone(), log);
        }
        // Inserted just above if it was missing.
        let log = self.rooms.get_mut(room).expect("room present");
        self.by_last_write.remove(&log.last_seq);
        self.by_last_write.insert(seq, room.clone());
        log.last_seq = seq;
        log.last_write = now;
        log.items.push_back(item);
        self.total += 1;
        if log.items.len() > self.config.per_room {
            log.items.pop_front();
            self.total -= 1;
        }
        self.order.push_back((seq, room.clone()));
        self.enforce_total();
    }

    fn enforce_total(&mut self) {
        while self.total > self.config.max_total {
            let Some((seq, room)) = self.order.pop_front() else {
                break;
            };
            let Some(log) = self.rooms.get_mut(&room) else {
                continue;
            };
            if log.items.front().is_some_and(|first| first.seq == seq) {
                log.items.pop_front();
                self.total -= 1;
                if log.items.is_empty() {
                    self.drop_room(&room);
                }
            }
        }
        // Keep the order queue proportional to what is held: rebuild it once stale entries
        // outnumber live ones.
        if self.order.len() > 2 * self.total + 1024 {
            let mut live: Vec<(u64, Room)> = self
                .rooms
                .iter()
                .flat_map(|(room, log)| log.items.iter().map(move |i| (i.seq, room.clone())))
                .collect();
            live.sort_unstable_by_key(|(seq, _)| *seq);
            self.order = live.into();
        }
    }

    fn drop_room(&mut self, room: &Room) {
        if let Some(log) = self.rooms.remove(room) {
            self.total -= log.items.len();
            self.by_last_write.remove(&log.last_seq);
        }
    }

    /// Drops rooms that nothing was written to for `HISTORY_ROOM_IDLE_SECS`.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let idle: Duration = self.config.room_idle;
        let mut evicted = 0;
        while let Some((_, room)) = self.by_last_write.first_key_value() {
            let stale = self
                .rooms
                .get(room)
                .is_none_or(|log| now.saturating_duration_since(log.last_write) >= idle);
            if !stale {
                break;
            }
            let room = room.clone();
            self.by_last_write.pop_first();
            self.drop_room(&room);
            evicted += 1;
        }
        evicted
    }

    /// The oldest `limit` items of `rooms` after `after`, merged in delivery order.
    pub fn read(&self, rooms: &[Room], after: Option<&str>, limit: usize) -> Page {
        let (after_seq, reset) = match after {
            None => (0, false),
            Some(cursor) => match self.parse_cursor(cursor) {
                Some(seq) => (seq, false),
                None => (0, true),
            },
        };
        let mut items: Vec<Arc<Stored>> = Vec::new();
        for (i, room) in rooms.iter().enumerate() {
            if rooms[..i].contains(room) {
                continue;
            }
            if let Some(log) = self.rooms.get(room) {
                items.extend(after_in(&log.items, after_seq).take(limit).cloned());
            }
        }
        if rooms.len() > 1 {
            items.sort_unstable_by_key(|item| item.seq);
        }
        items.truncate(limit);
        let cursor = match items.last() {
            Some(last) => self.id_of(last.seq),
            None => self.head_cursor(),
        };
        Page {
            items,
            cursor,
            reset,
        }
    }

    /// Everything retained for `room` after `after` (all of it, with `reset`, if the cursor is
    /// unknown).
    pub fn replay(&self, room: &Room, after: &str) -> (Vec<Arc<Stored>>, bool) {
        let (after_seq, reset) = match self.parse_cursor(after) {
            Some(seq) => (seq, false),
            None => (0, true),
        };
        let items = self
            .rooms
            .get(room)
            .map(|log| after_in(&log.items, after_seq).cloned().collect())
            .unwrap_or_default();
        (items, reset)
    }
}

/// The items of one room with a sequence number above `after` (items are in sequence order).
fn after_in(items: &VecDeque<Arc<Stored>>, after: u64) -> impl Iterator<Item = &Arc<Stored>> {
    let start = items.partition_point(|item| item.seq <= after);
    items.range(start..)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(per_room: usize, max_rooms: usize, max_total: usize) -> HistoryConfig {
        HistoryConfig {
            per_room,
            max_rooms,
            max_total,
            room_idle: Duration::from_secs(60),
        }
    }

    fn room(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    fn store(h: &mut History, r: &str, now: Instant) -> String {
        let (seq, id) = h.next_id();
        let json = RawValue::from_string(format!("{{\"id\":\"{id}\"}}")).unwrap();
        h.push(&room(r), Arc::new(Stored { seq, json }), now);
        id
    }

    fn seqs(page: &Page) -> Vec<u64> {
        page.items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn ids_carry_the_epoch_and_increase() {
        let mut h = History::with_epoch(config(10, 10, 100), "k3x9".into());
        assert_eq!(h.head_cursor(), "k3x9-0");
        let now = Instant::now();
        assert_eq!(store(&mut h, "customer:1", now), "k3x9-1");
        assert_eq!(store(&mut h, "customer:1", now), "k3x9-2");
        assert_eq!(h.parse_cursor("k3x9-2"), Some(2));
        for unknown in ["k3x9-3", "other-1", "k3x9", "", "k3x9-x"] {
            assert_eq!(h.parse_cursor(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn reads_are_oldest_first_after_the_cursor_and_limited() {
        let mut h = History::with_epoch(config(10, 10, 100), "e".into());
        let now = Instant::now();
        let ids: Vec<String> = (0..5).map(|_| store(&mut h, "customer:1", now)).collect();
        let page = h.read(&[room("customer:1")], None, 3);
        assert_eq!(
            (seqs(&page), page.cursor.as_str(), page.reset),
            (vec![1, 2, 3], "e-3", false)
        );
        let page = h.read(&[room("customer:1")], Some(&ids[2]), 100);
        assert_eq!(seqs(&page), [4, 5]);
        let page = h.read(&[room("customer:1")], Some(&ids[4]), 100);
        assert_eq!((seqs(&page), page.cursor.as_str()), (vec![], "e-5"));
    }

    #[test]
    fn several_rooms_merge_in_delivery_order() {
        let mut h = History::with_epoch(config(10, 10, 100), "e".into());
        let now = Instant::now();
        for r in [
            "customer:1",
            "cms:dashboard",
            "customer:1",
            "customer:2",
            "cms:dashboard",
        ] {
            store(&mut h, r, now);
        }
        let page = h.read(
            &[
                room("cms:dashboard"),
                room("customer:1"),
                room("customer:1"),
            ],
            None,
            100,
        );
        assert_eq!(seqs(&page), [1, 2, 3, 5]);
    }

    #[test]
    fn an_unknown_cursor_resets_to_the_retained_history() {
        let mut h = History::with_epoch(config(10, 10, 100), "e".into());
        store(&mut h, "customer:1", Instant::now());
        let page = h.read(&[room("customer:1")], Some("before-restart-7"), 100);
        assert!(page.reset);
        assert_eq!(seqs(&page), [1]);
        let (items, reset) = h.replay(&room("customer:1"), "garbage");
        assert!(reset && items.len() == 1);
    }

    #[test]
    fn caps_bound_per_room_rooms_and_total() {
        let now = Instant::now();
        let mut h = History::with_epoch(config(3, 1000, 1000), "e".into());
        for _ in 0..10 {
            store(&mut h, "customer:1", now);
        }
        assert_eq!(seqs(&h.read(&[room("customer:1")], None, 100)), [8, 9, 10]);

        let mut h = History::with_epoch(config(3, 5, 1000), "e".into());
        for i in 0..50 {
            store(&mut h, &format!("customer:{i}"), now);
        }
        assert_eq!(h.size(), (5, 5));
        assert_eq!(seqs(&h.read(&[room("customer:49")], None, 10)), [50]);
        assert!(h.read(&[room("customer:0")], None, 10).items.is_empty());

        let mut h = History::with_epoch(config(100, 1000, 20), "e".into());
        for i in 0..10_000 {
            store(&mut h, &format!("customer:{}", i % 7), now);
            assert!(h.size().1 <= 20);
            assert!(h.order.len() <= 2 * 20 + 1024 + 1);
        }
        assert_eq!(h.size().1, 20);
    }

    #[test]
    fn idle_rooms_are_evicted() {
        let mut h = History::with_epoch(config(10, 10, 100), "e".into());
        let start = Instant::now();
        store(&mut h, "customer:old", start);
        store(&mut h, "customer:new", start + Duration::from_secs(50));
        assert_eq!(h.evict_idle(start + Duration::from_secs(70)), 1);
        assert_eq!(h.size(), (1, 1));
        assert!(h.read(&[room("customer:old")], None, 10).items.is_empty());
    }

    #[test]
    fn zero_per_room_keeps_nothing_but_still_counts_ids() {
        let mut h = History::with_epoch(config(0, 10, 100), "e".into());
        store(&mut h, "customer:1", Instant::now());
        assert_eq!(h.size(), (0, 0));
        assert_eq!(h.read(&[room("customer:1")], None, 10).cursor, "e-1");
    }
}
