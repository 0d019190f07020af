//! Parsing a message body into a routed [`Envelope`] (contract section 2), with no I/O.
//!
//! The same parser serves AMQP deliveries (category from the routing key) and
//! `POST /api/notifications` (category from the body), so both reject the same inputs with the
//! same reasons. `data` is kept as raw JSON: it is copied into each emitted payload verbatim,
//! never parsed into a tree.

use serde::Deserialize;
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

/// A notification ready for delivery: validated and routed.
#[derive(Debug)]
pub struct Envelope {
    pub category: Box<str>,
    /// The body's `type`.
    pub kind: Box<str>,
    pub data: Option<Box<RawValue>>,
    /// Target rooms, without duplicates: recipients, explicit rooms, then the category's defaults.
    pub rooms: Vec<Room>,
    pub broadcast: bool,
    pub message_id: Option<Box<str>>,
    /// RFC 3339, as the producer wrote it or as formatted from the AMQP property / receipt time.
    pub timestamp: Box<str>,
    /// The same instant, for the delivery-lag metric.
    pub produced_at: OffsetDateTime,
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

pub fn parse(body: &[u8], source: Source<'_>, max_bytes: usize) -> Result<Envelope, Rejection> {
    if body.len() > max_bytes {
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
        Some(kind) => kind,
    };

    let category: Box<str> = match source.category {
        CategoryFrom::RoutingKey(key) => key.rsplit('.').next().unwrap_or(key).into(),
        CategoryFrom::Body => match opt_string(raw.category)? {
            Some(c) if is_token(&c, 64) => c.into(),
            _ => return Err(Rejection::InvalidField),
        },
    };

    let mut rooms: Vec<Room> = Vec::new();
    let mut push = |room: Room| {
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    };
    for recipient in opt_array(raw.recipients)? {
        let id = match recipient {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            // A fractional id can only make an invalid room name.
            serde_json::Value::Number(_) => return Err(Rejection::InvalidRoom),
            _ => return Err(Rejection::InvalidField),
        };
        push(Room::customer(&id).map_err(|_| Rejection::InvalidRoom)?);
    }
    for room in opt_array(raw.rooms)? {
        let serde_json::Value::String(name) = room else {
            return Err(Rejection::InvalidField);
        };
        push(Room::parse(&name).map_err(|_| Rejection::InvalidRoom)?);
    }
    for name in default_rooms(&category) {
        // The default table only holds valid names.
        push(Room::parse(name).expect("default rooms are valid"));
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
        rooms,
        broadcast,
        message_id,
        timestamp,
        produced_at,
    })
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

    fn parse_amqp(body: &str, key: &str) -> Result<Envelope, Rejection> {
        parse(body.as_bytes(), amqp(key), 131_072)
    }

    fn names(env: &Envelope) -> Vec<&str> {
        env.rooms.iter().map(Room::as_str).collect()
    }

    #[test]
    fn routes_recipients_rooms_and_category_defaults() {
        let env = parse_amqp(
            r#"{"type":"charging.started","data":{"kwh":0},"recipients":[123,"456"],"rooms":["cms:stations"]}"#,
            "notification.session",
        )
        .unwrap();
        assert_eq!(&*env.category, "session");
        assert_eq!(&*env.kind, "charging.started");
        assert_eq!(env.data.as_ref().unwrap().get(), r#"{"kwh":0}"#);
        assert_eq!(
            names(&env),
            [
                "customer:123",
                "customer:456",
                "cms:stations",
                "cms:dashboard",
                "cms:sessions"
            ]
        );
        assert!(!env.broadcast);
        assert_eq!(env.message_id, None);
    }

    #[test]
    fn duplicate_rooms_are_emitted_once() {
        let env = parse_amqp(
            r#"{"type":"t","recipients":[1,"1"],"rooms":["cms:dashboard"]}"#,
            "notification.x",
        )
        .unwrap();
        assert_eq!(names(&env), ["customer:1", "cms:dashboard"]);
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
    fn too_large_is_checked_before_parsing() {
        let body = format!(r#"{{"type":"t","data":"{}"}}"#, "x".repeat(200));
        assert_eq!(
            parse(body.as_bytes(), amqp("notification.a"), 100).unwrap_err(),
            Rejection::TooLarge
        );
        assert!(parse(body.as_bytes(), amqp("notification.a"), body.len()).is_ok());
    }

    #[test]
    fn body_message_id_and_timestamp_win_over_properties() {
        let source = Source {
            category: CategoryFrom::RoutingKey("notification.station"),
            message_id: Some("prop-id"),
            timestamp: Some(1_700_000_000),
        };
        let env = parse(
            br#"{"type":"t","messageId":"body-id","timestamp":"2026-11-22T10:00:00Z"}"#,
            source,
            1024,
        )
        .unwrap();
        assert_eq!(env.message_id.as_deref(), Some("body-id"));
        assert_eq!(&*env.timestamp, "2026-11-22T10:00:00Z");

        let env = parse(br#"{"type":"t"}"#, source, 1024).unwrap();
        assert_eq!(env.message_id.as_deref(), Some("prop-id"));
        assert_eq!(&*env.timestamp, "2023-11-14T22:13:20Z");
    }

    #[test]
    fn null_data_and_missing_fields_become_none() {
        let env = parse_amqp(
            r#"{"type":"t","data":null,"broadcast":null}"#,
            "notification.customer",
        )
        .unwrap();
        assert!(env.data.is_none());
        assert!(!env.broadcast);
        assert_eq!(names(&env), ["cms:dashboard"]);
        assert!(OffsetDateTime::parse(&env.timestamp, &Rfc3339).is_ok());
    }

    #[test]
    fn http_ingest_takes_the_category_from_the_body() {
        let body = br#"{"type":"t","category":"charger"}"#;
        let env = parse(
            body,
            Source {
                category: CategoryFrom::Body,
                message_id: None,
                timestamp: None,
            },
            1024,
        )
        .unwrap();
        assert_eq!(&*env.category, "charger");
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
                1024,
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
            if let Ok(env) = parse(body, source, 4096) {
                // Whatever is accepted is routed to valid rooms and carries a type.
                prop_assert!(!env.kind.is_empty());
                prop_assert!(!env.rooms.is_empty());
                for room in &env.rooms {
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
