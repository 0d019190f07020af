//! The official npm `socket.io-client` works with the daemon over both transports, and across
//! its default upgrade from polling to websocket: connect with a token, join with an ack,
//! receive a notification; and a bad token is refused.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use crate::support::{Settings, TestApp, WAIT};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/compat.mjs");

struct NodeClient {
    lines: Lines<BufReader<ChildStdout>>,
    _child: tokio::process::Child,
}

impl NodeClient {
    fn start(app: &TestApp, transport: &str, room: &str, token: &str, token_in: &str) -> Self {
        assert!(
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/node_modules/socket.io-client"
            ))
            .exists(),
            "socket.io-client is not installed: run `make test` (it runs npm ci)"
        );
        let mut child = Command::new("node")
            .args([
                SCRIPT,
                "--base",
                &app.base,
                "--transport",
                transport,
                "--room",
                room,
            ])
            .args(["--token", token, "--token-in", token_in])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node is installed");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            lines,
            _child: child,
        }
    }

    /// The next step line, `(STEP, JSON-or-text)`.
    async fn step(&mut self) -> (String, String) {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("node client answered in time")
            .unwrap()
            .expect("node client printed a step");
        let (step, rest) = line.split_once(' ').unwrap_or((&line, ""));
        (step.to_string(), rest.to_string())
    }
}

async fn join_and_receive(transport: &str, token_in: &str) {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let token = app.customer_token("123");
    let mut client = NodeClient::start(&app, transport, "customer:123", &token, token_in);

    let (step, ack) = client.step().await;
    assert_eq!(step, "JOINED");
    assert_eq!(
        serde_json::from_str::<Value>(&ack).unwrap(),
        json!({ "ok": true, "room": "customer:123" })
    );

    app.publish_json(
        "notification.session",
        json!({ "type": "charging.stopped", "recipients": [123], "data": { "kwh": 12.5 } }),
    )
    .await;
    let (step, payload) = client.step().await;
    assert_eq!(step, "NOTIFICATION");
    let n: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        (
            n["type"].as_str(),
            n["room"].as_str(),
            n["category"].as_str()
        ),
        (
            Some("charging.stopped"),
            Some("customer:123"),
            Some("session")
        )
    );
    assert_eq!(n["data"], json!({ "kwh": 12.5 }));
    app.stop().await;
}

#[tokio::test]
async fn official_client_over_websocket() {
    join_and_receive("websocket", "auth").await;
}

#[tokio::test]
async fn official_client_over_http_long_polling() {
    join_and_receive("polling", "auth").await;
}

#[tokio::test]
async fn official_client_upgrading_from_polling_to_websocket() {
    join_and_receive("upgrade", "auth").await;
}

#[tokio::test]
async fn official_client_with_the_token_in_the_query() {
    join_and_receive("polling", "query").await;
}

#[tokio::test]
async fn official_client_sees_unauthorized_for_a_bad_token() {
    let app = TestApp::spawn(Settings::local()).await;
    let mut client = NodeClient::start(&app, "websocket", "customer:1", "not-a-jwt", "auth");
    assert_eq!(
        client.step().await,
        ("REFUSED".to_string(), "unauthorized".to_string())
    );
    app.stop().await;
}
