//! What each socket received: counts, duplicates by `n`, first and last receipt, and the
//! latency of every receipt into one shared histogram.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Deserialize;

/// Microseconds since the Unix epoch: the publisher stamps `t0` with it, sockets subtract it.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `["notification", { …, "data": { "n": …, "t0": …, "r": … }, … }]`: only these fields are
/// parsed; the event name is borrowed and everything else is skipped without allocating.
#[derive(Deserialize)]
struct Event<'a>(#[serde(borrow)] &'a str, Note);

#[derive(Deserialize)]
struct Note {
    data: Bench,
}

#[derive(Deserialize)]
struct Bench {
    n: u64,
    t0: u64,
    /// The run this message belongs to: anything else (a late message of an earlier
    /// scenario) is counted as stray, not as received.
    r: u64,
}

/// State shared by all sockets of one scenario.
pub struct Shared {
    pub run: u64,
    /// Latency in microseconds, 1 µs to 60 s, 3 significant digits.
    pub latency: Mutex<Histogram<u64>>,
    /// Distinct notifications received by all sockets: the coordinator waits on it.
    pub received: AtomicU64,
}

impl Shared {
    pub fn new(run: u64) -> Self {
        let latency = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Self {
            run,
            latency: Mutex::new(latency),
            received: AtomicU64::new(0),
        }
    }
}

/// One socket's receipts.
#[derive(Default)]
pub struct Tally {
    pub receipts: u64,
    pub duplicates: u64,
    /// Events that were not this run's bench notifications.
    pub stray: u64,
    pub seen: Bits,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Why the socket ended before it was told to stop, if it did.
    pub ended_early: Option<String>,
}

impl Tally {
    pub fn record(&mut self, event: &str, shared: &Shared) {
        let now = Instant::now();
        let now_us = unix_micros();
        let bench = match serde_json::from_str::<Event>(event) {
            Ok(Event("notification", note)) if note.data.r == shared.run => note.data,
            _ => {
                self.stray += 1;
                return;
            }
        };
        self.receipts += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
        if self.seen.insert(bench.n) {
            self.duplicates += 1;
        } else {
            shared.received.fetch_add(1, Ordering::Relaxed);
        }
        let micros = now_us.saturating_sub(bench.t0).max(1);
        shared
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(micros);
    }
}

/// A growable bit set of message numbers.
#[derive(Default, Clone)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `n`; returns whether it was already set.
    pub fn insert(&mut self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.0.len() {
            // Doubling keeps the growth amortised: no allocation per message.
            self.0.resize((word + 1).max(self.0.len() * 2), 0);
        }
        let was = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        was
    }

    pub fn contains(&self, n: u64) -> bool {
        self.0
            .get((n / 64) as usize)
            .is_some_and(|word| word & (1 << (n % 64)) != 0)
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|word| u64::from(word.count_ones())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        let mut bits = Bits::default();
        assert!(!bits.insert(3));
        assert!(bits.insert(3));
        assert!(!bits.insert(1000));
        assert!(
            bits.contains(1000)
                && bits.contains(3)
                && !bits.contains(4)
                && !bits.contains(1_000_000)
        );
        assert_eq!(bits.count(), 2);
    }

    #[test]
    fn parses_only_this_runs_notifications() {
        let shared = Shared::new(7);
        let mut tally = Tally::default();
        let t0 = unix_micros();
        let event = format!(
            r#"["notification",{{"id":"a-1","room":"cms:dashboard","category":"customer","type":"bench","data":{{"n":5,"t0":{t0},"r":7}},"messageId":"7-5","timestamp":"2026-01-01T00:00:00Z"}}]"#
        );
        tally.record(&event, &shared);
        tally.record(&event, &shared);
        tally.record(&event.replace("\"r\":7", "\"r\":8"), &shared);
        tally.record(r#"["notification",{"data":null}]"#, &shared);
        assert_eq!((tally.receipts, tally.duplicates, tally.stray), (2, 1, 2));
        assert_eq!(shared.received.load(Ordering::Relaxed), 1);
        assert_eq!(shared.latency.lock().unwrap().len(), 2);
    }
}
