//! The daemon in front of the internet: each test is an attack, and asserts what its target
//! would notice (refused with the contract's error, the connection cut in bounded time, memory
//! that does not grow).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::daemon::Daemon;
use crate::support::sio::TokenVia;
use crate::support::{Settings, SioClient, TestApp, WAIT, metric};

fn dev_mode() -> Settings {
    Settings {
        auth: false,
        ..Settings::local()
    }
}

/// A plain HTTP/1.1 request on a fresh connection, with the given extra header lines; the
/// status code and the body (connection closed by the server after the answer).
async fn raw_http(addr: SocketAddr, request_line: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{request_line}\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within the wait")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json_body(body: &str) -> Value {
    // The answer may be chunked: the JSON object is between the first `{` and the last `}`.
    let start = body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {body:?}"));
    let end = body.rfind('}').unwrap() + 1;
    serde_json::from_str(&body[start..end]).unwrap()
}

const POLLING_HANDSHAKE: &str = "GET /socket.io/?EIO=4&transport=polling HTTP/1.1";

#[tokio::test]
async fn a_dev_mode_daemon_refuses_whatever_came_through_a_proxy() {
    let app = TestApp::spawn(dev_mode()).await;
    for header in ["X-Forwarded-For", "Forwarded", "X-Real-IP", "Via"] {
        for request_line in [
            "GET /api/config HTTP/1.1",
            "GET /api/notifications?room=cms:dashboard HTTP/1.1",
            "GET /customer.html HTTP/1.1",
            POLLING_HANDSHAKE,
        ] {
            let (status, body) = raw_http(app.addr, request_line, &[(header, "203.0.113.7")]).await;
            assert_eq!(status, 403, "{header} on {request_line}: {body}");
            assert_eq!(json_body(&body)["error"], "forbidden", "{body}");
        }
    }
    // The websocket handshake, as nginx's recipe forwards it.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket",
            app.addr
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403),
        "{refused:?}"
    );
    // Straight from loopback it serves, and it says that auth is off.
    let (status, _) = raw_http(app.addr, POLLING_HANDSHAKE, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&app.metrics().await, "notify_bridge_auth_disabled"),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn an_explicit_opt_out_or_real_auth_may_sit_behind_a_proxy() {
    for (settings, auth_off) in [
        (Settings::local().var("AUTH_DISABLED", "true"), 1.0),
        (Settings::local(), 0.0),
    ] {
        let app = TestApp::spawn(settings).await;
        let (status, _) = raw_http(
            app.addr,
            "GET /api/config HTTP/1.1",
            &[("X-Forwarded-For", "203.0.113.7")],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            metric(&app.metrics().await, "notify_bridge_auth_disabled"),
            auth_off
        );
        app.stop().await;
    }
}

/// A raw TCP connection upgraded to a websocket on the Socket.IO path.
async fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, tcp.read_exact(&mut byte))
            .await
            .expect("upgrade answer within the wait")
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

#[tokio::test]
async fn a_frame_header_declaring_16_mib_closes_the_connection_before_its_payload_is_read() {
    const CONNECTIONS: usize = 10;
    const SENT_EACH: usize = 4 << 20;
    let mut daemon = Daemon::builder().var("RUST_LOG", "warn").start();
    daemon.wait_listening().await;
    let before = daemon.rss();

    let attacks = (0..CONNECTIONS).map(|_| async {
        let mut tcp = raw_websocket(daemon.addr).await;
        let started = Instant::now();
        // A masked text frame whose header declares 16 MiB, then as much of it as the daemon
        // takes: a daemon that accepts the frame buffers every byte.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(16u64 << 20).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        tcp.write_all(&header).await.unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        let mut sink = [0u8; 4096];
        let (mut reader, mut writer) = tcp.split();
        let closed = loop {
            // Reads (the open packet, a close frame) and writes race; the end of either
            // means the daemon has hung up.
            tokio::select! {
                read = reader.read(&mut sink) => match read {
                    Ok(0) | Err(_) => break true,
                    Ok(_) => {}
                },
                written = writer.write_all(&chunk), if sent < SENT_EACH => match written {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break true,
                },
                _ = tokio::time::sleep(WAIT) => break false,
            }
        };
        (closed, started.elapsed(), sent)
    });
    let results = futures_util::future::join_all(attacks).await;
    let after = daemon.rss();
    for (closed, elapsed, sent) in &results {
        assert!(
            closed,
            "the connection was still open after {elapsed:?} ({sent} bytes sent)"
        );
    }
    let grown = after.saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "RSS grew by {} KiB for {CONNECTIONS} oversized frames",
        grown / 1024
    );
}

