//! Socket.IO (contract section 5): the engine's set-up, handshake authentication, connection
//! caps, `join-room`, `leave-room` and `refresh-token` (token lifetimes are in
//! [`crate::expiry`]).
//!
//! A token comes from the handshake's `auth.token` or the `token` query parameter; a refused
//! handshake gets `connect_error` with the message `unauthorized`. Each socket may join at most
//! `MAX_ROOMS_PER_SOCKET` rooms, at `JOIN_RATE_PER_SEC` joins a second (with a burst of as many),
//! so one client cannot make the daemon track unbounded state for it.
//!
//! Connections are bounded before any token is read: a client frame or packet is at most
//! [`MAX_CLIENT_PACKET_BYTES`] (judged from the websocket frame header), at most
//! `MAX_PENDING_CONNECTIONS` Engine.IO sessions may wait for their Socket.IO CONNECT, and each
//! gives up after [`CONNECT_TIMEOUT`]. A connected socket holds a [`Slot`] of
//! `MAX_CONNECTIONS` and of its subject's `MAX_CONNECTIONS_PER_SUB`, taken in one step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::DisconnectReason;

use crate::auth::{Principal, Verified};
use crate::config::{Config, Limits};
use crate::expiry;
use crate::metrics::DisconnectLabels;
use crate::rooms::Room;
use crate::state::AppState;

/// Largest Socket.IO packet, websocket frame or websocket message a client may send: clients
/// only send `join-room` / `leave-room`. A larger frame is refused from its header, before its
/// payload is read (contract section 5).
pub const MAX_CLIENT_PACKET_BYTES: usize = 16 * 1024;
/// Read buffer of each websocket: clients send only small `join-room` / `leave-room` packets
/// (~100 bytes); a larger one (up to 16 KiB) grows the buffer while it is read.
const WS_READ_BUFFER_BYTES: usize = 512;
/// An Engine.IO session without a successful Socket.IO CONNECT is closed after this long
/// (socketioxide's default is 45 s): a real client sends CONNECT one round trip after the
/// handshake, and a refused one has already been told `unauthorized`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Packets one socket's queue holds: a full replay of one room on top of live traffic.
pub fn buffer_size(config: &Config) -> usize {
    config
        .limits
        .socket_buffer
        .max(config.history.per_room + 32)
}

/// The Socket.IO layer and its handle, with every limit a client could otherwise abuse.
pub fn layer(config: &Config) -> (SocketIoLayer, SocketIo) {
    SocketIo::builder()
        .max_buffer_size(buffer_size(config))
        .max_buffer_bytes(config.limits.socket_buffer_bytes)
        .ping_interval(config.limits.ping_interval)
        .ping_timeout(config.limits.ping_timeout)
        .max_payload(MAX_CLIENT_PACKET_BYTES as u64)
        .ws_max_message_size(MAX_CLIENT_PACKET_BYTES)
        // The default (16 MiB) is buffered before any token is checked.
        .ws_max_frame_size(MAX_CLIENT_PACKET_BYTES)
        // Every idle connection keeps one; clients only send small join/leave packets.
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .connect_timeout(CONNECT_TIMEOUT)
        .build_layer()
}

impl Refusal {
    /// The `connect_error` message, as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::ServerFull => "server_full",
            Refusal::TooManyForSubject => "too_many_connections",
        }
    }
}

/// Why a handshake was refused; the text is what the client's `connect_error` carries.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unauthorized")]
    Unauthorized,
    #[error("server_full")]
    ServerFull,
    #[error("too_many_connections")]
    TooManyForSubject,
}

/// Connection slots: `MAX_CONNECTIONS` in all, `MAX_CONNECTIONS_PER_SUB` per token subject,
/// and `MAX_PENDING_CONNECTIONS` Engine.IO sessions still waiting for their CONNECT.
pub struct Connections {
    max_total: usize,
    max_per_subject: usize,
    max_pending: usize,
    /// Checked and taken under one lock, so a burst of handshakes cannot overshoot a cap.
    taken: Mutex<Taken>,
    pending: Arc<AtomicUsize>,
    /// `notify_bridge_sockets_connected`, kept equal to the slots taken.
    gauge: Gauge,
}

