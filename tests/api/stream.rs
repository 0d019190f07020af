//! Contract v2 with RabbitMQ: one stream is the history every instance shares. Cursors are
//! stream positions, valid on any instance and across restarts; replay reaches past the memory
//! window; failover loses nothing.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::sio::{SioClient, TokenVia};
use crate::support::{
    SECRET, Settings, TestApp, Topology, WAIT, message_id, metric, requires_stream, token,
};

/// A second instance on the first one's exchange, queue and stream.
async fn peer_of(first: &TestApp, settings: Settings) -> TestApp {
    TestApp::spawn(Settings {
        exchange: Some(first.exchange.clone()),
        queue: Some(first.queue.clone()),
        ..settings
    })
    .await
}

fn ns(items: &[Value]) -> Vec<u64> {
    items
        .iter()
        .map(|n| n["data"]["n"].as_u64().unwrap())
        .collect()
}

/// A poll of `room` after `after` on `app`: (items, cursor, reset).
async fn poll(app: &TestApp, room: &str, after: Option<&str>) -> (Vec<Value>, String, bool) {
    let mut path = format!("/api/notifications?room={room}&limit=1000");
    if let Some(after) = after {
        path.push_str(&format!("&after={after}"));
    }
    let body: Value = app
        .get(&path, Some(&app.cms_token()))
        .await
        .json()
        .await
        .unwrap();
    (
        body["notifications"].as_array().unwrap().clone(),
        body["cursor"].as_str().unwrap().to_owned(),
        body["reset"].as_bool().unwrap(),
    )
}

/// Polls `app` until `room` holds at least `count` items after `after`.
async fn poll_until(app: &TestApp, room: &str, after: Option<&str>, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (items, _, _) = poll(app, room, after).await;
        if items.len() >= count {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} arrived",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_numbered(app: &TestApp, range: std::ops::Range<u64>) {
    for n in range {
        app.publish_json(
            "notification.station",
            json!({ "type": "load", "data": { "n": n }, "messageId": message_id() }),
        )
        .await;
    }
}

