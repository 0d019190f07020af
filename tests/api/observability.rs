//! What operators see: metrics the dashboard and the alerts rely on, traces at an OTLP
//! receiver, a log that pages only when it matters, a binary that explains its configuration,
//! and a wire contract (`docs/contract.md`) that documents the same variables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::daemon::Daemon;
use crate::support::proxy::Proxy;
use crate::support::sio::{SioClient, TokenVia};
use crate::support::{
    SECRET, Settings, TestApp, Topology, WAIT, message_id, metric, now, open_publisher,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Metric names in a dashboard or rule file: every `notify_bridge_*` and `process_*` token.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for prefix in ["notify_bridge_", "process_"] {
        for (start, _) in text.match_indices(prefix) {
            if start > 0 && is_ident(bytes[start - 1]) {
                continue;
            }
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |n| start + n);
            names.insert(text[start..end].to_owned());
        }
    }
    names
}

/// The series names (without labels) of a `/metrics` text.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_fresh_daemon_lists_every_metric_the_dashboard_and_the_alerts_name_before_any_traffic() {
    // An alert on a rate sees nothing until its series exists: every family, with its known
    // labels at zero, is there from the start.
    let app = TestApp::spawn(Settings::rabbit()).await;
    let text = app.metrics().await;
    let live = exposed(&text);
    for file in [
        "deploy/grafana/notify-bridge.json",
        "deploy/prometheus/alerts.yaml",
    ] {
        let named = metric_names(&std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap());
        let missing: Vec<_> = named.difference(&live).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics a fresh daemon does not list: {missing:?}\n{text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "notify_bridge_notifications_dead_lettered_total{category=\"session\",reason=\"not_json\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exposed_by_a_live_daemon() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    // A little of everything, so that labelled families have series.
    let mut customer = app.joined(&app.customer_token("1"), &["customer:1"]).await;
    assert_eq!(customer.join("customer:2").await["error"], "forbidden");
    let refused = SioClient::connect(app.addr, Some("not-a-token"), TokenVia::Auth).await;
    assert_eq!(refused.err().as_deref(), Some("unauthorized"));
    let id = message_id();
    for _ in 0..2 {
        app.publish_json(
            "notification.session",
            json!({ "type": "t", "recipients": [1], "messageId": id }),
        )
        .await;
    }
    app.publish("notification.charger", b"not json").await;
    assert_eq!(customer.next().await["type"], "t");
    let _ = app.next_message(&app.dead_queue()).await;
    assert_eq!(app.get("/readyz", None).await.status(), 200);

    let text = app.metrics().await;
    let live = exposed(&text);
    for file in [
        "deploy/grafana/notify-bridge.json",
        "deploy/prometheus/alerts.yaml",
    ] {
        let named = metric_names(&std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap());
        assert!(named.len() >= 7, "{file} names metrics: {named:?}");
        let missing: Vec<_> = named.difference(&live).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the daemon does not expose: {missing:?}\n{text}"
        );
    }

    let version = env!("CARGO_PKG_VERSION");
    let series = |s: &str| metric(&text, s);
    assert_eq!(
        series(&format!(
            "notify_bridge_build_info{{version=\"{version}\"}}"
        )),
        1.0
    );
    assert_eq!(
        series("notify_bridge_connections_refused_total{reason=\"unauthorized\"}"),
        1.0
    );
    assert_eq!(
        series("notify_bridge_joins_refused_total{reason=\"forbidden\"}"),
        1.0
    );
    assert_eq!(series("notify_bridge_max_connections"), 20000.0);
    assert_eq!(series("notify_bridge_auth_disabled"), 0.0);
    assert_eq!(series("notify_bridge_rabbitmq_enabled"), 1.0);
    assert!(series("process_resident_memory_bytes") > 1e6);
    assert!(series("process_open_fds") >= 3.0);
    app.stop().await;
}

