//! Notifications published to RabbitMQ reach exactly the right rooms (contract sections 2, 3).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::{Settings, SioClient, TestApp, message_id};

const CMS_ROOMS: [&str; 4] = [
    "cms:dashboard",
    "cms:stations",
    "cms:points",
    "cms:sessions",
];

fn rooms_of(notifications: &[Value]) -> BTreeSet<String> {
    notifications
        .iter()
        .map(|n| n["room"].as_str().unwrap_or("null").to_string())
        .collect()
}

/// Publishes a `customer` marker (it reaches only cms:dashboard) and returns what `socket` got
/// before it: everything published earlier has been emitted by then, since delivery is in order.
async fn before_marker(app: &TestApp, socket: &mut SioClient) -> Vec<Value> {
    app.publish_json("notification.customer", json!({ "type": "marker" }))
        .await;
    socket.until_type("marker").await
}

#[tokio::test]
async fn each_category_reaches_its_default_cms_rooms() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut cms = app.joined(&app.cms_token(), &CMS_ROOMS).await;
    let table = [
        ("station", vec!["cms:dashboard", "cms:stations"]),
        ("charger", vec!["cms:dashboard", "cms:points"]),
        ("session", vec!["cms:dashboard", "cms:sessions"]),
        ("customer", vec!["cms:dashboard"]),
        ("billing", vec!["cms:dashboard"]),
    ];
    for (category, expected) in table {
        app.publish_json(
            &format!("notification.{category}"),
            json!({ "type": format!("{category}.changed") }),
        )
        .await;
        let got = before_marker(&app, &mut cms).await;
        assert_eq!(got.len(), expected.len(), "{category}: {got:?}");
        assert!(got.iter().all(|n| n["category"] == category), "{got:?}");
        assert_eq!(
            rooms_of(&got),
            expected.iter().map(|r| r.to_string()).collect(),
            "{category}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_recipient_gets_the_contract_payload_and_no_other_customer_sees_it() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut alice = app
        .joined(&app.customer_token("123"), &["customer:123"])
        .await;
    let mut bob = app
        .joined(&app.customer_token("456"), &["customer:456"])
        .await;
    let id = message_id();

    app.publish_json(
        "notification.session",
        json!({
            "type": "charging.started",
            "data": { "sessionId": "s-1", "customerId": 123, "kwh": 0 },
            "recipients": [123],
            "messageId": id,
            "timestamp": "2026-11-22T10:00:00Z",
        }),
    )
    .await;
    let got = alice.next().await;
    let cursor = got["id"].as_str().expect("id is a string");
    assert!(!cursor.is_empty());
    assert_eq!(
        got,
        json!({
            "id": cursor,
            "room": "customer:123",
            "category": "session",
            "type": "charging.started",
            "data": { "sessionId": "s-1", "customerId": 123, "kwh": 0 },
            "messageId": id,
            "timestamp": "2026-11-22T10:00:00Z",
        })
    );

    // Bob's next notification is the one sent to him afterwards, not Alice's.
    app.publish_json(
        "notification.session",
        json!({ "type": "for-bob", "recipients": ["456"] }),
    )
    .await;
    let first_for_bob = bob.next().await;
    assert_eq!(first_for_bob["type"], "for-bob");
    assert_eq!(first_for_bob["room"], "customer:456");
    assert!(alice.drain().is_empty(), "alice got bob's notification");
    app.stop().await;
}

#[tokio::test]
async fn absent_fields_are_null_and_the_timestamp_is_rfc3339() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    app.publish_json("notification.station", json!({ "type": "station.offline" }))
        .await;
    let got = cms.next().await;
    assert_eq!(got["data"], Value::Null);
    assert_eq!(got["messageId"], Value::Null);
    let ts = got["timestamp"].as_str().expect("timestamp string");
    assert!(
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(),
        "{ts}"
    );
    app.stop().await;
}

#[tokio::test]
async fn each_target_room_gets_its_own_copy_and_the_copies_share_one_id() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut cms = app
        .joined(
            &app.cms_token(),
            &["cms:dashboard", "cms:sessions", "customer:7"],
        )
        .await;
    app.publish_json(
        "notification.session",
        json!({ "type": "t", "recipients": [7], "rooms": ["cms:stations"] }),
    )
    .await;
    let mut copies = before_marker(&app, &mut cms).await;
    assert_eq!(
        rooms_of(&copies),
        ["cms:dashboard", "cms:sessions", "customer:7"]
            .map(String::from)
            .into()
    );
    copies.sort_by_key(|n| n["room"].as_str().unwrap_or("").to_owned());
    let ids: BTreeSet<&str> = copies.iter().map(|n| n["id"].as_str().unwrap()).collect();
    // Contract v2 section 3: the copies of one notification share its stream position.
    assert_eq!(ids.len(), 1, "one id for every copy: {copies:?}");
    app.stop().await;
}

#[tokio::test]
async fn explicit_rooms_are_added_to_the_defaults() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut stations = app.joined(&app.cms_token(), &["cms:stations"]).await;
    app.publish_json(
        "notification.session",
        json!({ "type": "session.note", "rooms": ["cms:stations"] }),
    )
    .await;
    let got = stations.next().await;
    assert_eq!(
        (got["type"].as_str(), got["room"].as_str()),
        (Some("session.note"), Some("cms:stations"))
    );
    app.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_every_socket_once_with_a_null_room_outside_its_rooms() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut in_room = app.joined(&app.customer_token("1"), &["customer:1"]).await;
    let mut lobby = app.socket(&app.customer_token("2")).await;
    let mut dashboard = app.joined(&app.cms_token(), &["cms:dashboard"]).await;

    app.publish_json(
        "notification.customer",
        json!({ "type": "maintenance", "recipients": [1], "broadcast": true }),
    )
    .await;
    let got = lobby.next().await;
    assert_eq!(
        (got["type"].as_str(), &got["room"]),
        (Some("maintenance"), &Value::Null)
    );
    let got = in_room.next().await;
    assert_eq!(got["room"], "customer:1");
    let got = before_marker(&app, &mut dashboard).await;
    assert_eq!(
        rooms_of(&got),
        ["cms:dashboard".to_string()].into(),
        "one copy for the dashboard: {got:?}"
    );

    // A second broadcast as a marker: nobody got a second copy of the first.
    app.publish_json(
        "notification.customer",
        json!({ "type": "end", "broadcast": true }),
    )
    .await;
    assert_eq!(lobby.until_type("end").await.len(), 0);
    assert_eq!(in_room.until_type("end").await.len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn the_same_message_id_is_emitted_once() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    let id = message_id();
    for _ in 0..3 {
        app.publish_json(
            "notification.customer",
            json!({ "type": "once", "messageId": id }),
        )
        .await;
    }
    // The AMQP message_id property counts as well when the body has none.
    let props = lapin::BasicProperties::default().with_message_id(id.as_str().into());
    app.publish_with("notification.customer", br#"{"type":"once"}"#, props)
        .await;
    let got = before_marker(&app, &mut cms).await;
    assert_eq!(got.len(), 1, "{got:?}");
    app.stop().await;
}
