//! The JSON Schemas in `schemas/` agree with the daemon's own parser.
//!
//! Generated bodies, most of them one near miss away from valid (a wrong type, a bad room, an
//! empty `type`, an impossible timestamp, duplicated recipients...), go both to
//! [`notify_bridge::envelope::parse`] and to the schema, and both must give the same verdict. What
//! the parser accepts must then be describable by the stream-record and notification schemas.
//!
//! The generator stays inside what both can judge: bodies far below MAX_MESSAGE_BYTES and
//! MAX_RECIPIENTS, no duplicated keys, numeric recipients written as integers, and non-ASCII
//! strings far below the length limits (the schemas' descriptions name those rules).

use std::sync::LazyLock;

use jsonschema::{Registry, Validator};
use notify_bridge::envelope::{self, CategoryFrom, Envelope, Source};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const BASE: &str = "https://notify-bridge.example/schemas/";
const SCHEMAS: [&str; 4] = [
    "notification-body.schema.json",
    "ingest-body.schema.json",
    "stream-record.schema.json",
    "notification.schema.json",
];
const MAX_BYTES: usize = 131_072;

struct Schemas {
    body: Validator,
    ingest: Validator,
    record: Validator,
    notification: Validator,
}

static SCHEMAS_: LazyLock<Schemas> = LazyLock::new(|| {
    let load = |name: &str| -> Value {
        let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect(&path)
    };
    let mut builder = Registry::new();
    for name in SCHEMAS {
        builder = builder
            .add(format!("{BASE}{name}"), load(name))
            .expect("a valid schema resource");
    }
    // Leaked once per test binary: validators borrow the registry for their whole life.
    let registry: &'static Registry<'static> =
        Box::leak(Box::new(builder.prepare().expect("the schemas resolve")));
    let build = |name: &str| {
        jsonschema::options()
            .with_registry(registry)
            // Draft 2020-12 treats `format` as an annotation; the daemon asserts it.
            .should_validate_formats(true)
            .build(&load(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    Schemas {
        body: build(SCHEMAS[0]),
        ingest: build(SCHEMAS[1]),
        record: build(SCHEMAS[2]),
        notification: build(SCHEMAS[3]),
    }
});

const LIMITS: envelope::Limits = envelope::Limits {
    max_bytes: MAX_BYTES,
    max_rooms: 1000,
};

fn amqp(body: &Value) -> Result<Envelope, envelope::Rejection> {
    let source = Source {
        category: CategoryFrom::RoutingKey("notification.session"),
        message_id: None,
        timestamp: None,
    };
    envelope::parse(body.to_string().as_bytes(), source, &LIMITS)
}

fn ingest(body: &Value) -> Result<Envelope, envelope::Rejection> {
    let source = Source {
        category: CategoryFrom::Body,
        message_id: None,
        timestamp: None,
    };
    envelope::parse(body.to_string().as_bytes(), source, &LIMITS)
}

/// The stream record and the notification payloads of an accepted envelope (contract 2, 3).
fn outputs(env: &Envelope) -> (Value, Vec<Value>) {
    let data = env
        .data
        .as_ref()
        .map(|d| serde_json::from_str(d.get()).unwrap())
        .unwrap_or(Value::Null);
    let rooms: Vec<&str> = env.rooms.iter().map(|r| r.as_str()).collect();
    // The record exactly as the daemon appends it to the stream.
    let record: Value = serde_json::from_slice(&env.to_record()).unwrap();
    let mut notifications: Vec<Value> = rooms
        .iter()
        .map(|room| {
            json!({
                "id": "k3x9-42",
                "room": room,
                "category": &*env.category,
                "type": &*env.kind,
                "data": data,
                "messageId": env.message_id.as_deref(),
                "timestamp": &*env.timestamp,
            })
        })
        .collect();
    if env.broadcast {
        let mut copy = notifications[0].clone();
        copy["room"] = Value::Null;
        notifications.push(copy);
    }
    (record, notifications)
}

// ---- generators -------------------------------------------------------------------------

/// Any JSON value (for `data`, unknown fields and wrong-typed fields).
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value that is not a string (nor null, which most fields take as "absent").
fn not_string() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!([])),
        Just(json!(["x"])),
        Just(json!({})),
    ]
}

