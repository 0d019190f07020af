//! Prometheus metrics (`GET /metrics`).
//!
//! Label values are bounded: categories outside the contract's four are counted as `other`,
//! HTTP routes are the matched route templates, never raw paths, refusal reasons are the
//! contract's codes.
//!
//! Besides the `notify_bridge_*` families, `/metrics` carries the standard `process_*` metrics
//! (CPU, memory, file descriptors, start time) read from `/proc/self` at each scrape, and
//! `notify_bridge_sockets{transport}`, counted over the live sockets at each scrape (a socket
//! that upgrades from polling to websocket moves over without an event to count it by).

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use socketioxide::{SocketIo, TransportType};

use crate::config::{AuthMode, Config};
use crate::rooms::metric_category;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub category: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DisconnectLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

/// Why a `join-room` was refused: the contract's error codes, anything else as `other`.
const JOIN_REFUSALS: [&str; 4] = [
    "forbidden",
    "invalid_room",
    "rate_limited",
    "too_many_rooms",
];

pub struct Metrics {
    registry: Registry,
    /// `process_*`: not prefixed, so the standard dashboards and alerts find them.
    process: Registry,
    /// Socket.IO handshakes refused, by reason (`unauthorized`, `server_full`, ...).
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// `join-room` calls answered `ok: false`, by error code.
    pub joins_refused: Family<ReasonLabels, Counter>,
    /// Sockets by their current transport; refreshed at each scrape.
    pub sockets: Family<TransportLabels, Gauge>,
    /// `MAX_CONNECTIONS`, so alerts can compare `sockets_connected` with it.
    pub max_connections: Gauge,
    /// 1 while authentication is off (dev mode or `AUTH_DISABLED=true`).
    pub auth_disabled: Gauge,
    /// 1 when `ENABLE_RABBITMQ=true`: only then is `broker_connected` 0 a problem.
    pub rabbitmq_enabled: Gauge,
    /// Replays served after a cursor, by where they were read from: `memory` (the in-memory
    /// window) or `stream` (the RabbitMQ stream, beyond the window). Incremented once per
    /// replay (one `join-room` with `after`, or one polling read past the window), not per
    /// notification replayed. Wired by the stream reader.
    pub replays: Family<SourceLabels, Counter>,
    /// Answers with `reset: true`: a cursor whose successors can no longer be replayed.
    /// Wired by the stream reader.
    pub resets: Counter,
    /// Stream records read by replays (joins and polls past the memory window): what
    /// `REPLAY_BUDGET_PER_SUB` budgets.
    pub replay_records: Counter,
    /// Replays waiting for their turn: their subject's one stream replay at a time, or one of
    /// the instance's stream readers.
    pub replays_waiting: Gauge,
    /// Joins and polls refused `rate_limited` because their subject's replay budget was spent
    /// (or its turn did not come in time).
    pub replays_refused: Counter,
    /// Seconds this instance's stream reader is behind the stream's tail: the age of the last
    /// record read when more are waiting, 0 when caught up. Wired by the stream reader.
    pub stream_lag: Gauge<f64, AtomicU64>,
    /// Seconds from the active consumer's append of a record to this instance's read of it,
    /// for records read live (not while rebuilding): the stream hop. Wired by the stream reader.
    pub stream_hop: Histogram,
    /// 1 while this instance is the queue's single active consumer, else 0. Wired by the
    /// consumer.
    pub stream_active_consumer: Gauge,
    /// The sockets counted into `sockets`; set once the Socket.IO layer exists.
    io: OnceLock<SocketIo>,
    pub consumed: Family<CategoryLabels, Counter>,
    /// One per emitted copy (one per target room, plus the broadcast copy).
    pub emitted: Family<CategoryLabels, Counter>,
    pub dead_lettered: Family<DeadLetterLabels, Counter>,
    pub deduplicated: Family<CategoryLabels, Counter>,
    pub sockets_connected: Gauge,
    /// Sockets dropped from their rooms because their send buffer was full.
    pub sockets_stalled: Counter,
    pub history_rooms: Gauge,
    pub history_notifications: Gauge,
    /// Bytes of notifications held for polling and replay (`HISTORY_MAX_BYTES` caps it).
    pub history_bytes: Gauge,
    pub broker_connected: Gauge,
    pub broker_reconnects: Counter,
    /// Seconds from the notification's timestamp to its emit.
    pub delivery_lag: Histogram,
    pub http_requests: Family<HttpLabels, Counter>,
    /// Connected sockets that went away, by Socket.IO's reason.
    pub sockets_disconnected: Family<DisconnectLabels, Counter>,
    /// Log records refused by the reader's judgement (contract v3 section 2), by reason.
    pub records_refused: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("notify_bridge");
        let consumed = Family::default();
        let emitted = Family::default();
        let dead_lettered = Family::default();
        let deduplicated = Family::default();
        let sockets_connected = Gauge::default();
        let sockets_stalled = Counter::default();
        let history_rooms = Gauge::default();
        let history_notifications = Gauge::default();
        let history_bytes = Gauge::default();
        let broker_connected = Gauge::default();
        let broker_reconnects = Counter::default();
        // 0.5 ms to ~16 s.
        let delivery_lag = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let http_requests = Family::default();
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let connections_refused = Family::default();
        let joins_refused = Family::default();
        let sockets = Family::default();
        let max_connections = Gauge::default();
        let auth_disabled = Gauge::default();
        let rabbitmq_enabled = Gauge::default();
        let replays = Family::<SourceLabels, Counter>::default();
        // Both sources from the start, so that rate() and the dashboard see them at 0.
        for source in ["memory", "stream"] {
            let _ = replays.get_or_create(&SourceLabels { source });
        }
        let resets = Counter::default();
        let replay_records = Counter::default();
        let replays_waiting = Gauge::default();
        let replays_refused = Counter::default();
        registry.register(
            "replay_records",
            "Stream records read by replays past the memory window",
            replay_records.clone(),
        );
        registry.register(
            "replays_waiting",
            "Replays waiting for their subject's turn or a stream reader",
            replays_waiting.clone(),
        );
        registry.register(
            "replays_refused",
            "Joins and polls refused rate_limited by the subject's replay budget",
            replays_refused.clone(),
        );
        let stream_lag = Gauge::<f64, AtomicU64>::default();
        // 0.1 ms to ~250 ms in steps of 25 %: fine enough to read a p50 and a p99 from.
        let stream_hop = Histogram::new(exponential_buckets(0.0001, 1.25, 36));
        let stream_active_consumer = Gauge::default();

