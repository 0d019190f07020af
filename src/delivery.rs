//! The one place a notification is delivered: dedupe, number, store, emit.
//!
//! AMQP, HTTP ingest and the demo feed all call [`Delivery::deliver`]. Numbering, storing and
//! emitting happen under one lock, and a `join-room` with replay takes the same lock, so a
//! joining socket gets every notification of the room exactly once and in order: either in its
//! replay or live, never both.
//!
//! The payload is serialized once per room (raw JSON, also what history keeps); socketioxide
//! then frames those bytes once per socket. Emitting socket by socket, rather than through a
//! room broadcast, is what tells which socket's buffer is full: such a socket has stopped
//! reading, so it is taken out of all its rooms at once and costs nothing more, and Engine.IO
//! closes its connection (the patched engineioxide closes a socket whose queue overflows), so
//! its client reconnects and replays what it missed with `after`.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError, SocketIo};
use time::OffsetDateTime;

use crate::envelope::Envelope;
use crate::history::{History, Page, Stored};
use crate::metrics::Metrics;
use crate::rooms::Room;

/// The Socket.IO event every notification is emitted as.
pub const EVENT: &str = "notification";

/// The payload of contract section 3.
#[derive(Serialize)]
struct Payload<'a> {
    id: &'a str,
    room: Option<&'a str>,
    category: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    data: Option<&'a RawValue>,
    #[serde(rename = "messageId")]
    message_id: Option<&'a str>,
    timestamp: &'a str,
}

/// What became of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Emitted and stored as this many copies (rooms, plus one if broadcast).
    Delivered { copies: usize },
    /// Seen before within the dedupe window: not emitted again.
    Duplicate,
}

