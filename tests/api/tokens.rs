//! Tokens end at `exp` on live sockets (contract v2 sections 4 and 5): an expiring admin token
//! kept open is told `token-expired` and cut off; `refresh-token` extends it with the same
//! `sub` and `role` only; `nbf`, `JWT_ISSUER` and `JWT_AUDIENCE` are enforced.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Settings, SioClient, TestApp, WAIT, now, sio::TokenVia};

/// What the server sent a raw Socket.IO connection, packet by packet.
#[derive(Debug, PartialEq)]
enum Packet {
    Event(String, Vec<Value>),
    Ack(u64, Value),
    Disconnect,
    Closed,
}

/// A Socket.IO connection that sees every packet, `token-expired` and DISCONNECT included.
struct Client {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_ack: u64,
}

impl Client {
    /// Connects with `token` in `auth`; `Err` is the `connect_error` message.
    async fn connect(app: &TestApp, token: &str) -> Result<Client, String> {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .expect("websocket connects in time")
            .expect("websocket connects");
        let mut client = Client { ws, next_ack: 1 };
        let open = client.text().await.expect("open packet");
        assert!(open.starts_with('0'), "{open}");
        client
            .ws
            .send(Message::text(format!("40{}", json!({ "token": token }))))
            .await
            .unwrap();
        let reply = client.text().await.expect("CONNECT answer");
        if let Some(error) = reply.strip_prefix("44") {
            let error: Value = serde_json::from_str(error).unwrap();
            return Err(error["message"].as_str().unwrap_or_default().to_owned());
        }
        assert!(reply.starts_with("40"), "{reply}");
        Ok(client)
    }