        registry.register(
            "build_info",
            "Always 1; the version label is the running build",
            build_info.clone(),
        );
        registry.register(
            "connections_refused",
            "Socket.IO handshakes refused, by reason",
            connections_refused.clone(),
        );
        registry.register(
            "joins_refused",
            "join-room calls refused, by error code",
            joins_refused.clone(),
        );
        registry.register(
            "sockets",
            "Socket.IO sockets by current transport (websocket, polling)",
            sockets.clone(),
        );
        registry.register(
            "max_connections",
            "Configured MAX_CONNECTIONS",
            max_connections.clone(),
        );
        registry.register(
            "auth_disabled",
            "1 while authentication is off (dev mode or AUTH_DISABLED)",
            auth_disabled.clone(),
        );
        registry.register(
            "rabbitmq_enabled",
            "1 when ENABLE_RABBITMQ=true (the daemon consumes from RabbitMQ)",
            rabbitmq_enabled.clone(),
        );
        registry.register(
            "replays",
            "Replays after a cursor, by source (memory window or stream)",
            replays.clone(),
        );
        registry.register(
            "resets",
            "Answers with reset: true (a cursor that can no longer be replayed from)",
            resets.clone(),
        );
        registry.register(
            "stream_lag_seconds",
            "Seconds this instance's stream reader is behind the stream's tail",
            stream_lag.clone(),
        );
        registry.register(
            "stream_hop_seconds",
            "Seconds from the active consumer's append of a record to this instance's read of it",
            stream_hop.clone(),
        );
        registry.register(
            "stream_active_consumer",
            "1 while this instance is the queue's single active consumer",
            stream_active_consumer.clone(),
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(ProcessCollector));
        registry.register(
            "notifications_consumed",
            "Notifications accepted from RabbitMQ or HTTP",
            consumed.clone(),
        );
        registry.register(
            "notifications_emitted",
            "Notification copies emitted, one per target room",
            emitted.clone(),
        );
        registry.register(
            "notifications_dead_lettered",
            "Messages sent to the dead-letter queue",
            dead_lettered.clone(),
        );
        registry.register(
            "notifications_deduplicated",
            "Notifications dropped as already seen (messageId)",
            deduplicated.clone(),
        );
        registry.register(
            "sockets_connected",
            "Socket.IO sockets connected",
            sockets_connected.clone(),
        );
        registry.register(
            "sockets_stalled",
            "Sockets removed from their rooms because they stopped reading",
            sockets_stalled.clone(),
        );
        registry.register(
            "history_rooms",
            "Rooms with retained history",
            history_rooms.clone(),
        );
        registry.register(
            "history_notifications",
            "Notifications retained in history",
            history_notifications.clone(),
        );
        registry.register(
            "history_bytes",
            "Bytes of notifications retained in history",
            history_bytes.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while consuming from RabbitMQ",
            broker_connected.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Connections to RabbitMQ lost and retried",
            broker_reconnects.clone(),
        );
        registry.register(
            "delivery_lag_seconds",
            "Seconds from a notification's timestamp to its emit",
            delivery_lag.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );

