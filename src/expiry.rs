//! A token's authority ends at its `exp` on a live socket too (contract v2 sections 4 and 5).
//!
//! Each authenticated socket keeps its token's `exp` ([`TokenExp`], in its extensions) and has
//! one entry in [`Expiry`]'s schedule, an ordered set of `(exp, sid)` (24 bytes a socket). One
//! task for all sockets sleeps until the earliest `exp`, then emits `token-expired` to each
//! socket whose token has ended and disconnects it (a server-side disconnect: clients get a new
//! token before they connect again). A `refresh-token` with a token naming the same `sub` and
//! `role` moves the socket's entry to the new `exp`; any other token is refused and the old one
//! stays. The schedule is not told about disconnects: an entry of a socket that has gone is
//! dropped when its time comes, or by a sweep every [`SWEEP_INTERVAL`], so it holds the live
//! sockets plus at most a sweep's worth of churn.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::{Principal, TokenExp};
use crate::state::AppState;

/// The event a socket receives when its token ends (no argument).
pub const TOKEN_EXPIRED: &str = "token-expired";
/// How often entries of sockets that have gone are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// When nothing is scheduled, the task wakes only for changes and sweeps.
const IDLE: Duration = Duration::from_secs(3600);

/// Has this socket's token ended? A socket without an `exp` (auth off) never expires.
pub fn has_expired(socket: &SocketRef) -> bool {
    socket
        .extensions
        .get::<TokenExp>()
        .is_some_and(|exp| exp.has_passed(SystemTime::now()))
}

/// The schedule of token ends of all sockets, and the task that acts on it.
#[derive(Default)]
pub struct Expiry {
    /// `(exp, sid)`, earliest first: one entry per authenticated socket.
    due: Mutex<BTreeSet<(u64, Sid)>>,
    /// Wakes the task when an entry earlier than the one it sleeps for may have been added.
    changed: Notify,
}