#[tokio::test]
async fn refused_joins_are_counted_by_reason() {
    let app = TestApp::spawn(Settings::local().var("MAX_ROOMS_PER_SOCKET", "1")).await;
    let socket = app.socket(&app.cms_token()).await;
    assert_eq!(socket.join("cms:a").await["ok"], true);
    assert_eq!(socket.join("cms:b").await["error"], "too_many_rooms");
    assert_eq!(socket.join("no such room").await["error"], "invalid_room");
    assert_eq!(socket.join("cms:c").await["error"], "too_many_rooms");
    let text = app.metrics().await;
    assert_eq!(
        metric(
            &text,
            "notify_bridge_joins_refused_total{reason=\"too_many_rooms\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "notify_bridge_joins_refused_total{reason=\"invalid_room\"}"
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn sockets_are_counted_by_transport() {
    let app = TestApp::spawn(
        Settings {
            auth: false,
            ..Settings::local()
        }
        .var("MAX_CONNECTIONS", "3"),
    )
    .await;
    let _ws = SioClient::connect(app.addr, None, TokenVia::Auth)
        .await
        .unwrap();
    // A polling session: Engine.IO handshake, then CONNECT to the default namespace.
    let client = reqwest::Client::new();
    let url = format!("{}/socket.io/?EIO=4&transport=polling", app.base);
    let open = client.get(&url).send().await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet")).unwrap();
    let sid = open["sid"].as_str().unwrap();
    let session = format!("{url}&sid={sid}");
    let posted = client.post(&session).body("40").send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let connected = client
        .get(&session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Packets of a polling payload are separated by U+001E.
    assert!(
        connected.split('\u{1e}').any(|p| p.starts_with("40")),
        "{connected}"
    );

    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "notify_bridge_sockets{transport=\"websocket\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "notify_bridge_sockets{transport=\"polling\"}"),
        1.0
    );
    // And a refused handshake is counted by its reason.
    let _third = SioClient::connect(app.addr, None, TokenVia::Auth)
        .await
        .unwrap();
    let refused = SioClient::connect(app.addr, None, TokenVia::Auth).await;
    assert_eq!(refused.err().as_deref(), Some("server_full"));
    assert_eq!(
        metric(
            &app.metrics().await,
            "notify_bridge_connections_refused_total{reason=\"server_full\"}"
        ),
        1.0
    );
    app.stop().await;
}

fn promtool() -> String {
    let path = std::env::var("PROMTOOL_PATH").unwrap_or_else(|_| "promtool".into());
    let found = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool is needed: run `bash scripts/ensure-promtool.sh` (Debian's prometheus package)"
    );
    path
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests_pass() {
    let promtool = promtool();
    let dir = Path::new(ROOT).join("deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `.env.example`'s variables: name to default (`None` for a commented-out example).
fn env_example() -> BTreeMap<String, Option<String>> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(".env.example")).unwrap();
    text.lines()
        .filter_map(|line| {
            let (commented, line) = match line.strip_prefix('#') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, line),
            };
            let (name, value) = line.split_once('=')?;
            let is_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            is_name.then(|| (name.to_owned(), (!commented).then(|| value.to_owned())))
        })
        .collect()
}

/// `--help`'s environment list: name to default (`None` for "unset").
fn help_environment() -> BTreeMap<String, Option<String>> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_notify-bridge"))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let (_, list) = help
        .split_once("Environment")
        .expect("an Environment section");
    list.lines()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim();
            let (name, rest) = line.split_once(' ')?;
            let meaning_and_default = rest.trim();
            let (meaning, default) = meaning_and_default.rsplit_once(" [default: ")?;
            assert!(!meaning.trim().is_empty(), "{name} has a meaning");
            let default = default.strip_suffix(']')?;
            Some((
                name.to_owned(),
                (default != "unset").then(|| default.to_owned()),
            ))
        })
        .collect()
}