    /// The next text frame, answering pings; `None` once the connection is closed.
    async fn text(&mut self) -> Option<String> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
            {
                Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                    let _ = self.ws.send(Message::text("3")).await;
                }
                Some(Ok(Message::Text(text))) => return Some(text.as_str().to_owned()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn packet(&mut self) -> Packet {
        let Some(text) = self.text().await else {
            return Packet::Closed;
        };
        if text.starts_with("41") {
            return Packet::Disconnect;
        }
        // Engine.IO's CLOSE: the connection itself ends.
        if text == "1" {
            return Packet::Closed;
        }
        if let Some(event) = text.strip_prefix("42") {
            let mut parts: Vec<Value> = serde_json::from_str(event).expect("event JSON");
            let name = parts.remove(0).as_str().unwrap_or_default().to_owned();
            return Packet::Event(name, parts);
        }
        if let Some(ack) = text.strip_prefix("43") {
            let split = ack.find('[').expect("ack payload");
            let payload: Value = serde_json::from_str(&ack[split..]).expect("ack JSON");
            return Packet::Ack(ack[..split].parse().unwrap(), payload[0].clone());
        }
        panic!("unexpected packet {text}");
    }

    /// Emits with an ack id; the answer is read with [`Client::packet`].
    async fn emit(&mut self, event: &str, arg: Value) -> Result<u64, String> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws
            .send(Message::text(format!("42{id}{}", json!([event, arg]))))
            .await
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Emits and waits for the ack, failing on anything else.
    async fn call(&mut self, event: &str, arg: Value) -> Value {
        let id = self.emit(event, arg).await.expect("socket open");
        match self.packet().await {
            Packet::Ack(got, reply) if got == id => reply,
            other => panic!("expected the ack of {event}, got {other:?}"),
        }
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

#[tokio::test]
async fn an_admin_token_kept_open_is_told_it_expired_then_cut_off_and_cannot_join_again() {
    let app = TestApp::spawn(Settings::local()).await;
    let exp = now() + 2;
    let token = app.token(json!({ "sub": "ops", "role": "admin", "exp": exp }));
    let mut client = Client::connect(&app, &token).await.expect("connects");
    let joined = client.call("join-room", json!("cms:dashboard")).await;
    assert_eq!(joined["ok"], true, "{joined}");

    // A dashboard gets the statistics after its join (contract v3 section 5), and again at a
    // new minute; nothing else arrives until the token ends: then `token-expired` (no
    // argument), then the server's DISCONNECT.
    assert!(
        matches!(client.packet().await, Packet::Event(name, _) if name == "stats"),
        "the statistics follow the join of cms:dashboard"
    );
    let next = loop {
        match client.packet().await {
            Packet::Event(name, _) if name == "stats" => continue,
            other => break other,
        }
    };
    assert_eq!(next, Packet::Event("token-expired".into(), vec![]));
    assert!(
        unix_now() >= Duration::from_secs(exp),
        "token-expired came before exp"
    );
    assert!(
        unix_now() < Duration::from_secs(exp + 2),
        "token-expired came late"
    );
    assert_eq!(client.packet().await, Packet::Disconnect);

    // The socket can no longer join anything, and the token opens no new one.
    let asked = client.emit("join-room", json!("cms:stations")).await;
    if asked.is_ok() {
        let after = client.packet().await;
        assert!(
            matches!(after, Packet::Closed),
            "a join after exp was answered: {after:?}"
        );
    }
    assert_eq!(
        Client::connect(&app, &token).await.err().as_deref(),
        Some("unauthorized")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_before_exp_keeps_the_socket_past_the_old_exp() {
    let app = TestApp::spawn(Settings::local()).await;
    let exp = now() + 2;
    let token = app.token(json!({ "sub": "42", "role": "customer", "exp": exp }));
    let mut client = Client::connect(&app, &token).await.expect("connects");

    let new_exp = now() + 60;
    let fresh = app.token(json!({ "sub": 42, "role": "customer", "exp": new_exp }));
    let reply = client.call("refresh-token", json!(fresh)).await;
    assert_eq!(reply, json!({ "ok": true, "exp": new_exp }));

    // Well past the old exp, the socket still works and was told nothing.
    tokio::time::sleep_until(
        tokio::time::Instant::now() + (Duration::from_secs(exp + 1) - unix_now()),
    )
    .await;
    let joined = client.call("join-room", json!("customer:42")).await;
    assert_eq!(joined, json!({ "ok": true, "room": "customer:42" }));
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_naming_another_sub_or_role_is_refused_and_the_old_exp_stands() {
    let app = TestApp::spawn(Settings::local()).await;
    let exp = now() + 2;
    let token = app.token(json!({ "sub": "42", "role": "customer", "exp": exp }));
    let mut client = Client::connect(&app, &token).await.expect("connects");

    let later = now() + 600;
    for other in [
        app.token(json!({ "sub": "43", "role": "customer", "exp": later })),
        app.token(json!({ "sub": "42", "role": "cms", "exp": later })),
        app.token(json!({ "sub": "42", "role": "customer", "exp": 1_000_000 })),
        "not-a-jwt".to_owned(),
    ] {
        let reply = client.call("refresh-token", json!(other)).await;
        assert_eq!(reply, json!({ "ok": false, "error": "unauthorized" }));
    }
    // Still the old token's rights, and still its end.
    let forbidden = client.call("join-room", json!("customer:43")).await;
    assert_eq!(forbidden["error"], "forbidden");
    assert_eq!(
        client.packet().await,
        Packet::Event("token-expired".into(), vec![])
    );
    assert!(unix_now() < Duration::from_secs(exp + 2), "expired late");
    assert_eq!(client.packet().await, Packet::Disconnect);
    app.stop().await;
}

#[tokio::test]
async fn a_token_before_its_nbf_is_refused() {
    let app = TestApp::spawn(Settings::local()).await;
    let early = app.token(json!({ "sub": "42", "nbf": now() + 300 }));
    assert_eq!(
        Client::connect(&app, &early).await.err().as_deref(),
        Some("unauthorized")
    );
    assert_eq!(app.poll_status("customer:42", &early).await, 401);
    let valid = app.token(json!({ "sub": "42", "nbf": now() - 1 }));
    assert_eq!(app.poll_status("customer:42", &valid).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_set() {
    let app = TestApp::spawn(
        Settings::local()
            .var("JWT_ISSUER", "https://id.example.com")
            .var("JWT_AUDIENCE", "notify,cms"),
    )
    .await;
    let good =
        app.token(json!({ "sub": "42", "iss": "https://id.example.com", "aud": ["x", "notify"] }));
    let socket = SioClient::connect(app.addr, Some(&good), TokenVia::Auth).await;
    assert!(socket.is_ok(), "a token with iss and aud connects");
    assert_eq!(app.poll_status("customer:42", &good).await, 200);

    for bad in [
        json!({ "sub": "42" }),
        json!({ "sub": "42", "iss": "https://id.example.com" }),
        json!({ "sub": "42", "aud": "notify" }),
        json!({ "sub": "42", "iss": "https://evil.example.com", "aud": "notify" }),
        json!({ "sub": "42", "iss": "https://id.example.com", "aud": "billing" }),
    ] {
        let token = app.token(bad.clone());
        assert_eq!(
            Client::connect(&app, &token).await.err().as_deref(),
            Some("unauthorized"),
            "{bad}"
        );
        assert_eq!(app.poll_status("customer:42", &token).await, 401, "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn without_issuer_and_audience_settings_neither_claim_is_checked() {
    let app = TestApp::spawn(Settings::local()).await;
    let token = app.token(json!({ "sub": "42", "iss": "anyone", "aud": "anything" }));
    assert_eq!(app.poll_status("customer:42", &token).await, 200);
    app.stop().await;
}
