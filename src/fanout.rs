//! The fan-out: takes the [`Ledger`]'s answers and emits them to this instance's sockets.
//!
//! Every notification reaches the ledger and the sockets through [`Fanout::publish`]: the
//! stream reader (with RabbitMQ), or the HTTP ingest and the demo feed (without). Joins and
//! polls ask [`Fanout::join`] and [`Fanout::read`], which fetch from the stream what the memory
//! window no longer holds.
//!
//! **Why a join with replay never overlaps live delivery.** `publish` accepts a notification
//! into the ledger and emits it to the room's current sockets under one lock. A join replays
//! in rounds, each paced by the socket's queue: plan what follows its position under the lock,
//! emit that (from memory or read from the stream) outside it, as fast as the socket reads,
//! and move its position to the last id emitted. While it replays, the socket is not in the
//! room, so nothing of the room is emitted to it live, and the ledger is pinned at its
//! position so that what it has not replayed yet stays held. When what is left is held in
//! memory and fits in the socket's queue next to live traffic, the last round emits it and
//! adds the socket to the room under the lock. So for a joining socket every notification is
//! either accepted before that moment (its id is at most the ledger's head: it is replayed)
//! or after it (the socket is in the room: it is emitted live), never both and never
//! neither. A replay reaches back `RABBITMQ_REPLAY_MAX` records whatever the socket's buffer;
//! one whose socket stops reading is closed (see below).
//!
//! Replays from the stream are budgeted per token subject ([`crate::budget`]); a poll reads
//! forward from its cursor, at most `limit` items and [`PAGE_BYTES`] a page.
//!
//! The payload is serialized once per room; socketioxide frames it once per socket. Emitting
//! socket by socket, rather than through a room broadcast, is what tells which socket's buffer
//! is full: such a socket has stopped reading, so it is taken out of all its rooms at once and
//! costs nothing more, and Engine.IO closes its connection (the patched engineioxide closes a
//! socket whose queue overflows), so its client reconnects and replays what it missed.
//!
//! The sockets are reached through [`Sockets`] ([`Io`] in production), so every rule above is
//! unit-tested against in-memory sockets whose queues the tests fill and drain.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use time::OffsetDateTime;
use tokio::time::Instant as Clock;

use crate::budget::{Refused, ReplayBudget};
use crate::envelope::Envelope;
use crate::history::Item;
use crate::ledger::{self, Accepted, Cursor, Ids, Ledger, PageBounds, Plan};
use crate::metrics::{Metrics, SourceLabels};
use crate::rooms::Room;
use crate::sockets::{Emitted, Io, Sockets};

/// Most items one round of a join's replay emits before it looks at the ledger again.
const ROUND_ITEMS: usize = 256;
/// Most payload bytes one round reads (from the stream) and emits.
const ROUND_BYTES: usize = 1 << 20;
/// Rounds one join may take before it gives up with a reset: a socket that reads more
/// slowly than its room fills never catches up.
const MAX_ROUNDS: usize = 1000;
/// Packets of a socket's queue kept free for live traffic while a join replays into it.
pub const LIVE_HEADROOM: usize = 64;
/// How often a paced replay looks whether the socket's queue has room again: first soon, then
/// less and less often while it has none (many slow readers cost few wake-ups).
const DRAIN_TICK: Duration = Duration::from_millis(1);
const DRAIN_TICK_MAX: Duration = Duration::from_millis(64);
/// A socket whose queue has not moved for this long while a replay waits for it has stopped
/// reading: it is closed as a stalled socket is.
const STALL_AFTER: Duration = Duration::from_secs(5);
/// Most bytes of notifications in one poll's answer (contract v3 section 6).
pub const PAGE_BYTES: usize = 4 << 20;
/// What a payload costs on top of its tail (id, room), for byte budgets.
const PAYLOAD_OVERHEAD: usize = 96;
/// How long a join with a cursor this instance has not read up to yet (it is catching up after
/// a start) waits for it before answering as if the cursor were current. Joined earlier, the
/// socket would receive what it already had when the reader reads it.
const AHEAD_WAIT: Duration = Duration::from_secs(5);

/// The JSON text a client receives for `item` in `room` (`None`: the broadcast copy), contract
/// section 3. Ids and room names only hold characters that need no escaping in JSON.
pub fn payload_text(ids: &Ids, item: &Item, room: Option<&Room>) -> String {
    let mut out = String::with_capacity(item.envelope.payload_tail().len() + 96);
    write_payload(&mut out, ids, item, room);
    out
}

fn write_payload(out: &mut String, ids: &Ids, item: &Item, room: Option<&Room>) {
    out.push_str(r#"{"id":""#);
    ids.write(out, item.id);
    match room {
        Some(room) => {
            out.push_str(r#"","room":""#);
            out.push_str(room.as_str());
            out.push_str(r#"","#);
        }
        None => out.push_str(r#"","room":null,"#),
    }
    out.push_str(item.envelope.payload_tail());
}

/// The same, as a value to emit.
pub fn payload(ids: &Ids, item: &Item, room: Option<&Room>) -> Box<RawValue> {
    // Built from valid JSON pieces.
    RawValue::from_string(payload_text(ids, item, room)).expect("payload is JSON")
}

/// What became of a published notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and emitted as this many copies (rooms, plus one if broadcast).
    Delivered { copies: usize },
    /// Its `messageId` was seen within the dedupe window.
    Duplicate,
    /// A stream position already read.
    AlreadyRead,
}

/// Why the stream could not give what a replay asked for.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The stream no longer holds the start of the range (retention).
    #[error("the stream no longer holds records that far back")]
    Truncated,
    #[error("the stream cannot be read: {0}")]
    Unavailable(String),
}

/// How much one read of the stream may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FetchLimits {
    pub items: usize,
    /// Payload bytes; the first item is returned whatever its size.
    pub bytes: usize,
}

/// What one read of the stream returned.
#[derive(Debug, Default, Clone)]
pub struct Fetched {
    /// The room's items, oldest first.
    pub items: Vec<Item>,
    /// Every id up to here was read: `upto`, or the last item's id when a limit cut it short.
    pub through: u64,
    /// Stream records read (what the subject's budget is charged).
    pub records: u64,
}

pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, FetchError>> + Send + 'a>>;

/// The history behind the memory window: the stream.
pub trait DeepHistory: Send + Sync {
    /// The oldest items of `room` with ids in `(after, upto]`, within `limits`.
    fn fetch<'a>(
        &'a self,
        room: &'a Room,
        after: u64,
        upto: u64,
        limits: FetchLimits,
    ) -> FetchFuture<'a>;
}

