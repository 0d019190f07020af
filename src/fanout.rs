//! The fan-out: takes the [`Ledger`]'s answers and emits them to this instance's sockets.
//!
//! Every notification reaches the ledger and the sockets through [`Fanout::publish`]: the
//! stream reader (with RabbitMQ), or the HTTP ingest and the demo feed (without). Joins and
//! polls ask [`Fanout::join`] and [`Fanout::read`], which fetch from the stream what the memory
//! window no longer holds.
//!
//! **Why a join with replay never overlaps live delivery.** `publish` accepts a notification
//! into the ledger and emits it to the room's current sockets under one lock. A join takes the
//! same lock to plan its replay, emit it, and add the socket to the room. So for a joining
//! socket every notification is either accepted before that moment (its id is at most the
//! ledger's head: it is in the replay) or after it (the socket is in the room: it is emitted
//! live), never both and never neither. A replay that needs the stream first reads it without
//! the lock, then, under the lock, checks that the memory window still holds everything after
//! what it read; if the window moved on meanwhile it reads again (a bounded number of times).
//!
//! The payload is serialized once per room; socketioxide frames it once per socket. Emitting
//! socket by socket, rather than through a room broadcast, is what tells which socket's buffer
//! is full: such a socket has stopped reading, so it is taken out of all its rooms at once and
//! costs nothing more, and Engine.IO closes its connection (the patched engineioxide closes a
//! socket whose queue overflows), so its client reconnects and replays what it missed.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError, SocketIo};
use time::OffsetDateTime;

use crate::envelope::Envelope;
use crate::history::Item;
use crate::ledger::{self, Accepted, Cursor, Ids, Ledger, Plan};
use crate::metrics::{Metrics, SourceLabels};
use crate::rooms::Room;

/// The Socket.IO event every notification is emitted as.
pub const EVENT: &str = "notification";
/// Times a join re-reads the stream because the memory window moved on while it read.
const JOIN_ATTEMPTS: usize = 3;
/// How long a join with a cursor this instance has not read up to yet (it is catching up after
/// a start) waits for it before answering as if the cursor were current. Joined earlier, the
/// socket would receive what it already had when the reader reads it.
const AHEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The stream no longer holds the start of the range (retention).
    #[error("the stream no longer holds records that far back")]
    Truncated,
    /// More items match than one replay may deliver.
    #[error("more than {0} notifications to replay")]
    TooMany(usize),
    #[error("the stream cannot be read: {0}")]
    Unavailable(String),
}

pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Item>, FetchError>> + Send + 'a>>;

/// The history behind the memory window: the stream.
pub trait DeepHistory: Send + Sync {
    /// The items of `room` with ids in `(after, upto]`, oldest first; at most `max_items`
    /// (more is [`FetchError::TooMany`]).
    fn fetch<'a>(
        &'a self,
        room: &'a Room,
        after: u64,
        upto: u64,
        max_items: usize,
    ) -> FetchFuture<'a>;
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

pub struct Fanout {
    io: SocketIo,
    ledger: Mutex<Ledger>,
    /// A copy of the ledger's id scheme, to serialize payloads outside the lock.
    ids: Ids,
    metrics: Arc<Metrics>,
    /// The stream, once the broker side exists.
    deep: OnceLock<Arc<dyn DeepHistory>>,
    /// Most items one join may replay: what fits in a socket's queue next to live traffic.
    join_replay_max: usize,
    /// Most payload bytes one join may replay, likewise.
    join_replay_max_bytes: usize,
    /// The ledger's head, for joins that wait for the reader to reach their cursor.
    head: tokio::sync::watch::Sender<u64>,
}

