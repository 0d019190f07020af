//! Statistics for dashboards (contract section 7): `GET /api/stats` and the `stats` event.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::support::{
    Settings, TestApp, Topology, WAIT, message_id, open_publisher, requires_stream,
};

/// `/api/stats` with a CMS token.
async fn stats(app: &TestApp) -> Value {
    let response = app.get("/api/stats", Some(&app.cms_token())).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Waits (bounded) until `/api/stats` counts `all` notifications; returns the figures.
async fn stats_with(app: &TestApp, all: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let figures = stats(app).await;
        if figures["total"]["all"] == all {
            return figures;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never reached all = {all}: {figures}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_accepted_notification_counts_once_and_dead_letters_and_duplicates_do_not() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut dashboard = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    let first = dashboard.next_event("stats").await;
    assert_eq!(
        first["total"]["all"], 0,
        "a fresh queue starts at 0: {first}"
    );
    assert_eq!(first["timezone"], "UTC");
    assert_eq!(first["perMinute"].as_array().unwrap().len(), 60);

    for n in 0..5 {
        // Three rooms each (two customers and the category's defaults): counted once.
        app.publish_json(
            "notification.session",
            json!({ "type": "charging.started", "recipients": [n, n + 100] }),
        )
        .await;
    }
    let repeated = message_id();
    for _ in 0..2 {
        app.publish_json(
            "notification.station",
            json!({ "type": "station.offline", "messageId": repeated }),
        )
        .await;
    }
    app.publish("notification.station", b"not json").await;
    app.publish_json(
        "notification.station",
        json!({ "type": "station.online", "messageId": message_id() }),
    )
    .await;
    // The last one on the dashboard means everything before it was read.
    dashboard.until_type("station.online").await;

    let figures = stats_with(&app, 7).await;
    assert_eq!(figures["total"], json!({ "all": 7, "today": 7 }));
    assert_eq!(
        figures["categories"]["session"],
        json!({ "all": 5, "today": 5 })
    );
    assert_eq!(figures["categories"]["station"]["all"], 2);
    assert_eq!(figures["types"]["charging.started"]["all"], 5);
    assert_eq!(figures["types"]["station.offline"]["all"], 1);
    let minutes = figures["perMinute"].as_array().unwrap();
    let counted: u64 = minutes.iter().map(|m| m["total"].as_u64().unwrap()).sum();
    assert_eq!(counted, 7, "the minute series holds them: {minutes:?}");

    // The dashboard socket is told as the figures change.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pushed = dashboard.next_event("stats").await;
        if pushed["total"]["all"] == 7 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no push of 7: {pushed}"
        );
    }

    // Customers read no statistics; a token is required.
    let customer = app.customer_token("5");
    assert_eq!(app.get("/api/stats", Some(&customer)).await.status(), 403);
    assert_eq!(app.get("/api/stats", None).await.status(), 401);
}

#[tokio::test]
async fn two_instances_agree_and_a_restarted_instance_keeps_all() {
    requires_stream!("the figures survive a restart through the stream's checkpoints");
    let topology = Topology::fresh();
    let settings = || Settings {
        exchange: Some(topology.exchange.clone()),
        queue: Some(topology.queue.clone()),
        ..Settings::rabbit()
    };
    let a = TestApp::spawn(settings()).await;
    let b = TestApp::spawn(settings()).await;
    for n in 0..12 {
        let category = ["session", "charger", "customer"][n % 3];
        a.publish_json(
            &format!("notification.{category}"),
            json!({ "type": format!("{category}.event"), "recipients": [n] }),
        )
        .await;
    }
    let on_a = stats_with(&a, 12).await;
    let on_b = stats_with(&b, 12).await;
    for field in ["total", "categories", "types", "since", "today"] {
        assert_eq!(on_a[field], on_b[field], "{field}: {on_a} vs {on_b}");
    }

    a.stop_keeping_topology().await;
    let again = TestApp::spawn(settings()).await;
    let restarted = stats_with(&again, 12).await;
    assert_eq!(restarted["categories"], on_b["categories"]);
    assert_eq!(restarted["since"], on_b["since"]);
    drop(b);
    drop(again);
}

#[tokio::test]
async fn without_rabbitmq_the_figures_count_since_this_instance_started() {
    let app = TestApp::spawn(Settings::local()).await;
    let before = stats(&app).await;
    assert_eq!(before["total"]["all"], 0);
    for _ in 0..3 {
        let response = app
            .post(
                "/api/notifications",
                Some(&app.service_token()),
                json!({ "type": "charging.stopped", "category": "session", "recipients": [1] })
                    .to_string(),
            )
            .await;
        assert_eq!(response.status(), 202);
    }
    let after = stats_with(&app, 3).await;
    assert_eq!(after["categories"]["session"]["today"], 3);
    // Counted since this instance started, and `since` says when that was.
    assert_eq!(after["since"], before["since"]);
    assert!(before["since"].as_str().unwrap() <= before["generatedAt"].as_str().unwrap());
}

/// The offset of the first record the stream still holds.
async fn first_offset(stream: &str) -> u64 {
    let (connection, _) = open_publisher().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("the stream holds a record")
        .unwrap()
        .unwrap();
    let offset = match delivery.properties.headers().as_ref().unwrap().inner()["x-stream-offset"] {
        AMQPValue::LongLongInt(offset) => offset as u64,
        ref other => panic!("x-stream-offset {other:?}"),
    };
    let _ = connection.close(200, "read".into()).await;
    offset
}

#[tokio::test]
async fn all_counts_everything_since_the_first_start_after_the_stream_dropped_its_oldest() {
    requires_stream!("it reads the stream and its retention");
    let topology = Topology::fresh();
    let stream = format!("{}.log", topology.queue);
    let settings = |rebuild: &str| {
        Settings {
            exchange: Some(topology.exchange.clone()),
            queue: Some(topology.queue.clone()),
            ..Settings::rabbit()
        }
        // Small segments and a short retention, so that the broker drops the oldest records
        // while the test runs.
        .var("RABBITMQ_STREAM_MAX_AGE", "2s")
        .var("RABBITMQ_STREAM_MAX_SEGMENT_BYTES", "2000")
        // Checkpoints every second; a new instance reads 4 s back.
        .var("RABBITMQ_REBUILD_MAX_AGE", rebuild)
    };
    let first = TestApp::spawn(settings("4s")).await;
    let mut published = 0u64;
    let publish = |n: u64| {
        let first = &first;
        async move {
            first
                .publish_json(
                    "notification.station",
                    json!({ "type": "station.offline", "data": { "n": n, "pad": "x".repeat(200) } }),
                )
                .await;
        }
    };
    for _ in 0..20 {
        publish(published).await;
        published += 1;
    }
    // Keep appending until retention has dropped the first segments.
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while first_offset(&stream).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never dropped a segment"
        );
        publish(published).await;
        published += 1;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let on_first = stats_with(&first, published).await;

    // A new instance can read neither the dropped records nor anything older than 4 s: its
    // `all` comes from the first instance's checkpoints.
    let second = TestApp::spawn(settings("4s")).await;
    let on_second = stats_with(&second, published).await;
    assert_eq!(on_second["since"], on_first["since"]);
    assert_eq!(on_second["categories"], on_first["categories"]);
    drop(second);
    drop(first);
}