#[tokio::test]
async fn a_cursor_from_one_instance_continues_on_another_by_join_and_by_poll() {
    let a = TestApp::spawn(Settings::rabbit()).await;
    let b = peer_of(&a, Settings::rabbit()).await;
    let mut on_a = a.joined(&a.cms_token(), &["cms:stations"]).await;
    publish_numbered(&a, 0..5).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(on_a.next().await);
    }
    let cursor = seen[2]["id"].as_str().unwrap().to_owned();
    publish_numbered(&a, 5..8).await;
    poll_until(&b, "cms:stations", None, 8).await;

    // Failover by join: B replays what followed A's cursor, before the ack, without reset.
    let mut on_b = b.socket(&b.cms_token()).await;
    let (ack, before_ack) = on_b.join_after("cms:stations", &cursor).await;
    assert_eq!(ack["ok"], true);
    assert!(ack.get("reset").is_none(), "{ack}");
    assert_eq!(before_ack, 5);
    let replayed = on_b.drain();
    assert_eq!(ns(&replayed), [3, 4, 5, 6, 7]);
    // The same notification has the same id on both instances.
    assert_eq!(replayed[0]["id"], seen[3]["id"]);

    // Failover by poll.
    let (items, _, reset) = poll(&b, "cms:stations", Some(&cursor)).await;
    assert!(!reset);
    assert_eq!(ns(&items), [3, 4, 5, 6, 7]);
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn polling_that_alternates_between_instances_sees_each_notification_once() {
    let a = TestApp::spawn(Settings::rabbit()).await;
    let b = peer_of(&a, Settings::rabbit()).await;
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    for round in 0..6u64 {
        publish_numbered(&a, round * 10..round * 10 + 10).await;
        let app = if round % 2 == 0 { &a } else { &b };
        let items = poll_until(app, "cms:stations", cursor.as_deref(), 10).await;
        let (_, next, reset) = poll(app, "cms:stations", cursor.as_deref()).await;
        assert!(!reset, "round {round}");
        seen.extend(ns(&items));
        cursor = Some(next);
    }
    assert_eq!(seen, (0..60).collect::<Vec<_>>());
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_cursor_from_before_a_restart_continues_with_what_was_published_while_it_was_down() {
    requires_stream!(
        "a restarted instance starts with empty memory; only the stream keeps the cursor"
    );
    let topology = Topology::fresh();
    let settings = || Settings {
        exchange: Some(topology.exchange.clone()),
        queue: Some(topology.queue.clone()),
        ..Settings::rabbit()
    };
    let first = TestApp::spawn(settings()).await;
    publish_numbered(&first, 0..3).await;
    let items = poll_until(&first, "cms:stations", None, 3).await;
    let cursor = items[2]["id"].as_str().unwrap().to_owned();
    first.stop_keeping_topology().await;

    // Published while no instance runs: it waits in the queue.
    let publisher = TestApp::publisher_for(&topology.exchange).await;
    for n in 3..6 {
        publisher
            .publish_json(
                "notification.station",
                json!({ "type": "load", "data": { "n": n } }),
            )
            .await;
    }
    let second = TestApp::spawn(settings()).await;
    let items = poll_until(&second, "cms:stations", Some(&cursor), 3).await;
    assert_eq!(ns(&items), [3, 4, 5]);
    let (_, _, reset) = poll(&second, "cms:stations", Some(&cursor)).await;
    assert!(!reset);
    // A client that was offline through the restart rejoins with its cursor and gets it all.
    let socket = second.socket(&second.cms_token()).await;
    let (ack, replayed) = socket.join_after("cms:stations", &cursor).await;
    assert_eq!((ack["ok"].clone(), replayed), (json!(true), 3));
    second.stop_keeping_topology().await;
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_once_and_a_burst_arrives_in_order_on_both_instances()
{
    let a = TestApp::spawn(Settings::rabbit()).await;
    let b = peer_of(&a, Settings::rabbit()).await;
    let mut on_a = a.joined(&a.cms_token(), &["cms:stations"]).await;
    let mut on_b = b.joined(&b.cms_token(), &["cms:stations"]).await;
    for _ in 0..3 {
        a.publish("notification.station", b"not json").await;
    }
    for n in 0..300u64 {
        a.publish_json(
            "notification.station",
            json!({ "type": "load", "data": { "n": n } }),
        )
        .await;
    }
    for socket in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..300 {
            got.push(socket.next().await);
        }
        assert_eq!(ns(&got), (0..300).collect::<Vec<_>>());
    }
    for _ in 0..3 {
        a.next_message(&a.dead_queue()).await;
    }
    assert_eq!(
        a.queue_depth(&a.dead_queue()).await,
        0,
        "each dead-lettered once"
    );
    let dead = metric(
        &a.metrics().await,
        "notify_bridge_notifications_dead_lettered_total{category=\"station\",reason=\"not_json\"}",
    ) + metric_or_zero(
        &b.metrics().await,
        "notify_bridge_notifications_dead_lettered_total{category=\"station\",reason=\"not_json\"}",
    );
    assert_eq!(dead, 3.0);
    b.stop().await;
    a.stop().await;
}

fn metric_or_zero(text: &str, series: &str) -> f64 {
    if text.lines().any(|l| l.starts_with(series)) {
        metric(text, series)
    } else {
        0.0
    }
}

#[tokio::test]
async fn a_socket_dropped_for_three_seconds_at_400_a_second_gets_everything_it_missed() {
    requires_stream!("the replay reaches past the memory window into the stream");
    let app = TestApp::spawn(Settings::rabbit()).await;
    let mut watcher = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    let mut dropped = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    let producer = {
        let publisher = TestApp::publisher_for(&app.exchange).await;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_micros(2500));
            for n in 0..2000u64 {
                interval.tick().await;
                publisher
                    .publish_json(
                        "notification.customer",
                        json!({ "type": "load", "data": { "n": n } }),
                    )
                    .await;
            }
        })
    };
    let mut before = Vec::new();
    while before.len() < 200 {
        before.push(dropped.next().await);
    }
    let cursor = before.last().unwrap()["id"].as_str().unwrap().to_owned();
    drop(dropped);
    tokio::time::sleep(Duration::from_secs(3)).await; // the outage being simulated, not a wait
    let mut back = app.socket(&app.cms_token()).await;
    let (ack, _) = back.join_after("cms:dashboard", &cursor).await;
    assert_eq!(ack["ok"], true);
    assert!(
        ack.get("reset").is_none(),
        "no reset within RABBITMQ_REPLAY_MAX: {ack}"
    );
    producer.await.unwrap();
    let mut seen: Vec<u64> = ns(&before);
    let mut by_watcher = 0;
    while by_watcher < 2000 {
        watcher.next().await;
        by_watcher += 1;
    }
    while seen.len() < 2000 {
        seen.push(back.next().await["data"]["n"].as_u64().unwrap());
    }
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for n in &seen {
        *counts.entry(*n).or_default() += 1;
    }
    assert!(counts.values().all(|c| *c == 1), "none twice");
    assert_eq!(seen, (0..2000).collect::<Vec<_>>(), "everything, in order");
    let metrics = app.metrics().await;
    assert!(metric(&metrics, "notify_bridge_replays_total{source=\"stream\"}") >= 1.0);
    app.stop().await;
}