#[tokio::test]
async fn idle_engine_io_sessions_give_up_in_seconds_and_their_number_is_capped() {
    let app = TestApp::spawn(Settings::local().var("MAX_PENDING_CONNECTIONS", "3")).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let open = ws.next().await.unwrap().unwrap();
        assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
        idle.push(ws);
    }
    // Three sessions that never CONNECT: a fourth handshake is turned away...
    let (status, body) = raw_http(app.addr, POLLING_HANDSHAKE, &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(json_body(&body)["error"], "server_full");
    // ...and each idle one is closed within a few seconds (not socketioxide's 45).
    for mut ws in idle {
        let ended = tokio::time::timeout(Duration::from_secs(8), async {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message
                    && text.as_str() == "2"
                {
                    // Answering pings keeps a session alive only by the heartbeat's rules.
                    let _ = futures_util::SinkExt::send(&mut ws, Message::text("3")).await;
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "an idle session was still open after {:?}",
            opened.elapsed()
        );
    }
    assert!(opened.elapsed() < Duration::from_secs(8));
    // Their slots are free again: a real client connects.
    let client = SioClient::connect(app.addr, Some(&app.customer_token("1")), TokenVia::Auth).await;
    assert!(client.is_ok(), "{:?}", client.err());
    app.stop().await;
}

#[tokio::test]
async fn a_refused_token_does_not_keep_its_session_open() {
    let app = TestApp::spawn(Settings::local()).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.next().await.unwrap().unwrap();
    futures_util::SinkExt::send(&mut ws, Message::text(r#"40{"token":"forged"}"#))
        .await
        .unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        let mut refused = false;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = &message {
                refused |= text.starts_with("44");
                if text.as_str() == "2" {
                    let _ = futures_util::SinkExt::send(&mut ws, Message::text("3")).await;
                }
            }
        }
        refused
    })
    .await;
    assert_eq!(
        ended,
        Ok(true),
        "refused, then closed within 8 s ({:?})",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_slow_header_is_cut_off_within_about_thirty_seconds() {
    let app = TestApp::spawn(dev_mode()).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /api/config HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    // One more header byte every two seconds: never a whole request head.
    let cut = loop {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => break true,
                Ok(_) => break true, // an error answer (408) counts as a cut as well
            },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                if started.elapsed() > Duration::from_secs(40) {
                    break false;
                }
                if tcp.write_all(b"X").await.is_err() {
                    break true;
                }
            }
        }
    };
    assert!(
        cut,
        "a slowloris connection was still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(36),
        "cut off after {:?}",
        started.elapsed()
    );
    // Other clients were served meanwhile and still are.
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_page_on_another_origin_cannot_open_a_socket() {
    let app = TestApp::spawn(Settings::local()).await;
    let evil = [("Origin", "https://evil.example")];
    let (status, body) = raw_http(app.addr, POLLING_HANDSHAKE, &evil).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(json_body(&body)["error"], "forbidden");

    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket",
            app.addr
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403),
        "{refused:?}"
    );

    // The page's own origin, and a client that sends none (not a browser), are served.
    let own = format!("http://{}", app.addr);
    let (status, _) = raw_http(app.addr, POLLING_HANDSHAKE, &[("Origin", &own)]).await;
    assert_eq!(status, 200);
    let (status, _) = raw_http(app.addr, POLLING_HANDSHAKE, &[]).await;
    assert_eq!(status, 200);
    app.stop().await;

    // CORS_ORIGINS lets the listed origin in, and only it.
    let app =
        TestApp::spawn(Settings::local().var("CORS_ORIGINS", "https://app.example.com")).await;
    let (status, _) = raw_http(
        app.addr,
        POLLING_HANDSHAKE,
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = raw_http(app.addr, POLLING_HANDSHAKE, &evil).await;
    assert_eq!(status, 403);
    app.stop().await;
}

