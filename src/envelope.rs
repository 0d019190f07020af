//! Parsing a message body into a routed [`Envelope`] (contract section 2), with no I/O.
//!
//! The same parser serves AMQP deliveries (category from the routing key) and
//! `POST /api/notifications` (category from the body), so both reject the same inputs with the
//! same reasons. `data` is kept as raw JSON: it is copied into each emitted payload verbatim,
//! never parsed into a tree.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::rooms::{Room, default_rooms, is_token};

/// Why a message cannot be delivered; the string form is the dead-letter reason header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not_json")]
    NotJson,
    #[error("not_object")]
    NotObject,
    #[error("missing_type")]
    MissingType,
    #[error("too_large")]
    TooLarge,
    #[error("invalid_room")]
    InvalidRoom,
    #[error("invalid_field")]
    InvalidField,
    #[error("too_many_rooms")]
    TooManyRooms,
}

impl Rejection {
    pub fn code(self) -> &'static str {
        match self {
            Rejection::NotJson => "not_json",
            Rejection::NotObject => "not_object",
            Rejection::MissingType => "missing_type",
            Rejection::TooLarge => "too_large",
            Rejection::InvalidRoom => "invalid_room",
            Rejection::InvalidField => "invalid_field",
            Rejection::TooManyRooms => "too_many_rooms",
        }
    }

    /// A sentence for logs and HTTP error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Rejection::NotJson => "the body is not valid JSON",
            Rejection::NotObject => "the body is JSON but not an object",
            Rejection::MissingType => "the body has no `type`",
            Rejection::TooLarge => "the body is larger than MAX_MESSAGE_BYTES",
            Rejection::InvalidRoom => "a recipient or room is not a valid room name",
            Rejection::InvalidField => "a field has the wrong type or an invalid value",
            Rejection::TooManyRooms => {
                "the message names more rooms (recipients plus rooms) than MAX_RECIPIENTS"
            }
        }
    }
}

/// Where the category comes from.
#[derive(Debug, Clone, Copy)]
pub enum CategoryFrom<'a> {
    /// The last segment of an AMQP routing key.
    RoutingKey(&'a str),
    /// The body's `category` field (HTTP ingest), which must match `[A-Za-z0-9_-]{1,64}`.
    Body,
}

/// What the transport knows about a message besides its body.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub category: CategoryFrom<'a>,
    /// The AMQP `message_id` property; the body's `messageId` wins.
    pub message_id: Option<&'a str>,
    /// The AMQP `timestamp` property (seconds since the epoch); the body's `timestamp` wins.
    pub timestamp: Option<u64>,
}

/// What a body may cost: checked before anything is stored or emitted.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `MAX_MESSAGE_BYTES`.
    pub max_bytes: usize,
    /// `MAX_RECIPIENTS`: distinct `recipients` plus `rooms` (the category's defaults are free).
    pub max_rooms: usize,
}

/// A notification ready for delivery: validated and routed.
#[derive(Debug)]
pub struct Envelope {
    pub category: Box<str>,
    /// The body's `type`.
    pub kind: Box<str>,
    pub data: Option<Box<RawValue>>,
    /// Target rooms, without duplicates: recipients, explicit rooms, then the category's defaults.
    pub rooms: Box<[Room]>,
    pub broadcast: bool,
    pub message_id: Option<Box<str>>,
    /// RFC 3339, as the producer wrote it or as formatted from the AMQP property / receipt time.
    pub timestamp: Box<str>,
    /// The same instant, for the delivery-lag metric.
    pub produced_at: OffsetDateTime,
    /// The payload's fields after `id` and `room`, serialized once (see [`Self::payload_tail`]).
    pub tail: std::sync::OnceLock<Box<str>>,
}

/// Fields are read as raw JSON first, so a field of the wrong type is told apart from bad JSON.
#[derive(Deserialize)]
struct RawBody<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    recipients: Option<&'a RawValue>,
    #[serde(borrow, default)]
    rooms: Option<&'a RawValue>,
    #[serde(borrow, default)]
    broadcast: Option<&'a RawValue>,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    category: Option<&'a RawValue>,
}

