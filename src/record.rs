//! The shared log's record format (contract section 2): which headers a record carries, where
//! the active instance appends, and what a reader makes of a delivery.
//!
//! A notification record carries [`RECORD_HEADER`]; everything else the daemon appends is a
//! control record of its own (readiness markers, statistics checkpoints), which other
//! consumers skip. The body of a notification record is [`crate::envelope::Envelope`]'s.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::config::RabbitConfig;
pub use crate::envelope::RECORD_HEADER;

/// Time a record was appended (µs since the epoch), for the reader's lag, the hop, and the
/// statistics (every instance counts a record at the same time).
pub const APPENDED_AT_HEADER: &str = "x-notify-bridge-appended-us";
/// Fingerprint of the queue message a record was appended from (only for messages without
/// `messageId`), so that a reader can tell an append whose confirm never came did land.
pub const SOURCE_HEADER: &str = "x-notify-bridge-source";
/// The routing key the producer published with, for the reader's span.
pub const ROUTING_KEY_HEADER: &str = "x-notify-bridge-routing-key";
/// A marker: an instance's "I started reading here" (or "I stop here"), never a notification.
pub const MARKER_HEADER: &str = "x-notify-bridge-marker";
/// A statistics checkpoint (contract v3 section 7): the counts through an offset.
pub const CHECKPOINT_HEADER: &str = "x-notify-bridge-checkpoint";
/// In the stream-less mode, the id the active instance gave the notification (contract v3
/// section 3); in stream mode the offset is the id.
pub const ID_HEADER: &str = "x-notify-bridge-id";
/// W3C trace context, carried from the producer's message to the record.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Where records are appended: the stream through the default exchange, or the stream-less
/// mode's fanout exchange.
pub struct LogTarget {
    pub exchange: String,
    pub routing_key: String,
}

impl LogTarget {
    /// For logs: the stream's name, or the fanout exchange's.
    pub fn describe(&self) -> String {
        if self.exchange.is_empty() {
            self.routing_key.clone()
        } else {
            self.exchange.clone()
        }
    }

    pub fn of(config: &RabbitConfig) -> Self {
        if config.streamless {
            Self {
                exchange: config.fanout_exchange(),
                routing_key: String::new(),
            }
        } else {
            // The default exchange routes by queue name: straight into the stream.
            Self {
                exchange: String::new(),
                routing_key: config.stream.clone(),
            }
        }
    }
}

/// Persistent JSON with these headers: every record's properties.
pub fn properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// What a delivery from the log is.
pub enum Kind<'a> {
    /// A notification record.
    Notification,
    /// A marker with this id.
    Marker(&'a [u8]),
    /// A statistics checkpoint.
    Checkpoint,
    /// Another writer's message, or a control record of a later version: skipped.
    Foreign,
}

pub fn kind(properties: &BasicProperties) -> Kind<'_> {
    let Some(headers) = properties.headers().as_ref() else {
        return Kind::Foreign;
    };
    let headers = headers.inner();
    if let Some(AMQPValue::LongString(id)) = headers.get(MARKER_HEADER) {
        return Kind::Marker(id.as_bytes());
    }
    if headers.contains_key(CHECKPOINT_HEADER) {
        return Kind::Checkpoint;
    }
    if headers.contains_key(RECORD_HEADER) {
        return Kind::Notification;
    }
    Kind::Foreign
}

/// A header of a delivery.
pub fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

/// An integer header, whichever integer type the writer chose.
pub fn integer(properties: &BasicProperties, name: &str) -> Option<i64> {
    match header(properties, name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// Microseconds since the epoch.
pub fn unix_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(name.into(), value);
        properties(headers)
    }

    #[test]
    fn control_records_are_told_from_notifications_and_foreign_messages() {
        assert!(matches!(
            kind(&with(RECORD_HEADER, AMQPValue::LongInt(1))),
            Kind::Notification
        ));
        assert!(matches!(
            kind(&with(MARKER_HEADER, AMQPValue::LongString("abc".into()))),
            Kind::Marker(b"abc")
        ));
        assert!(matches!(
            kind(&with(CHECKPOINT_HEADER, AMQPValue::LongInt(1))),
            Kind::Checkpoint
        ));
        assert!(matches!(kind(&BasicProperties::default()), Kind::Foreign));
        assert!(matches!(
            kind(&with("x-other", AMQPValue::LongInt(1))),
            Kind::Foreign
        ));
    }

    #[test]
    fn integer_headers_of_any_width_are_read() {
        assert_eq!(
            integer(&with(ID_HEADER, AMQPValue::LongLongInt(7)), ID_HEADER),
            Some(7)
        );
        assert_eq!(
            integer(&with(ID_HEADER, AMQPValue::LongUInt(7)), ID_HEADER),
            Some(7)
        );
        assert_eq!(
            integer(
                &with(ID_HEADER, AMQPValue::LongString("7".into())),
                ID_HEADER
            ),
            None
        );
    }
}