#[tokio::test]
async fn a_burst_of_connections_never_overshoots_max_connections() {
    const LIMIT: usize = 5;
    let app = TestApp::spawn(dev_mode().var("MAX_CONNECTIONS", &LIMIT.to_string())).await;
    let burst = (0..40).map(|_| SioClient::connect(app.addr, None, TokenVia::Auth));
    let results = futures_util::future::join_all(burst).await;
    let connected = results.iter().filter(|r| r.is_ok()).count();
    let full = results
        .iter()
        .filter(|r| r.as_ref().err().map(String::as_str) == Some("server_full"))
        .count();
    assert_eq!((connected, full), (LIMIT, 40 - LIMIT));
    assert_eq!(
        metric(&app.metrics().await, "notify_bridge_sockets_connected"),
        LIMIT as f64
    );
    drop(results);
    app.stop().await;
}

#[tokio::test]
async fn one_token_cannot_take_every_slot() {
    let app = TestApp::spawn(Settings::local().var("MAX_CONNECTIONS_PER_SUB", "2")).await;
    let token = app.customer_token("7");
    let _first = app.socket(&token).await;
    let _second = app.socket(&token).await;
    let third = SioClient::connect(app.addr, Some(&token), TokenVia::Auth).await;
    assert_eq!(third.err().as_deref(), Some("too_many_connections"));
    // Another customer is not affected.
    let other = SioClient::connect(app.addr, Some(&app.customer_token("8")), TokenVia::Auth).await;
    assert!(other.is_ok(), "{:?}", other.err());
    app.stop().await;
}

#[tokio::test]
async fn ingest_takes_json_only() {
    let app = TestApp::spawn(Settings::local()).await;
    let mut cms = app.joined(&app.cms_token(), &["cms:dashboard"]).await;
    let body = json!({ "type": "forged", "category": "station" }).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let answer = reqwest::Client::new()
            .post(format!("{}/api/notifications", app.base))
            .bearer_auth(app.service_token())
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 415, "{content_type}");
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["error"], "unsupported_media_type");
    }
    let accepted = app
        .post(
            "/api/notifications",
            Some(&app.service_token()),
            json!({ "type": "real", "category": "station" }).to_string(),
        )
        .await;
    assert_eq!(accepted.status(), 202);
    // Only the JSON one reached the dashboard.
    assert_eq!(cms.next().await["type"], "real");
    app.stop().await;
}

#[tokio::test]
async fn a_failed_publish_tells_the_producer_nothing_about_the_broker() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    // The exchange goes away under the daemon: the broker's error names it, its vhost and
    // the client library's channel state.
    app.channel()
        .exchange_delete(app.exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    let answer = app
        .post(
            "/api/notifications",
            Some(&app.service_token()),
            json!({ "type": "t", "category": "station" }).to_string(),
        )
        .await;
    assert_eq!(answer.status(), 503);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["error"], "broker_unavailable");
    let message = answer["message"].as_str().unwrap();
    for secret in [
        app.exchange.as_str(),
        "vhost",
        "guest",
        "127.0.0.1",
        "5672",
        "lapin",
        "error",
    ] {
        assert!(!message.contains(secret), "{secret:?} in {message:?}");
    }
}

