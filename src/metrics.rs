//! Prometheus metrics (`GET /metrics`).
//!
//! Label values are bounded: categories outside the contract's four are counted as `other`,
//! HTTP routes are the matched route templates, never raw paths.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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

pub struct Metrics {
    registry: Registry,
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
    pub broker_connected: Gauge,
    pub broker_reconnects: Counter,
    /// Seconds from the notification's timestamp to its emit.
    pub delivery_lag: Histogram,
    pub http_requests: Family<HttpLabels, Counter>,
    /// 1 while authentication is off (dev mode or `AUTH_DISABLED=true`), to alert on.
    pub auth_disabled: Gauge,
    /// Connected sockets that went away, by Socket.IO's reason.
    pub sockets_disconnected: Family<DisconnectLabels, Counter>,
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
        let broker_connected = Gauge::default();
        let broker_reconnects = Counter::default();
        // 0.5 ms to ~16 s.
        let delivery_lag = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let http_requests = Family::default();

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

        let auth_disabled = Gauge::default();
        registry.register(
            "auth_disabled",
            "1 while authentication is off (dev mode or AUTH_DISABLED=true)",
            auth_disabled.clone(),
        );

        let sockets_disconnected = Family::default();
        registry.register(
            "sockets_disconnected",
            "Socket.IO sockets that disconnected, by reason",
            sockets_disconnected.clone(),
        );

        Self {
            registry,
            consumed,
            emitted,
            dead_lettered,
            deduplicated,
            sockets_connected,
            sockets_stalled,
            history_rooms,
            history_notifications,
            broker_connected,
            broker_reconnects,
            delivery_lag,
            http_requests,
            auth_disabled,
            sockets_disconnected,
        }
    }

    pub fn category(category: &str) -> CategoryLabels {
        CategoryLabels {
            category: metric_category(category),
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encode metrics");
        out
    }
}