/// Longest accepted `messageId`: ids are keys of the dedupe window, so they are bounded.
const MAX_MESSAGE_ID_LEN: usize = 256;
/// Longest accepted `type`: it is copied into every payload and log line.
pub const MAX_TYPE_LEN: usize = 256;
/// Longest category, from a routing key or the ingest body (`[A-Za-z0-9_-]{1,64}`).
pub const MAX_CATEGORY_LEN: usize = 64;

/// Validates and routes a producer's body.
pub fn parse(body: &[u8], source: Source<'_>, limits: &Limits) -> Result<Envelope, Rejection> {
    if body.len() > limits.max_bytes {
        return Err(Rejection::TooLarge);
    }
    let whole: &RawValue = serde_json::from_slice(body).map_err(|_| Rejection::NotJson)?;
    if !whole.get().starts_with('{') {
        return Err(Rejection::NotObject);
    }
    // Valid JSON object; the only way this fails is a duplicated known key.
    let raw: RawBody<'_> =
        serde_json::from_str(whole.get()).map_err(|_| Rejection::InvalidField)?;

    let kind = match opt_string(raw.kind)? {
        None => return Err(Rejection::MissingType),
        Some(kind) if kind.is_empty() => return Err(Rejection::MissingType),
        Some(kind) if kind.len() > MAX_TYPE_LEN => return Err(Rejection::InvalidField),
        Some(kind) => kind,
    };

    // A routing key's last segment reaches payloads, metrics and logs: it obeys the same
    // grammar as the ingest's `category`.
    let category: Box<str> = match source.category {
        CategoryFrom::RoutingKey(key) => match key.rsplit('.').next() {
            Some(c) if is_token(c, MAX_CATEGORY_LEN) => c.into(),
            _ => return Err(Rejection::InvalidField),
        },
        CategoryFrom::Body => match opt_string(raw.category)? {
            Some(c) if is_token(&c, MAX_CATEGORY_LEN) => c.into(),
            _ => return Err(Rejection::InvalidField),
        },
    };

    let recipients = opt_array(raw.recipients)?;
    let explicit = opt_array(raw.rooms)?;
    // Checked before any room is built, so a huge list costs one pass over the JSON at most.
    if recipients.len() + explicit.len() > limits.max_rooms.saturating_mul(4) {
        return Err(Rejection::TooManyRooms);
    }
    let mut rooms = RoomSet::default();
    for recipient in recipients {
        let id = match recipient {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            // A fractional id can only make an invalid room name.
            serde_json::Value::Number(_) => return Err(Rejection::InvalidRoom),
            _ => return Err(Rejection::InvalidField),
        };
        rooms.insert(Room::customer(&id).map_err(|_| Rejection::InvalidRoom)?);
    }
    for room in explicit {
        let serde_json::Value::String(name) = room else {
            return Err(Rejection::InvalidField);
        };
        rooms.insert(Room::parse(&name).map_err(|_| Rejection::InvalidRoom)?);
    }
    if rooms.len() > limits.max_rooms {
        return Err(Rejection::TooManyRooms);
    }
    for name in default_rooms(&category) {
        // The default table only holds valid names.
        rooms.insert(Room::parse(name).expect("default rooms are valid"));
    }

    let broadcast = match raw.broadcast {
        None => false,
        Some(v) => serde_json::from_str::<Option<bool>>(v.get())
            .map_err(|_| Rejection::InvalidField)?
            .unwrap_or(false),
    };

    let message_id = match opt_string(raw.message_id)? {
        Some(id) if id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN => {
            return Err(Rejection::InvalidField);
        }
        Some(id) => Some(id.into_boxed_str()),
        None => source
            .message_id
            .filter(|id| !id.is_empty() && id.len() <= MAX_MESSAGE_ID_LEN)
            .map(Box::from),
    };

    let (timestamp, produced_at) = match opt_string(raw.timestamp)? {
        Some(text) => {
            let at = OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| Rejection::InvalidField)?;
            (text.into_boxed_str(), at)
        }
        None => {
            let at = source
                .timestamp
                .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs as i64).ok())
                .unwrap_or_else(OffsetDateTime::now_utc);
            (format_rfc3339(at).into_boxed_str(), at)
        }
    };

    let data = raw.data.filter(|d| d.get() != "null").map(|d| d.to_owned());

    Ok(Envelope {
        category,
        kind: kind.into_boxed_str(),
        data,
        rooms: rooms.into_ordered(),
        broadcast,
        message_id,
        timestamp,
        produced_at,
        tail: Default::default(),
    })
}