#[test]
fn help_lists_the_variables_of_env_example_with_the_same_defaults() {
    let help = help_environment();
    let example = env_example();
    assert!(example.len() > 30, "{example:?}");
    assert_eq!(help, example);
}

/// Variables of the OpenTelemetry specification that `docs/contract.md` mentions as examples
/// of what the OpenTelemetry SDK also reads. They are OpenTelemetry's interface, with its
/// meanings and defaults, not the daemon's configuration: the daemon does not validate them at
/// start, so `--help` does not list them.
const OPENTELEMETRY_VARIABLES: [&str; 4] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_BSP_SCHEDULE_DELAY",
];

/// A variable's name: upper case, digits and `_`, at least three characters (so that the
/// units `Y M D` of an age are not taken for one).
fn is_variable_name(text: &str) -> bool {
    text.len() >= 3
        && text.starts_with(|c: char| c.is_ascii_uppercase())
        && text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// The names in backquotes in `text` that are variables: `NAME`, or `NAME=value`.
fn quoted_variables(text: &str) -> impl Iterator<Item = &str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(|quoted| quoted.split_once('=').map_or(quoted, |(name, _)| name))
        .filter(|name| is_variable_name(name))
}

/// `docs/contract.md`: the variables its section 1 tables document (the first cell of each
/// row: `HOST` / `PORT` is two), and every variable it mentions anywhere else (not counting
/// the default cells of those tables: a default such as `UTC` is a value, not a name).
fn contract_variables() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(Path::new(ROOT).join("docs/contract.md")).unwrap();
    let mut documented = BTreeSet::new();
    let mut mentioned = BTreeSet::new();
    let mut section = "";
    for line in text.lines() {
        if line.starts_with("## ") {
            section = line;
        }
        if section.starts_with("## 1. ") && line.starts_with("| `") {
            let cells: Vec<&str> = line.split('|').collect();
            documented.extend(quoted_variables(cells[1]).map(str::to_owned));
            mentioned.extend(quoted_variables(&cells[3..].join("|")).map(str::to_owned));
        } else {
            mentioned.extend(quoted_variables(line).map(str::to_owned));
        }
    }
    assert!(
        text.contains("\n## 1. Configuration") && text.contains("\n## 2. "),
        "docs/contract.md keeps the contract's section numbering"
    );
    (documented, mentioned)
}

#[test]
fn the_contract_documents_exactly_the_variables_help_lists() {
    let help: BTreeSet<String> = help_environment().into_keys().collect();
    let (documented, mentioned) = contract_variables();
    assert!(documented.len() > 30, "{documented:?}");
    let missing: Vec<_> = help.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&help).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/contract.md section 1 and --help disagree: \
         listed by --help only: {missing:?}; documented only: {extra:?}"
    );
    let undocumented: Vec<_> = mentioned
        .iter()
        .filter(|name| !documented.contains(*name))
        .filter(|name| !OPENTELEMETRY_VARIABLES.contains(&name.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/contract.md mentions variables that its section 1 does not document: \
         {undocumented:?}"
    );
}

#[test]
fn the_documented_defaults_are_the_daemon_s_defaults() {
    use notify_bridge::config::Config;
    let defaults = format!(
        "{:?}",
        Config::from_vars(Vec::<(String, String)>::new()).unwrap()
    );
    for (name, value) in env_example() {
        let Some(value) = value else { continue };
        let config = Config::from_vars([(name.clone(), value.clone())])
            .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        assert_eq!(
            format!("{config:?}"),
            defaults,
            "{name}={value} is not the default"
        );
    }
}

/// A `service` token for [`SECRET`], which [`start_daemon`] runs with.
fn service_token() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "backend", "role": "service", "exp": now() + 3600 }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The real binary on a free port, logging JSON, with [`SECRET`], quick broker retries and
/// the broker under test, plus `vars`.
fn start_daemon(vars: &[(&str, &str)]) -> Daemon {
    Daemon::builder()
        .public_dir()
        .json_logs()
        .var("JWT_SECRET", SECRET)
        .var("RABBITMQ_RECONNECT_MAX_MS", "500")
        .broker()
        .vars(vars)
        .start()
}

