//! `notify-bridge publish` judges a body with the daemon's own parser: it refuses what the daemon
//! would dead-letter, with the reason the dead letter would carry, and gives every message a
//! `messageId` so that a retry is emitted once.

use std::process::{Command, Output};

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

use crate::support::{Settings, TestApp, broker_url, now, unique};

/// A broker URL nothing listens at: a dry run that connected would fail.
const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

fn publish_tool(exchange: &str, url: &str, vars: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_notify-bridge"))
        .arg("publish")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RABBITMQ_URL", url)
        .env("RABBITMQ_EXCHANGE", exchange)
        .envs(vars.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The id on the tool's `messageId: <id>` line.
fn printed_message_id(out: &Output) -> String {
    let stdout = text(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("messageId: "))
        .unwrap_or_else(|| panic!("no messageId line in {stdout:?}"))
        .to_string()
}

#[tokio::test]
async fn dry_run_refuses_a_bad_body_with_the_reason_the_daemon_dead_letters_it_with() {
    let limit = [("MAX_MESSAGE_BYTES", "1024")];
    let app = TestApp::spawn(Settings::rabbit().var(limit[0].0, limit[0].1)).await;
    let too_large = json!({ "type": "t", "data": "x".repeat(2000) }).to_string();
    let cases = [
        ("{not json".to_string(), "not_json"),
        ("[1,2]".to_string(), "not_object"),
        (json!({ "data": 1 }).to_string(), "missing_type"),
        (json!({ "type": "" }).to_string(), "missing_type"),
        (
            json!({ "type": "t", "recipients": ["a b"] }).to_string(),
            "invalid_room",
        ),
        (
            json!({ "type": "t", "rooms": ["lobby"] }).to_string(),
            "invalid_room",
        ),
        (
            json!({ "type": "t", "broadcast": "yes" }).to_string(),
            "invalid_field",
        ),
        (
            json!({ "type": "t", "timestamp": "2026-02-30T10:00:00Z" }).to_string(),
            "invalid_field",
        ),
        (too_large, "too_large"),
    ];
    for (body, reason) in cases {
        let out = publish_tool(
            &app.exchange,
            NO_BROKER,
            &limit,
            &["--dry-run", "notification.session", &body],
        );
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{body}: dry run passed: {}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("rejected: {reason} ")),
            "{body}: {stderr}"
        );
        assert!(
            !stderr.contains("connect"),
            "a dry run never connects: {stderr}"
        );

        // The daemon, given the same bytes, dead-letters them with that very reason.
        app.publish("notification.session", body.as_bytes()).await;
        let dead = app.next_message(&app.dead_queue()).await;
        let header = dead
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-notify-bridge-reason").cloned());
        assert_eq!(header, Some(AMQPValue::LongString(reason.into())), "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn dry_run_of_a_good_body_prints_ok_and_a_message_id_without_a_broker() {
    let out = publish_tool(
        "unused",
        NO_BROKER,
        &[],
        &[
            "--dry-run",
            "notification.session",
            r#"{"type":"charging.started","recipients":[123],"rooms":["cms:stations"]}"#,
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.starts_with("ok: "), "{stdout}");
    assert!(
        stdout.contains("rooms customer:123 cms:stations cms:dashboard cms:sessions"),
        "{stdout}"
    );
    assert!(stdout.contains("dry run: not published"), "{stdout}");
    let id = printed_message_id(&out);
    assert_eq!(id.len(), 36, "a UUID: {id}");

    // A given id is kept; a body's own `messageId` wins over it, as in the daemon.
    let given = publish_tool(
        "unused",
        NO_BROKER,
        &[],
        &[
            "--dry-run",
            "--message-id",
            "retry-1",
            "notification.x",
            r#"{"type":"t"}"#,
        ],
    );
    assert_eq!(printed_message_id(&given), "retry-1");
    let in_body = publish_tool(
        "unused",
        NO_BROKER,
        &[],
        &[
            "--dry-run",
            "--message-id",
            "retry-1",
            "notification.x",
            r#"{"type":"t","messageId":"from-body"}"#,
        ],
    );
    assert_eq!(printed_message_id(&in_body), "from-body");
}

#[tokio::test]
async fn a_retry_with_the_printed_message_id_is_emitted_once() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut customer = app.joined(&app.customer_token("3"), &["customer:3"]).await;
    // A second queue on the exchange shows the AMQP properties the tool set. Exclusive: it goes
    // with our connection whatever happens, and a transient queue that is not exclusive is
    // refused by RabbitMQ 4.3's defaults (`transient_nonexcl_queues`).
    let tap = unique("nb-test-tap");
    let channel = app.channel();
    channel
        .queue_declare(
            tap.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            tap.as_str().into(),
            app.exchange.as_str().into(),
            "notification.session".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let body = r#"{"type":"retried","recipients":[3]}"#;
    let first = publish_tool(
        &app.exchange,
        broker_url(),
        &[],
        &["notification.session", body],
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stdout).contains("(confirmed)"));
    let id = printed_message_id(&first);
    let received = customer.next().await;
    assert_eq!(received["type"], "retried");
    assert_eq!(received["messageId"], id.as_str());

    let retry = publish_tool(
        &app.exchange,
        broker_url(),
        &[],
        &["--message-id", &id, "notification.session", body],
    );
    assert!(retry.status.success(), "{}", text(&retry.stderr));
    assert_eq!(printed_message_id(&retry), id);
    let marker = publish_tool(
        &app.exchange,
        broker_url(),
        &[],
        &[
            "notification.session",
            r#"{"type":"after","recipients":[3]}"#,
        ],
    );
    assert!(marker.status.success(), "{}", text(&marker.stderr));
    assert_eq!(
        customer.next().await["type"],
        "after",
        "the retry was emitted again"
    );

    let tapped = app.next_message(&tap).await;
    let p = &tapped.properties;
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    let at = p.timestamp().expect("a timestamp property");
    assert!(now().abs_diff(at) < 60, "timestamp {at} is not now");
    channel
        .queue_delete(tap.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn publish_refuses_a_routing_key_no_queue_is_bound_for() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let out = publish_tool(
        &app.exchange,
        broker_url(),
        &[],
        &["elsewhere.session", r#"{"type":"t"}"#],
    );
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("no queue is bound"),
        "{}",
        text(&out.stderr)
    );
    app.stop().await;
}