/// Rooms in first-seen order without duplicates, deduplicated with a set so that a message
/// naming many rooms costs linear time, not quadratic.
#[derive(Default)]
struct RoomSet {
    seen: std::collections::HashSet<Room>,
    order: Vec<Room>,
}

impl RoomSet {
    fn insert(&mut self, room: Room) {
        if self.seen.insert(room.clone()) {
            self.order.push(room);
        }
    }
    fn len(&self) -> usize {
        self.order.len()
    }
    fn into_ordered(self) -> Box<[Room]> {
        self.order.into_boxed_slice()
    }
}

/// Header that marks a notification record in the stream (contract v2 section 2).
pub const RECORD_HEADER: &str = "x-notify-bridge-record";
/// What resolving one room adds to a record at most (`"customer:"`, quotes and a comma).
const RECORD_BYTES_PER_ROOM: usize = 16;
/// The record's own fields beyond the message's.
const RECORD_OVERHEAD_BYTES: usize = 1024;
/// A category's default rooms, which `MAX_RECIPIENTS` does not count (contract section 2).
const MAX_DEFAULT_ROOMS: usize = 2;

/// A stream record as written (contract v2 section 2): the envelope, normalized.
#[derive(Serialize)]
struct RecordOut<'a> {
    rooms: Vec<&'a str>,
    broadcast: bool,
    category: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    data: Option<&'a RawValue>,
    #[serde(rename = "messageId")]
    message_id: Option<&'a str>,
    timestamp: &'a str,
}

#[derive(Deserialize)]
struct RecordIn {
    rooms: Vec<String>,
    #[serde(default)]
    broadcast: bool,
    category: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(rename = "messageId", default)]
    message_id: Option<String>,
    timestamp: String,
}

impl Envelope {
    /// The stream record's JSON body.
    pub fn to_record(&self) -> Vec<u8> {
        let record = RecordOut {
            rooms: self.rooms.iter().map(Room::as_str).collect(),
            broadcast: self.broadcast,
            category: &self.category,
            kind: &self.kind,
            data: self.data.as_deref(),
            message_id: self.message_id.as_deref(),
            timestamp: &self.timestamp,
        };
        // Strings, booleans and already-valid raw JSON always serialize.
        serde_json::to_vec(&record).expect("record serializes")
    }

    /// Reads a record from the shared log and judges it as a message is judged (contract v3
    /// section 2): any writer can reach the log, so a record that a producer could not have
    /// sent (too large, too many rooms) is refused whoever wrote it. A record is a little
    /// larger than its message (rooms resolved to full names), which the size bound allows for.
    pub fn from_record_judged(body: &[u8], limits: &Limits) -> Result<Envelope, Rejection> {
        let max_body = limits
            .max_bytes
            .saturating_add(limits.max_rooms.saturating_mul(RECORD_BYTES_PER_ROOM))
            .saturating_add(RECORD_OVERHEAD_BYTES);
        if body.len() > max_body {
            return Err(Rejection::TooLarge);
        }
        let envelope = Self::from_record(body)?;
        if envelope.rooms.len() > limits.max_rooms + MAX_DEFAULT_ROOMS {
            return Err(Rejection::TooManyRooms);
        }
        Ok(envelope)
    }