fn level(event: &Value) -> &str {
    event["level"].as_str().unwrap_or_default()
}

fn message(event: &Value) -> &str {
    event["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_broker_outage_logs_one_warn_then_one_info_and_no_error() {
    let proxy = Proxy::to_broker().await;
    let topology = Topology::fresh();
    let url = proxy.url();
    let mut daemon = start_daemon(&[
        ("ENABLE_RABBITMQ", "true"),
        ("RABBITMQ_URL", &url),
        ("RABBITMQ_EXCHANGE", &topology.exchange),
        ("RABBITMQ_QUEUE", &topology.queue),
    ]);
    daemon
        .wait_log("consuming", |e| message(e) == "consuming from RabbitMQ")
        .await;
    let before = daemon.lines().len();

    proxy.cut();
    let warn = daemon
        .wait_log("WARN about the outage", |e| level(e) == "WARN")
        .await;
    assert!(message(&warn).contains("RabbitMQ"), "{warn}");
    // Several retries fail while the broker is away (refused, reset: other reasons).
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while metric(
        &daemon.metrics().await,
        "notify_bridge_broker_reconnects_total",
    ) < 4.0
    {
        assert!(tokio::time::Instant::now() < deadline, "no retries counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.restore();
    let info = daemon
        .wait_log("INFO on recovery", |e| {
            message(e) == "consuming from RabbitMQ"
        })
        .await;
    assert_eq!(level(&info), "INFO");
    daemon.drain();

    let outage: Vec<Value> = daemon.lines()[before..]
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count = |wanted: &str| outage.iter().filter(|e| level(e) == wanted).count();
    let log = daemon.lines()[before..].join("\n");
    assert_eq!(
        count("ERROR"),
        0,
        "no ERROR for an outage ridden out:\n{log}"
    );
    assert_eq!(count("WARN"), 1, "one WARN per outage:\n{log}");
    assert!(
        !log.contains("lapin") && !log.contains("amq_protocol"),
        "the client library's lines are debug:\n{log}"
    );
    let all = daemon.stop().await;
    let startup: Value = all
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| message(e) == "notify-bridge listening")
        .expect("a startup line");
    assert_eq!(startup["version"], env!("CARGO_PKG_VERSION"));
}

/// An OTLP/HTTP receiver on 127.0.0.1:0: every body POSTed to `/v1/traces`, as JSON.
async fn otlp_receiver() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                    let _ = tx.send(value);
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), rx)
}

/// Every span object (anything with a `traceId`) in an OTLP JSON body.
fn spans(body: &Value, into: &mut Vec<Value>) {
    match body {
        Value::Object(fields) if fields.contains_key("traceId") => into.push(body.clone()),
        Value::Object(fields) => fields.values().for_each(|v| spans(v, into)),
        Value::Array(items) => items.iter().for_each(|v| spans(v, into)),
        _ => {}
    }
}

