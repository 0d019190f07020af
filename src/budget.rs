//! What one token subject may cost in replays from the stream (contract v3 sections 1, 5, 6).
//!
//! Each subject (a token's `sub` and role, as [`crate::auth::Principal::label`] names it) has a
//! bucket of `REPLAY_BUDGET_PER_SUB` stream records a minute, refilled continuously, and one
//! turn: its replays from the stream run one at a time, whatever number of sockets and polls
//! ask. A replay that finds its subject's bucket empty is refused at once, with the time after
//! which it would be allowed; one that waits for its turn longer than [`TURN_WAIT`] is refused
//! too. Records are charged after they are read, so one replay may take the bucket below zero
//! and the subject then waits longer.
//!
//! Fairness between subjects comes from this and the instance's stream readers being handed
//! out first come, first served: a subject has at most one replay waiting for a reader, so a
//! busy subject cannot stand in front of everyone else's queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
// The runtime's clock, so that tests can move it.
use tokio::time::Instant;

/// Longest a replay waits for its subject's previous one to finish.
pub const TURN_WAIT: Duration = Duration::from_secs(5);
/// Subjects remembered before the idle ones (full bucket, nobody replaying) are forgotten.
const PRUNE_AT: usize = 4096;

/// Why a replay from the stream was refused: `rate_limited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// When asking again may succeed (`Retry-After`).
    pub retry_after: Duration,
}

impl Refused {
    /// Whole seconds, at least one: the `Retry-After` header's value.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

struct Subject {
    /// Records still allowed; negative after a replay read more than was left.
    tokens: f64,
    refilled_at: Instant,
    /// One permit: the subject's turn to read the stream.
    turn: Arc<Semaphore>,
}

/// The per-subject replay budget of this instance.
pub struct ReplayBudget {
    per_minute: f64,
    subjects: Mutex<HashMap<String, Subject>>,
    /// `notify_bridge_replays_waiting`: replays waiting for their turn (and, counted by the
    /// stream reader, for a reader).
    waiting: Gauge,
    /// `notify_bridge_replays_refused`.
    refused: Counter,
    /// `notify_bridge_replay_records`.
    records: Counter,
}

impl ReplayBudget {
    pub fn new(per_minute: u64, waiting: Gauge, refused: Counter, records: Counter) -> Self {
        Self {
            per_minute: per_minute as f64,
            subjects: Mutex::new(HashMap::new()),
            waiting,
            refused,
            records,
        }
    }

    fn rate_per_sec(&self) -> f64 {
        self.per_minute / 60.0
    }