/// What a payload of `item` costs against a byte budget.
fn payload_cost(item: &Item) -> usize {
    item.envelope.payload_tail().len() + PAYLOAD_OVERHEAD
}

/// A join's or a poll's `after` (contract v3 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After<'a> {
    /// None given: no replay.
    None,
    Cursor(&'a str),
    /// Not a non-empty string: an unknown cursor (retained history, `reset: true`).
    Malformed,
}

/// Why a join did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    /// The subject's replay budget is spent (or its turn did not come).
    RateLimited(Refused),
    /// The socket went away, or stopped reading and was closed.
    Gone,
}

/// Why a read of the stream for a join or poll did not happen.
enum ReadError {
    Refused(Refused),
    Fetch(FetchError),
}

/// One answer to a poll.
pub struct Page {
    items: Vec<(Room, Item)>,
    ids: Ids,
    pub cursor: String,
    pub reset: bool,
}

impl Page {
    /// The answer of `GET /api/notifications` (contract section 6), written in one buffer from
    /// each notification's ready payload tail.
    pub fn to_json(&self) -> String {
        let tails: usize = self
            .items
            .iter()
            .map(|(_, item)| item.envelope.payload_tail().len() + 96)
            .sum();
        let mut out = String::with_capacity(64 + tails);
        out.push_str(r#"{"notifications":["#);
        for (i, (room, item)) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_payload(&mut out, &self.ids, item, Some(room));
        }
        // Cursors are ids: a tag and digits, nothing to escape.
        out.push_str(r#"],"cursor":""#);
        out.push_str(&self.cursor);
        out.push_str(if self.reset {
            r#"","reset":true}"#
        } else {
            r#"","reset":false}"#
        });
        out
    }
}

/// The fan-out over this instance's sockets: socketioxide's ([`Io`]), or in tests, fakes.
pub struct Fanout<S: Sockets = Io> {
    /// The sockets, reached only through the seam.
    io: S,
    ledger: Mutex<Ledger>,
    /// A copy of the ledger's id scheme, to serialize payloads outside the lock.
    ids: Ids,
    metrics: Arc<Metrics>,
    /// The stream, once the broker side exists.
    deep: OnceLock<Arc<dyn DeepHistory>>,
    /// Packets of a socket's queue a replay leaves for live traffic.
    headroom_slots: usize,
    /// Bytes of a socket's queue (`SOCKET_BUFFER_BYTES`) a replay leaves for live traffic.
    headroom_bytes: usize,
    /// A socket's whole byte bound: a replay may always add to an empty queue.
    socket_bytes: usize,
    /// Stream records each token subject may read, one replay at a time.
    budget: ReplayBudget,
    /// The ledger's head, for joins that wait for the reader to reach their cursor.
    head: tokio::sync::watch::Sender<u64>,
}

impl<S: Sockets> Fanout<S> {
    pub fn new(
        io: S,
        ledger: Ledger,
        metrics: Arc<Metrics>,
        socket_slots: usize,
        socket_bytes: usize,
        budget: ReplayBudget,
    ) -> Self {
        Self {
            io,
            ids: ledger.ids().clone(),
            ledger: Mutex::new(ledger),
            metrics,
            deep: OnceLock::new(),
            headroom_slots: LIVE_HEADROOM.min(socket_slots / 2),
            // A quarter of the bytes is kept for live traffic.
            headroom_bytes: socket_bytes / 4,
            socket_bytes,
            budget,
            head: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The replay budget, which the stream reader's queue reports its waiting to as well.
    pub fn budget(&self) -> &ReplayBudget {
        &self.budget
    }

    /// Tells waiting joins where the ledger's head is now (called with the lock held, so the
    /// value only grows).
    fn moved(&self, ledger: &Ledger) {
        self.head.send_if_modified(|head| {
            let moved = *head != ledger.head();
            *head = ledger.head();
            moved
        });
    }

    /// Waits (at most [`AHEAD_WAIT`]) until this instance has read up to `cursor`, when it is
    /// a valid cursor it has not reached yet.
    async fn reach(&self, cursor: &str) {
        let Cursor::Ahead(id) = self.lock().parse_cursor(Some(cursor)) else {
            return;
        };
        let mut head = self.head.subscribe();
        let _ = tokio::time::timeout(AHEAD_WAIT, head.wait_for(|head| *head >= id)).await;
    }

    /// Connects the stream, for replays beyond the memory window.
    pub fn set_deep_history(&self, deep: Arc<dyn DeepHistory>) {
        let _ = self.deep.set(deep);
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Nothing under this lock panics on valid data; if something did, the ledger is still
        // consistent enough to keep serving.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last id this instance has read or assigned.
    pub fn head(&self) -> u64 {
        self.lock().head()
    }

    /// The last id read or assigned, as it moves.
    pub fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.subscribe()
    }

    pub fn seen_message_id(&self, message_id: &str) -> bool {
        self.lock().seen_message_id(message_id)
    }

    /// A stream position that carries no notification.
    pub fn skip(&self, offset: u64) {
        let mut ledger = self.lock();
        ledger.skip(offset);
        self.moved(&ledger);
    }

    /// Ids up to `id` can no longer be held (the stream expired them before they were read).
    pub fn forget_through(&self, id: u64) {
        let mut ledger = self.lock();
        ledger.forget_through(id);
        self.moved(&ledger);
    }

    /// Accepts a notification (at stream `offset`, or under the next local id) and emits it.
    pub fn publish(&self, offset: Option<u64>, envelope: Arc<Envelope>) -> Outcome {
        let labels = Metrics::category(&envelope.category);
        let mut stalled = Vec::new();
        let copies = {
            let mut ledger = self.lock();
            let accepted = ledger.accept(offset, envelope, Instant::now());
            self.moved(&ledger);
            let item = match accepted {
                Accepted::New(item) => item,
                Accepted::Duplicate => {
                    drop(ledger);
                    self.metrics.deduplicated.get_or_create(&labels).inc();
                    return Outcome::Duplicate;
                }
                Accepted::AlreadyRead => return Outcome::AlreadyRead,
            };
            let envelope = &item.envelope;
            for room in envelope.rooms.iter() {
                let sockets = self.io.in_room(room);
                if !sockets.is_empty() {
                    let json = payload(&self.ids, &item, Some(room));
                    self.io.emit_each(&sockets, &json, &mut stalled);
                }
            }
            if envelope.broadcast {
                let sockets = self.io.outside(&envelope.rooms);
                if !sockets.is_empty() {
                    let json = payload(&self.ids, &item, None);
                    self.io.emit_each(&sockets, &json, &mut stalled);
                }
            }
            envelope.rooms.len() + usize::from(envelope.broadcast)
        };
        self.metrics.consumed.get_or_create(&labels).inc();
        self.metrics
            .emitted
            .get_or_create(&labels)
            .inc_by(copies as u64);
        self.drop_stalled(stalled);
        Outcome::Delivered { copies }
    }

    /// Observes the delay from a notification's timestamp to its emit.
    pub fn observe_lag(&self, envelope: &Envelope) {
        let lag = (OffsetDateTime::now_utc() - envelope.produced_at).as_seconds_f64();
        self.metrics.delivery_lag.observe(lag.max(0.0));
    }

    /// Joins `socket` to `room`; with `after`, first emits the room's notifications after that
    /// cursor to this socket, in order, paced by how fast it reads (see the module doc).
    /// Returns whether the answer is a reset. The caller serializes one socket's joins.
    pub async fn join(
        &self,
        socket: &S::Socket,
        room: &Room,
        after: After<'_>,
        subject: &str,
    ) -> Result<bool, JoinError> {
        // Already in the room: it has everything, and replaying again would double it.
        if self.io.is_in(socket, room) {
            return Ok(false);
        }
        let after = match after {
            After::None => {
                self.io.join(socket, room);
                return Ok(false);
            }
            After::Cursor(cursor) => Some(cursor),
            After::Malformed => None,
        };
        if let Some(after) = after {
            self.reach(after).await;
        }
        let mut cursor = match after {
            Some(after) => self.lock().parse_cursor(Some(after)),
            None => Cursor::Unknown,
        };
        let mut reset = false;
        let mut from_stream = false;
        // Keeps what follows the replay's position held while it is paced.
        let mut pin = ReplayPin {
            fanout: self,
            room,
            id: None,
        };
        for _ in 0..MAX_ROUNDS {
            // Each round starts once the socket has room: a socket whose queue is busy with
            // other rooms is waited for, not spun on.
            self.wait_for_room(socket, 0).await?;
            let step = {
                let mut ledger = self.lock();
                match ledger.plan(room, cursor, ROUND_ITEMS + 1) {
                    Plan::Held(items) if self.fits_now(socket, &items) => {
                        let payloads: Vec<_> = items
                            .iter()
                            .map(|item| payload(&self.ids, item, Some(room)))
                            .collect();
                        pin.release(&mut ledger);
                        self.replay_locked(socket, room, payloads, reset, from_stream);
                        drop(ledger);
                        return if self.io.connected(socket) {
                            Ok(reset)
                        } else {
                            Err(JoinError::Gone)
                        };
                    }
                    Plan::Held(mut items) => {
                        keep_within(&mut items, ROUND_ITEMS, ROUND_BYTES);
                        if let Cursor::At(at) = cursor {
                            pin.move_to(&mut ledger, at);
                        }
                        Step::Emit(items)
                    }
                    Plan::Reset(items) => {
                        // What is retained is replayed from its start, with `reset: true`.
                        reset = true;
                        match items.first() {
                            Some(first) => {
                                cursor = Cursor::At(first.id - 1);
                                pin.move_to(&mut ledger, first.id - 1);
                            }
                            None => cursor = Cursor::At(ledger.head()),
                        }
                        continue;
                    }
                    Plan::Fetch { after, upto, .. } => {
                        pin.move_to(&mut ledger, upto);
                        Step::Fetch { after, upto }
                    }
                }
            };
            let items = match step {
                Step::Emit(items) => items,
                Step::Fetch { after, upto } => {
                    let limits = FetchLimits {
                        items: ROUND_ITEMS,
                        bytes: ROUND_BYTES,
                    };
                    from_stream = true;
                    match self.fetch(subject, room, after, upto, limits).await {
                        Ok(fetched) => {
                            self.emit_paced(socket, room, &fetched.items).await?;
                            cursor = Cursor::At(fetched.through);
                            continue;
                        }
                        Err(ReadError::Refused(refused)) => {
                            return Err(JoinError::RateLimited(refused));
                        }
                        Err(ReadError::Fetch(error)) => {
                            tracing::debug!(%room, %error, "replay from the stream failed: reset");
                            // What the memory window retains, from its start.
                            let mut ledger = self.lock();
                            reset = true;
                            let retained = ledger.retained(room, 1);
                            let at = retained.first().map_or(ledger.head(), |item| item.id - 1);
                            pin.move_to(&mut ledger, at);
                            cursor = Cursor::At(at);
                            continue;
                        }
                    }
                }
            };
            self.emit_paced(socket, room, &items).await?;
            if let Some(last) = items.last() {
                cursor = Cursor::At(last.id);
            }
        }
        // A socket that reads more slowly than its room fills: it joins now, told it missed
        // some.
        tracing::debug!(sid = %self.io.id(socket), %room, "replay did not catch up: reset");
        let mut ledger = self.lock();
        pin.release(&mut ledger);
        self.replay_locked(socket, room, Vec::new(), true, from_stream);
        Ok(true)
    }

    /// Can `items` go into `socket`'s queue now, leaving room for live traffic?
    fn fits_now(&self, socket: &S::Socket, items: &[Item]) -> bool {
        if items.len() > ROUND_ITEMS {
            return false;
        }
        let (slots, bytes) = self.io.queue_room(socket);
        let needed: usize = items.iter().map(payload_cost).sum();
        slots >= items.len() + self.headroom_slots
            && (bytes >= needed + self.headroom_bytes || items.is_empty())
    }

    /// Emits `items` to `socket` one by one, each once its queue has room next to live
    /// traffic. A socket that does not read for [`STALL_AFTER`] is closed.
    async fn emit_paced(
        &self,
        socket: &S::Socket,
        room: &Room,
        items: &[Item],
    ) -> Result<(), JoinError> {
        for item in items {
            let json = payload(&self.ids, item, Some(room));
            self.wait_for_room(socket, json.get().len()).await?;
            let mut stalled = Vec::new();
            self.emit(socket, &json, &mut stalled);
            if !stalled.is_empty() {
                self.drop_stalled(stalled);
                return Err(JoinError::Gone);
            }
        }
        Ok(())
    }

    /// Waits until `socket`'s queue can take `bytes` more and still leave live traffic its
    /// headroom.
    async fn wait_for_room(&self, socket: &S::Socket, bytes: usize) -> Result<(), JoinError> {
        let mut last = self.io.queue_room(socket);
        // Tokio's clock, which a test's paused time moves.
        let mut moved_at = Clock::now();
        let mut tick = DRAIN_TICK;
        loop {
            if !self.io.connected(socket) {
                return Err(JoinError::Gone);
            }
            let room = self.io.queue_room(socket);
            let (slots, free) = room;
            let empty = free >= self.socket_bytes;
            if slots > self.headroom_slots && (free >= bytes + self.headroom_bytes || empty) {
                return Ok(());
            }
            if room != last {
                last = room;
                moved_at = Clock::now();
            } else if moved_at.elapsed() >= STALL_AFTER {
                self.metrics.sockets_stalled.inc();
                tracing::warn!(sid = %self.io.id(socket), "socket stopped reading during a replay: closed; its client reconnects and replays");
                self.io.leave_all(socket);
                self.io.close_stalled(socket);
                return Err(JoinError::Gone);
            }
            tokio::time::sleep(tick).await;
            tick = (tick * 2).min(DRAIN_TICK_MAX);
        }
    }

    /// Emits `payloads` to `socket` and joins it to `room`; the caller holds the ledger lock.
    fn replay_locked(
        &self,
        socket: &S::Socket,
        room: &Room,
        payloads: Vec<Box<RawValue>>,
        reset: bool,
        from_stream: bool,
    ) {
        let mut stalled = Vec::new();
        for json in &payloads {
            self.emit(socket, json, &mut stalled);
        }
        self.io.join(socket, room);
        if reset {
            self.metrics.resets.inc();
        } else {
            self.count_replay(from_stream);
        }
        self.drop_stalled(stalled);
    }

    fn count_replay(&self, from_stream: bool) {
        let source = if from_stream { "stream" } else { "memory" };
        self.metrics
            .replays
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// Reads `(after, upto]` of `room` from the stream, on `subject`'s budget.
    async fn fetch(
        &self,
        subject: &str,
        room: &Room,
        after: u64,
        upto: u64,
        limits: FetchLimits,
    ) -> Result<Fetched, ReadError> {
        let Some(deep) = self.deep.get() else {
            return Err(ReadError::Fetch(FetchError::Unavailable(
                "no stream".into(),
            )));
        };
        let ticket = self
            .budget
            .turn(subject)
            .await
            .map_err(ReadError::Refused)?;
        let fetched = deep
            .fetch(room, after, upto, limits)
            .await
            .map_err(ReadError::Fetch)?;
        ticket.charge(fetched.records);
        Ok(fetched)
    }

    /// A polling read (`GET /api/notifications`): the oldest `limit` items of `rooms` after
    /// `after` (at most [`PAGE_BYTES`] of them, at least one), merged in id order.
    pub async fn read(
        &self,
        rooms: &[Room],
        after: After<'_>,
        limit: usize,
        subject: &str,
    ) -> Result<Page, Refused> {
        let mut unique = HashSet::new();
        let rooms: Vec<&Room> = rooms.iter().filter(|r| unique.insert(*r)).collect();
        let (cursor, head, plans) = {
            let ledger = self.lock();
            let cursor = match after {
                After::None => Cursor::Start,
                After::Cursor(after) => ledger.parse_cursor(Some(after)),
                After::Malformed => Cursor::Unknown,
            };
            let plans: Vec<Plan> = rooms
                .iter()
                .map(|r| ledger.plan(r, cursor, limit))
                .collect();
            (cursor, ledger.head(), plans)
        };
        let mut items: Vec<(Room, Item)> = Vec::new();
        let mut reset = false;
        let mut from_stream = false;
        // A room whose read stopped short: nothing after this id is known for it yet.
        let mut horizon = u64::MAX;
        let limits = FetchLimits {
            items: limit,
            bytes: PAGE_BYTES,
        };
        for (room, plan) in rooms.iter().zip(plans) {
            let room = (*room).clone();
            match plan {
                Plan::Held(held) => items.extend(held.into_iter().map(|i| (room.clone(), i))),
                Plan::Reset(_) => reset = true,
                Plan::Fetch { after, upto, then } => {
                    match self.fetch(subject, &room, after, upto, limits).await {
                        // A poll is a snapshot: `then` is still what followed the fetched range
                        // when it was planned, whatever was evicted since.
                        Ok(fetched) => {
                            from_stream = true;
                            if fetched.through < upto {
                                horizon = horizon.min(fetched.through);
                            }
                            items.extend(
                                fetched
                                    .items
                                    .into_iter()
                                    .chain(then)
                                    .map(|i| (room.clone(), i)),
                            );
                            // What cannot make the page is let go before the next room is
                            // read: a poll of many rooms holds about one page, not one a room.
                            trim_page(&mut items, limit, PAGE_BYTES);
                        }
                        Err(ReadError::Refused(refused)) => return Err(refused),
                        Err(ReadError::Fetch(error)) => {
                            tracing::debug!(%room, %error, "replay from the stream failed: reset");
                            reset = true;
                        }
                    }
                }
            }
        }
        if reset {
            // A gap in one room resets the answer: the retained history of every room asked.
            let ledger = self.lock();
            items = rooms
                .iter()
                .flat_map(|r| {
                    ledger
                        .retained(r, limit)
                        .into_iter()
                        .map(|i| ((*r).clone(), i))
                })
                .collect();
            self.metrics.resets.inc();
        } else if after != After::None {
            self.count_replay(from_stream);
        }
        let asked = if reset { Cursor::Start } else { cursor };
        let bounds = PageBounds {
            limit,
            max_bytes: PAGE_BYTES,
            horizon: if reset { u64::MAX } else { horizon },
        };
        let (items, cursor) = ledger::page(items, bounds, payload_cost, head, asked);
        Ok(Page {
            items,
            ids: self.ids.clone(),
            cursor: self.ids.format(cursor),
            reset,
        })
    }

    /// Drops history rooms that have been idle too long.
    pub fn evict_idle(&self) {
        let evicted = self.lock().evict_idle(Instant::now());
        if evicted > 0 {
            tracing::debug!(evicted, "idle history rooms evicted");
        }
        self.refresh_gauges();
    }

    /// Refreshes the history size gauges.
    pub fn refresh_gauges(&self) {
        let size = self.lock().size();
        self.metrics.history_rooms.set(size.rooms as i64);
        self.metrics.history_notifications.set(size.entries as i64);
        self.metrics.history_bytes.set(size.bytes as i64);
    }

    /// Emits `json` to `socket`; one whose queue is full goes to `stalled`.
    fn emit(&self, socket: &S::Socket, json: &RawValue, stalled: &mut Vec<S::Socket>) {
        match self.io.emit(socket, json) {
            Emitted::Queued => {}
            Emitted::Full => stalled.push(socket.clone()),
            // Closed between lookup and emit: it is leaving anyway.
            Emitted::Closed => {}
        }
    }

    fn drop_stalled(&self, mut stalled: Vec<S::Socket>) {
        // A socket in several of the notification's rooms stalls once.
        stalled.sort_unstable_by_key(|socket| self.io.id(socket));
        stalled.dedup_by_key(|socket| self.io.id(socket));
        for socket in stalled {
            self.metrics.sockets_stalled.inc();
            tracing::warn!(sid = %self.io.id(&socket), "socket is not reading (send buffer full): removed from its rooms and closed; its client reconnects and replays");
            // Until it is gone it gets nothing more.
            self.io.leave_all(&socket);
            self.io.close_stalled(&socket);
        }
    }
}

/// A join's pin on its room's window, released under the ledger lock, or on drop when the
/// join is abandoned (its socket went away mid-fetch).
struct ReplayPin<'a, S: Sockets> {
    fanout: &'a Fanout<S>,
    room: &'a Room,
    id: Option<u64>,
}

impl<S: Sockets> ReplayPin<'_, S> {
    fn release(&mut self, ledger: &mut Ledger) {
        if let Some(id) = self.id.take() {
            ledger.unpin(self.room, id);
        }
    }

    /// Pins at `id` instead (the new pin first, so nothing is let go in between).
    fn move_to(&mut self, ledger: &mut Ledger, id: u64) {
        if self.id == Some(id) {
            return;
        }
        ledger.pin(self.room, id);
        self.release(ledger);
        self.id = Some(id);
    }
}

/// What one round of a join's replay does outside the lock.
enum Step {
    Emit(Vec<Item>),
    Fetch { after: u64, upto: u64 },
}

/// Keeps the oldest of `items` (of several rooms) that a page of `limit` items and
/// `max_bytes` could hold: the rest cannot be in it, whatever other rooms add.
fn trim_page(items: &mut Vec<(Room, Item)>, limit: usize, max_bytes: usize) {
    items.sort_by_key(|(_, item)| item.id);
    items.truncate(limit);
    let mut bytes = 0;
    let keep = items
        .iter()
        .take_while(|(_, item)| {
            bytes += payload_cost(item);
            bytes <= max_bytes
        })
        .count()
        .max(1);
    items.truncate(keep);
}

/// Keeps the oldest of `items` within `max` items and `max_bytes` of payloads (at least one).
pub(crate) fn keep_within(items: &mut Vec<Item>, max: usize, max_bytes: usize) {
    let mut bytes = 0;
    let keep = items
        .iter()
        .take(max)
        .take_while(|item| {
            bytes += payload_cost(item);
            bytes <= max_bytes
        })
        .count()
        .max(1);
    items.truncate(keep);
}

impl<S: Sockets> Drop for ReplayPin<'_, S> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.fanout.lock().unpin(self.room, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryConfig;
    use crate::envelope::{self, CategoryFrom, Limits, Source};
    use fake::{FakeSocket, FakeSockets};
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
    use std::sync::atomic::{AtomicBool, Ordering};

