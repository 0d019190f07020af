//! A three-node cluster loses a node in the middle of a run: nothing lost, nothing shown twice,
//! and the daemon consumes again while the node is still down (contract v3 section 2).
//!
//! These run only when `NB_TEST_CLUSTER_URLS` names the three nodes of a cluster started by
//! `scripts/cluster.sh` (`make test-brokers` does both); otherwise each says it was skipped.
//! They kill and restart nodes through that script, so they must not run beside each other:
//! they take [`CLUSTER_LOCK`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::{
    Settings, SioClient, TestApp, Topology, WAIT, open_publisher_to, skip, unique,
};

/// Notifications per run.
const TOTAL: u64 = 2000;
/// How many each socket has seen when the node is killed.
const BEFORE_KILL: usize = 500;
/// How long the killed node stays down.
const DOWN_FOR: Duration = Duration::from_secs(60);
/// The daemon consumes and emits again within this, counted from the kill.
const RESUMES_WITHIN: Duration = Duration::from_secs(10);

/// One cluster test at a time: each kills a node of the one cluster.
static CLUSTER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cluster under test: its nodes' AMQP URLs, `nbc1`, `nbc2`, `nbc3` in that order.
struct Cluster {
    urls: Vec<String>,
}

impl Cluster {
    /// The cluster `NB_TEST_CLUSTER_URLS` names, or `None` (and the test says it is skipped).
    fn from_env() -> Option<Cluster> {
        let urls: Vec<String> = std::env::var("NB_TEST_CLUSTER_URLS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            skip("no cluster: NB_TEST_CLUSTER_URLS is unset (`make test-brokers` starts one)");
            return None;
        }
        assert_eq!(urls.len(), 3, "NB_TEST_CLUSTER_URLS names three nodes");
        Some(Cluster { urls })
    }

    fn url(&self, node: Node) -> &str {
        &self.urls[node.0 - 1]
    }

