//! Broker faults, restarts, bad neighbours (issue: it keeps working through all of them).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::proxy::Proxy;
use crate::support::sio::{SioClient, TokenVia, stalled_socket};
use crate::support::{
    Settings, TestApp, Topology, WAIT, message_id, metric, open_publisher, queue_unacked, unique,
};

fn through(proxy: &Proxy) -> Settings {
    Settings {
        broker_url: Some(proxy.url()),
        ..Settings::rabbit()
    }
}

#[tokio::test]
async fn a_broker_outage_keeps_the_instance_ready_and_what_was_published_during_it_arrives_after() {
    let proxy = Proxy::to_broker().await;
    let app = TestApp::spawn(through(&proxy)).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    app.wait_broker("connected").await;

    proxy.cut();
    // Still ready: taking every pod out of its Service would take the fallback down too.
    app.wait_broker("reconnecting").await;
    let body: Value = app.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(
        metric(&app.metrics().await, "notify_bridge_broker_connected"),
        0.0
    );

    // Published straight to the broker while the daemon cannot reach it.
    app.publish_json("notification.station", json!({ "type": "during-cut" }))
        .await;
    // Meanwhile sockets and polling keep serving, and ingest says the broker is away.
    assert_eq!(
        app.poll_status("cms:dashboard", &app.cms_token()).await,
        200
    );
    let ingest = app
        .post(
            "/api/notifications",
            Some(&app.service_token()),
            json!({ "type": "t", "category": "x" }).to_string(),
        )
        .await;
    assert_eq!(ingest.status(), 503);
    assert_eq!(
        ingest.json::<Value>().await.unwrap()["error"],
        "broker_unavailable"
    );

    proxy.restore();
    app.wait_broker("connected").await;
    assert_eq!(cms.next().await["type"], "during-cut");
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "notify_bridge_broker_connected"), 1.0);
    assert!(
        metric(&metrics, "notify_bridge_broker_reconnects_total") > 0.0,
        "reconnects were counted"
    );
    app.stop().await;
}

