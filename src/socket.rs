//! Socket.IO (contract section 5): handshake authentication, `join-room`, `leave-room` and
//! `refresh-token` (token lifetimes are in [`crate::expiry`]).
//!
//! A token comes from the handshake's `auth.token` or the `token` query parameter; a refused
//! handshake gets `connect_error` with the message `unauthorized`. Each socket may join at most
//! `MAX_ROOMS_PER_SOCKET` rooms, at `JOIN_RATE_PER_SEC` joins a second (with a burst of as many),
//! so one client cannot make the daemon track unbounded state for it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use crate::AppState;
use crate::auth::{Principal, Verified};
use crate::expiry;
use crate::rooms::Room;

/// Why a handshake was refused; the text is what the client's `connect_error` carries.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("unauthorized")]
    Unauthorized,
    #[error("server_full")]
    ServerFull,
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
    if app.metrics.sockets_connected.get() as usize >= app.config.limits.max_connections {
        tracing::warn!(
            limit = app.config.limits.max_connections,
            "connection refused: MAX_CONNECTIONS reached"
        );
        return Err(Refusal::ServerFull);
    }
    let from_auth = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let token = from_auth.or_else(|| query_token(socket.req_parts().uri.query()));
    match app.auth.verify(token.as_deref()) {
        Ok(Verified { principal, exp }) => {
            socket.extensions.insert(principal);
            app.expiry.watch(socket, exp);
            // Before CONNECT is sent, so a client that emits `join-room` the moment it is
            // connected always finds the handler.
            register_events(app, socket);
            Ok(())
        }
        Err(error) => {
            tracing::debug!(sid = %socket.id, %error, "socket refused");
            Err(Refusal::Unauthorized)
        }
    }
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
}

fn count_connection(app: &AppState, socket: &SocketRef) {
    app.metrics.sockets_connected.inc();
    let metrics = app.metrics.clone();
    socket.on_disconnect(move || {
        metrics.sockets_connected.dec();
        async {}
    });
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
                // A token's authority ends at its `exp`, even in the instant before the socket
                // is disconnected for it.
                let reply = if expiry::has_expired(&socket) {
                    refuse("unauthorized")
                } else {
                    join_room(&app, &socket, arg.unwrap_or(Value::Null), &limiter)
                };
                let _ = ack.send(&reply);
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

fn refuse(error: &str) -> Value {
    json!({ "ok": false, "error": error })
}

fn join_room(
    app: &AppState,
    socket: &SocketRef,
    arg: Value,
    limiter: &Mutex<JoinLimiter>,
) -> Value {
    let Some(room) = room_of(&arg).and_then(|r| Room::parse(r).ok()) else {
        return refuse("invalid_room");
    };
    // Set by the handshake middleware, which every connected socket went through; a socket
    // without one is refused rather than trusted.
    let Some(principal) = socket.extensions.get::<Principal>() else {
        return refuse("forbidden");
    };
    if !principal.can_read(&room) {
        tracing::debug!(sid = %socket.id, who = %principal.label(), %room, "join refused: forbidden");
        return refuse("forbidden");
    }
    if !limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .try_take(Instant::now())
    {
        return refuse("rate_limited");
    }
    let already_in = socket.rooms().iter().any(|r| r == room.as_str());
    if !already_in && socket.rooms().len() >= app.config.limits.max_rooms_per_socket {
        return refuse("too_many_rooms");
    }
    // A malformed cursor (not a string) is an unknown one: it replays everything with `reset`.
    let after = match arg.get("after") {
        None | Some(Value::Null) => None,
        Some(Value::String(cursor)) => Some(cursor.clone()),
        Some(other) => Some(other.to_string()),
    };
    let reset = app.delivery.join(socket, &room, after.as_deref());
    tracing::debug!(sid = %socket.id, %room, ?after, reset, "joined");
    if reset {
        json!({ "ok": true, "room": room.as_str(), "reset": true })
    } else {
        json!({ "ok": true, "room": room.as_str() })
    }
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
    use std::time::Duration;

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
