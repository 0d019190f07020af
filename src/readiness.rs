//! Whether this instance can serve clients (`GET /readyz`, contract v2 section 6), and why not.
//!
//! Ready means: listening, not shutting down, no supervised task down and, with RabbitMQ,
//! caught up with the stream once since start. A broker outage after that does not make the
//! instance unready: sockets, polling and history keep being served, and the answer's `broker`
//! says `reconnecting`. So one broker outage never takes every pod out of its Service.
//!
//! Reasons are plain sentences for the public answer; the log has the broker's address and the
//! client library's error text.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The broker connection, as `/readyz` and `notify_bridge_broker_connected` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// `ENABLE_RABBITMQ=false`.
    Off,
    Connected,
    /// Connecting, or lost and being retried.
    Reconnecting,
}

impl BrokerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Off => "off",
            BrokerState::Connected => "connected",
            BrokerState::Reconnecting => "reconnecting",
        }
    }
}

struct State {
    broker: BrokerState,
    /// With RabbitMQ: has the stream reader caught up with the tail once since start?
    caught_up: bool,
    shutting_down: bool,
    /// Supervised tasks that are down, with why.
    failed: BTreeMap<&'static str, String>,
    /// A broker problem only the operator can fix (a queue declared with other arguments),
    /// in words fit for the public answer: names and the fix, never addresses or credentials.
    broker_problem: Option<String>,
}

#[derive(Clone)]
pub struct Readiness {
    state: Arc<Mutex<State>>,
}

impl Readiness {
    /// Without RabbitMQ: ready as soon as it listens.
    pub fn without_broker() -> Self {
        Self::new(BrokerState::Off, true)
    }

    /// With RabbitMQ: ready once the stream reader has caught up.
    pub fn with_broker() -> Self {
        Self::new(BrokerState::Reconnecting, false)
    }

    fn new(broker: BrokerState, caught_up: bool) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                broker,
                caught_up,
                shutting_down: false,
                failed: BTreeMap::new(),
                broker_problem: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain fields cannot be left half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_broker(&self, broker: BrokerState) {
        self.lock().broker = broker;
    }

    pub fn set_broker_problem(&self, problem: Option<String>) {
        self.lock().broker_problem = problem;
    }

    /// The stream reader has read every record appended before it began.
    pub fn set_caught_up(&self) {
        self.lock().caught_up = true;
    }

    pub fn is_caught_up(&self) -> bool {
        self.lock().caught_up
    }

    pub fn set_shutting_down(&self) {
        self.lock().shutting_down = true;
    }

    /// A supervised task is down (and being restarted).
    pub fn task_failed(&self, task: &'static str, why: impl Into<String>) {
        self.lock().failed.insert(task, why.into());
    }

    /// A supervised task is running again.
    pub fn task_running(&self, task: &'static str) {
        self.lock().failed.remove(task);
    }

    /// `Ok(broker state)` when ready, else the reason.
    pub fn check(&self) -> Result<BrokerState, String> {
        let state = self.lock();
        if state.shutting_down {
            return Err("shutting down".into());
        }
        if let Some((task, why)) = state.failed.iter().next() {
            return Err(format!("the {task} task is down ({why}); restarting it"));
        }
        if !state.caught_up {
            return Err(match (&state.broker_problem, state.broker) {
                (Some(problem), _) => format!("connecting to RabbitMQ: {problem}"),
                (None, BrokerState::Connected) => "catching up with the notification stream".into(),
                (None, _) => {
                    "connecting to RabbitMQ (the log says why it is not connected yet)".into()
                }
            });
        }
        Ok(state.broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_outage_after_catching_up_keeps_the_instance_ready() {
        let r = Readiness::with_broker();
        assert!(r.check().unwrap_err().starts_with("connecting to RabbitMQ"));
        r.set_broker(BrokerState::Connected);
        assert_eq!(
            r.check().unwrap_err(),
            "catching up with the notification stream"
        );
        r.set_caught_up();
        assert_eq!(r.check(), Ok(BrokerState::Connected));
        r.set_broker(BrokerState::Reconnecting);
        assert_eq!(r.check(), Ok(BrokerState::Reconnecting));
    }

    #[test]
    fn a_failed_task_or_shutdown_makes_it_unready() {
        let r = Readiness::without_broker();
        assert_eq!(r.check(), Ok(BrokerState::Off));
        r.task_failed("consumer", "it panicked: boom");
        assert!(r.check().unwrap_err().contains("boom"));
        r.task_running("consumer");
        assert_eq!(r.check(), Ok(BrokerState::Off));
        r.set_shutting_down();
        assert_eq!(r.check().unwrap_err(), "shutting down");
    }
}