    /// Reads a stream record back. The stream is written by the daemon, but other writers can
    /// reach it too, so a record is validated again (rooms, timestamp) before it is trusted.
    pub fn from_record(body: &[u8]) -> Result<Envelope, Rejection> {
        let record: RecordIn = serde_json::from_slice(body).map_err(|_| Rejection::InvalidField)?;
        let mut rooms = RoomSet::default();
        for name in &record.rooms {
            rooms.insert(Room::parse(name).map_err(|_| Rejection::InvalidRoom)?);
        }
        if record.kind.is_empty() || !is_token(&record.category, MAX_CATEGORY_LEN) {
            return Err(Rejection::InvalidField);
        }
        let produced_at = OffsetDateTime::parse(&record.timestamp, &Rfc3339)
            .map_err(|_| Rejection::InvalidField)?;
        Ok(Envelope {
            category: record.category.into(),
            kind: record.kind.into(),
            data: record.data.filter(|d| d.get() != "null"),
            rooms: rooms.into_ordered(),
            broadcast: record.broadcast,
            message_id: record
                .message_id
                .filter(|id| !id.is_empty())
                .map(Into::into),
            timestamp: record.timestamp.into(),
            produced_at,
            tail: Default::default(),
        })
    }

    /// The fields of the client's payload (contract section 3) after `id` and `room`, as JSON
    /// text ending in `}`: serialized once per notification, whatever its rooms and readers.
    pub fn payload_tail(&self) -> &str {
        self.tail.get_or_init(|| {
            #[derive(Serialize)]
            struct Tail<'a> {
                category: &'a str,
                #[serde(rename = "type")]
                kind: &'a str,
                data: Option<&'a RawValue>,
                #[serde(rename = "messageId")]
                message_id: Option<&'a str>,
                timestamp: &'a str,
            }
            let tail = Tail {
                category: &self.category,
                kind: &self.kind,
                data: self.data.as_deref(),
                message_id: self.message_id.as_deref(),
                timestamp: &self.timestamp,
            };
            // Strings and already-valid raw JSON always serialize.
            let json = serde_json::to_string(&tail).expect("payload serializes");
            json[1..].into()
        })
    }

    /// What holding this notification costs, for `HISTORY_MAX_BYTES`: its text and its
    /// serialized payload once, plus a room name per target room.
    pub fn held_bytes(&self) -> usize {
        const OVERHEAD: usize = 256;
        let text = self.category.len()
            + self.kind.len()
            + self.data.as_ref().map_or(0, |d| d.get().len())
            + self.message_id.as_ref().map_or(0, |id| id.len())
            + self.timestamp.len();
        OVERHEAD
            + 2 * text
            + self
                .rooms
                .iter()
                .map(|r| r.as_str().len() + 16)
                .sum::<usize>()
    }
}

/// RFC 3339 in UTC with a `Z` and at most millisecond precision, as JavaScript's `Date` writes it.
pub fn format_rfc3339(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    let at = at
        .replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .unwrap_or(at);
    // Formatting a UTC instant with a four-digit year cannot fail.
    at.format(&Rfc3339).unwrap_or_default()
}

fn opt_string(v: Option<&RawValue>) -> Result<Option<String>, Rejection> {
    match v {
        None => Ok(None),
        Some(v) => {
            serde_json::from_str::<Option<String>>(v.get()).map_err(|_| Rejection::InvalidField)
        }
    }
}

