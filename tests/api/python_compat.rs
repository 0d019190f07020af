//! python-socketio, as Python integrations run it, survives a rolling deploy: after a SIGTERM
//! restart it reconnects by itself, on websocket and on long-polling, and with its last id
//! misses nothing (contract v3 section 5: a stop looks like a lost connection).

use std::collections::HashSet;
use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use crate::support::daemon::Daemon;
use crate::support::{TestApp, Topology, WAIT};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/reconnect.py");
const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");

struct PythonClient {
    transport: &'static str,
    lines: Lines<BufReader<ChildStdout>>,
    _child: tokio::process::Child,
}

impl PythonClient {
    fn start(base: &str, transport: &'static str, room: &str) -> Self {
        assert!(
            std::path::Path::new(PYTHON).exists(),
            "python-socketio is not installed: run `make test` (scripts/ensure-python-client.sh)"
        );
        let mut child = Command::new(PYTHON)
            .args([
                SCRIPT,
                "--base",
                base,
                "--transport",
                transport,
                "--room",
                room,
            ])
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            transport,
            lines,
            _child: child,
        }
    }

    /// Lines until one that starts with `step`; returns the notification ids seen meanwhile.
    async fn until(&mut self, step: &str) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let line = tokio::time::timeout(WAIT * 2, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{}: no {step} in time", self.transport))
                .unwrap()
                .unwrap_or_else(|| panic!("{}: the client exited before {step}", self.transport));
            if std::env::var_os("TEST_LOG").is_some() {
                eprintln!("[python {}] {line}", self.transport);
            }
            if let Some(rest) = line.strip_prefix("N ") {
                ids.push(rest.split(' ').next().unwrap().to_owned());
            }
            if line.starts_with(step) {
                assert!(
                    !line.starts_with("JOINED") || line.contains(r#""ok": true"#),
                    "{}: {line}",
                    self.transport
                );
                return ids;
            }
        }
    }

    /// The next `n` notification ids.
    async fn ids(&mut self, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        while ids.len() < n {
            ids.extend(self.until("N ").await);
        }
        ids
    }
}

#[tokio::test]
async fn python_socketio_reconnects_by_itself_after_a_sigterm_restart_and_misses_nothing() {
    let topology = Topology::fresh();
    let vars = [
        ("ENABLE_RABBITMQ", "true"),
        ("RABBITMQ_EXCHANGE", topology.exchange.as_str()),
        ("RABBITMQ_QUEUE", topology.queue.as_str()),
    ];
    let mut first = Daemon::builder().public_dir().broker().vars(&vars).start();
    first.wait_ready().await;
    let port = first.port;
    let publisher = TestApp::publisher_for(&topology.exchange).await;
    let publish = |n: usize| {
        let publisher = &publisher;
        async move {
            publisher
                .publish_json(
                    "notification.session",
                    json!({ "type": format!("charging.progress.{n}"), "recipients": [42] }),
                )
                .await;
        }
    };

    let mut clients = [
        PythonClient::start(&first.base, "websocket", "customer:42"),
        PythonClient::start(&first.base, "polling", "customer:42"),
    ];
    for client in &mut clients {
        client.until("JOINED").await;
    }
    for n in 0..4 {
        publish(n).await;
    }
    let mut seen: Vec<Vec<String>> = Vec::new();
    for client in &mut clients {
        seen.push(client.ids(4).await);
    }

    // A rolling deploy: SIGTERM, then the next instance on the same address.
    // Stops in time, with exit status 0.
    first.stop().await;
    for n in 4..7 {
        // Published while no instance runs: the queue keeps them.
        publish(n).await;
    }
    let mut second = Daemon::builder()
        .port(port)
        .public_dir()
        .broker()
        .vars(&vars)
        .start();
    second.wait_ready().await;
    for (client, seen) in clients.iter_mut().zip(&mut seen) {
        // Reconnected by itself, and joined again after its last id.
        seen.extend(client.until("JOINED").await);
    }
    for n in 7..10 {
        publish(n).await;
    }
    for (client, seen) in clients.iter_mut().zip(&mut seen) {
        let missing = 10usize.saturating_sub(seen.len());
        seen.extend(client.ids(missing).await);
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(
            unique.len(),
            10,
            "{}: every notification once: {seen:?}",
            client.transport
        );
    }
    drop(second);
}