#[derive(Default)]
struct Taken {
    total: usize,
    /// Only subjects with at least one socket: the map is as large as the connections.
    by_subject: HashMap<String, usize>,
}

impl Connections {
    pub fn new(limits: &Limits, gauge: Gauge) -> Arc<Self> {
        Arc::new(Self {
            max_total: limits.max_connections,
            max_per_subject: limits.max_connections_per_sub,
            max_pending: limits.max_pending_connections,
            taken: Mutex::new(Taken::default()),
            pending: Arc::default(),
            gauge,
        })
    }

    /// Takes a slot for `principal`, or says which cap it would exceed.
    pub fn take(self: &Arc<Self>, principal: &Principal) -> Result<Slot, Refusal> {
        // Auth off: every client is the same anonymous subject, only the total applies.
        let subject = match principal {
            Principal::Anonymous => None,
            other => Some(other.label()),
        };
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if taken.total >= self.max_total {
            return Err(Refusal::ServerFull);
        }
        if let Some(subject) = &subject {
            let count = taken.by_subject.entry(subject.clone()).or_default();
            if *count >= self.max_per_subject {
                return Err(Refusal::TooManyForSubject);
            }
            *count += 1;
        }
        taken.total += 1;
        self.gauge.set(taken.total as i64);
        Ok(Slot {
            owner: self.clone(),
            subject,
        })
    }

    fn release(&self, subject: Option<&str>) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        taken.total = taken.total.saturating_sub(1);
        if let Some(subject) = subject
            && let Some(count) = taken.by_subject.get_mut(subject)
        {
            *count -= 1;
            if *count == 0 {
                taken.by_subject.remove(subject);
            }
        }
        self.gauge.set(taken.total as i64);
    }

    /// Counts a new Engine.IO handshake as pending until its socket connects or goes away;
    /// `None` when `MAX_PENDING_CONNECTIONS` are already pending.
    pub fn begin_handshake(&self) -> Option<Arc<PendingSession>> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .ok()?;
        Some(Arc::new(PendingSession {
            pending: self.pending.clone(),
            released: AtomicBool::new(false),
        }))
    }

    /// Engine.IO sessions that have not completed a Socket.IO CONNECT.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// One connected socket's share of the caps; released when dropped (at disconnect).
pub struct Slot {
    owner: Arc<Connections>,
    subject: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.release(self.subject.as_deref());
    }
}

/// Rides in the handshake request's extensions, which Engine.IO keeps for the session's life:
/// the session counts as pending until CONNECT succeeds or the session (and with it the
/// request) is dropped, whichever comes first.
pub struct PendingSession {
    pending: Arc<AtomicUsize>,
    released: AtomicBool,
}