/// A field: absent (`None`), valid, or a near miss; weights favour documents close to valid.
fn field(
    valid: impl Strategy<Value = Value> + 'static,
    invalid: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        3 => Just(None),
        6 => valid.prop_map(Some),
        1 => invalid.prop_map(Some),
    ]
    .boxed()
}

fn kind() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        12 => prop_oneof![
            "[a-z]{1,10}(\\.[a-z]{1,10}){0,2}",
            "[ -~]{1,256}",
            // Non-ASCII well below the cap, which counts characters.
            "\\PC{1,40}",
        ]
        .prop_map(|s| Some(Value::from(s))),
        2 => prop_oneof![Just(Value::Null), Just(json!("")), not_string()].prop_map(Some),
    ]
    .boxed()
}

fn customer_id() -> BoxedStrategy<Value> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,64}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Duplicates are accepted (and emitted once).
        Just(json!(7)),
        Just(json!("7")),
    ]
    .boxed()
}

fn bad_customer_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("")),
        Just(json!("a b")),
        Just(json!("customer:1")),
        Just(json!("ü")),
        "[A-Za-z0-9_-]{65,70}".prop_map(Value::from),
        Just(json!(1.5)),
        Just(json!(-0.25)),
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        Just(json!([1])),
        Just(json!({ "id": 1 })),
    ]
}

fn room() -> BoxedStrategy<Value> {
    prop_oneof![
        "customer:[A-Za-z0-9_-]{1,64}".prop_map(Value::from),
        "cms:[a-z0-9_-]{1,32}".prop_map(Value::from),
        Just(json!("cms:dashboard")),
    ]
    .boxed()
}

fn bad_room() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("lobby")),
        Just(json!("cms:")),
        Just(json!("customer:")),
        Just(json!("cms:Stations")),
        Just(json!("cms:a.b")),
        Just(json!("CMS:stations")),
        Just(json!(" cms:stations")),
        "cms:[a-z0-9_-]{33,36}".prop_map(Value::from),
        "customer:[A-Za-z0-9_-]{65,68}".prop_map(Value::from),
        Just(json!(1)),
        Just(Value::Null),
    ]
}

/// A list: valid items, or valid items with one near miss at a random place.
fn list<S: Strategy<Value = Value> + Clone + 'static>(
    good: S,
    bad: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Option<Value>> {
    let valid = prop_oneof![
        1 => Just(Value::Null),
        8 => prop::collection::vec(good.clone(), 0..6).prop_map(Value::from),
    ];
    let invalid = prop_oneof![
        3 => (prop::collection::vec(good, 0..4), bad, any::<prop::sample::Index>()).prop_map(
            |(mut items, bad, at)| {
                let at = at.index(items.len() + 1);
                items.insert(at, bad);
                Value::from(items)
            }
        ),
        1 => prop_oneof![Just(json!("7")), Just(json!(7)), Just(json!({})), Just(json!(true))],
    ];
    field(valid, invalid)
}

fn days_in(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `(year, month, day, hour, minute, second, fraction, offset)` of a real instant.
fn timestamp_parts() -> impl Strategy<Value = (u32, u32, u32, u32, u32, u32, String, String)> {
    (
        1900u32..2200,
        1u32..=12,
        any::<prop::sample::Index>(),
        0u32..24,
        0u32..60,
        0u32..60,
        prop_oneof![Just(String::new()), "\\.[0-9]{1,9}"],
        prop_oneof![
            Just("Z".to_string()),
            (prop::bool::ANY, 0u32..24, 0u32..60)
                .prop_map(|(plus, h, m)| format!("{}{h:02}:{m:02}", if plus { '+' } else { '-' })),
        ],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            let d = d.index(days_in(y, mo) as usize) as u32 + 1;
            (y, mo, d, h, mi, s, frac, off)
        })
}

