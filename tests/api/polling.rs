//! Polling (`GET /api/notifications`), replay on `join-room`, ingest (`POST`), dedupe and the
//! history caps (contract sections 3, 5, 6).

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::support::{Settings, TestApp, message_id, metric, unique};

/// Posts a notification through the HTTP ingest and asserts it was accepted.
async fn post(app: &TestApp, body: Value) {
    let response = app
        .post(
            "/api/notifications",
            Some(&app.service_token()),
            body.to_string(),
        )
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

async fn poll(app: &TestApp, query: &str, token: &str) -> Value {
    let response = app
        .get(&format!("/api/notifications?{query}"), Some(token))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn types(page: &Value) -> Vec<&str> {
    page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn polling_returns_oldest_first_and_only_what_is_after_the_cursor() {
    let app = TestApp::spawn(Settings::local()).await;
    let token = app.customer_token("1");
    for i in 0..5 {
        post(
            &app,
            json!({ "type": format!("n{i}"), "category": "session", "recipients": [1] }),
        )
        .await;
    }
    let page = poll(&app, "room=customer:1", &token).await;
    assert_eq!(types(&page), ["n0", "n1", "n2", "n3", "n4"]);
    assert_eq!(page["reset"], false);
    let items = page["notifications"].as_array().unwrap();
    assert_eq!(
        page["cursor"], items[4]["id"],
        "cursor is the last returned id"
    );
    assert!(items.iter().all(|n| n["room"] == "customer:1"));

    let after = items[2]["id"].as_str().unwrap();
    assert_eq!(
        types(&poll(&app, &format!("room=customer:1&after={after}"), &token).await),
        ["n3", "n4"]
    );

    let head = poll(
        &app,
        &format!("room=customer:1&after={}", page["cursor"].as_str().unwrap()),
        &token,
    )
    .await;
    assert_eq!(types(&head), Vec::<&str>::new());
    let seq = |v: &Value| {
        v.as_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(
        seq(&head["cursor"]) >= seq(&page["cursor"]),
        "with nothing new the cursor is the head"
    );
    let again = poll(
        &app,
        &format!("room=customer:1&after={}", head["cursor"].as_str().unwrap()),
        &token,
    )
    .await;
    assert_eq!(
        (types(&again), again["reset"].as_bool()),
        (vec![], Some(false))
    );

    let limited = poll(&app, "room=customer:1&limit=2", &token).await;
    assert_eq!(types(&limited), ["n0", "n1"]);
    assert_eq!(limited["cursor"], items[1]["id"]);
    app.stop().await;
}

#[tokio::test]
async fn several_rooms_are_merged_in_delivery_order() {
    let app = TestApp::spawn(Settings::local()).await;
    post(&app, json!({ "type": "a", "category": "station" })).await;
    post(
        &app,
        json!({ "type": "b", "category": "customer", "recipients": [5] }),
    )
    .await;
    post(&app, json!({ "type": "c", "category": "station" })).await;
    let page = poll(&app, "room=cms:stations&room=customer:5", &app.cms_token()).await;
    assert_eq!(types(&page), ["a", "b", "c"]);
    let ids: Vec<u64> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            n["id"]
                .as_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_cursor_returns_the_retained_history_with_reset() {
    let app = TestApp::spawn(Settings::local()).await;
    post(
        &app,
        json!({ "type": "kept", "category": "customer", "recipients": [3] }),
    )
    .await;
    for cursor in ["zzzzzz-1", "garbage", "", "k3x9-99999"] {
        let page = poll(
            &app,
            &format!("room=customer:3&after={cursor}"),
            &app.customer_token("3"),
        )
        .await;
        assert_eq!(page["reset"], true, "{cursor:?}");
        assert_eq!(types(&page), ["kept"]);
    }
    app.stop().await;
}

#[tokio::test]
async fn polling_errors_follow_the_contract_and_its_precedence() {
    let app = TestApp::spawn(Settings::local()).await;
    let customer = app.customer_token("1");
    let cases: [(&str, Option<&str>, u16, &str); 9] = [
        ("room=customer:1", None, 401, "unauthorized"),
        ("room=customer:1", Some("bad-token"), 401, "unauthorized"),
        ("room=lobby", None, 401, "unauthorized"),
        ("", Some(&customer), 400, "missing_room"),
        ("room=lobby", Some(&customer), 400, "invalid_room"),
        (
            "room=customer:2&room=lobby",
            Some(&customer),
            400,
            "invalid_room",
        ),
        (
            "room=customer:1&limit=0",
            Some(&customer),
            400,
            "invalid_limit",
        ),
        (
            "room=customer:1&limit=1001",
            Some(&customer),
            400,
            "invalid_limit",
        ),
        ("room=customer:2", Some(&customer), 403, "forbidden"),
    ];
    for (query, token, status, code) in cases {
        let response = app.get(&format!("/api/notifications?{query}"), token).await;
        assert_eq!(response.status().as_u16(), status, "{query} {token:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{query}");
        assert!(body["message"].is_string());
    }
    let service = app.service_token();
    assert_eq!(
        app.get("/api/notifications?room=cms:dashboard", Some(&service))
            .await
            .status(),
        403
    );
    assert_eq!(
        app.get(
            "/api/notifications?room=customer:1&limit=1000",
            Some(&customer)
        )
        .await
        .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn join_with_after_replays_the_missed_notifications_in_order_before_the_ack() {
    let app = TestApp::spawn(Settings::local()).await;
    for i in 0..5 {
        post(
            &app,
            json!({ "type": format!("n{i}"), "category": "customer", "recipients": ["77"] }),
        )
        .await;
    }
    let token = app.customer_token("77");
    let page = poll(&app, "room=customer:77", &token).await;
    let second = page["notifications"][1]["id"].as_str().unwrap().to_string();

    let mut socket = app.socket(&token).await;
    let (ack, before_ack) = socket.join_after("customer:77", &second).await;
    assert_eq!(ack, json!({ "ok": true, "room": "customer:77" }));
    assert_eq!(
        before_ack, 3,
        "the three missed notifications arrive before the ack"
    );
    let replayed: Vec<Value> = socket.drain();
    assert_eq!(
        replayed
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["n2", "n3", "n4"]
    );
    assert_eq!(
        replayed,
        page["notifications"].as_array().unwrap()[2..],
        "the same payloads as polling"
    );

    // Live delivery carries on after the replay, without repeats.
    post(
        &app,
        json!({ "type": "live", "category": "customer", "recipients": ["77"] }),
    )
    .await;
    assert_eq!(socket.next().await["type"], "live");
    app.stop().await;
}

#[tokio::test]
async fn join_with_an_unknown_cursor_replays_everything_and_says_reset() {
    let app = TestApp::spawn(Settings::local()).await;
    for i in 0..3 {
        post(
            &app,
            json!({ "type": format!("n{i}"), "category": "customer", "recipients": [8] }),
        )
        .await;
    }
    let mut socket = app.socket(&app.customer_token("8")).await;
    let (ack, before_ack) = socket
        .join_after("customer:8", "from-before-a-restart-12")
        .await;
    assert_eq!(
        ack,
        json!({ "ok": true, "room": "customer:8", "reset": true })
    );
    assert_eq!(before_ack, 3);
    assert_eq!(socket.drain().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn ingest_without_rabbitmq_reaches_sockets_and_polling() {
    let app = TestApp::spawn(Settings::local()).await;
    let mut socket = app
        .joined(&app.customer_token("42"), &["customer:42"])
        .await;
    post(&app, json!({ "type": "charging.started", "category": "session", "recipients": [42], "data": { "kwh": 0 } })).await;
    let pushed = socket.next().await;
    assert_eq!(
        (pushed["type"].as_str(), pushed["category"].as_str()),
        (Some("charging.started"), Some("session"))
    );
    let page = poll(&app, "room=customer:42", &app.customer_token("42")).await;
    assert_eq!(page["notifications"][0], pushed);
    app.stop().await;
}

#[tokio::test]
async fn ingest_with_rabbitmq_publishes_to_the_exchange_for_every_instance() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    // A consumer of our own, like another instance, bound to the same exchange.
    let spy = unique("nb-test-spy");
    let channel = app.channel();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(spy.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            spy.as_str().into(),
            app.exchange.as_str().into(),
            "notification.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            spy.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut socket = app.joined(&app.customer_token("9"), &["customer:9"]).await;

    let id = message_id();
    post(&app, json!({ "type": "charging.stopped", "category": "session", "recipients": [9], "messageId": id })).await;
    let seen = tokio::time::timeout(crate::support::WAIT, consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.routing_key.as_str(), "notification.session");
    let body: Value = serde_json::from_slice(&seen.data).unwrap();
    assert_eq!(body["messageId"], id.as_str());
    let pushed = socket.next().await;
    assert_eq!(
        (pushed["type"].as_str(), pushed["messageId"].as_str()),
        (Some("charging.stopped"), Some(id.as_str()))
    );
    let page = poll(&app, "room=customer:9", &app.customer_token("9")).await;
    assert_eq!(types(&page), ["charging.stopped"]);
    app.stop().await;
}

#[tokio::test]
async fn ingest_errors_follow_the_contract() {
    let app = TestApp::spawn(Settings::local().var("MAX_MESSAGE_BYTES", "512")).await;
    let service = app.service_token();
    let good = json!({ "type": "t", "category": "session" }).to_string();
    let big = json!({ "type": "t", "category": "session", "data": "x".repeat(600) }).to_string();
    let cases: [(Option<String>, String, u16, &str); 8] = [
        (None, good.clone(), 401, "unauthorized"),
        (
            Some(app.customer_token("1")),
            good.clone(),
            403,
            "forbidden",
        ),
        (Some(app.cms_token()), good.clone(), 403, "forbidden"),
        (Some(service.clone()), "{not json".into(), 400, "not_json"),
        (
            Some(service.clone()),
            json!({ "type": "t" }).to_string(),
            400,
            "invalid_field",
        ),
        (
            Some(service.clone()),
            json!({ "type": "t", "category": "a.b" }).to_string(),
            400,
            "invalid_field",
        ),
        (
            Some(service.clone()),
            json!({ "category": "session" }).to_string(),
            400,
            "missing_type",
        ),
        (Some(service.clone()), big, 413, "too_large"),
    ];
    for (token, body, status, code) in cases {
        let response = app
            .post("/api/notifications", token.as_deref(), body.clone())
            .await;
        assert_eq!(response.status().as_u16(), status, "{body:.60}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"],
            code,
            "{body:.60}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_same_message_id_posted_twice_is_delivered_once() {
    let app = TestApp::spawn(Settings::local()).await;
    let id = message_id();
    for _ in 0..2 {
        post(
            &app,
            json!({ "type": "once", "category": "customer", "recipients": [4], "messageId": id }),
        )
        .await;
    }
    let page = poll(&app, "room=customer:4", &app.customer_token("4")).await;
    assert_eq!(types(&page), ["once"]);
    assert_eq!(
        metric(
            &app.metrics().await,
            "notify_bridge_notifications_deduplicated_total{category=\"customer\"}"
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_distinct_rooms_stays_within_the_history_caps() {
    let app = TestApp::spawn(
        Settings::local()
            .var("HISTORY_MAX_ROOMS", "50")
            .var("HISTORY_MAX_TOTAL", "120"),
    )
    .await;
    for i in 0..400 {
        post(
            &app,
            json!({ "type": "flood", "category": "customer", "recipients": [format!("c{i}")] }),
        )
        .await;
    }
    let metrics = app.metrics().await;
    assert!(metric(&metrics, "notify_bridge_history_rooms") <= 50.0);
    assert!(metric(&metrics, "notify_bridge_history_notifications") <= 120.0);
    // The newest rooms are the ones kept.
    let page = poll(&app, "room=customer:c399", &app.customer_token("c399")).await;
    assert_eq!(types(&page), ["flood"]);
    app.stop().await;
}
