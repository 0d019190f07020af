//! What the daemon really emits, on a socket and in the polling response, fits
//! `schemas/notification.schema.json`, the schema clients are told to expect.

use jsonschema::{Registry, Validator};
use serde_json::{Value, json};

use crate::support::{Settings, TestApp};

const BASE: &str = "https://notify-bridge.example/schemas/";

fn notification_validator() -> Validator {
    let load = |name: &str| -> Value {
        let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect(&path)
    };
    let registry = Registry::new()
        .add(
            format!("{BASE}notification-body.schema.json"),
            load("notification-body.schema.json"),
        )
        .unwrap()
        .add(
            format!("{BASE}notification.schema.json"),
            load("notification.schema.json"),
        )
        .unwrap()
        .prepare()
        .unwrap();
    jsonschema::options()
        .with_registry(&registry)
        .should_validate_formats(true)
        .build(&load("notification.schema.json"))
        .unwrap()
}

fn assert_fits(validator: &Validator, n: &Value) {
    if let Err(error) = validator.validate(n) {
        panic!("{n} does not fit notification.schema.json: {error}");
    }
}

#[tokio::test]
async fn emitted_and_polled_notifications_fit_the_notification_schema() {
    let validator = notification_validator();
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    // In no room of the broadcast: it gets the copy with `room: null`.
    let mut outsider = app.socket(&app.customer_token("9")).await;

    let bodies = [
        json!({
            "type": "charging.started",
            "data": { "sessionId": "s-1", "customerId": 123, "kwh": 0 },
            "recipients": [123, "456"],
            "rooms": ["cms:stations"],
            "messageId": "7f6c-schema",
            "timestamp": "2026-11-22T10:00:00+01:00"
        }),
        json!({ "type": "minimal" }),
        json!({ "type": "maintenance", "broadcast": true, "data": [1, "two", null] }),
    ];
    for body in &bodies {
        app.publish_json("notification.station", body.clone()).await;
    }
    for body in &bodies {
        let n = cms.next().await;
        assert_eq!(n["type"], body["type"]);
        assert_fits(&validator, &n);
    }
    let broadcast = outsider.next().await;
    assert_eq!(broadcast["room"], Value::Null);
    assert_fits(&validator, &broadcast);

    let page: Value = app
        .get(
            "/api/notifications?room=cms:dashboard&room=customer:123",
            Some(&app.cms_token()),
        )
        .await
        .json()
        .await
        .unwrap();
    let items = page["notifications"].as_array().unwrap();
    assert!(items.len() >= 3, "{page}");
    for n in items {
        assert_fits(&validator, n);
    }
    app.stop().await;
}
