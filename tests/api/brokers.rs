//! The brokers operators run (contract v3 sections 1, 2, 3): queue types, several node URLs,
//! and the stream-less mode.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::support::{Settings, TestApp, Topology, open_publisher};

/// The type of an existing durable queue declared with `arguments`, found as an operator's
/// script would without the management plugin: the broker accepts a declare that names the
/// queue's own `x-queue-type` and refuses the other.
async fn queue_type(name: &str, arguments: FieldTable) -> &'static str {
    let (connection, _) = open_publisher().await;
    for kind in ["classic", "quorum"] {
        let channel = connection.create_channel().await.unwrap();
        let mut arguments = arguments.clone();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        let declared = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await;
        if declared.is_ok() {
            let _ = connection.close(200, "checked".into()).await;
            return kind;
        }
    }
    panic!("{name} is neither classic nor quorum");
}

/// The arguments the daemon declares its queue with (contract section 2).
fn intake_arguments(queue: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{queue}.dlx").as_str().into()),
    );
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    arguments
}

#[tokio::test]
async fn new_queues_are_quorum_queues_so_a_cluster_replicates_them() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    assert_eq!(
        queue_type(&app.queue, intake_arguments(&app.queue)).await,
        "quorum"
    );
    assert_eq!(
        queue_type(&app.dead_queue(), FieldTable::default()).await,
        "quorum"
    );
    // And they work: a notification goes through.
    let mut socket = app.joined(&app.customer_token("7"), &["customer:7"]).await;
    app.publish_json(
        "notification.session",
        json!({ "type": "charging.started", "recipients": [7] }),
    )
    .await;
    assert_eq!(socket.next().await["type"], "charging.started");
}

#[tokio::test]
async fn an_existing_classic_queue_from_v2_is_kept_as_it_is_and_works() {
    let topology = Topology::fresh();
    let (connection, channel) = open_publisher().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    // As v2 declared them: no x-queue-type, so classic on a broker whose default is classic.
    // Named here, so the queues are classic on a broker whose default is quorum too.
    let classic = |mut arguments: FieldTable| {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        arguments
    };
    channel
        .queue_declare(
            topology.queue.as_str().into(),
            durable,
            classic(intake_arguments(&topology.queue)),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            format!("{}.dead", topology.queue).as_str().into(),
            durable,
            classic(FieldTable::default()),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "declared".into()).await;

    let app = TestApp::spawn(Settings {
        exchange: Some(topology.exchange.clone()),
        queue: Some(topology.queue.clone()),
        ..Settings::rabbit()
    })
    .await;
    let mut socket = app.joined(&app.customer_token("8"), &["customer:8"]).await;
    app.publish_json(
        "notification.session",
        json!({ "type": "charging.stopped", "recipients": [8] }),
    )
    .await;
    assert_eq!(socket.next().await["type"], "charging.stopped");
    assert_eq!(
        queue_type(&topology.queue, intake_arguments(&topology.queue)).await,
        "classic"
    );
    app.publish("notification.session", b"not json").await;
    let dead = app.next_message(&app.dead_queue()).await;
    assert_eq!(&dead.delivery.data[..], b"not json");
    drop(app);
}

#[tokio::test]
async fn a_node_that_does_not_answer_is_passed_over_for_the_next_url_and_no_password_shows() {
    // Nothing listens on port 1: the first node is down.
    let urls = format!(
        "amqp://bridge:first-node-password@127.0.0.1:1/%2f,{}",
        crate::support::broker_url()
    );
    let app = TestApp::spawn(Settings {
        broker_url: Some(urls),
        ..Settings::rabbit()
    })
    .await;
    let ready: Value = app.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(ready["broker"], "connected");
    let mut socket = app.joined(&app.customer_token("9"), &["customer:9"]).await;
    app.publish_json(
        "notification.customer",
        json!({ "type": "customer.updated", "recipients": [9] }),
    )
    .await;
    assert_eq!(socket.next().await["type"], "customer.updated");
    assert!(!app.metrics().await.contains("first-node-password"));
}

/// Settings of one instance in the stream-less mode on `topology`.
fn streamless(topology: &Topology) -> Settings {
    Settings {
        exchange: Some(topology.exchange.clone()),
        queue: Some(topology.queue.clone()),
        ..Settings::rabbit()
    }
    .var("RABBITMQ_STREAM", "off")
}