fn opt_array(v: Option<&RawValue>) -> Result<Vec<serde_json::Value>, Rejection> {
    match v {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_str::<Option<Vec<serde_json::Value>>>(v.get())
            .map(Option::unwrap_or_default)
            .map_err(|_| Rejection::InvalidField),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(routing_key: &str) -> Source<'_> {
        Source {
            category: CategoryFrom::RoutingKey(routing_key),
            message_id: None,
            timestamp: None,
        }
    }

    const LIMITS: Limits = Limits {
        max_bytes: 131_072,
        max_rooms: 1000,
    };

    fn parse_amqp(body: &str, key: &str) -> Result<Envelope, Rejection> {
        parse(body.as_bytes(), amqp(key), &LIMITS)
    }

    fn limits(max_bytes: usize) -> Limits {
        Limits {
            max_bytes,
            ..LIMITS
        }
    }

    fn names(envelope: &Envelope) -> Vec<&str> {
        envelope.rooms.iter().map(Room::as_str).collect()
    }

    #[test]
    fn routes_recipients_rooms_and_category_defaults() {
        let envelope = parse_amqp(
            r#"{"type":"charging.started","data":{"kwh":0},"recipients":[123,"456"],"rooms":["cms:stations"]}"#,
            "notification.session",
        )
        .unwrap();
        assert_eq!(&*envelope.category, "session");
        assert_eq!(&*envelope.kind, "charging.started");
        assert_eq!(envelope.data.as_ref().unwrap().get(), r#"{"kwh":0}"#);
        assert_eq!(
            names(&envelope),
            [
                "customer:123",
                "customer:456",
                "cms:stations",
                "cms:dashboard",
                "cms:sessions"
            ]
        );
        assert!(!envelope.broadcast);
        assert_eq!(envelope.message_id, None);
    }

    #[test]
    fn duplicate_rooms_are_emitted_once() {
        let envelope = parse_amqp(
            r#"{"type":"t","recipients":[1,"1"],"rooms":["cms:dashboard"]}"#,
            "notification.x",
        )
        .unwrap();
        assert_eq!(names(&envelope), ["customer:1", "cms:dashboard"]);
    }

    #[test]
    fn each_rejection_reason() {
        let cases = [
            ("{not json", Rejection::NotJson),
            ("", Rejection::NotJson),
            ("[1,2]", Rejection::NotObject),
            ("\"text\"", Rejection::NotObject),
            ("{}", Rejection::MissingType),
            (r#"{"type":null}"#, Rejection::MissingType),
            (r#"{"type":""}"#, Rejection::MissingType),
            (r#"{"type":5}"#, Rejection::InvalidField),
            (
                r#"{"type":"t","recipients":"123"}"#,
                Rejection::InvalidField,
            ),
            (
                r#"{"type":"t","recipients":[true]}"#,
                Rejection::InvalidField,
            ),
            (
                r#"{"type":"t","recipients":["a b"]}"#,
                Rejection::InvalidRoom,
            ),
            (r#"{"type":"t","recipients":[1.5]}"#, Rejection::InvalidRoom),
            (r#"{"type":"t","rooms":["lobby"]}"#, Rejection::InvalidRoom),
            (r#"{"type":"t","rooms":[1]}"#, Rejection::InvalidField),
            (r#"{"type":"t","broadcast":"yes"}"#, Rejection::InvalidField),
            (r#"{"type":"t","messageId":7}"#, Rejection::InvalidField),
            (
                r#"{"type":"t","timestamp":"yesterday"}"#,
                Rejection::InvalidField,
            ),
            (r#"{"type":"t","type":"u"}"#, Rejection::InvalidField),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_amqp(body, "notification.session").unwrap_err(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn more_rooms_than_max_recipients_is_too_many_rooms() {
        let few = Limits {
            max_rooms: 3,
            ..LIMITS
        };
        let body = |n: usize| {
            let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            format!(r#"{{"type":"t","recipients":[{}]}}"#, ids.join(","))
        };
        let at_limit = parse(body(3).as_bytes(), amqp("notification.station"), &few).unwrap();
        // The category's own rooms do not count against the limit.
        assert_eq!(at_limit.rooms.len(), 3 + 2);
        assert_eq!(
            parse(body(4).as_bytes(), amqp("notification.station"), &few).unwrap_err(),
            Rejection::TooManyRooms
        );
        // Duplicates count once: the limit is on distinct rooms.
        let repeated = r#"{"type":"t","recipients":[1,1,1,1,1],"rooms":["customer:1"]}"#;
        assert!(parse(repeated.as_bytes(), amqp("notification.x"), &few).is_ok());
        assert_eq!(
            parse(
                r#"{"type":"t","recipients":[1,2],"rooms":["cms:a","cms:b"]}"#.as_bytes(),
                amqp("notification.x"),
                &few
            )
            .unwrap_err(),
            Rejection::TooManyRooms
        );
    }

    #[test]
    fn the_fan_out_attack_is_refused_in_linear_time() {
        // 10,900 recipients: refused from the array's length alone, before a room is built.
        let ids: Vec<String> = (0..10_900).map(|i| format!("\"c{i}\"")).collect();
        let body = format!(r#"{{"type":"t","recipients":[{}]}}"#, ids.join(","));
        let started = std::time::Instant::now();
        assert_eq!(
            parse(body.as_bytes(), amqp("notification.session"), &LIMITS).unwrap_err(),
            Rejection::TooManyRooms
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_routing_key_category_obeys_the_category_grammar_and_type_is_capped() {
        for key in [
            "notification.",
            "notification.a b",
            "notification.é",
            "notification.x/y",
        ] {
            assert_eq!(
                parse_amqp(r#"{"type":"t"}"#, key).unwrap_err(),
                Rejection::InvalidField,
                "{key:?}"
            );
        }
        let long = format!("notification.{}", "c".repeat(65));
        assert_eq!(
            parse_amqp(r#"{"type":"t"}"#, &long).unwrap_err(),
            Rejection::InvalidField
        );
        assert!(
            parse_amqp(r#"{"type":"t"}"#, "station").is_ok(),
            "a key without dots is its own category"
        );
        let long_type = format!(r#"{{"type":"{}"}}"#, "t".repeat(MAX_TYPE_LEN + 1));
        assert_eq!(
            parse_amqp(&long_type, "notification.x").unwrap_err(),
            Rejection::InvalidField
        );
        let max_type = format!(r#"{{"type":"{}"}}"#, "t".repeat(MAX_TYPE_LEN));
        assert!(parse_amqp(&max_type, "notification.x").is_ok());
    }

    #[test]
    fn a_record_reads_back_as_the_envelope_it_was_written_from() {
        let original = parse_amqp(
            r#"{"type":"charging.started","data":{"kwh":1.5},"recipients":[7],"messageId":"m-1","timestamp":"2026-11-22T10:00:00Z","broadcast":true}"#,
            "notification.session",
        )
        .unwrap();
        let back = Envelope::from_record(&original.to_record()).unwrap();
        assert_eq!(names(&back), names(&original));
        assert_eq!(
            (&*back.category, &*back.kind, back.broadcast),
            ("session", "charging.started", true)
        );
        assert_eq!(back.data.unwrap().get(), r#"{"kwh":1.5}"#);
        assert_eq!(back.message_id.as_deref(), Some("m-1"));
        assert_eq!(&*back.timestamp, "2026-11-22T10:00:00Z");

        let record: serde_json::Value = serde_json::from_slice(&original.to_record()).unwrap();
        assert_eq!(
            record,
            serde_json::json!({
                "rooms": ["customer:7", "cms:dashboard", "cms:sessions"],
                "broadcast": true, "category": "session", "type": "charging.started",
                "data": {"kwh": 1.5}, "messageId": "m-1", "timestamp": "2026-11-22T10:00:00Z"
            })
        );
        for bad in [
            r#"{"rooms":["lobby"],"category":"x","type":"t","timestamp":"2026-11-22T10:00:00Z"}"#,
            r#"{"rooms":[],"category":"x","type":"t","timestamp":"yesterday"}"#,
            r#"{"rooms":[],"category":"x y","type":"t","timestamp":"2026-11-22T10:00:00Z"}"#,
            r#"{"marker":"abc"}"#,
        ] {
            assert!(Envelope::from_record(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn too_large_is_checked_before_parsing() {
        let body = format!(r#"{{"type":"t","data":"{}"}}"#, "x".repeat(200));
        assert_eq!(
            parse(body.as_bytes(), amqp("notification.a"), &limits(100)).unwrap_err(),
            Rejection::TooLarge
        );
        assert!(parse(body.as_bytes(), amqp("notification.a"), &limits(body.len())).is_ok());
    }

    #[test]
    fn body_message_id_and_timestamp_win_over_properties() {
        let source = Source {
            category: CategoryFrom::RoutingKey("notification.station"),
            message_id: Some("prop-id"),
            timestamp: Some(1_700_000_000),
        };
        let envelope = parse(
            br#"{"type":"t","messageId":"body-id","timestamp":"2026-11-22T10:00:00Z"}"#,
            source,
            &limits(1024),
        )
        .unwrap();
        assert_eq!(envelope.message_id.as_deref(), Some("body-id"));
        assert_eq!(&*envelope.timestamp, "2026-11-22T10:00:00Z");

        let envelope = parse(br#"{"type":"t"}"#, source, &limits(1024)).unwrap();
        assert_eq!(envelope.message_id.as_deref(), Some("prop-id"));
        assert_eq!(&*envelope.timestamp, "2023-11-14T22:13:20Z");
    }

    #[test]
    fn null_data_and_missing_fields_become_none() {
        let envelope = parse_amqp(
            r#"{"type":"t","data":null,"broadcast":null}"#,
            "notification.customer",
        )
        .unwrap();
        assert!(envelope.data.is_none());
        assert!(!envelope.broadcast);
        assert_eq!(names(&envelope), ["cms:dashboard"]);
        assert!(OffsetDateTime::parse(&envelope.timestamp, &Rfc3339).is_ok());
    }

    #[test]
    fn http_ingest_takes_the_category_from_the_body() {
        let body = br#"{"type":"t","category":"charger"}"#;
        let envelope = parse(
            body,
            Source {
                category: CategoryFrom::Body,
                message_id: None,
                timestamp: None,
            },
            &limits(1024),
        )
        .unwrap();
        assert_eq!(&*envelope.category, "charger");
        for bad in [
            r#"{"type":"t"}"#,
            r#"{"type":"t","category":"a.b"}"#,
            r#"{"type":"t","category":3}"#,
        ] {
            let got = parse(
                bad.as_bytes(),
                Source {
                    category: CategoryFrom::Body,
                    message_id: None,
                    timestamp: None,
                },
                &limits(1024),
            );
            assert_eq!(got.unwrap_err(), Rejection::InvalidField, "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    //! The parser sees producers' bytes: whatever they are, it answers without panicking.
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "[a-z:0-9 _.-]{0,70}".prop_map(serde_json::Value::from),
            prop_oneof!["customer:[A-Za-z0-9_-]{1,64}", "cms:[a-z0-9_-]{1,32}"]
                .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("data".to_string()),
                        Just("recipients".to_string()),
                        Just("rooms".to_string()),
                        Just("broadcast".to_string()),
                        Just("messageId".to_string()),
                        Just("timestamp".to_string()),
                        Just("category".to_string()),
                        "[a-z]{1,8}",
                    ],
                    inner,
                    0..8,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        for category in [
            CategoryFrom::RoutingKey("notification.session"),
            CategoryFrom::Body,
        ] {
            let source = Source {
                category,
                message_id: Some("m"),
                timestamp: Some(u64::MAX),
            };
            if let Ok(envelope) = parse(
                body,
                source,
                &Limits {
                    max_bytes: 4096,
                    max_rooms: 1000,
                },
            ) {
                // Whatever is accepted is routed to valid rooms and carries a type.
                prop_assert!(!envelope.kind.is_empty());
                prop_assert!(!envelope.rooms.is_empty());
                for room in &envelope.rooms {
                    prop_assert_eq!(Room::parse(room.as_str()), Ok(room.clone()));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&body)?;
        }

        #[test]
        fn arbitrary_json_never_panics(value in json_value()) {
            check(value.to_string().as_bytes())?;
        }

        #[test]
        fn room_names_parse_to_themselves_or_fail(name in "(customer:|cms:|)[ -~]{0,70}") {
            if let Ok(room) = Room::parse(&name) {
                prop_assert_eq!(room.as_str(), name.as_str());
            }
        }
    }
}