        let sockets_disconnected = Family::default();
        registry.register(
            "sockets_disconnected",
            "Socket.IO sockets that disconnected, by reason",
            sockets_disconnected.clone(),
        );
        let records_refused = Family::default();
        registry.register(
            "records_refused",
            "Records of the shared log skipped because a producer could not have sent them",
            records_refused.clone(),
        );

        let metrics = Self {
            registry,
            process,
            connections_refused,
            joins_refused,
            sockets,
            max_connections,
            auth_disabled,
            rabbitmq_enabled,
            replays,
            resets,
            replay_records,
            replays_waiting,
            replays_refused,
            stream_lag,
            stream_hop,
            stream_active_consumer,
            io: OnceLock::new(),
            consumed,
            emitted,
            dead_lettered,
            deduplicated,
            sockets_connected,
            sockets_stalled,
            history_rooms,
            history_notifications,
            history_bytes,
            broker_connected,
            broker_reconnects,
            delivery_lag,
            http_requests,
            sockets_disconnected,
            records_refused,
        };
        metrics.present_from_the_start();
        metrics
    }

    /// Every known label value of the labelled families at zero, so that a fresh daemon's
    /// `/metrics` lists every family the dashboard and the alerts name: a rate over a series
    /// that does not exist yet is no rate at all.
    fn present_from_the_start(&self) {
        for category in CATEGORIES {
            let labels = CategoryLabels { category };
            let _ = self.consumed.get_or_create(&labels);
            let _ = self.emitted.get_or_create(&labels);
            let _ = self.deduplicated.get_or_create(&labels);
            for reason in REJECTIONS {
                let _ = self
                    .dead_lettered
                    .get_or_create(&DeadLetterLabels { category, reason });
            }
        }
        for reason in REJECTIONS {
            let _ = self.records_refused.get_or_create(&ReasonLabels { reason });
        }
        // The `connect_error` messages (contract section 5).
        for reason in ["unauthorized", "server_full", "too_many_connections"] {
            let _ = self
                .connections_refused
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in JOIN_REFUSALS.into_iter().chain(["other"]) {
            let _ = self.joins_refused.get_or_create(&ReasonLabels { reason });
        }
        for transport in ["websocket", "polling"] {
            let _ = self.sockets.get_or_create(&TransportLabels { transport });
        }
    }

    pub fn category(category: &str) -> CategoryLabels {
        CategoryLabels {
            category: metric_category(category),
        }
    }

    /// Exports the settings alerts compare against (`MAX_CONNECTIONS`, auth off).
    pub fn record_config(&self, config: &Config) {
        self.max_connections
            .set(i64::try_from(config.limits.max_connections).unwrap_or(i64::MAX));
        self.auth_disabled
            .set(i64::from(matches!(config.auth, AuthMode::Disabled(_))));
        self.rabbitmq_enabled.set(i64::from(config.enable_rabbitmq));
    }

    /// Counts the sockets of `io` by transport at each scrape.
    pub fn watch_transports(&self, io: &SocketIo) {
        let _ = self.io.set(io.clone());
    }

    /// Counts a refused Socket.IO handshake; `reason` is the `connect_error` message.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a refused `join-room` by its error code.
    pub fn join_refused(&self, code: &str) {
        let reason = JOIN_REFUSALS
            .into_iter()
            .find(|known| *known == code)
            .unwrap_or("other");
        self.joins_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a `join-room` answer if it is a refusal (`{ "ok": false, "error": code }`).
    pub fn join_answered(&self, reply: &serde_json::Value) {
        if reply["ok"] == false {
            self.join_refused(reply["error"].as_str().unwrap_or(""));
        }
    }

    fn count_transports(&self) {
        let Some(sockets) = self.io.get().and_then(|io| io.of("/")) else {
            return;
        };
        let (mut websocket, mut polling) = (0, 0);
        for socket in sockets.sockets() {
            match socket.transport_type() {
                TransportType::Websocket => websocket += 1,
                TransportType::Polling => polling += 1,
            }
        }
        for (transport, count) in [("websocket", websocket), ("polling", polling)] {
            self.sockets
                .get_or_create(&TransportLabels { transport })
                .set(count);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        self.count_transports();
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .and_then(|()| {
                prometheus_client::encoding::text::encode_registry(&mut out, &self.process)
            })
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out))
            .expect("encode metrics");
        out
    }
}