#[tokio::test]
async fn a_poll_for_more_rooms_than_a_socket_may_join_is_refused() {
    let app = TestApp::spawn(Settings::local().var("MAX_ROOMS_PER_SOCKET", "3")).await;
    let rooms = |n: usize| {
        (0..n)
            .map(|i| format!("room=customer:{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let answer = app
        .get(
            &format!("/api/notifications?{}", rooms(4)),
            Some(&app.cms_token()),
        )
        .await;
    assert_eq!(answer.status(), 400);
    assert_eq!(
        answer.json::<Value>().await.unwrap()["error"],
        "too_many_rooms"
    );
    let answer = app
        .get(
            &format!("/api/notifications?{}", rooms(3)),
            Some(&app.cms_token()),
        )
        .await;
    assert_eq!(answer.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn pages_cannot_be_framed_sniffed_or_leak_their_address() {
    let app = TestApp::spawn(Settings::local()).await;
    for path in ["/", "/customer.html", "/dashboard.html", "/api/config"] {
        let answer = app.get(path, None).await;
        assert_eq!(answer.status(), 200, "{path}");
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
    }
    app.stop().await;
}

/// The binary with `vars`: its exit status and log, or `None` if it was still running
/// (serving) after the wait, when it is killed.
async fn run_binary(vars: &[(&str, &str)]) -> Option<(Option<i32>, String)> {
    let mut daemon = Daemon::builder().vars(vars).start();
    let status = daemon.wait_exit_within(WAIT).await?;
    Some((status.code(), daemon.lines().join("\n")))
}

#[tokio::test]
async fn a_weak_or_example_secret_on_a_public_host_refuses_to_start() {
    for secret in ["hunter2", "change-me-to-a-long-random-secret"] {
        let (code, stderr) = run_binary(&[("HOST", "0.0.0.0"), ("JWT_SECRET", secret)])
            .await
            .unwrap_or_else(|| panic!("JWT_SECRET={secret} on 0.0.0.0: the daemon started"));
        assert_eq!(code, Some(2), "{secret}: {stderr}");
        assert!(stderr.contains("JWT_SECRET"), "{stderr}");
        assert!(
            !stderr.contains(secret),
            "the secret is not printed: {stderr}"
        );
    }
}

/// Posts notifications of about `pad` bytes to `cms:dashboard` until the daemon has given up
/// on a stalled socket there; the number posted by then, or `None` after `max_posts`.
async fn post_until_a_socket_stalls(app: &TestApp, pad: usize, max_posts: usize) -> Option<usize> {
    let padding = "x".repeat(pad);
    for n in 0..max_posts {
        let body =
            json!({ "type": "bulk", "category": "station", "data": { "n": n, "pad": padding } });
        assert_eq!(
            app.post("/api/notifications", None, body.to_string())
                .await
                .status(),
            202
        );
        if n % 10 == 9 && metric(&app.metrics().await, "notify_bridge_sockets_stalled_total") == 1.0
        {
            return Some(n + 1);
        }
    }
    None
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_for_its_overflow_not_a_heartbeat() {
    let app = TestApp::spawn(
        dev_mode()
            .var("SOCKET_BUFFER", "16")
            .var("HISTORY_PER_ROOM", "8"),
    )
    .await;
    let mut stalled = crate::support::sio::stalled_socket(app.addr, "cms:dashboard").await;
    // Far more than the stalled socket's TCP buffers and 16 queued packets hold; stops as
    // soon as the daemon has given up on it.
    let given_up = post_until_a_socket_stalls(&app, 4096, 3000).await;
    assert!(
        given_up.is_some(),
        "the stalled socket was never given up on"
    );
    // The daemon lets go of it at once, while the client still reads nothing (it does not wait
    // for writes the client would never take), and says why: its queue overflowed, not a
    // heartbeat it missed.
    let overflowed = "notify_bridge_sockets_disconnected_total{reason=\"queue_overflow\"}";
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let text = app.metrics().await;
        if text.contains(overflowed) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(metric(&text, overflowed), 1.0, "{text}");
    assert!(!text.contains("reason=\"heartbeat_timeout\""), "{text}");
    // Reading again, the client finds its connection ended.
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
async fn large_notifications_to_a_client_that_stops_reading_are_bounded_in_bytes() {
    // The packet bound alone would let this socket hold 4,096 × 100 KB = 400 MB.
    let app = TestApp::spawn(
        dev_mode()
            .var("SOCKET_BUFFER", "4096")
            .var("SOCKET_BUFFER_BYTES", "262144")
            .var("HISTORY_PER_ROOM", "8"),
    )
    .await;
    let _stalled = crate::support::sio::stalled_socket(app.addr, "cms:dashboard").await;
    // 40 MB: what the loopback TCP buffers take, and then far more than 256 KiB, but a tenth of
    // the packets the queue may hold.
    let posted = post_until_a_socket_stalls(&app, 100_000, 400).await;
    assert!(
        posted.is_some(),
        "400 notifications of 100 KB did not stall the socket: its queue is not bounded in bytes"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_replay_larger_than_a_socket_may_hold_at_once_is_paced_by_it_not_reset() {
    // A socket may hold 256 KiB, a quarter of it kept for live traffic.
    let app = TestApp::spawn(
        dev_mode()
            .var("SOCKET_BUFFER_BYTES", "262144")
            .var("HISTORY_PER_ROOM", "20"),
    )
    .await;
    let padding = "x".repeat(50_000);
    for n in 0..10 {
        let body = json!({ "type": format!("n{n}"), "category": "customer",
            "recipients": ["77"], "data": { "pad": padding } });
        let answer = app.post("/api/notifications", None, body.to_string()).await;
        assert_eq!(answer.status(), 202);
    }
    let page: Value = app
        .get("/api/notifications?room=customer:77&limit=1", None)
        .await
        .json()
        .await
        .unwrap();
    let first = page["notifications"][0]["id"].as_str().unwrap().to_owned();
    let mut socket = app.socket("").await;
    // Nine notifications of 50 KB follow the cursor: 450 KB, more than the socket may hold at
    // once: they are emitted as it reads them, all before the ack.
    let (ack, before_ack) = socket.join_after("customer:77", &first).await;
    assert_eq!(ack, json!({ "ok": true, "room": "customer:77" }));
    let replayed: Vec<String> = socket
        .drain()
        .iter()
        .map(|n| n["type"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..10).map(|n| format!("n{n}")).collect();
    assert_eq!((before_ack, replayed), (9, expected));
    // The socket was not closed for it: it hears what comes next.
    let body = json!({ "type": "live", "category": "customer", "recipients": ["77"] });
    assert_eq!(
        app.post("/api/notifications", None, body.to_string())
            .await
            .status(),
        202
    );
    assert_eq!(socket.next().await["type"], "live");
    app.stop().await;
}

#[tokio::test]
async fn a_fan_out_to_ten_thousand_rooms_is_refused_and_costs_no_history() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    // The reviewed attack: 10,900 recipients and a large `data`, about 130 KB, just under
    // MAX_MESSAGE_BYTES.
    let recipients: Vec<String> = (0..10_900).map(|i| format!("c{i}")).collect();
    let listed = serde_json::to_string(&recipients).unwrap().len();
    let data = "x".repeat(128_000 - listed);
    let attack =
        json!({ "type": "t", "category": "session", "recipients": recipients, "data": data });
    let answer = app
        .post(
            "/api/notifications",
            Some(&app.service_token()),
            attack.to_string(),
        )
        .await;
    assert_eq!(answer.status(), 400);
    assert_eq!(
        answer.json::<Value>().await.unwrap()["error"],
        "too_many_rooms"
    );
    // Over AMQP it is dead-lettered with the contract's reason, and nothing is held for it.
    let mut body = attack;
    body.as_object_mut().unwrap().remove("category");
    app.publish_json("notification.session", body).await;
    let dead = app.next_message(&app.dead_queue()).await;
    let reason = dead
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-notify-bridge-reason").cloned());
    assert_eq!(
        reason,
        Some(lapin::types::AMQPValue::LongString("too_many_rooms".into()))
    );
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "notify_bridge_history_rooms"), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn joining_a_room_again_with_a_cursor_does_not_replay_it_twice() {
    let app = TestApp::spawn(Settings::local()).await;
    for n in 0..20 {
        let body = json!({ "type": "t", "category": "station", "data": { "n": n } });
        let posted = app
            .post(
                "/api/notifications",
                Some(&app.service_token()),
                body.to_string(),
            )
            .await;
        assert_eq!(posted.status(), 202);
    }
    let socket = app.socket(&app.cms_token()).await;
    let (first, replayed) = socket.join_after("cms:stations", "unknown-0").await;
    assert_eq!((first["ok"].clone(), replayed), (json!(true), 20));
    // The same join again, a hundred times: every notification is already on this socket.
    for _ in 0..5 {
        let (again, total) = socket.join_after("cms:stations", "unknown-0").await;
        assert_eq!(again["ok"], true);
        assert_eq!(total, 20, "nothing replayed again");
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_and_forbidden_joins_use_up_the_join_rate() {
    let app = TestApp::spawn(Settings::local().var("JOIN_RATE_PER_SEC", "5")).await;
    let socket = app.socket(&app.customer_token("7")).await;
    // Probing: invalid names and other customers' rooms.
    for room in ["lobby", "customer:8", "cms:dashboard", "x", "customer:9"] {
        let ack = socket.join(room).await;
        assert_eq!(ack["ok"], false, "{room}");
    }
    // The burst is spent: even its own room is refused until the bucket refills.
    assert_eq!(socket.join("customer:7").await["error"], "rate_limited");
    app.stop().await;
}
