//! Contract v3: a replay reaches `RABBITMQ_REPLAY_MAX` back whatever the socket's buffer,
//! paced by the socket; polling pages forward from its cursor; one token cannot starve the
//! others (`REPLAY_BUDGET_PER_SUB`), nor make the daemon hold more than a bounded amount of
//! memory; sockets that go or stop reading cost nothing more.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::daemon::Daemon;
use crate::support::sio::TokenVia;
use crate::support::{SECRET, Settings, SioClient, TestApp, WAIT, metric, token};

/// Publishes `bodies` to the app's exchange, all confirms awaited together.
async fn publish_all(app: &TestApp, routing_key: &str, bodies: impl Iterator<Item = Value>) {
    let mut confirms = Vec::new();
    for body in bodies {
        let confirm = app
            .channel()
            .basic_publish(
                app.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirm").is_ack());
    }
}

/// A poll's answer: (status, body, Retry-After).
async fn poll_raw(app: &TestApp, query: &str, token: &str) -> (u16, Value, Option<String>) {
    let response = app
        .get(&format!("/api/notifications?{query}"), Some(token))
        .await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap(), retry_after)
}

async fn poll(app: &TestApp, query: &str, token: &str) -> Value {
    let (status, body, _) = poll_raw(app, query, token).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The numbers of the numbered notifications among `items`.
fn ns(items: &[Value]) -> Vec<u64> {
    items
        .iter()
        .filter_map(|n| n["data"]["n"].as_u64())
        .collect()
}

/// Publishes a notification to `room`'s customer and returns its id: a cursor from before
/// what is published next.
async fn mark(app: &TestApp, customer: &str, token: &str) -> String {
    app.publish_json(
        "notification.customer",
        json!({ "type": "mark", "recipients": [customer] }),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let page = poll(app, &format!("room=customer:{customer}"), token).await;
        if let Some(mark) = page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|n| n["type"] == "mark")
        {
            return mark["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the mark never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `count` notifications numbered from 0 to `customer`, padded with `pad` bytes, and
/// waits until the daemon has read the last one.
async fn publish_numbered(app: &TestApp, customer: &str, count: u64, pad: usize, token: &str) {
    let padding = "x".repeat(pad);
    publish_all(
        app,
        "notification.customer",
        (0..count).map(|n| {
            json!({ "type": "n", "recipients": [customer], "data": { "n": n, "pad": padding } })
        }),
    )
    .await;
    // Large records take the broker longer: allow 10 MB/s on top (305 MB: 30 s more).
    let megabytes = count * pad as u64 / 1_000_000;
    let deadline = Instant::now() + WAIT * 3 + Duration::from_millis(100) * megabytes as u32;
    loop {
        let page = poll(app, &format!("room=customer:{customer}&limit=1000"), token).await;
        if ns(page["notifications"].as_array().unwrap()).last() == Some(&(count - 1)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not read them all"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `series` in `/metrics` satisfies `accept`; returns its value.
async fn metric_until(app: &TestApp, series: &str, accept: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(&app.metrics().await, series);
        if accept(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{series} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn polling_from_a_cursor_6000_back_pages_through_everything_once_oldest_first() {
    let app = TestApp::spawn(Settings::rabbit().var("HISTORY_PER_ROOM", "20")).await;
    let token = app.customer_token("61");
    let cursor = mark(&app, "61", &token).await;
    publish_numbered(&app, "61", 6000, 0, &token).await;

    let mut cursor = cursor;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let page = poll(
            &app,
            &format!("room=customer:61&after={cursor}&limit=100"),
            &token,
        )
        .await;
        assert_eq!(page["reset"], false, "{}", page["cursor"]);
        let items = page["notifications"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        assert!(items.len() <= 100);
        assert_eq!(page["cursor"], items.last().unwrap()["id"]);
        seen.extend(ns(items));
        cursor = page["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, (0..6000).collect::<Vec<_>>(), "each once, in order");
    let text = app.metrics().await;
    assert!(metric(&text, "notify_bridge_replays_total{source=\"stream\"}") >= 59.0);
    let records = metric(&text, "notify_bridge_replay_records_total");
    // All but the last page's, which the memory window holds.
    assert!(records >= 5900.0, "{records}");
    app.stop().await;
}

#[tokio::test]
async fn a_page_of_large_notifications_holds_at_most_4_mib_and_continues_from_its_cursor() {
    let app = TestApp::spawn(Settings::rabbit().var("HISTORY_PER_ROOM", "5")).await;
    let token = app.customer_token("62");
    let cursor = mark(&app, "62", &token).await;
    // 60 of 100 KB: 6 MB after the cursor.
    publish_numbered(&app, "62", 60, 100_000, &token).await;
    let first = poll(
        &app,
        &format!("room=customer:62&after={cursor}&limit=1000"),
        &token,
    )
    .await;
    let items = first["notifications"].as_array().unwrap();
    assert!(
        (30..=42).contains(&items.len()),
        "about 4 MiB: {}",
        items.len()
    );
    assert_eq!(ns(items), (0..items.len() as u64).collect::<Vec<_>>());
    let next = first["cursor"].as_str().unwrap();
    let second = poll(
        &app,
        &format!("room=customer:62&after={next}&limit=1000"),
        &token,
    )
    .await;
    let rest = ns(second["notifications"].as_array().unwrap());
    assert_eq!(rest, (items.len() as u64..60).collect::<Vec<_>>());
    app.stop().await;
}

#[tokio::test]
async fn a_socket_that_rejoins_6000_back_gets_all_of_them_in_order_before_its_ack() {
    // The default SOCKET_BUFFER (4,096) could not hold them at once.
    let app = TestApp::spawn(Settings::rabbit().var("HISTORY_PER_ROOM", "20")).await;
    let token = app.customer_token("63");
    let cursor = mark(&app, "63", &token).await;
    publish_numbered(&app, "63", 6000, 0, &token).await;

    let mut socket = app.socket(&token).await;
    let (ack, before_ack) = socket.join_after("customer:63", &cursor).await;
    assert_eq!(
        ack,
        json!({ "ok": true, "room": "customer:63" }),
        "no reset"
    );
    assert_eq!(before_ack, 6000, "all of them before the ack");
    assert_eq!(ns(&socket.drain()), (0..6000).collect::<Vec<_>>());
    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "notify_bridge_replays_total{source=\"stream\"}"),
        1.0,
        "one replay, read from the stream"
    );
    assert_eq!(metric(&text, "notify_bridge_resets_total"), 0.0);
    // Live delivery follows, without repeats.
    app.publish_json(
        "notification.customer",
        json!({ "type": "live", "recipients": ["63"] }),
    )
    .await;
    assert_eq!(socket.next().await["type"], "live");
    app.stop().await;
}

#[tokio::test]
async fn a_socket_that_stops_reading_during_a_long_replay_is_closed_and_costs_nothing_more() {
    // Dev mode: the raw socket connects without a token.
    let app = TestApp::spawn(Settings {
        rabbit: true,
        auth: false,
        ..Default::default()
    })
    .await;
    let cursor = mark(&app, "64", "").await;
    // 40 MB: more than loopback's TCP buffers take.
    publish_numbered(&app, "64", 2500, 16_000, "").await;

    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text("40")).await.unwrap();
    let join = json!(["join-room", { "room": "customer:64", "after": cursor }]);
    ws.send(Message::text(format!("421{join}"))).await.unwrap();
    // ... and never reads again.
    let overflowed = "notify_bridge_sockets_disconnected_total{reason=\"queue_overflow\"}";
    // The replay reads the stream a megabyte a round until the socket's queue and the kernel's
    // buffers are full (tens of rounds), then the socket has 5 s to move: on a machine busy with
    // the other tests that takes well over one wait.
    let started = Instant::now();
    let deadline = started + WAIT * 6;
    loop {
        let text = app.metrics().await;
        if text.contains(overflowed) {
            assert_eq!(metric(&text, overflowed), 1.0);
            println!("closed {:?} after the join", started.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled socket was not closed: {} records read",
            metric(&text, "notify_bridge_replay_records_total")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    metric_until(&app, "notify_bridge_replays_waiting", |v| v == 0.0).await;
    let read = metric(&app.metrics().await, "notify_bridge_replay_records_total");
    assert!(read < 2500.0, "it stopped reading the stream: {read}");
    drop(ws);
    app.stop().await;
}

#[tokio::test]
async fn sockets_closed_while_their_replays_wait_leave_nothing_waiting() {
    let app = TestApp::spawn(Settings::rabbit().var("HISTORY_PER_ROOM", "5")).await;
    let token = app.customer_token("65");
    let cursor = mark(&app, "65", &token).await;
    publish_numbered(&app, "65", 3000, 0, &token).await;
    // One subject, twenty sockets, each rejoining with the old cursor: one replay reads the
    // stream at a time, the others wait for their turn.
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let socket = app.socket(&token).await;
        socket.emit_no_ack(
            "join-room",
            json!({ "room": "customer:65", "after": cursor }),
        );
        sockets.push(socket);
    }
    let waiting = metric_until(&app, "notify_bridge_replays_waiting", |v| v >= 5.0).await;
    let read_before = metric(&app.metrics().await, "notify_bridge_replay_records_total");
    for socket in sockets {
        socket.close();
    }
    // Well before any wait would have timed out by itself (5 s).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = metric(&app.metrics().await, "notify_bridge_replays_waiting");
        if now == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{now} of {waiting} replays still waiting after their sockets closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // At most the one read under way as they closed ended (a round is 256 items): none of the
    // replays that waited read the stream for a socket that had gone.
    let read_after = metric(&app.metrics().await, "notify_bridge_replay_records_total");
    assert!(
        read_after - read_before < 600.0,
        "{} records read after the sockets closed",
        read_after - read_before
    );
    app.stop().await;
}

#[tokio::test]
async fn parallel_polls_of_one_range_by_several_subjects_share_one_read_of_the_stream() {
    let app = TestApp::spawn(Settings::rabbit().var("HISTORY_PER_ROOM", "5")).await;
    let cms = app.cms_token();
    let cursor = mark(&app, "70", &cms).await;
    publish_numbered(&app, "70", 3000, 0, &cms).await;
    let before = metric(&app.metrics().await, "notify_bridge_replay_records_total");
    let query = format!("room=customer:70&after={cursor}&limit=1000");
    let tokens: Vec<String> = (0..8)
        .map(|i| token(json!({ "role": "cms", "sub": format!("staff-{i}") })))
        .collect();
    let pages = futures_util::future::join_all(tokens.iter().map(|t| poll(&app, &query, t))).await;
    for page in &pages {
        assert_eq!(
            ns(page["notifications"].as_array().unwrap()),
            (0..1000).collect::<Vec<_>>()
        );
    }
    let read = metric(&app.metrics().await, "notify_bridge_replay_records_total") - before;
    println!("8 parallel polls of one range read {read} stream records");
    // One read is about 1,000 records; eight separate reads would be 8,000.
    assert!(read < 3000.0, "{read} records read");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_joins_of_one_socket_replay_a_room_once_and_respect_the_room_limit() {
    // Replays from the stream (the window holds 5), so each join waits on its read.
    let app = TestApp::spawn(
        Settings::rabbit()
            .var("HISTORY_PER_ROOM", "5")
            .var("MAX_ROOMS_PER_SOCKET", "3")
            .var("JOIN_RATE_PER_SEC", "100"),
    )
    .await;
    let cms = app.cms_token();
    let cursor = mark(&app, "66", &cms).await;
    for i in 0..10 {
        publish_numbered(&app, &format!("x{i}"), 8, 0, &cms).await;
    }
    publish_numbered(&app, "66", 10, 0, &cms).await;
    let mut socket = app.socket(&cms).await;
    // Five joins of one room at once.
    let join = json!({ "room": "customer:66", "after": cursor });
    let acks = futures_util::future::join_all(
        (0..5).map(|_| socket.emit_with_ack("join-room", join.clone())),
    )
    .await;
    assert!(acks.iter().all(|a| a["ok"] == true), "{acks:?}");
    let replayed = ns(&socket.drain());
    assert_eq!(replayed, (0..10).collect::<Vec<_>>(), "replayed once");
    // Ten other rooms at once, each with a replay: two fit.
    let acks = futures_util::future::join_all((0..10).map(|i| {
        socket.emit_with_ack(
            "join-room",
            json!({ "room": format!("customer:x{i}"), "after": cursor }),
        )
    }))
    .await;
    let ok = acks.iter().filter(|a| a["ok"] == true).count();
    assert_eq!(ok, 2, "{acks:?}");
    assert!(
        acks.iter()
            .filter(|a| a["ok"] == false)
            .all(|a| a["error"] == "too_many_rooms")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_after_answers_the_retained_history_with_reset() {
    let app = TestApp::spawn(Settings::rabbit().var("HISTORY_PER_ROOM", "3")).await;
    let token = app.customer_token("67");
    publish_numbered(&app, "67", 5, 0, &token).await;
    for after in [json!(5), json!(""), json!(null)] {
        let mut socket = app.socket(&token).await;
        let (ack, before) = socket
            .emit_with_ack_counted(
                "join-room",
                json!({ "room": "customer:67", "after": after }),
            )
            .await;
        assert_eq!(
            ack,
            json!({ "ok": true, "room": "customer:67", "reset": true }),
            "{after}"
        );
        assert_eq!(before, 3, "{after}");
        assert_eq!(ns(&socket.drain()), [2, 3, 4], "{after}");
    }
    let page = poll(&app, "room=customer:67&after=", &token).await;
    assert_eq!(page["reset"], true);
    assert_eq!(ns(page["notifications"].as_array().unwrap()), [2, 3, 4]);
    app.stop().await;
}

#[tokio::test]
async fn an_exp_beyond_any_clock_is_answered_without_crashing_the_handshake() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    let huge = token(json!({ "sub": "68", "exp": u64::MAX }));
    // Accepted (it never ends) or refused: either way the daemon answers and goes on.
    if let Ok(socket) = SioClient::connect(app.addr, Some(&huge), TokenVia::Auth).await {
        assert_eq!(socket.join("customer:68").await["ok"], true);
    }
    let (status, _, _) = poll_raw(&app, "room=customer:68", &huge).await;
    assert!(status == 200 || status == 401, "{status}");
    // Still serving sockets.
    let socket = app.socket(&app.customer_token("68")).await;
    assert_eq!(socket.join("customer:68").await["ok"], true);
    app.stop().await;
}

/// The median time from publishing a notification to `customer:1` to `bystander` receiving it.
async fn live_p50(app: &TestApp, bystander: &mut SioClient) -> Duration {
    let mut took = Vec::new();
    for _ in 0..20 {
        let sent = Instant::now();
        app.publish_json(
            "notification.customer",
            json!({ "type": "live", "recipients": ["1"] }),
        )
        .await;
        assert_eq!(bystander.next().await["type"], "live");
        took.push(sent.elapsed());
    }
    took.sort();
    took[took.len() / 2]
}

// The daemon's tasks and the flood's own client work on threads of their own, so that the
// bystander's figures are the daemon's, not this test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_flooding_old_cursors_is_rate_limited_and_others_keep_their_pace() {
    /// What bounds a flooding join's ack: its subject's turn (5 s, src/budget.rs), a stream
    /// reader behind one other read, its own read (10 s each, src/stream.rs), then the replay's
    /// emission.
    const FLOOD_JOIN_WAIT: Duration = Duration::from_secs(40);
    let app = TestApp::spawn(
        Settings::rabbit()
            .var("HISTORY_PER_ROOM", "10")
            .var("REPLAY_BUDGET_PER_SUB", "5000"),
    )
    .await;
    let evil = app.customer_token("666");
    let good = app.customer_token("1");
    let evil_cursor = mark(&app, "666", &evil).await;
    let good_cursor = mark(&app, "1", &good).await;
    publish_numbered(&app, "666", 2000, 0, &evil).await;
    publish_numbered(&app, "1", 200, 0, &good).await;

    let mut bystander = app.socket(&good).await;
    assert_eq!(bystander.join("customer:1").await["ok"], true);
    let quiet_p50 = live_p50(&app, &mut bystander).await;
    let started = Instant::now();
    let quiet = poll(
        &app,
        &format!("room=customer:1&after={good_cursor}&limit=1000"),
        &good,
    )
    .await;
    let quiet_poll = started.elapsed();
    assert_eq!(ns(quiet["notifications"].as_array().unwrap()).len(), 200);

    // The flood: parallel polls and joins with the old cursor, until refused.
    let app = std::sync::Arc::new(app);
    let flood = tokio::spawn({
        let (app, evil, evil_cursor) = (app.clone(), evil.clone(), evil_cursor.clone());
        async move {
            let mut refused_polls = Vec::new();
            let mut refused_joins = 0;
            let query = format!("room=customer:666&after={evil_cursor}&limit=1000");
            for _ in 0..10 {
                let polls =
                    futures_util::future::join_all((0..4).map(|_| poll_raw(&app, &query, &evil)));
                let socket = app.socket(&evil).await;
                // The flooder's own join may wait for its turn behind its polls, then for a
                // reader and its read: more than one ack's wait on a loaded machine. The
                // bystander's figures are what must not suffer.
                let join = socket.emit_with_ack_within(
                    "join-room",
                    json!({ "room": "customer:666", "after": evil_cursor }),
                    FLOOD_JOIN_WAIT,
                );
                let (polls, (ack, _)) = tokio::join!(polls, join);
                if ack["error"] == "rate_limited" {
                    refused_joins += 1;
                }
                refused_polls.extend(polls.into_iter().filter(|(status, _, _)| *status == 429));
            }
            (refused_polls, refused_joins)
        }
    });
    let during = async {
        let p50 = live_p50(&app, &mut bystander).await;
        let started = Instant::now();
        let (status, body, _) = poll_raw(
            &app,
            &format!("room=customer:1&after={good_cursor}&limit=1000"),
            &good,
        )
        .await;
        (p50, started.elapsed(), status, body)
    };
    let (flood_p50, flood_poll, status, body) = during.await;
    let (refused_polls, refused_joins) = flood.await.unwrap();
    println!(
        "bystander: live p50 {quiet_p50:?} quiet, {flood_p50:?} under the flood; \
         stream poll {quiet_poll:?} quiet, {flood_poll:?} under the flood; \
         flood refused {} polls and {refused_joins} joins",
        refused_polls.len()
    );
    assert_eq!(status, 200, "the bystander's stream poll: {body}");
    assert_eq!(body["reset"], false);
    assert_eq!(ns(body["notifications"].as_array().unwrap()).len(), 200);
    assert!(!refused_polls.is_empty(), "the flood was never refused");
    for (_, body, retry_after) in &refused_polls {
        assert_eq!(body["error"], "rate_limited", "{body}");
        let seconds: u64 = retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=60).contains(&seconds), "{seconds}");
    }
    assert!(refused_joins > 0, "no join was refused rate_limited");
    // The budget is the last word: a bad limit, then a forbidden room, answer as before.
    let (status, _, _) = poll_raw(
        &app,
        &format!("room=customer:666&after={evil_cursor}&limit=0"),
        &evil,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) =
        poll_raw(&app, &format!("room=customer:1&after={evil_cursor}"), &evil).await;
    assert_eq!(status, 403);
    assert!(metric(&app.metrics().await, "notify_bridge_replays_refused_total") > 0.0);
    let Ok(app) = std::sync::Arc::try_unwrap(app) else {
        panic!("the flood still holds the app");
    };
    app.stop().await;
}

/// Bytes, in MiB.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test]
async fn large_records_and_parallel_polls_keep_peak_memory_bounded() {
    // A daemon of its own, so that its peak memory is its own: it starts after the large
    // records are in the stream (its rebuild window does not reach them) and polls from a
    // cursor before them.
    let app = TestApp::spawn(Settings::rabbit().var("HISTORY_PER_ROOM", "5")).await;
    let token = app.customer_token("69");
    let cursor = mark(&app, "69", &token).await;
    let count = 2500;
    publish_numbered(&app, "69", count, 122_000, &token).await;
    let (exchange, queue) = (app.exchange.clone(), app.queue.clone());
    let mut daemon = Daemon::builder()
        .public_dir()
        .broker()
        .vars(&[
            ("ENABLE_RABBITMQ", "true"),
            ("RABBITMQ_URL", crate::support::broker_url()),
            ("RABBITMQ_EXCHANGE", &exchange),
            ("RABBITMQ_QUEUE", &queue),
            ("RABBITMQ_REBUILD_MAX_AGE", "1s"),
            ("JWT_SECRET", SECRET),
            ("HISTORY_PER_ROOM", "5"),
            ("HISTORY_MAX_BYTES", "8388608"),
            ("RUST_LOG", "warn"),
        ])
        .start();
    daemon.wait_ready().await;
    assert!(
        daemon.is_running(),
        "the daemon exited (another process took its port?)"
    );
    let before = mib(daemon.peak_rss());
    let client = reqwest::Client::new();
    let read_all = |cursor: String| {
        let (client, base, token) = (client.clone(), daemon.base.clone(), token.clone());
        async move {
            let mut cursor = cursor;
            let mut seen = 0;
            // Four pollers read 305 MB each, on a machine shared with the rest of the suite.
            let deadline = Instant::now() + WAIT * 12;
            while seen < count && Instant::now() < deadline {
                let page: Value = client
                    .get(format!(
                        "{base}/api/notifications?room=customer:69&after={cursor}&limit=1000"
                    ))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let items = page["notifications"].as_array().map_or(0, Vec::len);
                seen += items as u64;
                if items > 0 {
                    cursor = page["cursor"].as_str().unwrap().to_owned();
                }
            }
            seen
        }
    };
    let seen = futures_util::future::join_all((0..4).map(|_| read_all(cursor.clone()))).await;
    let peak = mib(daemon.peak_rss());
    println!(
        "{count} records of 122 KB, 4 parallel pollers: peak RSS {before:.0} MiB at ready, {peak:.0} MiB after"
    );
    assert!(seen.iter().all(|s| *s >= count), "{seen:?}");
    // The Kubernetes limit is 512 Mi; unbounded reads took 366 MiB for one poll of these.
    assert!(peak < 300.0, "peak RSS {peak:.0} MiB");
    drop(daemon);
    app.stop().await;
}