/// Categories as metrics label them (`rooms::metric_category`).
const CATEGORIES: [&str; 5] = ["station", "charger", "session", "customer", "other"];
/// Why a message is dead-lettered or a record refused (contract section 2).
const REJECTIONS: [&str; 7] = [
    "not_json",
    "not_object",
    "missing_type",
    "too_large",
    "invalid_room",
    "invalid_field",
    "too_many_rooms",
];

/// The standard Prometheus process metrics, read from `/proc/self` at each scrape (Linux; on
/// other systems, or if `/proc` is unreadable, they are left out).
#[derive(Debug)]
struct ProcessCollector;

/// `/proc` reports CPU times and start times in clock ticks of `USER_HZ`, 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// What the collector read from `/proc/self`.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessStats {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s));
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let mut stats = parse_stat(&stat, boot_time)?;
        stats.resident_bytes = status_kib(&status, "VmRSS:").map(|k| k * 1024);
        stats.virtual_bytes = status_kib(&status, "VmSize:").map(|k| k * 1024);
        stats.max_fds = parse_max_fds(&limits);
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        Some(stats)
    }
}

/// `utime`, `stime` and `starttime` of `/proc/self/stat` (fields 14, 15, 22).
fn parse_stat(stat: &str, boot_time: Option<u64>) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu = ticks(14)? + ticks(15)?;
    Some(ProcessStats {
        cpu_seconds: cpu as f64 / TICKS_PER_SECOND,
        start_time_seconds: boot_time
            .zip(ticks(22))
            .map(|(boot, start)| boot as f64 + start as f64 / TICKS_PER_SECOND),
        ..Default::default()
    })
}

fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn parse_max_fds(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(stats.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stats.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                stats.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                stats.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and a parenthesis, as /proc allows.
        let stat = "4242 (notify (bridge) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 130 0 0 20 0 \
                    3 0 5000 1000 200 18446744073709551615";
        let stats = parse_stat(stat, Some(1_700_000_000)).unwrap();
        assert_eq!(stats.cpu_seconds, 3.8);
        assert_eq!(stats.start_time_seconds, Some(1_700_000_050.0));
        assert_eq!(parse_stat("garbage", None), None);
    }

    #[test]
    fn limits_status_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            status_kib("Name:\tx\nVmRSS:\t  5120 kB\n", "VmRSS:"),
            Some(5120)
        );
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn the_live_process_is_described() {
        let text = Metrics::new().encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "notify_bridge_build_info{version=\"",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "one EOF, at the end");
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn join_refusals_are_bounded() {
        let metrics = Metrics::new();
        metrics.join_answered(&serde_json::json!({ "ok": false, "error": "rate_limited" }));
        metrics.join_answered(&serde_json::json!({ "ok": false, "error": "made-up" }));
        metrics.join_answered(&serde_json::json!({ "ok": true, "room": "cms:x" }));
        let text = metrics.encode();
        assert!(text.contains("notify_bridge_joins_refused_total{reason=\"rate_limited\"} 1"));
        assert!(text.contains("notify_bridge_joins_refused_total{reason=\"other\"} 1"));
        // The contract's four codes and `other`, nothing made up.
        assert_eq!(
            text.matches("notify_bridge_joins_refused_total{").count(),
            5
        );
        assert!(!text.contains("made-up"));
    }

    #[test]
    fn labelled_families_are_listed_at_zero_before_any_event() {
        let text = Metrics::new().encode();
        for series in [
            "notify_bridge_notifications_dead_lettered_total{category=\"session\",reason=\"not_json\"} 0",
            "notify_bridge_notifications_consumed_total{category=\"station\"} 0",
            "notify_bridge_notifications_emitted_total{category=\"other\"} 0",
            "notify_bridge_notifications_deduplicated_total{category=\"charger\"} 0",
            "notify_bridge_joins_refused_total{reason=\"forbidden\"} 0",
            "notify_bridge_records_refused_total{reason=\"too_many_rooms\"} 0",
            "notify_bridge_replays_total{source=\"stream\"} 0",
            "notify_bridge_sockets{transport=\"polling\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }
}