impl PendingSession {
    fn connected(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for PendingSession {
    fn drop(&mut self) {
        self.connected();
    }
}

pub fn attach(io: &SocketIo, app: Arc<AppState>) {
    let for_middleware = app.clone();
    let authenticate = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let app = for_middleware.clone();
        async move { authenticate(&app, &socket, auth.ok()) }
    };
    // socketioxide sends CONNECT, then calls this closure inline and spawns the future it
    // returns: anything that must be in place before the client's first event happens here,
    // not in the future. (Event handlers are registered even earlier, in `authenticate`.)
    let on_connect = move |socket: SocketRef| {
        count_connection(&app, &socket);
        async {}
    };
    io.ns("/", on_connect.with(authenticate));
}

fn authenticate(
    app: &Arc<AppState>,
    socket: &SocketRef,
    auth: Option<Value>,
) -> Result<(), Refusal> {
    let from_auth = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let token = from_auth.or_else(|| query_token(socket.req_parts().uri.query()));
    let (principal, exp) = match app.auth.verify(token.as_deref()) {
        Ok(Verified { principal, exp }) => (principal, exp),
        Err(error) => {
            tracing::debug!(sid = %socket.id, %error, "socket refused");
            app.metrics.connection_refused("unauthorized");
            return Err(Refusal::Unauthorized);
        }
    };
    let slot = app.connections.take(&principal).inspect_err(|refusal| {
        app.metrics.connection_refused(refusal.code());
        tracing::warn!(
            who = %principal.label(),
            max_connections = app.config.limits.max_connections,
            max_connections_per_sub = app.config.limits.max_connections_per_sub,
            %refusal,
            "connection refused: a connection cap is reached"
        );
    })?;
    if let Some(pending) = socket.req_parts().extensions.get::<Arc<PendingSession>>() {
        pending.connected();
    }
    // Dropped at disconnect (`count_connection`), or with the socket if it never gets there.
    socket.extensions.insert(Arc::new(slot));
    socket.extensions.insert(principal);
    app.expiry.watch(socket, exp);
    // Before CONNECT is sent, so a client that emits `join-room` the moment it is
    // connected always finds the handler.
    register_events(app, socket);
    Ok(())
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
}

fn count_connection(app: &AppState, socket: &SocketRef) {
    let metrics = app.metrics.clone();
    socket.on_disconnect(move |socket: SocketRef, reason: DisconnectReason| {
        // Frees the socket's share of MAX_CONNECTIONS and MAX_CONNECTIONS_PER_SUB at once,
        // rather than whenever the last reference to the socket goes.
        drop(socket.extensions.remove::<Arc<Slot>>());
        let reason = DisconnectLabels {
            reason: reason_label(reason),
        };
        metrics.sockets_disconnected.get_or_create(&reason).inc();
        async {}
    });
}

/// A bounded metric label for each reason a socket can go away for.
fn reason_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_http_polling",
        DisconnectReason::PacketParsingError => "packet_parsing",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        // A client that stopped reading (patched socketioxide/engineioxide, vendor/README.md).
        DisconnectReason::QueueOverflow => "queue_overflow",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
    }
}

fn register_events(app: &Arc<AppState>, socket: &SocketRef) {
    let limiter = Arc::new(Mutex::new(JoinLimiter::new(
        app.config.limits.join_rate_per_sec,
    )));
    let for_join = app.clone();
    socket.on(
        "join-room",
        move |socket: SocketRef, TryData(arg): TryData<Value>, ack: AckSender| {
            let app = for_join.clone();
            let limiter = limiter.clone();
            async move {
                let reply = join_room(&app, &socket, arg.unwrap_or(Value::Null), &limiter).await;
                app.metrics.join_answered(&reply);
                let _ = ack.send(&reply);
                // A dashboard gets the figures right after its join's ack (contract v3
                // section 5), then with the room's pushes.
                if reply["ok"] == true && reply["room"] == crate::stats::DASHBOARD_ROOM {
                    let _ = socket.emit(
                        crate::stats::EVENT,
                        &app.stats.snapshot(jiff::Timestamp::now()),
                    );
                }
            }
        },
    );
    let for_refresh = app.clone();
    socket.on(
        "refresh-token",
        move |socket: SocketRef, TryData(arg): TryData<Value>, ack: AckSender| {
            let app = for_refresh.clone();
            async move {
                let reply = app
                    .expiry
                    .refresh(&app, &socket, &arg.unwrap_or(Value::Null));
                let _ = ack.send(&reply);
            }
        },
    );
    socket.on(
        "leave-room",
        move |socket: SocketRef, TryData(arg): TryData<Value>, ack: AckSender| async move {
            let reply = match room_of(&arg.unwrap_or(Value::Null)).and_then(|r| Room::parse(r).ok())
            {
                Some(room) => {
                    socket.leave(room.as_str().to_owned());
                    json!({ "ok": true })
                }
                None => json!({ "ok": false, "error": "invalid_room" }),
            };
            let _ = ack.send(&reply);
        },
    );
}