    fn subjects(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subject>> {
        self.subjects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refills `subject`'s bucket to `now`; `Err` when it holds less than one record.
    fn check(&self, subject: &mut Subject, now: Instant) -> Result<(), Refused> {
        let elapsed = now.saturating_duration_since(subject.refilled_at);
        subject.tokens =
            (subject.tokens + elapsed.as_secs_f64() * self.rate_per_sec()).min(self.per_minute);
        subject.refilled_at = now;
        if subject.tokens >= 1.0 {
            return Ok(());
        }
        let missing = 1.0 - subject.tokens;
        Err(Refused {
            retry_after: Duration::from_secs_f64(missing / self.rate_per_sec()),
        })
    }

    /// Waits (at most [`TURN_WAIT`]) for `subject`'s turn to read the stream, if its budget
    /// allows. Dropping the future gives up the place in the queue at once.
    pub async fn turn(&self, subject: &str) -> Result<Ticket<'_>, Refused> {
        let turn = {
            let mut subjects = self.subjects();
            if subjects.len() >= PRUNE_AT {
                let full = self.per_minute;
                subjects.retain(|_, s| s.tokens < full || Arc::strong_count(&s.turn) > 1);
            }
            let entry = subjects
                .entry(subject.to_owned())
                .or_insert_with(|| Subject {
                    tokens: self.per_minute,
                    refilled_at: Instant::now(),
                    turn: Arc::new(Semaphore::new(1)),
                });
            self.check(entry, Instant::now()).inspect_err(|_| {
                self.refused.inc();
            })?;
            entry.turn.clone()
        };
        let permit = {
            let _waiting = GaugeGuard::new(&self.waiting);
            tokio::time::timeout(TURN_WAIT, turn.acquire_owned()).await
        };
        let permit = match permit {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; a timeout is a subject that keeps asking.
            _ => {
                self.refused.inc();
                return Err(Refused {
                    retry_after: TURN_WAIT,
                });
            }
        };
        // The replay before this one may have spent what was left.
        if let Some(entry) = self.subjects().get_mut(subject) {
            self.check(entry, Instant::now()).inspect_err(|_| {
                self.refused.inc();
            })?;
        }
        Ok(Ticket {
            budget: self,
            subject: subject.to_owned(),
            _turn: permit,
        })
    }

    /// The gauge of replays waiting, for the stream reader's own queue.
    pub fn waiting(&self) -> &Gauge {
        &self.waiting
    }
}

/// A subject's turn to read the stream; it ends when dropped.
pub struct Ticket<'a> {
    budget: &'a ReplayBudget,
    subject: String,
    _turn: OwnedSemaphorePermit,
}

impl Ticket<'_> {
    /// Charges `records` read from the stream to the subject.
    pub fn charge(&self, records: u64) {
        self.budget.records.inc_by(records);
        if let Some(entry) = self.budget.subjects().get_mut(&self.subject) {
            entry.tokens -= records as f64;
        }
    }
}

/// Counts one waiter on a gauge for as long as it lives.
pub struct GaugeGuard<'a>(&'a Gauge);

impl<'a> GaugeGuard<'a> {
    pub fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_minute: u64) -> ReplayBudget {
        ReplayBudget::new(
            per_minute,
            Gauge::default(),
            Counter::default(),
            Counter::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_subject_that_spent_its_budget_is_refused_until_it_refills_and_others_are_not() {
        let budget = budget(600); // 10 records a second
        let ticket = budget.turn("customer:a").await.unwrap();
        ticket.charge(650);
        drop(ticket);
        let refused = budget.turn("customer:a").await.err().expect("spent");
        // 51 records short at 10 a second.
        assert_eq!(refused.retry_after_secs(), 6);
        assert!(budget.turn("customer:b").await.is_ok(), "another subject");
        assert_eq!(budget.refused.get(), 1);
        assert_eq!(budget.records.get(), 650);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(budget.turn("customer:a").await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_subjects_replays_take_turns_and_a_long_wait_is_refused() {
        let budget = budget(100_000);
        let first = budget.turn("customer:a").await.unwrap();
        // Another subject is not behind it.
        assert!(budget.turn("customer:b").await.is_ok());
        let second = budget.turn("customer:a");
        tokio::pin!(second);
        assert!(
            futures_util::poll!(second.as_mut()).is_pending(),
            "one at a time"
        );
        assert_eq!(budget.waiting.get(), 1);
        drop(first);
        let second = second.await.expect("its turn came");
        // A third waits, and gives up after TURN_WAIT.
        let third = budget.turn("customer:a").await;
        assert_eq!(third.err().map(|r| r.retry_after), Some(TURN_WAIT));
        assert_eq!(budget.waiting.get(), 0);
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_the_wait_leaves_nothing_waiting() {
        let budget = budget(100_000);
        let _first = budget.turn("customer:a").await.unwrap();
        {
            let waiting = budget.turn("customer:a");
            tokio::pin!(waiting);
            assert!(futures_util::poll!(waiting.as_mut()).is_pending());
            assert_eq!(budget.waiting.get(), 1);
        }
        assert_eq!(
            budget.waiting.get(),
            0,
            "a dropped wait is no longer counted"
        );
    }
}