/// The ids `socket` receives for the next `n` notifications.
async fn ids(socket: &mut crate::support::sio::SioClient, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(socket.next().await["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn without_streams_instances_give_the_same_ids_and_a_cursor_continues_on_another() {
    let topology = Topology::fresh();
    let a = TestApp::spawn(streamless(&topology)).await;
    let b = TestApp::spawn(streamless(&topology)).await;
    let token = a.customer_token("21");
    let mut on_a = a.joined(&token, &["customer:21"]).await;
    let mut on_b = b.joined(&token, &["customer:21"]).await;
    for n in 0..6 {
        a.publish_json(
            "notification.session",
            json!({ "type": "charging.progress", "recipients": [21], "data": { "n": n } }),
        )
        .await;
    }
    let seen_on_a = ids(&mut on_a, 6).await;
    let seen_on_b = ids(&mut on_b, 6).await;
    assert_eq!(
        seen_on_a, seen_on_b,
        "one id per notification on every instance"
    );
    assert!(
        seen_on_a.iter().all(|id| id.starts_with("f-")),
        "{seen_on_a:?}"
    );

    // A cursor from A continues on B.
    let page: Value = b
        .get(
            &format!("/api/notifications?room=customer:21&after={}", seen_on_a[2]),
            Some(&token),
        )
        .await
        .json()
        .await
        .unwrap();
    let continued: Vec<&str> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(continued, &seen_on_a[3..]);
    assert_eq!(page["reset"], false);

    // Dead letters once, however many instances.
    a.publish("notification.session", b"{not json").await;
    let dead = a.next_message(&a.dead_queue()).await;
    assert_eq!(&dead.delivery.data[..], b"{not json");
    assert_eq!(a.queue_depth(&a.dead_queue()).await, 0);

    // A restarted instance starts with empty memory: an older cursor is a reset.
    a.stop_keeping_topology().await;
    let again = TestApp::spawn(streamless(&topology)).await;
    b.publish_json(
        "notification.session",
        json!({ "type": "charging.stopped", "recipients": [21] }),
    )
    .await;
    assert_eq!(on_b.next().await["type"], "charging.stopped");
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    let page = loop {
        let page: Value = again
            .get(
                &format!("/api/notifications?room=customer:21&after={}", seen_on_a[2]),
                Some(&token),
            )
            .await
            .json()
            .await
            .unwrap();
        if page["notifications"]
            .as_array()
            .is_some_and(|n| !n.is_empty())
        {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(page["reset"], true, "{page}");
    assert_eq!(page["notifications"][0]["type"], "charging.stopped");
    drop(b);
    drop(again);
}

#[tokio::test]
async fn without_streams_a_cursor_from_before_a_reconnect_resets_even_in_a_room_quiet_since() {
    let topology = Topology::fresh();
    let proxy = crate::support::proxy::Proxy::to_broker().await;
    let a = TestApp::spawn(Settings {
        broker_url: Some(proxy.url()),
        ..streamless(&topology)
    })
    .await;
    let b = TestApp::spawn(streamless(&topology)).await;
    let token = a.customer_token("31");
    let mut on_a = a.joined(&token, &["customer:31"]).await;
    let mut on_b = b.joined(&token, &["customer:31"]).await;
    let mut stations_on_a = a.joined(&a.cms_token(), &["cms:stations"]).await;
    // messageIds: a message redelivered after the cut is appended again, and is emitted once.
    a.publish_json(
        "notification.session",
        json!({ "type": "before", "recipients": [31], "messageId": crate::support::unique("m") }),
    )
    .await;
    let before = on_a.next().await["id"].as_str().unwrap().to_owned();
    assert_eq!(on_b.next().await["type"], "before");

    // A's queue goes with its connection: what B appends meanwhile never reaches A.
    proxy.cut();
    a.wait_broker("reconnecting").await;
    b.publish_json(
        "notification.session",
        json!({ "type": "missed", "recipients": [31], "messageId": crate::support::unique("m") }),
    )
    .await;
    assert_eq!(on_b.next().await["type"], "missed");
    proxy.restore();
    a.wait_broker("connected").await;
    // Only another room hears of anything after the reconnect. A reads again once its new
    // queue is bound, a moment after it is connected: what goes before that is missed too.
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        b.publish_json(
            "notification.station",
            json!({ "type": "after", "rooms": ["cms:stations"] }),
        )
        .await;
        let heard =
            tokio::time::timeout(std::time::Duration::from_millis(500), stations_on_a.next()).await;
        if let Ok(notification) = heard {
            assert_eq!(notification["type"], "after");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A reads nothing after its reconnect"
        );
    }

    let page: Value = a
        .get(
            &format!("/api/notifications?room=customer:31&after={before}"),
            Some(&token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["reset"], true,
        "customer:31 may have lost a notification while A was away: {page}"
    );
    assert_eq!(page["notifications"][0]["type"], "before", "{page}");
    drop(b);
}