/// The room named by a `join-room` / `leave-room` argument: a string or `{ "room": … }`.
fn room_of(arg: &Value) -> Option<&str> {
    match arg {
        Value::String(room) => Some(room),
        Value::Object(fields) => fields.get("room").and_then(Value::as_str),
        _ => None,
    }
}

/// Why a `join-room` was refused; the code is the ack's `error` (contract section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinRefusal {
    InvalidRoom,
    Forbidden,
    RateLimited,
    TooManyRooms,
    /// The socket's token reached its `exp` (it is about to be disconnected for it): the
    /// token no longer allows any room, so the contract's code is `forbidden`.
    TokenExpired,
}

impl JoinRefusal {
    pub fn code(self) -> &'static str {
        match self {
            JoinRefusal::InvalidRoom => "invalid_room",
            JoinRefusal::Forbidden => "forbidden",
            JoinRefusal::RateLimited => "rate_limited",
            JoinRefusal::TooManyRooms => "too_many_rooms",
            JoinRefusal::TokenExpired => "forbidden",
        }
    }

    fn ack(self) -> Value {
        json!({ "ok": false, "error": self.code() })
    }
}

async fn join_room(
    app: &AppState,
    socket: &SocketRef,
    arg: Value,
    limiter: &Mutex<JoinLimiter>,
) -> Value {
    match try_join(app, socket, &arg, limiter).await {
        Ok((room, reset)) => {
            if reset {
                json!({ "ok": true, "room": room.as_str(), "reset": true })
            } else {
                json!({ "ok": true, "room": room.as_str() })
            }
        }
        Err(refusal) => refusal.ack(),
    }
}

async fn try_join(
    app: &AppState,
    socket: &SocketRef,
    arg: &Value,
    limiter: &Mutex<JoinLimiter>,
) -> Result<(Room, bool), JoinRefusal> {
    // Every attempt counts against the rate, refused ones too: probing rooms or flooding with
    // invalid names costs a client its budget like real joins do.
    let allowed = limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .try_take(Instant::now());
    let room = room_of(arg)
        .and_then(|r| Room::parse(r).ok())
        .ok_or(JoinRefusal::InvalidRoom)?;
    // A token's authority ends at its `exp`, even in the instant before the socket is
    // disconnected for it (after the room check: `invalid_room` wins over `forbidden`).
    if expiry::has_expired(socket) {
        return Err(JoinRefusal::TokenExpired);
    }
    // Set by the handshake middleware, which every connected socket went through; a socket
    // without one is refused rather than trusted.
    let principal = socket
        .extensions
        .get::<Principal>()
        .ok_or(JoinRefusal::Forbidden)?;
    if !principal.can_read(&room) {
        tracing::debug!(sid = %socket.id, who = %principal.label(), %room, "join refused: forbidden");
        return Err(JoinRefusal::Forbidden);
    }
    if !allowed {
        return Err(JoinRefusal::RateLimited);
    }
    let already_in = socket.rooms().iter().any(|r| r == room.as_str());
    if !already_in && socket.rooms().len() >= app.config.limits.max_rooms_per_socket {
        return Err(JoinRefusal::TooManyRooms);
    }
    // A malformed cursor (not a string) is an unknown one: it replays everything with `reset`.
    let after = match arg.get("after") {
        None | Some(Value::Null) => None,
        Some(Value::String(cursor)) => Some(cursor.clone()),
        Some(other) => Some(other.to_string()),
    };
    let reset = app.fanout.join(socket, &room, after.as_deref()).await;
    tracing::debug!(sid = %socket.id, %room, ?after, reset, "joined");
    Ok((room, reset))
}

