//! Statistics for dashboards (contract v3 section 7): counts of accepted notifications, in
//! all, today in `STATS_TIMEZONE`, by category and by type, and a per-minute series.
//!
//! Each instance counts what it reads from the shared log, at the time the active instance
//! appended it (a record header), so instances that have read the same records agree. With the
//! stream, `all` outlives the stream's retention: the active instance appends checkpoint
//! control records (the counts through an offset), and a reader that starts
//! `RABBITMQ_REBUILD_MAX_AGE` back takes over the counts of the first checkpoint it reads,
//! adding what it read after the checkpoint's offset. With nothing to take over by the time it
//! is caught up (the first run on a queue), its own counts stand. In the stream-less mode and
//! without RabbitMQ the counts start with the instance.
//!
//! Bounded: at most [`MAX_NAMES`] types (and categories) are counted by name, the rest as
//! `other`; the minute series holds 60 minutes; a snapshot never scans history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// Types (and categories) counted by name; the rest are counted under [`OTHER`].
pub const MAX_NAMES: usize = 200;
pub const OTHER: &str = "other";
/// The room whose sockets get the `stats` event.
pub const DASHBOARD_ROOM: &str = "cms:dashboard";
/// The socket event that carries the figures.
pub const EVENT: &str = "stats";
/// Pushes to the dashboard room come at most this often, and only when the figures changed.
pub const PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Minutes in the series: the 59 before the current one, and the current one.
const MINUTES: i64 = 60;
/// Contributions remembered for taking over a checkpoint: what was read after its offset.
const RECENT: usize = 65_536;

/// An `all` and a `today` count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub all: u64,
    pub today: u64,
}

/// One minute of the series.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Minute {
    total: u64,
    categories: BTreeMap<Arc<str>, u64>,
}

/// One record's part in the counts, kept a while to add it again after a checkpoint.
struct Contribution {
    position: u64,
    category: Arc<str>,
    kind: Arc<str>,
    at: Timestamp,
}

/// The counts, as a checkpoint carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Counts {
    since: Timestamp,
    /// Today's date in the zone: the `today` counts are that date's.
    today: Date,
    total: Pair,
    categories: BTreeMap<Arc<str>, Pair>,
    types: BTreeMap<Arc<str>, Pair>,
    /// Minute (seconds since the epoch / 60) to its counts; the last [`MINUTES`] only.
    minutes: BTreeMap<i64, Minute>,
}

/// A statistics checkpoint record's body.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// The last log position these counts include.
    through: u64,
    counts: Counts,
}

struct State {
    counts: Counts,
    /// Whether the counts are final: taken over from a checkpoint, or the reader caught up
    /// without one. Until then, a reader has counted only part of the log.
    settled: bool,
    recent: VecDeque<Contribution>,
    last_position: u64,
}

pub struct Stats {
    zone: TimeZone,
    zone_name: String,
    state: Mutex<State>,
    /// Bumped by every change, so that pushes happen only when the figures moved.
    version: AtomicU64,
}