#[tokio::test]
async fn hundreds_of_messages_across_repeated_cuts_are_all_emitted_and_those_with_a_message_id_once()
 {
    const BATCHES: usize = 4;
    const PER_BATCH: usize = 100;
    let proxy = Proxy::to_broker().await;
    let app = TestApp::spawn(through(&proxy).var("RABBITMQ_PREFETCH", "20")).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;

    let mut seen: HashMap<u64, usize> = HashMap::new();
    for batch in 0..BATCHES {
        for i in 0..PER_BATCH {
            let n = (batch * PER_BATCH + i) as u64;
            // Half carry a messageId, half do not (those rely on redelivery detection, which
            // cannot tell a lost ack from a new twin: contract v2 allows them twice).
            let body = if n.is_multiple_of(2) {
                json!({ "type": "load", "data": { "n": n }, "messageId": message_id() })
            } else {
                json!({ "type": "load", "data": { "n": n } })
            };
            app.publish_json("notification.customer", body).await;
        }
        // Cut mid-stream, once part of the batch has been emitted.
        while seen.values().sum::<usize>() < batch * PER_BATCH + PER_BATCH / 4 {
            let n = cms.next().await;
            *seen.entry(n["data"]["n"].as_u64().unwrap()).or_default() += 1;
        }
        proxy.cut();
        app.wait_broker("reconnecting").await;
        proxy.restore();
        app.wait_broker("connected").await;
    }
    app.publish_json("notification.customer", json!({ "type": "marker" }))
        .await;
    for n in cms.until_type("marker").await {
        *seen.entry(n["data"]["n"].as_u64().unwrap()).or_default() += 1;
    }
    let total = (BATCHES * PER_BATCH) as u64;
    let missing: Vec<u64> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    let doubled: Vec<(&u64, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let with_id: Vec<_> = doubled
        .iter()
        .filter(|(n, _)| n.is_multiple_of(2))
        .collect();
    assert!(
        with_id.is_empty(),
        "emitted twice despite a messageId: {with_id:?}"
    );
    // Only an ack lost in the cut brings one back, so at most the ack batches in flight
    // (prefetch 20: batches of 5, two per cut at most).
    assert!(doubled.len() <= BATCHES * 10, "emitted twice: {doubled:?}");
    assert_eq!(app.queue_depth(&app.queue).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn starting_with_the_broker_unreachable_serves_and_connects_when_it_returns() {
    let proxy = Proxy::to_broker().await;
    proxy.cut();
    let app = TestApp::spawn(Settings {
        no_wait: true,
        ..through(&proxy)
    })
    .await;
    app.wait_readyz(503).await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    assert_eq!(
        app.poll_status("cms:dashboard", &app.cms_token()).await,
        200
    );

    proxy.restore();
    app.wait_readyz(200).await;
    app.publish_json("notification.charger", json!({ "type": "charger.faulted" }))
        .await;
    assert_eq!(cms.next().await["type"], "charger.faulted");
    app.stop().await;
}

#[tokio::test]
async fn a_queue_declared_with_other_arguments_gives_one_clear_error() {
    let queue = unique("nb-test-q");
    let (_connection, channel) = open_publisher().await;
    let mut other = FieldTable::default();
    other.insert("x-max-length".into(), AMQPValue::LongInt(5));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, other)
        .await
        .unwrap();

    let app = TestApp::spawn(Settings {
        queue: Some(queue.clone()),
        no_wait: true,
        ..Settings::rabbit()
    })
    .await;
    let message = app
        .not_ready_because(|m| m.contains("other arguments"))
        .await;
    assert!(
        message.contains(&queue) && message.contains("RABBITMQ_QUEUE"),
        "{message}"
    );
    // Sockets still work while the operator fixes it.
    let socket = app.socket(&app.cms_token()).await;
    assert_eq!(socket.join("cms:dashboard").await["ok"], true);
    app.stop().await;
}

#[tokio::test]
async fn a_redelivered_twin_of_an_acked_notification_is_not_dropped() {
    // "Station ST-1 offline" twice, no messageId. The first is emitted and acked. The second
    // is delivered but never handled before a connection loss, so it comes back flagged
    // redelivered. A fingerprint of "recently seen bodies" would drop it as a duplicate; only a
    // redelivery of something appended and not yet acked may be dropped.
    let proxy = Proxy::to_broker().await;
    // A classic queue: the scenario needs the twin's first delivery (to our consumer) to be
    // unflagged, and a quorum queue flags a message whose earlier consumer was lost.
    let app = TestApp::spawn(through(&proxy).var("RABBITMQ_QUEUE_TYPE", "classic")).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:stations"]).await;
    let offline = json!({ "type": "station.offline", "data": { "stationId": "ST-1" } });
    app.publish_json("notification.station", offline.clone())
        .await;
    assert_eq!(cms.next().await["type"], "station.offline");
    // Its ack has reached the broker (acks are batched for a few milliseconds).
    let deadline = tokio::time::Instant::now() + WAIT;
    while queue_unacked(&app.queue).await != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first was never acked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    proxy.cut();
    app.wait_broker("reconnecting").await;
    // While the daemon is away, a consumer of ours takes the twin and dies before acking it:
    // the broker requeues it as redelivered.
    let (connection, channel) = open_publisher().await;
    channel.basic_qos(1, Default::default()).await.unwrap();
    let mut taker = channel
        .basic_consume(
            app.queue.as_str().into(),
            "test-taker".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.publish_json("notification.station", offline).await;
    let taken = tokio::time::timeout(WAIT, taker.next())
        .await
        .expect("the twin reaches our consumer")
        .unwrap()
        .unwrap();
    assert!(!taken.redelivered);
    let _ = channel.close(200, "dies before acking".into()).await;
    let _ = connection.close(200, "gone".into()).await;

    proxy.restore();
    app.wait_broker("connected").await;
    app.publish_json("notification.station", json!({ "type": "marker" }))
        .await;
    let before_marker = cms.until_type("marker").await;
    assert_eq!(
        before_marker
            .iter()
            .filter(|n| n["type"] == "station.offline")
            .count(),
        1,
        "the second offline arrives once: {before_marker:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_client_holds_up_no_one_and_is_closed_at_once() {
    let app = TestApp::spawn(
        Settings {
            auth: false,
            ..Settings::rabbit()
        }
        .var("SOCKET_BUFFER", "16")
        .var("HISTORY_PER_ROOM", "8"),
    )
    .await;
    let mut stalled = stalled_socket(app.addr, "cms:dashboard").await;
    let mut healthy = SioClient::connect(app.addr, None, TokenVia::Auth)
        .await
        .unwrap();
    assert_eq!(healthy.join("cms:dashboard").await["ok"], true);

    // ~12 MB in all: far more than the stalled socket's TCP buffers and send queue can hold.
    // Published in batches smaller than SOCKET_BUFFER, each awaited at the healthy client, so
    // that the healthy client is never the one that falls behind, however loaded the machine.
    let padding = "x".repeat(4096);
    const COUNT: u64 = 3000;
    const BATCH: u64 = 10;
    for start in (0..COUNT).step_by(BATCH as usize) {
        for n in start..start + BATCH {
            app.publish_json(
                "notification.customer",
                json!({ "type": "bulk", "data": { "n": n, "pad": padding } }),
            )
            .await;
        }
        for n in start..start + BATCH {
            assert_eq!(healthy.next().await["data"]["n"], n);
        }
    }
    assert_eq!(
        metric(&app.metrics().await, "notify_bridge_sockets_stalled_total"),
        1.0,
        "the stalled socket was detected and dropped from its rooms"
    );

    // It was closed at once, not at the next heartbeat (25 s): when it reads again, its
    // connection ends after the backlog, so that its client reconnects (`transport close`) and
    // replays, instead of staying connected in no room and hearing nothing.
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(message)) = stalled.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled socket's connection was closed");
    app.stop().await;
}

#[tokio::test]
async fn sigterm_with_deliveries_in_flight_loses_nothing_and_exits_zero() {
    let topology = Topology::fresh();
    let mut daemon = Daemon::builder()
        .public_dir()
        .broker()
        .vars(&[
            ("ENABLE_RABBITMQ", "true"),
            ("RABBITMQ_EXCHANGE", &topology.exchange),
            ("RABBITMQ_QUEUE", &topology.queue),
            ("RABBITMQ_PREFETCH", "50"),
        ])
        .start();
    daemon.wait_ready().await;
    let mut cms = SioClient::connect(daemon.addr, None, TokenVia::Auth)
        .await
        .unwrap();
    assert_eq!(cms.join("cms:dashboard").await["ok"], true);

    // The producer keeps publishing (with confirms) until the daemon has exited, so deliveries
    // are in flight whenever SIGTERM lands.
    let (_connection, channel) = open_publisher().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = tokio::spawn({
        let (channel, exchange, stop) = (channel.clone(), topology.exchange.clone(), stop.clone());
        async move {
            let mut published = 0u64;
            while !stop.is_cancelled() {
                let body = json!({ "type": "load", "data": { "n": published } }).to_string();
                let confirm = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "notification.customer".into(),
                        Default::default(),
                        body.as_bytes(),
                        Default::default(),
                    )
                    .await
                    .unwrap();
                assert!(confirm.await.unwrap().is_ack());
                published += 1;
            }
            published
        }
    });
    let mut received = Vec::new();
    while received.len() < 200 {
        received.push(cms.next().await["data"]["n"].as_u64().unwrap());
    }
    // Exits 0 within the shutdown timeout.
    daemon.stop().await;
    // The daemon closes our socket on the way out; collect what it emitted before that.
    received.extend(
        cms.until_closed(WAIT)
            .await
            .iter()
            .filter_map(|n| n["data"]["n"].as_u64()),
    );

    stop.cancel();
    let published = producer.await.unwrap();

    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let left = channel
        .queue_declare(
            topology.queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    let mut unique_received = received.clone();
    unique_received.sort_unstable();
    unique_received.dedup();
    assert_eq!(
        unique_received.len(),
        received.len(),
        "nothing emitted twice"
    );
    assert!(
        received.len() as u64 + u64::from(left) >= published,
        "lost notifications: {} emitted + {left} still queued < {published} published",
        received.len()
    );
    assert!(
        (received.len() as u64) < published,
        "the daemon stopped while messages kept coming"
    );
}

#[tokio::test]
async fn the_broker_password_never_reaches_the_logs() {
    // Nothing listens on port 1: every attempt fails and is logged.
    let mut daemon = Daemon::builder()
        .public_dir()
        .broker()
        .vars(&[
            ("ENABLE_RABBITMQ", "true"),
            (
                "RABBITMQ_URL",
                "amqp://bridge:hunter2-s3cret@127.0.0.1:1/%2f",
            ),
            ("RUST_LOG", "debug"),
        ])
        .start();
    daemon
        .wait_line("about the broker", |line| line.contains("RabbitMQ at"))
        .await;
    daemon.signal("INT");
    let status = daemon.wait_exit().await;
    let log = daemon.lines().join("\n");
    assert!(
        status.success(),
        "SIGINT exits 0 even while the broker is away"
    );
    assert!(!log.contains("hunter2-s3cret"), "{log}");
    assert!(log.contains("bridge:***@127.0.0.1:1"), "{log}");
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let mut daemon = Daemon::builder().public_dir().broker().json_logs().start();
    daemon.wait_ready().await;
    let log = daemon.stop().await;
    let mut lines = 0;
    for line in &log {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["message"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "start, listening and shutdown are logged");
}