impl Expiry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the clock of a socket that has just been authenticated with a token ending at
    /// `exp` (called before its CONNECT is sent, so even a token that ends at once is seen).
    pub fn watch(&self, socket: &SocketRef, exp: Option<u64>) {
        let Some(exp) = exp else { return };
        socket.extensions.insert(TokenExp(exp));
        self.schedule().insert((exp, socket.id));
        // A permit is stored if the task is not waiting yet, so this is never lost.
        self.changed.notify_one();
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, BTreeSet<(u64, Sid)>> {
        // Nothing panics while holding it; a poisoned set is still a valid set.
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reschedule(&self, sid: Sid, old: u64, new: u64) {
        let mut due = self.schedule();
        due.remove(&(old, sid));
        due.insert((new, sid));
        drop(due);
        self.changed.notify_one();
    }

    /// The `refresh-token` event (argument: the new JWT). The ack is `{ ok: true, exp }`, or
    /// `{ ok: false, error: "unauthorized" }` when the token is invalid or expired, names
    /// another `sub` or `role`, or the socket's own token has already ended.
    pub fn refresh(&self, app: &AppState, socket: &SocketRef, arg: &Value) -> Value {
        let refused = json!({ "ok": false, "error": "unauthorized" });
        // Set by the handshake middleware, which every connected socket went through.
        let Some(current) = socket.extensions.get::<Principal>() else {
            return refused;
        };
        let old = socket.extensions.get::<TokenExp>();
        if old.is_some_and(|exp| exp.has_passed(SystemTime::now())) {
            return refused;
        }
        let verified = match app.auth.verify(arg.as_str()) {
            Ok(verified) if verified.principal == current => verified,
            Ok(other) => {
                tracing::debug!(
                    sid = %socket.id,
                    who = %current.label(),
                    offered = %other.principal.label(),
                    "refresh refused: another sub or role"
                );
                return refused;
            }
            Err(error) => {
                tracing::debug!(sid = %socket.id, %error, "refresh refused");
                return refused;
            }
        };
        if let (Some(TokenExp(old)), Some(new)) = (old, verified.exp) {
            socket.extensions.insert(TokenExp(new));
            self.reschedule(socket.id, old, new);
        }
        tracing::debug!(sid = %socket.id, exp = ?verified.exp, "token refreshed");
        json!({ "ok": true, "exp": verified.exp })
    }

    /// Ends the sockets whose tokens end, until `stop`.
    pub async fn run(self: Arc<Self>, io: SocketIo, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        // The first tick is immediate: nothing to sweep yet.
        sweep.tick().await;
        loop {
            let wake = match self.schedule().first() {
                Some(&(exp, _)) => instant_of(exp),
                None => tokio::time::Instant::now() + IDLE,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                // A socket was added or refreshed: its `exp` may be earlier than `wake`.
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(wake) => self.end_due(&io),
                _ = sweep.tick() => self.sweep(&io),
            }
        }
    }

    /// Emits `token-expired` to, and disconnects, every socket whose token has ended.
    fn end_due(&self, io: &SocketIo) {
        let now = SystemTime::now();
        let ended: Vec<(u64, Sid)> = {
            let mut due = self.schedule();
            let mut ended = Vec::new();
            while let Some(&(exp, sid)) = due.first() {
                if !TokenExp(exp).has_passed(now) {
                    break;
                }
                due.pop_first();
                ended.push((exp, sid));
            }
            ended
        };
        for (exp, sid) in ended {
            let Some(socket) = io.get_socket(sid) else {
                continue;
            };
            // A refresh that raced with this moved the socket's `exp` on: it lives.
            if socket.extensions.get::<TokenExp>() != Some(TokenExp(exp)) {
                continue;
            }
            tracing::debug!(%sid, exp, "token expired: disconnecting");
            // Queued before the DISCONNECT packet, so the client reads it first. An empty array
            // is an empty list of arguments (`()` would be one `null`).
            let _ = socket.emit(TOKEN_EXPIRED, &[0u8; 0]);
            let _ = socket.disconnect();
        }
    }

    /// Drops the entries of sockets that have gone.
    fn sweep(&self, io: &SocketIo) {
        // Copied out so that socketioxide's own locks are never taken under this one.
        let entries: Vec<(u64, Sid)> = self.schedule().iter().copied().collect();
        let gone: Vec<(u64, Sid)> = entries
            .into_iter()
            .filter(|(_, sid)| io.get_socket(*sid).is_none())
            .collect();
        let mut due = self.schedule();
        for entry in gone {
            due.remove(&entry);
        }
    }
}

/// Farther than any token lives: an `exp` beyond it is scheduled here (and never reached).
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The runtime instant at which Unix time reaches `exp` (now, if it has). Checked: a token's
/// `exp` may be any number (2^64 - 1 too), which must not overflow a clock.
fn instant_of(exp: u64) -> tokio::time::Instant {
    let left = match UNIX_EPOCH.checked_add(Duration::from_secs(exp)) {
        Some(end) => end
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
        None => FAR,
    }
    .min(FAR);
    let now = tokio::time::Instant::now();
    now.checked_add(left)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exp_beyond_any_clock_is_scheduled_without_overflow_and_never_passes() {
        let far = instant_of(u64::MAX);
        assert!(far > tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
        assert!(!TokenExp(u64::MAX).has_passed(SystemTime::now()));
        assert!(TokenExp(0).has_passed(SystemTime::now()));
    }

    #[test]
    fn a_token_ends_at_the_start_of_its_exp_second() {
        let exp = TokenExp(1_000);
        let at = |s: f64| UNIX_EPOCH + Duration::from_secs_f64(s);
        assert!(!exp.has_passed(at(999.999)));
        assert!(exp.has_passed(at(1_000.0)));
        assert!(exp.has_passed(at(1_500.0)));
    }

    #[test]
    fn the_wake_up_is_never_in_the_past() {
        let now = tokio::time::Instant::now();
        assert!(instant_of(0) >= now);
        let soon = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 10;
        let wake = instant_of(soon);
        assert!(wake > now + Duration::from_secs(8) && wake <= now + Duration::from_secs(11));
    }
}