    fn item(id: u64, data: &str) -> Item {
        let source = Source {
            category: CategoryFrom::RoutingKey("notification.customer"),
            message_id: None,
            timestamp: None,
        };
        let limits = Limits {
            max_bytes: 1 << 20,
            max_rooms: 10,
        };
        let body = format!(r#"{{"type":"t","recipients":[1],"data":"{data}"}}"#);
        Item {
            id,
            envelope: Arc::new(envelope::parse(body.as_bytes(), source, &limits).unwrap()),
        }
    }

    fn ids(items: &[Item]) -> Vec<u64> {
        items.iter().map(|i| i.id).collect()
    }

    #[test]
    fn a_round_keeps_the_oldest_items_within_its_count_and_bytes_and_at_least_one() {
        let small: Vec<Item> = (1..=10).map(|id| item(id, "x")).collect();
        let mut round = small.clone();
        keep_within(&mut round, 4, usize::MAX);
        assert_eq!(ids(&round), [1, 2, 3, 4]);

        let one = payload_cost(&small[0]);
        let mut round = small.clone();
        keep_within(&mut round, 100, one * 3 + one / 2);
        assert_eq!(ids(&round), [1, 2, 3], "three fit in three and a half");

        let mut huge = vec![item(7, &"x".repeat(10_000)), item(8, "x")];
        keep_within(&mut huge, 100, 100);
        assert_eq!(
            ids(&huge),
            [7],
            "the first whatever its size, so a round always moves on"
        );
    }

    /// In-memory sockets: each has a bounded queue the test drains (its client reading) and
    /// remembers every payload it took, and every emit tried on it.
    mod fake {
        use std::collections::{BTreeSet, VecDeque};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        use serde_json::value::RawValue;

        use crate::rooms::Room;
        use crate::sockets::{Emitted, Sockets};

        pub struct FakeSocket {
            pub id: usize,
            /// Packets its queue holds at most.
            slots: usize,
            /// Bytes its queue holds at most.
            bytes: usize,
            queue: Mutex<VecDeque<String>>,
            /// What its client has read, oldest first.
            read: Mutex<Vec<String>>,
            rooms: Mutex<BTreeSet<String>>,
            closed: AtomicBool,
            /// Emits tried on it, taken or not.
            pub tries: AtomicUsize,
        }

        impl FakeSocket {
            /// Its client reads up to `n` packets; returns how many it read.
            pub fn read(&self, n: usize) -> usize {
                let mut queue = self.queue.lock().unwrap();
                let n = n.min(queue.len());
                self.read.lock().unwrap().extend(queue.drain(..n));
                n
            }

            /// Every payload it took, read or still queued: `(id number, room)`, in order.
            pub fn received(&self) -> Vec<(u64, Option<String>)> {
                let read = self.read.lock().unwrap();
                let queue = self.queue.lock().unwrap();
                read.iter()
                    .chain(queue.iter())
                    .map(|text| {
                        let json: serde_json::Value = serde_json::from_str(text).unwrap();
                        let id = json["id"].as_str().unwrap();
                        // Ids are `<tag>-<n>`.
                        let n = id.rsplit_once('-').unwrap().1.parse().unwrap();
                        (n, json["room"].as_str().map(str::to_owned))
                    })
                    .collect()
            }

            /// The ids it took for `room`, in order.
            pub fn ids_in(&self, room: &str) -> Vec<u64> {
                self.received()
                    .into_iter()
                    .filter(|(_, r)| r.as_deref() == Some(room))
                    .map(|(id, _)| id)
                    .collect()
            }

            pub fn rooms(&self) -> Vec<String> {
                self.rooms.lock().unwrap().iter().cloned().collect()
            }

            pub fn is_closed(&self) -> bool {
                self.closed.load(Ordering::SeqCst)
            }

            fn queued_bytes(queue: &VecDeque<String>) -> usize {
                queue.iter().map(String::len).sum()
            }
        }

        #[derive(Default)]
        pub struct FakeSockets {
            sockets: Mutex<Vec<Arc<FakeSocket>>>,
        }

        impl FakeSockets {
            pub fn connect(&self, slots: usize, bytes: usize) -> Arc<FakeSocket> {
                let mut sockets = self.sockets.lock().unwrap();
                let socket = Arc::new(FakeSocket {
                    id: sockets.len(),
                    slots,
                    bytes,
                    queue: Mutex::default(),
                    read: Mutex::default(),
                    rooms: Mutex::default(),
                    closed: AtomicBool::new(false),
                    tries: AtomicUsize::new(0),
                });
                sockets.push(socket.clone());
                socket
            }

            fn matching(&self, keep: impl Fn(&BTreeSet<String>) -> bool) -> Vec<Arc<FakeSocket>> {
                self.sockets
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| !s.is_closed() && keep(&s.rooms.lock().unwrap()))
                    .cloned()
                    .collect()
            }
        }

        impl Sockets for FakeSockets {
            type Socket = Arc<FakeSocket>;
            type Id = usize;

            fn id(&self, socket: &Self::Socket) -> usize {
                socket.id
            }

            fn emit(&self, socket: &Self::Socket, payload: &RawValue) -> Emitted {
                socket.tries.fetch_add(1, Ordering::SeqCst);
                if socket.is_closed() {
                    return Emitted::Closed;
                }
                let mut queue = socket.queue.lock().unwrap();
                if queue.len() >= socket.slots || FakeSocket::queued_bytes(&queue) >= socket.bytes {
                    return Emitted::Full;
                }
                queue.push_back(payload.get().to_owned());
                Emitted::Queued
            }

            fn in_room(&self, room: &Room) -> Vec<Self::Socket> {
                self.matching(|rooms| rooms.contains(room.as_str()))
            }

            fn outside(&self, except: &[Room]) -> Vec<Self::Socket> {
                self.matching(|rooms| !except.iter().any(|r| rooms.contains(r.as_str())))
            }

            fn join(&self, socket: &Self::Socket, room: &Room) {
                socket
                    .rooms
                    .lock()
                    .unwrap()
                    .insert(room.as_str().to_owned());
            }

            fn is_in(&self, socket: &Self::Socket, room: &Room) -> bool {
                socket.rooms.lock().unwrap().contains(room.as_str())
            }

            fn leave_all(&self, socket: &Self::Socket) {
                socket.rooms.lock().unwrap().clear();
            }

            fn queue_room(&self, socket: &Self::Socket) -> (usize, usize) {
                let queue = socket.queue.lock().unwrap();
                (
                    socket.slots - queue.len(),
                    socket
                        .bytes
                        .saturating_sub(FakeSocket::queued_bytes(&queue)),
                )
            }

            fn connected(&self, socket: &Self::Socket) -> bool {
                !socket.is_closed()
            }

            fn close_stalled(&self, socket: &Self::Socket) {
                socket.closed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// A socket's queue, in packets and bytes: the fan-out and the fake sockets share it.
    const SLOTS: usize = 16;
    const BYTES: usize = 1 << 20;

    fn history(per_room: usize) -> HistoryConfig {
        HistoryConfig {
            per_room,
            max_rooms: 1000,
            max_total: 100_000,
            max_bytes: 64 << 20,
            room_idle: Duration::from_secs(3600),
        }
    }

    /// A fan-out over fake sockets, its ids `t-<n>`, its rooms holding `per_room` each.
    fn fanout_with(ledger: Ledger) -> Fanout<FakeSockets> {
        let budget = ReplayBudget::new(
            1_000_000,
            Gauge::default(),
            Counter::default(),
            Counter::default(),
        );
        Fanout::new(
            FakeSockets::default(),
            ledger,
            Arc::new(Metrics::new()),
            SLOTS,
            BYTES,
            budget,
        )
    }

    fn fanout(per_room: usize) -> Fanout<FakeSockets> {
        fanout_with(Ledger::new(
            ledger::Ids::with_epoch("t"),
            history(per_room),
            100,
            0,
        ))
    }

    fn connect(fanout: &Fanout<FakeSockets>) -> Arc<FakeSocket> {
        fanout.io.connect(SLOTS, BYTES)
    }

    fn note(body: &str) -> Arc<Envelope> {
        let source = Source {
            category: CategoryFrom::RoutingKey("notification.customer"),
            message_id: None,
            timestamp: None,
        };
        let limits = Limits {
            max_bytes: 1 << 20,
            max_rooms: 10,
        };
        Arc::new(envelope::parse(body.as_bytes(), source, &limits).unwrap())
    }

    /// A notification to `customer:a` (and, as every one, `cms:dashboard`).
    fn to_a() -> Arc<Envelope> {
        note(r#"{"type":"t","rooms":["customer:a"]}"#)
    }

    fn room(name: &str) -> Room {
        Room::parse(name).unwrap()
    }

    fn publish_to_a(fanout: &Fanout<FakeSockets>, n: usize) {
        for _ in 0..n {
            fanout.publish(None, to_a());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_gets_each_notification_published_during_its_replay_once_either_replayed_or_live()
     {
        let fanout = fanout(1000);
        publish_to_a(&fanout, 100);
        let socket = connect(&fanout);
        let done = AtomicBool::new(false);
        // The replay needs rounds: 100 items, a queue of 16 with 8 kept for live traffic.
        let join = async {
            let answer = fanout
                .join(&socket, &room("customer:a"), After::Cursor("t-0"), "sub")
                .await;
            done.store(true, Ordering::SeqCst);
            answer
        };
        // Its client reads 3 packets every 2 ms (of paused time) while a notification is
        // published every 2 ms: through every round of the replay, and after it.
        let traffic = async {
            while !done.load(Ordering::SeqCst) {
                fanout.publish(None, to_a());
                socket.read(3);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            publish_to_a(&fanout, 5);
        };
        let (answer, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(join, traffic)
        })
        .await
        .expect("the join ends");
        assert_eq!(answer, Ok(false), "no reset");
        let head = fanout.head();
        assert!(head > 110, "published during the replay: {head}");
        assert_eq!(
            socket.ids_in("customer:a"),
            (1..=head).collect::<Vec<_>>(),
            "every notification once, in order"
        );
    }

    /// A stream holding every notification, as the stream reader would read it.
    struct Stream(Mutex<Vec<Item>>);

    impl DeepHistory for Stream {
        fn fetch<'a>(
            &'a self,
            room: &'a Room,
            after: u64,
            upto: u64,
            limits: FetchLimits,
        ) -> FetchFuture<'a> {
            let items: Vec<Item> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|i| i.id > after && i.id <= upto && i.envelope.rooms.contains(room))
                .take(limits.items)
                .cloned()
                .collect();
            let through = match items.last() {
                Some(last) if items.len() == limits.items => last.id,
                _ => upto,
            };
            let records = upto - after;
            Box::pin(async move {
                Ok(Fetched {
                    items,
                    through,
                    records,
                })
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_gets_its_notifications_in_order_from_the_stream_memory_and_live() {
        // Memory holds the last 5 of a room; the stream holds everything.
        let fanout = fanout_with(Ledger::new(ledger::Ids::stream(), history(5), 100, 1000));
        let stream = Arc::new(Stream(Mutex::default()));
        fanout.set_deep_history(stream.clone());
        let publish = |offset: u64| {
            let envelope = to_a();
            stream.0.lock().unwrap().push(Item {
                id: ledger::Ids::of_offset(offset),
                envelope: envelope.clone(),
            });
            fanout.publish(Some(offset), envelope);
        };
        for offset in 0..30 {
            publish(offset);
        }
        // A queue that takes it all: the order is under test here, not the pacing.
        let socket = fanout.io.connect(64, BYTES);
        let joined = fanout
            .join(&socket, &room("customer:a"), After::Cursor("s-2"), "sub")
            .await;
        assert_eq!(joined, Ok(false));
        for offset in 30..35 {
            publish(offset);
        }
        assert_eq!(
            socket.ids_in("customer:a"),
            (3..=35).collect::<Vec<_>>(),
            "3..=25 from the stream, 26..=30 from memory, then live"
        );
    }

    #[tokio::test]
    async fn a_socket_whose_queue_is_full_leaves_all_its_rooms_is_closed_and_costs_nothing_more() {
        let fanout = fanout(1000);
        let stalled = connect(&fanout);
        // Its client is not read in this test either, but its queue holds all of it.
        let reading = fanout.io.connect(100, BYTES);
        for socket in [&stalled, &reading] {
            for name in ["customer:a", "customer:b"] {
                let joined = fanout.join(socket, &room(name), After::None, "sub").await;
                assert_eq!(joined, Ok(false));
            }
        }
        // Its client reads nothing: its queue fills, and the next notification finds it full
        // in both of its rooms.
        publish_to_a(&fanout, SLOTS);
        fanout.publish(
            None,
            note(r#"{"type":"t","rooms":["customer:a","customer:b"]}"#),
        );
        assert!(stalled.is_closed(), "closed");
        assert!(stalled.rooms().is_empty(), "out of every room");
        assert_eq!(fanout.metrics.sockets_stalled.get(), 1, "it stalls once");
        let tries = stalled.tries.load(Ordering::SeqCst);
        for body in [
            r#"{"type":"t","rooms":["customer:a"]}"#,
            r#"{"type":"t","rooms":["customer:b"]}"#,
        ] {
            fanout.publish(None, note(body));
        }
        assert_eq!(
            stalled.tries.load(Ordering::SeqCst),
            tries,
            "nothing more is tried on it"
        );
        assert_eq!(fanout.metrics.sockets_stalled.get(), 1, "it stalls once");
        reading.read(usize::MAX);
        assert_eq!(reading.received().len(), SLOTS + 4, "the others go on");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_replay_waits_for_a_slow_reader_rather_than_resetting() {
        let fanout = fanout(1000);
        publish_to_a(&fanout, 300);
        let socket = connect(&fanout);
        let done = AtomicBool::new(false);
        let join = async {
            let answer = fanout
                .join(&socket, &room("customer:a"), After::Cursor("t-0"), "sub")
                .await;
            done.store(true, Ordering::SeqCst);
            answer
        };
        // One packet every 20 ms (of paused time): slow, but never stalled for long.
        let client = async {
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                socket.read(1);
            }
        };
        let (answer, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(join, client)
        })
        .await
        .expect("the join ends");
        assert_eq!(answer, Ok(false), "waited for, not reset");
        assert!(!socket.is_closed());
        assert_eq!(fanout.metrics.resets.get(), 0);
        assert_eq!(socket.ids_in("customer:a"), (1..=300).collect::<Vec<_>>());
        assert!(socket.rooms().contains(&"customer:a".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replay_whose_socket_stops_reading_closes_it() {
        let fanout = fanout(1000);
        publish_to_a(&fanout, 100);
        let socket = connect(&fanout);
        let joined = tokio::time::timeout(
            STALL_AFTER * 2,
            fanout.join(&socket, &room("customer:a"), After::Cursor("t-0"), "sub"),
        )
        .await;
        assert_eq!(joined, Ok(Err(JoinError::Gone)), "given up on once stalled");
        assert!(socket.is_closed());
        assert!(socket.rooms().is_empty());
        assert_eq!(fanout.metrics.sockets_stalled.get(), 1);
    }

    #[tokio::test]
    async fn a_join_with_an_unknown_or_malformed_cursor_replays_what_is_retained_with_reset() {
        let fanout = fanout(5);
        publish_to_a(&fanout, 10);
        for after in [
            After::Malformed,
            After::Cursor("other-3"),
            After::Cursor("t-99"),
        ] {
            let socket = connect(&fanout);
            let joined = fanout
                .join(&socket, &room("customer:a"), after, "sub")
                .await;
            assert_eq!(joined, Ok(true), "{after:?}: a reset");
            assert_eq!(
                socket.ids_in("customer:a"),
                [6, 7, 8, 9, 10],
                "{after:?}: the retained history, from its start"
            );
        }
        assert_eq!(fanout.metrics.resets.get(), 3);
    }

    #[tokio::test]
    async fn a_broadcast_reaches_each_socket_outside_its_rooms_once_with_room_null() {
        let fanout = fanout(1000);
        let in_a = connect(&fanout);
        let in_a_and_b = connect(&fanout);
        let in_b = connect(&fanout);
        let in_none = connect(&fanout);
        for (socket, names) in [
            (&in_a, &["customer:a"][..]),
            (&in_a_and_b, &["customer:a", "customer:b"]),
            (&in_b, &["customer:b"]),
        ] {
            for name in names {
                let joined = fanout.join(socket, &room(name), After::None, "sub").await;
                assert_eq!(joined, Ok(false));
            }
        }
        let outcome = fanout.publish(
            None,
            note(r#"{"type":"t","rooms":["customer:a"],"broadcast":true}"#),
        );
        // customer:a, cms:dashboard and the broadcast copy.
        assert_eq!(outcome, Outcome::Delivered { copies: 3 });
        let a = Some("customer:a".to_owned());
        assert_eq!(in_a.received(), [(1, a.clone())]);
        assert_eq!(in_a_and_b.received(), [(1, a)]);
        assert_eq!(in_b.received(), [(1, None)]);
        assert_eq!(in_none.received(), [(1, None)]);
    }

    #[tokio::test]
    async fn joining_a_room_again_replays_nothing() {
        let fanout = fanout(1000);
        publish_to_a(&fanout, 5);
        let socket = connect(&fanout);
        for _ in 0..2 {
            let joined = fanout
                .join(&socket, &room("customer:a"), After::Cursor("t-0"), "sub")
                .await;
            assert_eq!(joined, Ok(false));
            socket.read(usize::MAX);
        }
        assert_eq!(socket.ids_in("customer:a"), [1, 2, 3, 4, 5]);
    }
}