fn timestamp() -> impl Strategy<Value = Value> {
    timestamp_parts().prop_map(|(y, mo, d, h, mi, s, frac, off)| {
        Value::from(format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}"
        ))
    })
}

fn bad_timestamp() -> impl Strategy<Value = Value> {
    let near_miss =
        (timestamp_parts(), 0..9usize).prop_map(|((y, mo, d, h, mi, s, frac, off), how)| {
            let text = match how {
                0 => format!("{y:04}-13-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}"),
                1 => format!(
                    "{y:04}-{mo:02}-{:02}T{h:02}:{mi:02}:{s:02}{frac}{off}",
                    days_in(y, mo) + 1
                ),
                2 => format!("{y:04}-{mo:02}-{d:02}T24:{mi:02}:{s:02}{frac}{off}"),
                3 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:60:{s:02}{frac}{off}"),
                4 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}"),
                5 => format!("{y:04}-{mo:02}-{d:02}"),
                6 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}{off}"),
                7 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{off}"),
                _ => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+0100"),
            };
            Value::from(text)
        });
    prop_oneof![
        6 => near_miss,
        1 => Just(json!("yesterday")),
        1 => Just(json!("")),
        1 => Just(json!(1_764_000_000)),
        1 => not_string(),
    ]
}

fn message_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}".prop_map(Value::from),
        "[ -~]{1,256}".prop_map(Value::from),
        "\\PC{1,60}".prop_map(Value::from),
    ]
}

fn bad_message_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("")),
        "[ -~]{257,270}".prop_map(Value::from),
        not_string(),
    ]
}

fn category() -> impl Strategy<Value = Value> {
    "[A-Za-z0-9_-]{1,64}".prop_map(Value::from)
}

fn bad_category() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("")),
        Just(json!("a.b")),
        Just(json!("ünï")),
        Just(json!("station ")),
        "[A-Za-z0-9_-]{65,70}".prop_map(Value::from),
        Just(Value::Null),
        not_string(),
    ]
}

/// A body; `ingest` also gives it a (possibly bad or missing) `category`.
fn body(ingest: bool) -> impl Strategy<Value = Value> {
    let category = if ingest {
        prop_oneof![
            1 => Just(None),
            12 => category().prop_map(Some),
            2 => bad_category().prop_map(Some),
        ]
        .boxed()
    } else {
        // The AMQP parser ignores a `category` in the body: anything goes.
        prop::option::of(any_json()).boxed()
    };
    (
        kind(),
        prop::option::of(any_json()),
        list(customer_id(), bad_customer_id()),
        list(room(), bad_room()),
        field(
            prop_oneof![any::<bool>().prop_map(Value::from), Just(Value::Null)],
            prop_oneof![
                Just(json!("yes")),
                Just(json!(1)),
                Just(json!(0)),
                Just(json!([]))
            ],
        ),
        field(message_id(), bad_message_id()),
        field(
            prop_oneof![1 => Just(Value::Null), 5 => timestamp()],
            bad_timestamp(),
        ),
        category,
        prop::collection::btree_map("x-[a-z]{1,6}", any_json(), 0..3),
    )
        .prop_map(
            |(kind, data, recipients, rooms, broadcast, id, at, category, extra)| {
                let mut object: Map<String, Value> = extra.into_iter().collect();
                let known = [
                    ("type", kind),
                    ("data", data),
                    ("recipients", recipients),
                    ("rooms", rooms),
                    ("broadcast", broadcast),
                    ("messageId", id),
                    ("timestamp", at),
                    ("category", category),
                ];
                for (key, value) in known {
                    if let Some(value) = value {
                        object.insert(key.to_string(), value);
                    }
                }
                Value::Object(object)
            },
        )
}

