//! Socket.IO handshake authentication and the join/leave acknowledgements (contract 4, 5).

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::sio::{SioClient, TokenVia, silent_socket};
use crate::support::{Settings, TestApp, WAIT, metric, now};

#[tokio::test]
async fn connections_without_a_valid_token_are_refused_as_unauthorized() {
    let app = TestApp::spawn(Settings::local()).await;
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "1", "exp": now() + 60 }),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let cases = [
        ("no token", None),
        ("bad signature", Some(wrong_key)),
        (
            "expired",
            Some(app.token(json!({ "sub": "1", "exp": now() - 5 }))),
        ),
        (
            "unknown role",
            Some(app.token(json!({ "sub": "1", "role": "root" }))),
        ),
        (
            "customer without sub",
            Some(app.token(json!({ "role": "customer" }))),
        ),
        ("garbage", Some("abc.def.ghi".to_string())),
    ];
    for (case, token) in cases {
        let refused = SioClient::connect(app.addr, token.as_deref(), TokenVia::Auth).await;
        assert_eq!(refused.err().as_deref(), Some("unauthorized"), "{case}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_token_may_come_in_the_query_string() {
    let app = TestApp::spawn(Settings::local()).await;
    let token = app.customer_token("9");
    let socket = SioClient::connect(app.addr, Some(&token), TokenVia::Query)
        .await
        .expect("connects");
    assert_eq!(
        socket.join("customer:9").await,
        json!({ "ok": true, "room": "customer:9" })
    );
    app.stop().await;
}

#[tokio::test]
async fn customers_may_join_only_their_own_room() {
    let app = TestApp::spawn(Settings::local()).await;
    let socket = app.socket(&app.customer_token("123")).await;
    assert_eq!(
        socket.join("customer:123").await,
        json!({ "ok": true, "room": "customer:123" })
    );
    let forbidden = json!({ "ok": false, "error": "forbidden" });
    assert_eq!(socket.join("customer:456").await, forbidden);
    assert_eq!(socket.join("cms:dashboard").await, forbidden);
    let invalid = json!({ "ok": false, "error": "invalid_room" });
    for bad in [
        json!("lobby"),
        json!("customer:a b"),
        json!("cms:Dash"),
        json!(42),
        json!({ "after": "x" }),
    ] {
        assert_eq!(
            socket.emit_with_ack("join-room", bad.clone()).await,
            invalid,
            "{bad}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn cms_and_admin_may_join_any_room_service_none() {
    let app = TestApp::spawn(Settings::local()).await;
    for role in ["cms", "admin"] {
        let socket = app
            .socket(&app.token(json!({ "sub": "x", "role": role })))
            .await;
        for room in ["cms:dashboard", "cms:anything", "customer:123"] {
            assert_eq!(socket.join(room).await["ok"], true, "{role} {room}");
        }
    }
    let service = app.socket(&app.service_token()).await;
    assert_eq!(
        service.join("cms:dashboard").await,
        json!({ "ok": false, "error": "forbidden" })
    );
    app.stop().await;
}

#[tokio::test]
async fn leave_room_stops_delivery_and_validates_the_name() {
    let app = TestApp::spawn(Settings::local()).await;
    let mut socket = app
        .joined(&app.cms_token(), &["cms:stations", "cms:points"])
        .await;
    assert_eq!(socket.leave("cms:stations").await, json!({ "ok": true }));
    assert_eq!(
        socket.leave("nope").await,
        json!({ "ok": false, "error": "invalid_room" })
    );
    let post = |body: serde_json::Value| {
        let token = app.service_token();
        let app = &app;
        async move {
            assert_eq!(
                app.post("/api/notifications", Some(&token), body.to_string())
                    .await
                    .status(),
                202
            )
        }
    };
    post(json!({ "type": "to-stations", "category": "customer", "rooms": ["cms:stations"] })).await;
    post(json!({ "type": "marker", "category": "customer", "rooms": ["cms:points"] })).await;
    let got = socket.next().await;
    assert_eq!(got["type"], "marker", "left room still delivered: {got}");
    app.stop().await;
}

#[tokio::test]
async fn a_client_packet_larger_than_the_read_buffer_is_read_whole() {
    let app = TestApp::spawn(Settings::local()).await;
    let mut socket = app.joined(&app.cms_token(), &["cms:points"]).await;
    // ~8 KiB in one websocket frame: read across many 512-byte reads, under the 16 KiB limit.
    let long_name = format!("customer:{}", "9".repeat(8000));
    assert_eq!(
        socket.leave(&long_name).await,
        json!({ "ok": false, "error": "invalid_room" })
    );
    assert_eq!(
        socket.join("cms:stations").await["ok"],
        true,
        "the socket is still usable"
    );
    app.post(
        "/api/notifications",
        Some(&app.service_token()),
        json!({ "type": "after-big-packet", "category": "customer", "rooms": ["cms:stations"] })
            .to_string(),
    )
    .await;
    assert_eq!(socket.next().await["type"], "after-big-packet");
    app.stop().await;
}

#[tokio::test]
async fn with_auth_off_anyone_connects_and_joins_any_valid_room() {
    let app = TestApp::spawn(Settings {
        auth: false,
        ..Settings::local()
    })
    .await;
    let socket = SioClient::connect(app.addr, None, TokenVia::Auth)
        .await
        .expect("no token needed");
    assert_eq!(socket.join("customer:1").await["ok"], true);
    assert_eq!(socket.join("cms:dashboard").await["ok"], true);
    assert_eq!(
        socket.join("bad room").await,
        json!({ "ok": false, "error": "invalid_room" })
    );
    app.stop().await;
}

#[tokio::test]
async fn join_rate_and_room_count_are_limited() {
    let app = TestApp::spawn(
        Settings::local()
            .var("MAX_ROOMS_PER_SOCKET", "3")
            .var("JOIN_RATE_PER_SEC", "5"),
    )
    .await;
    let socket = app.socket(&app.cms_token()).await;
    for room in ["cms:a", "cms:b", "cms:c"] {
        assert_eq!(socket.join(room).await["ok"], true);
    }
    assert_eq!(
        socket.join("cms:d").await,
        json!({ "ok": false, "error": "too_many_rooms" })
    );
    assert_eq!(
        socket.join("cms:a").await["ok"],
        true,
        "re-joining a room is not a new room"
    );
    let mut limited = 0;
    for _ in 0..10 {
        if socket.join("cms:a").await["error"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 5,
        "burst above the rate was not limited ({limited})"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_and_the_others_stay() {
    let app = TestApp::spawn(
        Settings {
            auth: false,
            ..Settings::local()
        }
        .var("PING_INTERVAL_MS", "200")
        .var("PING_TIMEOUT_MS", "300"),
    )
    .await;
    let healthy = SioClient::connect(app.addr, None, TokenVia::Auth)
        .await
        .unwrap();
    let (open, silent) = silent_socket(app.addr).await;
    assert_eq!(
        (&open["pingInterval"], &open["pingTimeout"]),
        (&json!(200), &json!(300)),
        "clients learn the heartbeat from the handshake"
    );

    // The silent client is pinged, never answers, and the server closes it.
    let pings = tokio::time::timeout(
        WAIT,
        silent
            .filter(|m| std::future::ready(matches!(m, Message::Text(t) if t.as_str() == "2")))
            .count(),
    )
    .await
    .expect("the server closed the silent socket within the wait");
    assert!(pings >= 1, "it was pinged before it was closed");

    // The healthy client answered the same pings and is still served.
    assert_eq!(healthy.join("cms:dashboard").await["ok"], true);
    assert_eq!(
        metric(&app.metrics().await, "notify_bridge_sockets_connected"),
        1.0,
        "only the silent socket was closed"
    );
    app.stop().await;
}