/// A span attribute's value as a string (OTLP JSON carries ints as strings).
fn attribute(span: &Value, key: &str) -> Option<String> {
    let value = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]
        .clone();
    let (_, inner) = value.as_object()?.iter().next()?;
    Some(match inner {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[tokio::test]
async fn a_published_traceparent_parents_the_delivery_span_with_its_attributes() {
    let (endpoint, mut bodies) = otlp_receiver().await;
    let topology = Topology::fresh();
    let mut daemon = start_daemon(&[
        ("ENABLE_RABBITMQ", "true"),
        ("RABBITMQ_EXCHANGE", &topology.exchange),
        ("RABBITMQ_QUEUE", &topology.queue),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    daemon
        .wait_log("consuming", |e| message(e) == "consuming from RabbitMQ")
        .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let id = message_id();
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(format!("00-{trace_id}-{parent_id}-01").into()),
    );
    let (_connection, channel) = open_publisher().await;
    let confirm = channel
        .basic_publish(
            topology.exchange.as_str().into(),
            "notification.session".into(),
            Default::default(),
            json!({ "type": "traced", "recipients": [7, 8], "messageId": id })
                .to_string()
                .as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
    assert!(confirm.await.unwrap().is_ack());
    // An HTTP request with a token in its query: neither span nor log may carry it.
    let secret_query = "token=do-not-log-me";
    let config = reqwest::get(format!("{}/api/config?{secret_query}", daemon.base))
        .await
        .unwrap();
    assert_eq!(config.status(), 200);

    // Ingest with a traceparent: the request's span, then the delivery of what it published.
    let ingest_trace = "0af7651916cd43dd8448eb211c80319c";
    let ingest_parent = "b7ad6b7169203331";
    let posted = reqwest::Client::new()
        .post(format!("{}/api/notifications", daemon.base))
        .bearer_auth(service_token())
        .header(
            "traceparent",
            format!("00-{ingest_trace}-{ingest_parent}-01"),
        )
        .header("content-type", "application/json")
        .body(json!({ "type": "ingested", "category": "station" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);

    let mut seen: Vec<Value> = Vec::new();
    let find =
        |seen: &[Value], accept: &dyn Fn(&Value) -> bool| seen.iter().find(|s| accept(s)).cloned();
    let is_delivery = |trace: &'static str| {
        move |s: &Value| s["name"] == "deliver notification" && s["traceId"] == trace
    };
    let is_route =
        |route: &'static str| move |s: &Value| attribute(s, "http.route").as_deref() == Some(route);
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let complete = [
            find(&seen, &is_delivery(trace_id)),
            find(&seen, &is_delivery(ingest_trace)),
            find(&seen, &is_route("/api/config")),
            find(&seen, &is_route("/api/notifications")),
        ]
        .iter()
        .all(Option::is_some);
        if complete {
            break;
        }
        let body = tokio::time::timeout_at(deadline, bodies.recv())
            .await
            .unwrap_or_else(|_| panic!("not every span arrived; got {seen:#?}"))
            .expect("receiver open");
        spans(&body, &mut seen);
    }
    let ingest = find(&seen, &is_route("/api/notifications")).unwrap();
    assert_eq!(ingest["traceId"], ingest_trace, "{ingest:#}");
    assert_eq!(ingest["parentSpanId"], ingest_parent, "{ingest:#}");
    let ingested = find(&seen, &is_delivery(ingest_trace)).unwrap();
    assert_eq!(
        ingested["parentSpanId"], ingest["spanId"],
        "the delivery of an ingested notification continues the request's trace"
    );
    let http = find(&seen, &is_route("/api/config"));
    let delivery = find(&seen, &is_delivery(trace_id)).unwrap();
    assert_eq!(delivery["parentSpanId"], parent_id, "{delivery:#}");
    let attr = |key: &str| attribute(&delivery, key);
    assert_eq!(
        attr("messaging.rabbitmq.destination.routing_key").as_deref(),
        Some("notification.session")
    );
    assert_eq!(attr("messaging.message.id").as_deref(), Some(id.as_str()));
    let rooms = attr("notify_bridge.rooms").unwrap();
    for room in ["customer:7", "customer:8", "cms:dashboard"] {
        assert!(rooms.split(',').any(|r| r == room), "{rooms}");
    }
    let copies: usize = attr("notify_bridge.copies").unwrap().parse().unwrap();
    assert_eq!(copies, rooms.split(',').count());

    let http = http.unwrap();
    assert_eq!(
        attribute(&http, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(!http.to_string().contains(secret_query), "{http:#}");
    let log = daemon.stop().await.join("\n");
    assert!(log.contains("/api/config"), "an access log line:\n{log}");
    assert!(!log.contains(secret_query), "{log}");
}