fn check_outputs(env: &Envelope) -> Result<(), TestCaseError> {
    let (record, notifications) = outputs(env);
    prop_assert!(
        SCHEMAS_.record.is_valid(&record),
        "stream record {record} fails its schema: {:?}",
        SCHEMAS_.record.validate(&record).err()
    );
    for n in notifications {
        prop_assert!(
            SCHEMAS_.notification.is_valid(&n),
            "notification {n} fails its schema: {:?}",
            SCHEMAS_.notification.validate(&n).err()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn amqp_body_schema_and_parser_agree(doc in body(false)) {
        let parsed = amqp(&doc);
        let schema = SCHEMAS_.body.validate(&doc).err().map(|e| e.to_string());
        prop_assert_eq!(
            parsed.is_ok(),
            schema.is_none(),
            "{} -> parser {:?}, schema {:?}", doc, parsed.as_ref().err(), schema
        );
        if let Ok(env) = &parsed {
            check_outputs(env)?;
        }
    }

    #[test]
    fn ingest_body_schema_and_parser_agree(doc in body(true)) {
        let parsed = ingest(&doc);
        let schema = SCHEMAS_.ingest.validate(&doc).err().map(|e| e.to_string());
        prop_assert_eq!(
            parsed.is_ok(),
            schema.is_none(),
            "{} -> parser {:?}, schema {:?}", doc, parsed.as_ref().err(), schema
        );
        if let Ok(env) = &parsed {
            check_outputs(env)?;
        }
    }

    #[test]
    fn documents_that_are_not_objects_fail_both(doc in any_json().prop_filter("not an object", |v| !v.is_object())) {
        prop_assert!(amqp(&doc).is_err());
        prop_assert!(!SCHEMAS_.body.is_valid(&doc));
        prop_assert!(!SCHEMAS_.ingest.is_valid(&doc));
    }
}

/// The generator is only worth its cases if both verdicts are common; the contract's own
/// examples are judged the same way by both.
#[test]
fn contract_examples_and_classic_near_misses() {
    let example = json!({
        "type": "charging.started",
        "data": { "sessionId": "s-1", "customerId": 123, "kwh": 0 },
        "recipients": [123, "456"],
        "rooms": ["cms:stations"],
        "broadcast": false,
        "messageId": "7f6c",
        "timestamp": "2026-11-22T10:00:00Z"
    });
    assert!(amqp(&example).is_ok());
    assert!(SCHEMAS_.body.is_valid(&example));
    let mut posted = example.clone();
    posted["category"] = json!("session");
    assert!(ingest(&posted).is_ok());
    assert!(SCHEMAS_.ingest.is_valid(&posted));
    assert!(
        !SCHEMAS_.ingest.is_valid(&example),
        "ingest needs a category"
    );

    for (field, bad) in [
        ("type", json!("")),
        ("type", Value::Null),
        ("recipients", json!(["a b"])),
        ("recipients", json!([1.5])),
        ("rooms", json!(["lobby"])),
        ("broadcast", json!("yes")),
        ("messageId", json!("")),
        ("timestamp", json!("2026-02-30T10:00:00Z")),
        ("timestamp", json!("2026-11-22T10:00:00")),
    ] {
        let mut doc = example.clone();
        doc[field] = bad;
        assert!(amqp(&doc).is_err(), "parser accepted {doc}");
        assert!(!SCHEMAS_.body.is_valid(&doc), "schema accepted {doc}");
    }

    let (accepted, total) = (0..2000u32).fold((0, 0), |(ok, n), seed| {
        let doc = sample(seed);
        (ok + usize::from(amqp(&doc).is_ok()), n + 1)
    });
    assert!(
        (total / 5..total * 4 / 5).contains(&accepted),
        "{accepted} of {total} generated bodies accepted: the generator is lopsided"
    );
}

fn sample(seed: u32) -> Value {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    body(false).new_tree(&mut runner).unwrap().current()
}
