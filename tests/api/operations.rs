//! What operators rely on: TLS to a managed broker, scale-out, metrics, the publish tool,
//! connection limits.

use std::process::{Command, Output};

use serde_json::json;

use crate::support::sio::{SioClient, TokenVia};
use crate::support::tls::TlsBroker;
use crate::support::{Settings, TestApp, WAIT, message_id, metric};

#[tokio::test]
async fn amqps_with_the_configured_ca_consumes_through_tls() {
    let tls = TlsBroker::start().await;
    let settings = Settings {
        broker_url: Some(tls.url()),
        ..Settings::rabbit()
    };
    let app = TestApp::spawn(settings.var("RABBITMQ_CA_FILE", tls.ca_file.to_str().unwrap())).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    app.publish_json("notification.station", json!({ "type": "over-tls" }))
        .await;
    assert_eq!(cms.next().await["type"], "over-tls");
    app.stop().await;
}

#[tokio::test]
async fn amqps_refuses_a_certificate_it_cannot_verify() {
    let tls = TlsBroker::start().await;
    // No RABBITMQ_CA_FILE: the test CA is not among the system's roots.
    let app = TestApp::spawn(Settings {
        broker_url: Some(tls.url()),
        no_wait: true,
        ..Settings::rabbit()
    })
    .await;
    // It keeps trying and never connects; the public answer names no host and no TLS detail
    // (the log has them).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = app.metrics().await;
        if metric(&metrics, "notify_bridge_broker_reconnects_total") >= 2.0 {
            assert_eq!(metric(&metrics, "notify_bridge_broker_connected"), 0.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconnect attempts counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let message = app.not_ready_because(|_| true).await;
    assert!(message.starts_with("connecting to RabbitMQ"), "{message}");
    assert!(
        !message.contains("127.0.0.1") && !message.contains("guest"),
        "{message}"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_instance_emits_every_notification_to_its_own_sockets() {
    let first = TestApp::spawn(Settings::rabbit()).await;
    let second = TestApp::spawn(Settings {
        exchange: Some(first.exchange.clone()),
        ..Settings::rabbit()
    })
    .await;
    assert_ne!(
        first.queue, second.queue,
        "each instance consumes its own queue"
    );
    let mut on_first = first
        .joined(&first.customer_token("5"), &["customer:5"])
        .await;
    let mut on_second = second
        .joined(&second.customer_token("5"), &["customer:5"])
        .await;

    first
        .publish_json(
            "notification.session",
            json!({ "type": "one-publish", "recipients": [5] }),
        )
        .await;
    assert_eq!(on_first.next().await["type"], "one-publish");
    assert_eq!(on_second.next().await["type"], "one-publish");

    // Ingest on one instance goes through the exchange, so the other emits it too.
    let posted = json!({ "type": "posted", "category": "session", "recipients": [5] }).to_string();
    assert_eq!(
        first
            .post("/api/notifications", Some(&first.service_token()), posted)
            .await
            .status(),
        202
    );
    assert_eq!(on_first.next().await["type"], "posted");
    assert_eq!(on_second.next().await["type"], "posted");
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn metrics_count_what_the_daemon_does() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut customer = app.joined(&app.customer_token("1"), &["customer:1"]).await;
    let id = message_id();
    for _ in 0..2 {
        app.publish_json(
            "notification.session",
            json!({ "type": "t", "recipients": [1], "messageId": id }),
        )
        .await;
    }
    app.publish("notification.charger", b"not json").await;
    app.publish_json(
        "notification.session",
        json!({ "type": "after", "recipients": [1] }),
    )
    .await;
    assert_eq!(customer.next().await["type"], "t");
    assert_eq!(customer.next().await["type"], "after");
    let _ = app.next_message(&app.dead_queue()).await;

    let text = app.metrics().await;
    assert_eq!(
        metric(
            &text,
            "notify_bridge_notifications_consumed_total{category=\"session\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "notify_bridge_notifications_emitted_total{category=\"session\"}"
        ),
        6.0,
        "3 rooms each"
    );
    assert_eq!(
        metric(
            &text,
            "notify_bridge_notifications_deduplicated_total{category=\"session\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "notify_bridge_notifications_dead_lettered_total{category=\"charger\",reason=\"not_json\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "notify_bridge_sockets_connected"), 1.0);
    assert_eq!(metric(&text, "notify_bridge_broker_connected"), 1.0);
    assert_eq!(
        metric(&text, "notify_bridge_delivery_lag_seconds_count"),
        2.0
    );
    assert_eq!(metric(&text, "notify_bridge_history_rooms"), 3.0);
    assert_eq!(metric(&text, "notify_bridge_history_notifications"), 6.0);
    assert!(
        metric(
            &text,
            "notify_bridge_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"}"
        ) >= 1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused() {
    let app = TestApp::spawn(
        Settings {
            auth: false,
            ..Settings::local()
        }
        .var("MAX_CONNECTIONS", "2"),
    )
    .await;
    let _a = SioClient::connect(app.addr, None, TokenVia::Auth)
        .await
        .unwrap();
    let _b = SioClient::connect(app.addr, None, TokenVia::Auth)
        .await
        .unwrap();
    let refused = SioClient::connect(app.addr, None, TokenVia::Auth).await;
    assert_eq!(refused.err().as_deref(), Some("server_full"));
    app.stop().await;
}

fn publish_tool(app: &TestApp, args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_notify-bridge"))
        .arg("publish")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RABBITMQ_URL", url)
        .env("RABBITMQ_EXCHANGE", &app.exchange)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_publish_tool_sends_one_confirmed_notification() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut customer = app.joined(&app.customer_token("3"), &["customer:3"]).await;
    let broker = crate::support::broker_url();

    let out = publish_tool(
        &app,
        &[
            "notification.session",
            r#"{"type":"from-cli","recipients":[3]}"#,
        ],
        broker,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("confirmed"));
    assert_eq!(customer.next().await["type"], "from-cli");

    let file = std::env::temp_dir().join(format!("{}.json", message_id()));
    std::fs::write(&file, r#"{"type":"from-file","recipients":[3]}"#).unwrap();
    let out = publish_tool(
        &app,
        &["notification.session", "--file", file.to_str().unwrap()],
        broker,
    );
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(customer.next().await["type"], "from-file");

    let out = publish_tool(&app, &["notification.session", "{not json"], broker);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let out = publish_tool(
        &app,
        &["notification.session", r#"{"type":"x"}"#],
        "amqp://guest:secret-pw@127.0.0.1:1/%2f",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-pw"));
    app.stop().await;
}