/// A bounded set that forgets its oldest keys first.
struct Window<K> {
    set: HashSet<K>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone> Window<K> {
    fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// `true` if `key` was already there; otherwise remembers it.
    fn check_and_insert(&mut self, key: K) -> bool {
        if self.set.contains(&key) {
            return true;
        }
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(key.clone());
        self.order.push_back(key);
        false
    }
}

/// How a notification is recognised if it comes again.
#[derive(Debug, Clone, Copy)]
pub enum DedupeKey<'a> {
    /// The body's `messageId` (or the AMQP `message_id`).
    MessageId(&'a str),
    /// No id: a fingerprint of routing key and body, checked only on broker redeliveries, so
    /// that a delivery that was emitted but not acked before a connection loss is not emitted
    /// twice, while two genuine identical notifications still both go out.
    Fingerprint {
        hash: u64,
        redelivered: bool,
    },
    None,
}

struct State {
    history: History,
    message_ids: Window<Arc<str>>,
    fingerprints: Window<u64>,
}

pub struct Delivery {
    io: SocketIo,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

impl Delivery {
    pub fn new(
        io: SocketIo,
        history: History,
        dedupe_window: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let state = State {
            history,
            message_ids: Window::new(dedupe_window),
            fingerprints: Window::new(dedupe_window),
        };
        Self {
            io,
            state: Mutex::new(state),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics on valid data; if something did, the state is still
        // consistent enough to keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn deliver(&self, env: &Envelope, key: DedupeKey<'_>) -> Outcome {
        let labels = Metrics::category(&env.category);
        let mut stalled = Vec::new();
        let copies = {
            let mut state = self.lock();
            let duplicate = match key {
                DedupeKey::MessageId(id) => state.message_ids.check_and_insert(Arc::from(id)),
                DedupeKey::Fingerprint { hash, redelivered } => {
                    let seen = state.fingerprints.check_and_insert(hash);
                    seen && redelivered
                }
                DedupeKey::None => false,
            };
            if duplicate {
                drop(state);
                self.metrics.deduplicated.get_or_create(&labels).inc();
                return Outcome::Duplicate;
            }

            let now = Instant::now();
            let mut copies = 0;
            for room in &env.rooms {
                let item = self.build(&mut state.history, env, Some(room));
                state.history.push(room, item.clone(), now);
                emit_to(
                    self.io.to(room.as_str().to_owned()).sockets(),
                    &item,
                    &mut stalled,
                );
                copies += 1;
            }
            if env.broadcast {
                let item = self.build(&mut state.history, env, None);
                let except: Vec<String> = env.rooms.iter().map(|r| r.as_str().to_owned()).collect();
                emit_to(self.io.except(except).sockets(), &item, &mut stalled);
                copies += 1;
            }
            copies
        };
        self.metrics.consumed.get_or_create(&labels).inc();
        self.metrics
            .emitted
            .get_or_create(&labels)
            .inc_by(copies as u64);
        let lag = (OffsetDateTime::now_utc() - env.produced_at).as_seconds_f64();
        self.metrics.delivery_lag.observe(lag.max(0.0));
        self.drop_stalled(stalled);
        Outcome::Delivered { copies }
    }

    fn build(&self, history: &mut History, env: &Envelope, room: Option<&Room>) -> Arc<Stored> {
        let (seq, id) = history.next_id();
        let payload = Payload {
            id: &id,
            room: room.map(Room::as_str),
            category: &env.category,
            kind: &env.kind,
            data: env.data.as_deref(),
            message_id: env.message_id.as_deref(),
            timestamp: &env.timestamp,
        };
        // Serializing plain strings and already-valid raw JSON cannot fail.
        let json = serde_json::value::to_raw_value(&payload).expect("payload serializes");
        Arc::new(Stored { seq, json })
    }

    /// Joins `socket` to `room`; with `after`, first emits the room's notifications after that
    /// cursor to this socket. Returns whether the cursor was unknown (`reset`).
    pub fn join(&self, socket: &SocketRef, room: &Room, after: Option<&str>) -> bool {
        let mut stalled = Vec::new();
        let reset = {
            let state = self.lock();
            socket.join(room.as_str().to_owned());
            match after {
                None => false,
                Some(after) => {
                    let (items, reset) = state.history.replay(room, after);
                    for item in &items {
                        emit_to([socket.clone()], item, &mut stalled);
                    }
                    reset
                }
            }
        };
        self.drop_stalled(stalled);
        reset
    }

    /// A polling read (`GET /api/notifications`).
    pub fn read(&self, rooms: &[Room], after: Option<&str>, limit: usize) -> Page {
        self.lock().history.read(rooms, after, limit)
    }

    /// Drops history rooms that have been idle too long.
    pub fn evict_idle(&self) {
        let evicted = self.lock().history.evict_idle(Instant::now());
        if evicted > 0 {
            tracing::debug!(evicted, "idle history rooms evicted");
        }
        self.housekeeping_gauges();
    }

    /// Refreshes the history size gauges.
    pub fn housekeeping_gauges(&self) {
        let (rooms, items) = self.lock().history.size();
        self.metrics.history_rooms.set(rooms as i64);
        self.metrics.history_notifications.set(items as i64);
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

fn emit_to(
    sockets: impl IntoIterator<Item = SocketRef>,
    item: &Stored,
    stalled: &mut Vec<SocketRef>,
) {
    for socket in sockets {
        match socket.emit(EVENT, &*item.json) {
            Ok(()) => {}
            Err(SendError::Socket(SocketError::InternalChannelFull)) => stalled.push(socket),
            // Closed between lookup and emit: it is leaving anyway.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_oldest_first() {
        let mut w = Window::new(2);
        assert!(!w.check_and_insert(1));
        assert!(w.check_and_insert(1));
        assert!(!w.check_and_insert(2));
        assert!(!w.check_and_insert(3));
        assert!(!w.check_and_insert(1), "1 was forgotten when 3 came in");
        assert!(w.check_and_insert(3));
        assert_eq!(w.set.len(), 2);
    }
}