impl Fanout {
    pub fn new(
        io: SocketIo,
        ledger: Ledger,
        metrics: Arc<Metrics>,
        join_replay_max: usize,
        join_replay_max_bytes: usize,
    ) -> Self {
        Self {
            io,
            ids: ledger.ids().clone(),
            ledger: Mutex::new(ledger),
            metrics,
            deep: OnceLock::new(),
            join_replay_max,
            join_replay_max_bytes,
            head: tokio::sync::watch::Sender::new(0),
        }
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
                let json = payload(&self.ids, &item, Some(room));
                emit_to(
                    self.io.to(room.as_str().to_owned()).sockets(),
                    &json,
                    &mut stalled,
                );
            }
            if envelope.broadcast {
                let json = payload(&self.ids, &item, None);
                let except: Vec<String> = envelope
                    .rooms
                    .iter()
                    .map(|r| r.as_str().to_owned())
                    .collect();
                emit_to(self.io.except(except).sockets(), &json, &mut stalled);
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
    /// cursor to this socket, in order. Returns whether the answer is a reset.
    pub async fn join(&self, socket: &SocketRef, room: &Room, after: Option<&str>) -> bool {
        let name = room.as_str().to_owned();
        // Already in the room: it has everything, and replaying again would double it.
        if socket.rooms().iter().any(|r| r == room.as_str()) {
            return false;
        }
        let Some(after) = after else {
            socket.join(name);
            return false;
        };
        self.reach(after).await;
        let mut fetched: Vec<Item> = Vec::new();
        let mut resume: Option<u64> = None;
        // Keeps the window from moving past what a fetch reads while it reads.
        let mut pin = ReplayPin {
            fanout: self,
            room,
            id: None,
        };
        for _ in 0..JOIN_ATTEMPTS {
            let (from, upto) = {
                let mut ledger = self.lock();
                let cursor = match resume {
                    Some(id) => Cursor::At(id),
                    None => ledger.parse_cursor(Some(after)),
                };
                let plan = ledger.plan(room, cursor, usize::MAX);
                // Released once what it kept is planned: the window may shrink again.
                pin.release(&mut ledger);
                match plan {
                    Plan::Held(items) => {
                        let source = if fetched.is_empty() {
                            "memory"
                        } else {
                            "stream"
                        };
                        fetched.extend(items);
                        // More than the socket's queue can take answers a reset, as a gap would.
                        let (payloads, all) = self.newest_within_budget(room, &fetched);
                        self.replay_locked(socket, room, payloads, !all, source);
                        return !all;
                    }
                    Plan::Reset(items) => {
                        let (payloads, _) = self.newest_within_budget(room, &items);
                        self.replay_locked(socket, room, payloads, true, "memory");
                        return true;
                    }
                    Plan::Fetch { after, upto, .. } => {
                        ledger.pin(room, upto);
                        pin.id = Some(upto);
                        (after, upto)
                    }
                }
            };
            let budget = self.join_replay_max.saturating_sub(fetched.len());
            match self.fetch(room, from, upto, budget).await {
                Ok(items) => {
                    fetched.extend(items);
                    resume = Some(upto);
                }
                Err(error) => {
                    tracing::debug!(%room, %error, "replay from the stream failed: reset");
                    break;
                }
            }
        }
        let mut ledger = self.lock();
        pin.release(&mut ledger);
        let retained = ledger.retained(room, usize::MAX);
        let (payloads, _) = self.newest_within_budget(room, &retained);
        self.replay_locked(socket, room, payloads, true, "memory");
        true
    }

    /// The payloads of the newest of `items` in `room` that fit in one join's byte budget,
    /// oldest first, and whether that is all of them: when not, the join answers a reset
    /// (the client reloads), having replayed what it could.
    fn newest_within_budget(&self, room: &Room, items: &[Item]) -> (Vec<Box<RawValue>>, bool) {
        let mut bytes = 0;
        let mut newest: Vec<Box<RawValue>> = items
            .iter()
            .rev()
            .map(|item| payload(&self.ids, item, Some(room)))
            .take_while(|json| {
                bytes += json.get().len();
                bytes <= self.join_replay_max_bytes
            })
            .collect();
        newest.reverse();
        let all = newest.len() == items.len();
        (newest, all)
    }

    /// Emits `payloads` to `socket` and joins it to `room`; the caller holds the ledger lock.
    fn replay_locked(
        &self,
        socket: &SocketRef,
        room: &Room,
        payloads: Vec<Box<RawValue>>,
        reset: bool,
        source: &'static str,
    ) {
        let mut stalled = Vec::new();
        for json in &payloads {
            emit_to([socket.clone()], json, &mut stalled);
        }
        socket.join(room.as_str().to_owned());
        if reset {
            self.metrics.resets.inc();
        } else {
            self.metrics
                .replays
                .get_or_create(&SourceLabels { source })
                .inc();
        }
        self.drop_stalled(stalled);
    }

    async fn fetch(
        &self,
        room: &Room,
        after: u64,
        upto: u64,
        max_items: usize,
    ) -> Result<Vec<Item>, FetchError> {
        match self.deep.get() {
            Some(deep) => deep.fetch(room, after, upto, max_items).await,
            None => Err(FetchError::Unavailable("no stream".into())),
        }
    }

    /// A polling read (`GET /api/notifications`): the oldest `limit` items of `rooms` after
    /// `after`, merged in id order.
    pub async fn read(&self, rooms: &[Room], after: Option<&str>, limit: usize) -> Page {
        let mut unique = HashSet::new();
        let rooms: Vec<&Room> = rooms.iter().filter(|r| unique.insert(*r)).collect();
        let (cursor, head, plans) = {
            let ledger = self.lock();
            let cursor = ledger.parse_cursor(after);
            let plans: Vec<Plan> = rooms
                .iter()
                .map(|r| ledger.plan(r, cursor, limit))
                .collect();
            (cursor, ledger.head(), plans)
        };
        let mut items: Vec<(Room, Item)> = Vec::new();
        let mut reset = false;
        let mut from_stream = false;
        for (room, plan) in rooms.iter().zip(plans) {
            let room = (*room).clone();
            match plan {
                Plan::Held(held) => items.extend(held.into_iter().map(|i| (room.clone(), i))),
                Plan::Reset(_) => reset = true,
                Plan::Fetch { after, upto, then } => {
                    match self.fetch(&room, after, upto, limit).await {
                        // A poll is a snapshot: `then` is still what followed the fetched range
                        // when it was planned, whatever was evicted since.
                        Ok(fetched) => {
                            from_stream = true;
                            items
                                .extend(fetched.into_iter().chain(then).map(|i| (room.clone(), i)));
                        }
                        Err(error) => {
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
        } else if after.is_some() {
            let source = if from_stream { "stream" } else { "memory" };
            self.metrics
                .replays
                .get_or_create(&SourceLabels { source })
                .inc();
        }
        let asked = if reset { Cursor::Start } else { cursor };
        let (items, cursor) = ledger::page(items, limit, head, asked);
        Page {
            items,
            ids: self.ids.clone(),
            cursor: self.ids.format(cursor),
            reset,
        }
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

    fn drop_stalled(&self, mut stalled: Vec<SocketRef>) {
        // A socket in several of the notification's rooms stalls once.
        stalled.sort_unstable_by_key(|socket| socket.id);
        stalled.dedup_by_key(|socket| socket.id);
        for socket in stalled {
            self.metrics.sockets_stalled.inc();
            tracing::warn!(sid = %socket.id, "socket is not reading (send buffer full): removed from its rooms and closed; its client reconnects and replays");
            // Engine.IO is closing it already; until it is gone it gets nothing more.
            socket.leave_all();
        }
    }
}

/// A join's pin on its room's window, released under the ledger lock, or on drop when the
/// join is abandoned (its socket went away mid-fetch).
struct ReplayPin<'a> {
    fanout: &'a Fanout,
    room: &'a Room,
    id: Option<u64>,
}

impl ReplayPin<'_> {
    fn release(&mut self, ledger: &mut Ledger) {
        if let Some(id) = self.id.take() {
            ledger.unpin(self.room, id);
        }
    }
}

impl Drop for ReplayPin<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.fanout.lock().unpin(self.room, id);
        }
    }
}

fn emit_to(
    sockets: impl IntoIterator<Item = SocketRef>,
    json: &RawValue,
    stalled: &mut Vec<SocketRef>,
) {
    for socket in sockets {
        match socket.emit(EVENT, json) {
            Ok(()) => {}
            Err(SendError::Socket(SocketError::InternalChannelFull)) => stalled.push(socket),
            // Closed between lookup and emit: it is leaving anyway.
            Err(_) => {}
        }
    }
}