impl Stats {
    /// Counts from now on (`settled`: no checkpoint to wait for).
    pub fn new(zone: &crate::config::StatsZone, settled: bool) -> Self {
        let now = Timestamp::now();
        Self {
            zone: zone.zone.clone(),
            zone_name: zone.name.clone(),
            state: Mutex::new(State {
                counts: Counts {
                    since: now,
                    // Before the first notification no day has begun.
                    today: Date::MIN,
                    total: Pair::default(),
                    categories: BTreeMap::new(),
                    types: BTreeMap::new(),
                    minutes: BTreeMap::new(),
                },
                settled,
                recent: VecDeque::new(),
                last_position: 0,
            }),
            version: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counting cannot panic halfway through in a way that matters: serve what is there.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Counts one accepted notification at log `position`, appended at `appended_us` (µs since
    /// the epoch; the time of reading when absent).
    pub fn count(&self, position: u64, envelope: &Envelope, appended_us: Option<i64>) {
        let at = appended_us
            .and_then(|us| Timestamp::from_microsecond(us).ok())
            .unwrap_or_else(Timestamp::now);
        let mut state = self.lock();
        let category = state.counts.name_of_category(&envelope.category);
        let kind = state.counts.name_of_type(&envelope.kind);
        state.counts.add(&self.zone, &category, &kind, at);
        state.last_position = state.last_position.max(position);
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back(Contribution {
            position,
            category,
            kind,
            at,
        });
        drop(state);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// The reader has read everything appended before it started: counts that took over no
    /// checkpoint are this log's first, and stand.
    pub fn caught_up(&self) {
        let mut state = self.lock();
        if !state.settled {
            state.settled = true;
            if let Some(first) = state.recent.front() {
                state.counts.since = state.counts.since.min(first.at);
            }
        }
    }

    /// A checkpoint's body, for the active instance to append; `None` before the counts are
    /// settled (a checkpoint of partial counts would mislead every reader after it).
    pub fn checkpoint(&self) -> Option<Vec<u8>> {
        let state = self.lock();
        if !state.settled {
            return None;
        }
        let checkpoint = Checkpoint {
            through: state.last_position,
            counts: state.counts.clone(),
        };
        // Maps of strings and numbers always serialize.
        Some(serde_json::to_vec(&checkpoint).expect("checkpoint serializes"))
    }

    /// A checkpoint read at `position`. Taken over when this reader has nothing settled yet,
    /// or when it counts from further back than this reader does; then what was read after
    /// its offset is added again.
    pub fn read_checkpoint(&self, position: u64, body: &[u8]) {
        let Ok(checkpoint) = serde_json::from_slice::<Checkpoint>(body) else {
            tracing::warn!(
                position,
                "a statistics checkpoint that does not parse: skipped"
            );
            return;
        };
        let mut state = self.lock();
        if state.settled && checkpoint.counts.since >= state.counts.since {
            return;
        }
        let State { counts, recent, .. } = &mut *state;
        *counts = checkpoint.counts;
        for contribution in recent
            .iter()
            .filter(|c| c.position > checkpoint.through && c.position < position)
        {
            counts.add(
                &self.zone,
                &contribution.category,
                &contribution.kind,
                contribution.at,
            );
        }
        counts.cap_names();
        state.settled = true;
        drop(state);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// The figures at `now` (contract v3 section 7).
    pub fn snapshot(&self, now: Timestamp) -> serde_json::Value {
        let state = self.lock();
        let counts = &state.counts;
        let today = now.to_zoned(self.zone.clone()).date();
        // No notification yet on a new day: its counts are 0.
        let fresh_day = counts.today < today;
        let pair = |p: &Pair| serde_json::json!({ "all": p.all, "today": if fresh_day { 0 } else { p.today } });
        let map = |names: &BTreeMap<Arc<str>, Pair>| {
            names
                .iter()
                .map(|(name, p)| (name.to_string(), pair(p)))
                .collect::<serde_json::Map<_, _>>()
        };
        let current = now.as_second().div_euclid(60);
        let per_minute: Vec<serde_json::Value> = (current - MINUTES + 1..=current)
            .map(|minute| {
                let counts = counts.minutes.get(&minute);
                serde_json::json!({
                    "minute": rfc3339(minute * 60),
                    "total": counts.map_or(0, |m| m.total),
                    "categories": counts.map(|m| &m.categories).cloned().unwrap_or_default(),
                })
            })
            .collect();
        serde_json::json!({
            "generatedAt": rfc3339(now.as_second()),
            "since": rfc3339(counts.since.as_second()),
            "timezone": self.zone_name,
            "today": today.to_string(),
            "total": pair(&counts.total),
            "categories": map(&counts.categories),
            "types": map(&counts.types),
            "perMinute": per_minute,
        })
    }
}

/// Pushes the figures to the sockets in the dashboard room while they change, at most once
/// per [`PUSH_INTERVAL`] (contract v3 section 5).
pub async fn push(
    stats: Arc<Stats>,
    io: socketioxide::SocketIo,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(PUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pushed = stats.version();
    // The minute series and "today" move with the clock too: push at each new minute.
    let mut minute = Timestamp::now().as_second().div_euclid(60);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Timestamp::now();
        let version = stats.version();
        let this_minute = now.as_second().div_euclid(60);
        if version == pushed && this_minute == minute {
            continue;
        }
        (pushed, minute) = (version, this_minute);
        // A socket that cannot take it now gets the next one: these are figures, not events.
        let _ = io
            .to(DASHBOARD_ROOM)
            .emit(EVENT, &stats.snapshot(now))
            .await;
    }
}

impl Counts {
    /// The category's name as counted: by name while fewer than [`MAX_NAMES`] are, else
    /// [`OTHER`].
    fn name_of_category(&self, name: &str) -> Arc<str> {
        capped(&self.categories, name)
    }

    fn name_of_type(&self, name: &str) -> Arc<str> {
        capped(&self.types, name)
    }

    fn add(&mut self, zone: &TimeZone, category: &Arc<str>, kind: &Arc<str>, at: Timestamp) {
        let date = at.to_zoned(zone.clone()).date();
        if date > self.today {
            // A new day in the zone: today's counts start again.
            self.today = date;
            self.total.today = 0;
            for pair in self.categories.values_mut().chain(self.types.values_mut()) {
                pair.today = 0;
            }
        }
        let today = u64::from(date == self.today);
        for pair in [
            &mut self.total,
            self.categories.entry(category.clone()).or_default(),
            self.types.entry(kind.clone()).or_default(),
        ] {
            pair.all += 1;
            pair.today += today;
        }
        let minute = at.as_second().div_euclid(60);
        let newest = self.minutes.keys().next_back().copied().unwrap_or(minute);
        if minute > newest - MINUTES {
            let entry = self.minutes.entry(minute).or_default();
            entry.total += 1;
            *entry.categories.entry(category.clone()).or_default() += 1;
            // Only the last hour is kept.
            let oldest_kept = minute.max(newest) - MINUTES + 1;
            while let Some((&first, _)) = self.minutes.first_key_value() {
                if first >= oldest_kept {
                    break;
                }
                self.minutes.pop_first();
            }
        }
    }

    /// A checkpoint from another writer may name more than [`MAX_NAMES`]: fold the rest into
    /// [`OTHER`].
    fn cap_names(&mut self) {
        for names in [&mut self.categories, &mut self.types] {
            while names.len() > MAX_NAMES + 1 {
                let Some(name) = names.keys().rev().find(|name| &***name != OTHER).cloned() else {
                    break;
                };
                let folded = names.remove(&name).unwrap_or_default();
                let other = names.entry(Arc::from(OTHER)).or_default();
                other.all += folded.all;
                other.today += folded.today;
            }
        }
    }
}

fn capped(names: &BTreeMap<Arc<str>, Pair>, name: &str) -> Arc<str> {
    if let Some((known, _)) = names.get_key_value(name) {
        return known.clone();
    }
    let named = names.len() - usize::from(names.contains_key(OTHER));
    if named < MAX_NAMES && name != OTHER {
        Arc::from(name)
    } else {
        Arc::from(OTHER)
    }
}

/// Seconds since the epoch as RFC 3339 in UTC, to the second.
fn rfc3339(seconds: i64) -> String {
    Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Stats")
            .field("total", &state.counts.total)
            .field("settled", &state.settled)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatsZone;
    use crate::envelope::{self, CategoryFrom, Limits, Source};

    fn note(category: &str, kind: &str) -> Envelope {
        envelope::parse(
            format!(r#"{{"type":"{kind}"}}"#).as_bytes(),
            Source {
                category: CategoryFrom::RoutingKey(&format!("notification.{category}")),
                message_id: None,
                timestamp: None,
            },
            &Limits {
                max_bytes: 1 << 20,
                max_rooms: 10,
            },
        )
        .unwrap()
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn us(text: &str) -> Option<i64> {
        Some(at(text).as_microsecond())
    }

    fn stats(zone: &str) -> Stats {
        Stats::new(&StatsZone::parse(zone).unwrap(), true)
    }

    #[test]
    fn counts_each_notification_once_by_category_and_type() {
        let stats = stats("UTC");
        stats.count(
            1,
            &note("session", "charging.started"),
            us("2026-12-06T10:00:00Z"),
        );
        stats.count(
            2,
            &note("session", "charging.stopped"),
            us("2026-12-06T10:00:30Z"),
        );
        stats.count(
            3,
            &note("station", "station.offline"),
            us("2026-12-06T10:01:00Z"),
        );
        let s = stats.snapshot(at("2026-12-06T10:01:10Z"));
        assert_eq!(s["total"], serde_json::json!({"all": 3, "today": 3}));
        assert_eq!(s["categories"]["session"]["all"], 2);
        assert_eq!(s["categories"]["station"]["today"], 1);
        assert_eq!(s["types"]["charging.started"]["all"], 1);
        assert_eq!(s["today"], "2026-12-06");
        assert_eq!(s["timezone"], "UTC");
    }

    #[test]
    fn today_begins_at_midnight_in_the_zone_across_daylight_saving_changes() {
        // Europe/Amsterdam: UTC+1 in winter, UTC+2 from the last Sunday of March (29 March
        // 2026) to the last Sunday of October (25 October 2026).
        let stats = stats("Europe/Amsterdam");
        // 28 March 23:30 local (22:30Z, UTC+1).
        stats.count(1, &note("session", "a"), us("2026-03-28T22:30:00Z"));
        // 29 March 00:30 local (23:30Z on the 28th, still UTC+1 until 02:00 local).
        stats.count(2, &note("session", "a"), us("2026-03-28T23:30:00Z"));
        let s = stats.snapshot(at("2026-03-28T23:40:00Z"));
        assert_eq!(s["today"], "2026-03-29");
        assert_eq!(s["total"]["today"], 1);
        // 29 March 23:30 local is 21:30Z (UTC+2 now): still the 29th; 22:30Z is the 30th.
        stats.count(3, &note("session", "a"), us("2026-03-29T21:30:00Z"));
        assert_eq!(
            stats.snapshot(at("2026-03-29T21:40:00Z"))["total"]["today"],
            2
        );
        let s = stats.snapshot(at("2026-03-29T22:10:00Z"));
        assert_eq!(s["today"], "2026-03-30");
        assert_eq!(s["total"], serde_json::json!({"all": 3, "today": 0}));

        // The end of summer time: 25 October 00:30 local is 22:30Z on the 24th (UTC+2), and
        // 25 October 23:30 local is 22:30Z on the 25th (UTC+1).
        let stats = stats_at_zone("Europe/Amsterdam");
        stats.count(1, &note("station", "b"), us("2026-10-24T22:30:00Z"));
        stats.count(2, &note("station", "b"), us("2026-10-25T22:30:00Z"));
        let s = stats.snapshot(at("2026-10-25T22:40:00Z"));
        assert_eq!(s["today"], "2026-10-25");
        assert_eq!(s["total"]["today"], 2);
        assert_eq!(
            stats.snapshot(at("2026-10-25T23:00:00Z"))["today"],
            "2026-10-26"
        );
    }

    fn stats_at_zone(zone: &str) -> Stats {
        stats(zone)
    }

    #[test]
    fn the_minute_series_has_sixty_entries_with_zeros_across_a_quiet_gap() {
        let stats = stats("UTC");
        stats.count(1, &note("session", "a"), us("2026-12-06T09:00:10Z"));
        stats.count(2, &note("station", "b"), us("2026-12-06T09:00:50Z"));
        stats.count(3, &note("session", "a"), us("2026-12-06T09:45:00Z"));
        let s = stats.snapshot(at("2026-12-06T09:50:30Z"));
        let minutes = s["perMinute"].as_array().unwrap();
        assert_eq!(minutes.len(), 60);
        assert_eq!(minutes[0]["minute"], "2026-12-06T08:51:00Z");
        assert_eq!(minutes[59]["minute"], "2026-12-06T09:50:00Z");
        let nine = &minutes[9];
        assert_eq!(nine["minute"], "2026-12-06T09:00:00Z");
        assert_eq!(nine["total"], 2);
        assert_eq!(
            nine["categories"],
            serde_json::json!({"session": 1, "station": 1})
        );
        assert_eq!(minutes[10]["total"], 0);
        assert_eq!(minutes[10]["categories"], serde_json::json!({}));
        assert_eq!(minutes[54]["total"], 1);
        // An hour later the old minutes are gone.
        let s = stats.snapshot(at("2026-12-06T10:50:00Z"));
        assert!(
            s["perMinute"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["total"] == 0)
        );
    }

    #[test]
    fn types_beyond_the_cap_are_counted_as_other() {
        let stats = stats("UTC");
        for n in 0..MAX_NAMES + 5 {
            stats.count(
                n as u64,
                &note("session", &format!("t{n}")),
                us("2026-12-06T10:00:00Z"),
            );
        }
        stats.count(999, &note("session", "t0"), us("2026-12-06T10:00:00Z"));
        let s = stats.snapshot(at("2026-12-06T10:00:10Z"));
        let types = s["types"].as_object().unwrap();
        assert_eq!(types.len(), MAX_NAMES + 1);
        assert_eq!(types["other"]["all"], 5);
        assert_eq!(types["t0"]["all"], 2);
        assert_eq!(s["total"]["all"], (MAX_NAMES + 6) as u64);
    }

    #[test]
    fn a_reader_takes_over_a_checkpoint_and_adds_what_it_read_after_its_offset() {
        let writer = stats("UTC");
        for position in 1..=10 {
            writer.count(position, &note("session", "a"), us("2026-12-06T10:00:00Z"));
        }
        let checkpoint = writer.checkpoint().unwrap();

        // A reader that starts at position 8 reads 8..=12, then the checkpoint at 13.
        let reader = Stats::new(&StatsZone::parse("UTC").unwrap(), false);
        assert!(
            reader.checkpoint().is_none(),
            "unsettled counts are never checkpointed"
        );
        for position in 8..=12 {
            reader.count(position, &note("session", "a"), us("2026-12-06T10:00:00Z"));
        }
        reader.read_checkpoint(13, &checkpoint);
        let s = reader.snapshot(at("2026-12-06T10:00:10Z"));
        assert_eq!(
            s["total"]["all"], 12,
            "10 from the checkpoint, 11 and 12 read after it"
        );
        assert_eq!(
            s["since"],
            writer.snapshot(at("2026-12-06T10:00:10Z"))["since"]
        );
    }
}