    /// The daemon's `RABBITMQ_URL`: every node, `first` first (it connects to the first that
    /// answers).
    fn urls_starting_with(&self, first: Node) -> String {
        let mut nodes = vec![first];
        nodes.extend(NODES.into_iter().filter(|n| *n != first));
        nodes
            .iter()
            .map(|n| self.url(*n))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Node(usize);
const NODES: [Node; 3] = [Node(1), Node(2), Node(3)];

impl Node {
    fn name(self) -> String {
        format!("nbc{}", self.0)
    }
}

/// `scripts/cluster.sh ARGS`, bounded; its stdout.
async fn cluster_sh(args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(150),
        tokio::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("scripts/cluster.sh {args:?} took too long"))
    .expect("bash runs");
    assert!(
        output.status.success(),
        "scripts/cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The node that leads `queue` (a quorum queue's or a stream's leader, a classic queue's node).
async fn leader(queue: &str) -> String {
    cluster_sh(&["leader", queue]).await
}

/// A node killed with `kill -9`; dropping it starts the node again, so that a failing test
/// leaves the cluster whole for the next one.
struct Killed {
    node: Node,
    at: Instant,
    restarted: bool,
}

impl Killed {
    async fn kill(node: Node) -> Killed {
        cluster_sh(&["kill", &node.name()]).await;
        Killed {
            node,
            at: Instant::now(),
            restarted: false,
        }
    }

    /// Starts the node again once it has been down for [`DOWN_FOR`].
    async fn restart_after_outage(mut self) {
        tokio::time::sleep_until(self.at + DOWN_FOR).await; // the outage itself, not a wait
        cluster_sh(&["restart", &self.node.name()]).await;
        self.restarted = true;
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if !self.restarted {
            let _ = std::process::Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
                .args(["restart", &self.node.name()])
                .status();
        }
    }
}

/// Publishes `TOTAL` notifications, each with its own messageId, to `exchange` through `url`,
/// each confirmed before the next: a nack or a lost channel is retried with the same messageId,
/// as a producer that needs exactly once does. `confirmed` counts those confirmed so far.
async fn produce(url: String, exchange: String, customer: String, confirmed: Arc<AtomicU64>) {
    let run = unique("cluster");
    let (mut connection, mut channel) = open_publisher_to(&url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in 0..TOTAL {
        let body = json!({
            "type": "cluster.load",
            "recipients": [customer],
            "data": { "n": n },
            "messageId": format!("{run}-{n}"),
        })
        .to_string();
        loop {
            assert!(Instant::now() < deadline, "publishing {n} never confirmed");
            let attempt = async {
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        "notification.customer".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await
            };
            match tokio::time::timeout(WAIT, attempt).await {
                Ok(Ok(confirm)) if confirm.is_ack() => break,
                Ok(Ok(_nack)) => {}
                Ok(Err(_)) | Err(_) => {
                    let _ = connection.close(200, "retry".into()).await;
                    (connection, channel) = open_publisher_to(&url).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // back off before a retry
        }
        confirmed.store(n + 1, Ordering::SeqCst);
        // About 200 a second: the run spans the kill and the recovery.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What one socket saw: `n` of each notification, and the last id (its cursor).
#[derive(Default)]
struct Seen {
    ns: Vec<u64>,
    cursor: Option<String>,
}

impl Seen {
    fn push(&mut self, notification: &Value) {
        self.ns
            .push(notification["data"]["n"].as_u64().expect("data.n"));
        self.cursor = notification["id"].as_str().map(str::to_owned);
    }

    /// Takes from `socket` until this has `count` notifications (each bounded by [`WAIT`]).
    async fn take(&mut self, socket: &mut SioClient, count: usize) {
        while self.ns.len() < count {
            let notification = socket.next().await;
            self.push(&notification);
        }
    }

    fn assert_exactly_once(&self, who: &str) {
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for n in &self.ns {
            *counts.entry(*n).or_default() += 1;
        }
        let lost: Vec<u64> = (0..TOTAL).filter(|n| !counts.contains_key(n)).collect();
        let twice: Vec<(&u64, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
        assert!(lost.is_empty(), "{who}: {} lost: {lost:?}", lost.len());
        assert!(twice.is_empty(), "{who}: shown twice: {twice:?}");
        assert_eq!(self.ns.len() as u64, TOTAL, "{who}");
    }
}

/// Which node the run kills.
enum Victim {
    /// The node that leads the stream; the daemon is connected to another one.
    StreamLeader,
    /// The node the daemon is connected to, which leads the intake queue.
    DaemonsNode,
}

async fn run_through_a_node_loss(cluster: &Cluster, victim: Victim) {
    // The daemon connects to nbc1 (its first URL), and the test's own connections go to nbc2,
    // which is never killed.
    let (daemon_node, test_node) = (Node(1), Node(2));
    let topology = Topology::fresh_on(cluster.url(test_node));
    let stream = format!("{}.log", topology.queue);
    if let Victim::StreamLeader = victim {
        // The stream is led by the node it is declared on: declared through nbc3, with the
        // daemon's own arguments, it is led by a node the daemon is not connected to.
        let (connection, channel) = open_publisher_to(cluster.url(Node(3))).await;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert("x-max-age".into(), AMQPValue::LongString("24h".into()));
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(stream.as_str().into(), durable, arguments)
            .await
            .expect("the stream is declared on nbc3");
        let _ = connection.close(200, "declared".into()).await;
    }
    let app = TestApp::spawn(Settings {
        broker_url: Some(cluster.urls_starting_with(daemon_node)),
        test_broker: Some(cluster.url(test_node).to_owned()),
        exchange: Some(topology.exchange.clone()),
        queue: Some(topology.queue.clone()),
        ..Settings::rabbit()
    })
    .await;
    let victim = match victim {
        Victim::StreamLeader => {
            let leader = leader(&stream).await;
            assert_eq!(
                leader, "nbc3",
                "the stream is led by the node it was declared on"
            );
            Node(3)
        }
        Victim::DaemonsNode => {
            assert_eq!(
                leader(&topology.queue).await,
                daemon_node.name(),
                "the intake queue is led by the node the daemon declared it through"
            );
            daemon_node
        }
    };

    let customer_id = "cluster-7";
    let customer_token = app.customer_token(customer_id);
    let customer_room = format!("customer:{customer_id}");
    let mut customer = app.joined(&customer_token, &[&customer_room]).await;
    let mut dashboard = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    // Stays connected throughout: it shows when the daemon emits again after the kill.
    let mut watcher = app.joined(&app.cms_token(), &["cms:dashboard"]).await;

    let confirmed = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(
        cluster.url(test_node).to_owned(),
        topology.exchange.clone(),
        customer_id.to_owned(),
        confirmed.clone(),
    ));
    let (mut by_customer, mut by_dashboard, mut by_watcher) =
        (Seen::default(), Seen::default(), Seen::default());
    by_customer.take(&mut customer, BEFORE_KILL).await;
    by_dashboard.take(&mut dashboard, BEFORE_KILL).await;

    // The two clients go away as the node dies, and come back with their cursors.
    drop(customer);
    drop(dashboard);
    let killed = Killed::kill(victim).await;
    // The one in flight may have been sent before the kill; every later one was sent after.
    let published_after_kill = confirmed.load(Ordering::SeqCst) + 1;

    // The daemon consumes and emits again while the node is down: something published after
    // the kill reaches the watcher within RESUMES_WITHIN of it.
    let resumed = tokio::time::timeout_at(killed.at + RESUMES_WITHIN, async {
        loop {
            let notification = watcher.next().await;
            by_watcher.push(&notification);
            if by_watcher
                .ns
                .last()
                .is_some_and(|n| *n >= published_after_kill)
            {
                return;
            }
        }
    })
    .await;
    assert!(
        resumed.is_ok(),
        "nothing published after the kill of {} was emitted within {RESUMES_WITHIN:?} \
         (watcher saw {} notifications)",
        victim.name(),
        by_watcher.ns.len()
    );

    // Back while the node is still down, each with its cursor.
    let mut customer = app.socket(&customer_token).await;
    let (ack, _) = customer
        .join_after(&customer_room, by_customer.cursor.as_deref().unwrap())
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(
        ack.get("reset").is_none(),
        "no reset after a node loss: {ack}"
    );
    let mut dashboard = app.socket(&app.cms_token()).await;
    let (ack, _) = dashboard
        .join_after("cms:dashboard", by_dashboard.cursor.as_deref().unwrap())
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(
        ack.get("reset").is_none(),
        "no reset after a node loss: {ack}"
    );

    tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .expect("every notification confirmed")
        .expect("the producer");
    // Everything arrives, and then nothing more: a marker published last comes after all.
    let total = TOTAL as usize;
    by_watcher.take(&mut watcher, total).await;
    by_customer.take(&mut customer, total).await;
    by_dashboard.take(&mut dashboard, total).await;
    assert!(
        Instant::now() < killed.at + DOWN_FOR,
        "the run outlasted the outage: it no longer shows recovery while the node is down"
    );

    killed.restart_after_outage().await;
    app.publish_json(
        "notification.customer",
        json!({ "type": "marker", "recipients": [customer_id] }),
    )
    .await;
    for (socket, seen) in [
        (&mut watcher, &mut by_watcher),
        (&mut customer, &mut by_customer),
        (&mut dashboard, &mut by_dashboard),
    ] {
        for notification in socket.until_type("marker").await {
            seen.push(&notification);
        }
    }
    by_customer.assert_exactly_once("the customer socket");
    by_dashboard.assert_exactly_once("the cms:dashboard socket");
    by_watcher.assert_exactly_once("the socket that stayed connected");
    app.stop().await;
}

#[tokio::test]
async fn kill_9_of_the_stream_leader_mid_run_loses_nothing_and_shows_nothing_twice() {
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let _one_at_a_time = CLUSTER_LOCK.lock().await;
    run_through_a_node_loss(&cluster, Victim::StreamLeader).await;
}

#[tokio::test]
async fn kill_9_of_the_daemons_node_and_queue_leader_for_a_minute_loses_nothing() {
    let Some(cluster) = Cluster::from_env() else {
        return;
    };
    let _one_at_a_time = CLUSTER_LOCK.lock().await;
    run_through_a_node_loss(&cluster, Victim::DaemonsNode).await;
}