#[tokio::test]
async fn a_cursor_older_than_anything_replayable_answers_reset() {
    requires_stream!("RABBITMQ_REPLAY_MAX bounds a replay from the stream");
    let app = TestApp::spawn(
        Settings::rabbit()
            .var("HISTORY_PER_ROOM", "5")
            .var("RABBITMQ_REPLAY_MAX", "10"),
    )
    .await;
    publish_numbered(&app, 0..40).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let items = loop {
        let (items, _, _) = poll(&app, "cms:stations", None).await;
        if ns(&items).last() == Some(&39) {
            break items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ns(&items), [35, 36, 37, 38, 39]);
    // s-1 is 30 records before the window: beyond RABBITMQ_REPLAY_MAX.
    let (items, _, reset) = poll(&app, "cms:stations", Some("s-1")).await;
    assert!(reset);
    assert_eq!(ns(&items), [35, 36, 37, 38, 39], "the retained history");
    let socket = app.socket(&app.cms_token()).await;
    let (ack, replayed) = socket.join_after("cms:stations", "s-1").await;
    assert_eq!(ack["reset"], true, "{ack}");
    assert_eq!(replayed, 5);
    // Within RABBITMQ_REPLAY_MAX the stream serves it without a reset.
    let cursor = items[0]["id"].as_str().unwrap().replace("s-", "");
    let within = format!("s-{}", cursor.parse::<u64>().unwrap() - 8);
    let (items, _, reset) = poll(&app, "cms:stations", Some(&within)).await;
    assert!(!reset);
    assert_eq!(items.len(), 5 + 7);
    app.stop().await;
}

#[tokio::test]
async fn kill_9_of_the_active_instance_mid_stream_loses_nothing_and_shows_nothing_twice() {
    let topology = Topology::fresh();
    let vars = [
        ("ENABLE_RABBITMQ", "true"),
        ("JWT_SECRET", SECRET),
        ("RABBITMQ_URL", crate::support::broker_url()),
        ("RABBITMQ_EXCHANGE", topology.exchange.as_str()),
        ("RABBITMQ_QUEUE", topology.queue.as_str()),
        ("RABBITMQ_RECONNECT_MAX_MS", "500"),
    ];
    let mut first = Daemon::builder().public_dir().broker().vars(&vars).start();
    first.wait_ready().await;
    let mut second = Daemon::builder().public_dir().broker().vars(&vars).start();
    second.wait_ready().await;
    // A watcher on the survivor.
    let cms = token(json!({ "sub": "ops", "role": "cms" }));
    let mut watcher = SioClient::connect(second.addr, Some(&cms), TokenVia::Auth)
        .await
        .unwrap();
    assert_eq!(watcher.join("cms:stations").await["ok"], true);

    let publisher = TestApp::publisher_for(&topology.exchange).await;
    const TOTAL: u64 = 1200;
    let producer = tokio::spawn(async move {
        for n in 0..TOTAL {
            publisher
                .publish_json(
                    "notification.station",
                    json!({ "type": "load", "data": { "n": n }, "messageId": format!("kill9-{n}") }),
                )
                .await;
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 300 {
        seen.push(watcher.next().await["data"]["n"].as_u64().unwrap());
    }
    // The first started first, so it is the single active consumer.
    first.signal("KILL");
    first.wait_exit().await;
    producer.await.unwrap();
    while seen.len() < TOTAL as usize {
        // The survivor takes over (bounded by WAIT * 3, not next()'s WAIT: a loaded machine
        // can take longer than WAIT to fail over).
        let n = watcher.next_within(WAIT * 3).await;
        seen.push(n["data"]["n"].as_u64().unwrap());
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "nothing shown twice");
    assert_eq!(sorted, (0..TOTAL).collect::<Vec<_>>(), "nothing lost");
    drop(second);
}