/// A token bucket: `rate` joins a second, bursts of up to `rate`.
struct JoinLimiter {
    rate: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl JoinLimiter {
    fn new(rate: u32) -> Self {
        Self {
            rate: rate as f64,
            tokens: rate as f64,
            refilled_at: Instant::now(),
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limiter = JoinLimiter {
            rate: 5.0,
            tokens: 5.0,
            refilled_at: start,
        };
        assert!((0..5).all(|_| limiter.try_take(start)));
        assert!(!limiter.try_take(start));
        assert!(limiter.try_take(start + Duration::from_millis(200)));
        assert!(!limiter.try_take(start + Duration::from_millis(200)));
    }

    fn limits(total: usize, per_subject: usize, pending: usize) -> Limits {
        let mut limits = crate::config::Config::from_vars([("X", "")])
            .unwrap()
            .limits;
        limits.max_connections = total;
        limits.max_connections_per_sub = per_subject;
        limits.max_pending_connections = pending;
        limits
    }

    fn customer(id: &str) -> Principal {
        Principal::Customer { id: id.into() }
    }

    #[test]
    fn a_burst_from_many_threads_never_takes_more_than_max_connections() {
        let gauge = Gauge::default();
        let connections = Connections::new(&limits(50, 1000, 10), gauge.clone());
        let slots: Vec<Slot> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    let connections = &connections;
                    scope.spawn(move || {
                        (0..40)
                            .filter_map(|_| connections.take(&Principal::Anonymous).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        assert_eq!(slots.len(), 50);
        assert_eq!(gauge.get(), 50);
        assert_eq!(
            connections.take(&Principal::Anonymous).err(),
            Some(Refusal::ServerFull)
        );
        drop(slots);
        assert_eq!(gauge.get(), 0);
        assert!(connections.take(&Principal::Anonymous).is_ok());
    }

    #[test]
    fn one_subject_cannot_take_more_than_its_share() {
        let connections = Connections::new(&limits(100, 2, 10), Gauge::default());
        let a1 = connections.take(&customer("a")).unwrap();
        let _a2 = connections.take(&customer("a")).unwrap();
        assert_eq!(
            connections.take(&customer("a")).err(),
            Some(Refusal::TooManyForSubject)
        );
        // Others are not affected, and a freed slot can be taken again.
        assert!(connections.take(&customer("b")).is_ok());
        drop(a1);
        assert!(connections.take(&customer("a")).is_ok());
        // With auth off, every client is anonymous: only the total applies.
        let anonymous: Vec<_> = (0..5)
            .map(|_| connections.take(&Principal::Anonymous).unwrap())
            .collect();
        assert_eq!(anonymous.len(), 5);
    }

    #[test]
    fn pending_handshakes_are_capped_and_freed_by_connect_or_drop() {
        let connections = Connections::new(&limits(100, 10, 2), Gauge::default());
        let first = connections.begin_handshake().unwrap();
        let second = connections.begin_handshake().unwrap();
        assert!(connections.begin_handshake().is_none());
        first.connected();
        first.connected();
        assert_eq!(connections.pending(), 1, "connected once, counted once");
        drop(first);
        assert_eq!(
            connections.pending(),
            1,
            "a connected session is no longer pending"
        );
        drop(second);
        assert_eq!(connections.pending(), 0);
        assert!(connections.begin_handshake().is_some());
    }

    #[test]
    fn room_arguments() {
        assert_eq!(room_of(&json!("customer:1")), Some("customer:1"));
        assert_eq!(
            room_of(&json!({"room": "cms:x", "after": "e-1"})),
            Some("cms:x")
        );
        assert_eq!(room_of(&json!(5)), None);
        assert_eq!(room_of(&json!({"after": "e-1"})), None);
    }

    #[test]
    fn token_from_the_query() {
        assert_eq!(
            query_token(Some("EIO=4&transport=polling&token=a%2Eb")),
            Some("a.b".into())
        );
        assert_eq!(query_token(Some("EIO=4")), None);
        assert_eq!(query_token(None), None);
    }
}
