//! `TestApp`: the real daemon on port 0 against the real RabbitMQ, with its own exchange
//! and queues, plus helpers to publish, read queues, call the API and connect sockets.
//!
//! The broker is the local one unless the environment names another (see [`broker_url`],
//! [`management_url`], [`stream_off`]), so the same suite runs against any broker.

pub mod daemon;
pub mod proxy;
pub mod sio;
pub mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use sio::SioClient;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// The broker when the environment names none: the local one `make test` starts.
pub const LOCAL_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The AMQP URL of the broker every test uses: `NB_TEST_AMQP_URL`, else the local broker.
pub fn broker_url() -> &'static str {
    static URL: LazyLock<String> = LazyLock::new(|| {
        std::env::var("NB_TEST_AMQP_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| LOCAL_BROKER.into())
    });
    &URL
}

/// `host:port` of [`broker_url`], for the proxies that stand in front of it.
pub fn broker_addr() -> String {
    let url = broker_url();
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or(after_scheme);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// [`broker_url`] with its host and port replaced by `addr` (credentials and vhost kept).
pub fn broker_url_via(addr: &str) -> String {
    let url = broker_url();
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let credentials = authority
        .rsplit_once('@')
        .map(|(c, _)| format!("{c}@"))
        .unwrap_or_default();
    format!("{scheme}://{credentials}{addr}/{path}")
}

/// The broker's management API (`NB_TEST_MANAGEMENT_URL`, e.g.
/// `http://guest:guest@127.0.0.1:15672`), when the environment names one. Without it, the few
/// tests that read the broker's own figures ask `rabbitmqctl` on the local node.
pub fn management_url() -> Option<&'static str> {
    static URL: LazyLock<Option<String>> = LazyLock::new(|| {
        std::env::var("NB_TEST_MANAGEMENT_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
    });
    URL.as_deref()
}

/// `NB_TEST_STREAM=off`: every daemon the tests start runs in the stream-less mode
/// (`RABBITMQ_STREAM=off`, contract v3 section 2), as on a broker without streams.
pub fn stream_off() -> bool {
    static OFF: LazyLock<bool> =
        LazyLock::new(|| std::env::var("NB_TEST_STREAM").is_ok_and(|v| v == "off"));
    *OFF
}

/// The broker variables every daemon the tests start gets first (a test's own come after and
/// win): the broker under test and, in stream-less mode, `RABBITMQ_STREAM=off`.
pub fn broker_vars() -> Vec<(String, String)> {
    let mut vars = vec![("RABBITMQ_URL".to_owned(), broker_url().to_owned())];
    if stream_off() {
        vars.push(("RABBITMQ_STREAM".into(), "off".into()));
    }
    vars
}

/// Says on the terminal, past the test harness's capture, that the running test is skipped and
/// why. Tests skip only through this, so a skip is never silent.
pub fn skip(why: &str) {
    // libtest names each test's thread after the test, and #[tokio::test] runs on that thread.
    let current = std::thread::current();
    let test = current.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// At the top of a test that needs the stream (cursors across restarts, replay from the
/// stream): returns from it, visibly, in stream-less mode.
macro_rules! requires_stream {
    ($why:expr) => {
        if $crate::support::stream_off() {
            $crate::support::skip(&format!(
                "needs the stream, and NB_TEST_STREAM=off runs without one: {}",
                $why
            ));
            return;
        }
    };
}
pub(crate) use requires_stream;
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}.{}.{}.{n}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

pub fn init_logs() {
    // Quiet unless TEST_LOG is set.
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,notify_bridge=debug")
            .with_test_writer()
            .try_init();
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub exchange: String,
    pub queue: String,
    pub rabbit: bool,
    /// Where the test's own connections go (see [`Settings::test_broker`]).
    test_broker: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    publisher: Option<(Connection, Channel)>,
    client: reqwest::Client,
    /// Leave the exchange, queues and stream in place on drop (another instance uses them).
    keep_topology: bool,
}

/// A confirmed publisher to one exchange.
pub struct Publisher {
    _connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Publisher {
    pub async fn publish_json(&self, routing_key: &str, body: Value) {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirm").is_ack());
    }
}

/// A token signed with the tests' secret (an hour's `exp` unless given).
pub fn token(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[derive(Default)]
pub struct Settings {
    pub rabbit: bool,
    pub auth: bool,
    pub vars: Vec<(String, String)>,
    /// Connect the daemon to this URL instead of the local broker (a proxy in front of it).
    pub broker_url: Option<String>,
    /// Return before the daemon is ready (for tests that start with the broker away).
    pub no_wait: bool,
    /// Use this queue name instead of a fresh one.
    pub queue: Option<String>,
    /// Use this exchange instead of a fresh one (several instances on one exchange).
    pub exchange: Option<String>,
    /// The broker the test's own connections (publisher, cleanup) use instead of
    /// [`broker_url`]: one node of a cluster the daemon is given all of.
    pub test_broker: Option<String>,
}

impl Settings {
    pub fn rabbit() -> Self {
        Self {
            rabbit: true,
            auth: true,
            ..Default::default()
        }
    }
    pub fn local() -> Self {
        Self {
            rabbit: false,
            auth: true,
            ..Default::default()
        }
    }
    pub fn var(mut self, key: &str, value: &str) -> Self {
        self.vars.push((key.into(), value.into()));
        self
    }
}

impl TestApp {
    pub async fn spawn(settings: Settings) -> TestApp {
        init_logs();
        let exchange = settings
            .exchange
            .clone()
            .unwrap_or_else(|| unique("nb-test-ex"));
        let queue = settings
            .queue
            .clone()
            .unwrap_or_else(|| unique("nb-test-q"));
        let mut vars = broker_vars();
        vars.extend([
            ("ENABLE_RABBITMQ".into(), settings.rabbit.to_string()),
            (
                "RABBITMQ_URL".into(),
                settings
                    .broker_url
                    .clone()
                    .unwrap_or_else(|| broker_url().into()),
            ),
            ("RABBITMQ_EXCHANGE".into(), exchange.clone()),
            ("RABBITMQ_QUEUE".into(), queue.clone()),
            ("RABBITMQ_RECONNECT_MAX_MS".into(), "1000".into()),
            (
                "PUBLIC_DIR".into(),
                concat!(env!("CARGO_MANIFEST_DIR"), "/public").into(),
            ),
            ("SHUTDOWN_TIMEOUT_MS".into(), "5000".into()),
        ]);
        if settings.auth {
            vars.push(("JWT_SECRET".into(), SECRET.into()));
        }
        vars.extend(settings.vars.iter().cloned());
        // The config refuses a variable given twice: a later one (the test's own) wins.
        let mut seen = std::collections::HashSet::new();
        vars.reverse();
        vars.retain(|(key, _)| seen.insert(key.clone()));
        vars.reverse();
        let config = notify_bridge::config::Config::from_vars(vars).expect("test config is valid");

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(notify_bridge::run(config, listener, shutdown.clone()));
        let test_broker = settings
            .test_broker
            .clone()
            .unwrap_or_else(|| broker_url().into());
        let publisher = if settings.rabbit {
            Some(open_publisher_to(&test_broker).await)
        } else {
            None
        };
        let app = TestApp {
            addr,
            base: format!("http://{addr}"),
            exchange,
            queue,
            rabbit: settings.rabbit,
            test_broker,
            shutdown,
            handle: Some(handle),
            publisher,
            client: reqwest::Client::new(),
            keep_topology: settings.exchange.is_some() && settings.queue.is_some(),
        };
        if !settings.no_wait {
            app.wait_ready().await;
        }
        app
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        self.wait_readyz(200).await;
    }

    /// Waits (bounded) until `/readyz` answers 200 with `broker` equal to `state`: an instance
    /// stays ready through a broker outage (contract v2 section 6).
    pub async fn wait_broker(&self, state: &str) {
        self.wait_readyz_until(200, |b| b["broker"] == state).await;
    }

    pub async fn wait_readyz(&self, status: u16) {
        self.wait_readyz_until(status, |_| true).await;
    }

    /// Waits (bounded) until `/readyz` answers 503 with a reason that satisfies `accept`;
    /// returns the reason.
    pub async fn not_ready_because(&self, accept: impl Fn(&str) -> bool) -> String {
        let body = self
            .wait_readyz_until(503, |b| b["message"].as_str().is_some_and(&accept))
            .await;
        body["message"].as_str().unwrap_or_default().to_string()
    }

    /// The status of a polling request for `room` with `token`.
    pub async fn poll_status(&self, room: &str, token: &str) -> u16 {
        self.get(&format!("/api/notifications?room={room}"), Some(token))
            .await
            .status()
            .as_u16()
    }

    /// Waits (bounded) until `/readyz` answers `status` with a body that satisfies `accept`;
    /// returns that body.
    pub async fn wait_readyz_until(&self, status: u16, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                && r.status().as_u16() == status
                && let Ok(body) = r.json::<Value>().await
                && accept(&body)
            {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {status} as expected"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn token(&self, claims: Value) -> String {
        token(claims)
    }
    pub fn customer_token(&self, id: &str) -> String {
        self.token(json!({ "sub": id, "role": "customer" }))
    }
    pub fn cms_token(&self) -> String {
        self.token(json!({ "sub": "ops-1", "role": "cms" }))
    }
    pub fn service_token(&self) -> String {
        self.token(json!({ "sub": "backend", "role": "service" }))
    }

    /// A socket authenticated with `token` (handshake `auth.token`).
    pub async fn socket(&self, token: &str) -> SioClient {
        SioClient::connect(self.addr, Some(token), sio::TokenVia::Auth)
            .await
            .expect("socket connects")
    }

    /// A socket that has joined `rooms` (each ack checked).
    pub async fn joined(&self, token: &str, rooms: &[&str]) -> SioClient {
        let socket = self.socket(token).await;
        for room in rooms {
            let ack = socket.join(room).await;
            assert_eq!(ack["ok"], true, "join {room}: {ack}");
        }
        socket
    }

    /// Publishes to the app's exchange and waits for the broker's confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        self.publish_with(routing_key, body, BasicProperties::default())
            .await;
    }

    pub async fn publish_json(&self, routing_key: &str, body: Value) {
        self.publish(routing_key, body.to_string().as_bytes()).await;
    }

    pub async fn publish_with(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let (_, channel) = self.publisher.as_ref().expect("a RabbitMQ test app");
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirm").is_ack());
    }

    pub fn channel(&self) -> &Channel {
        &self.publisher.as_ref().expect("a RabbitMQ test app").1
    }

    /// Takes the next message from `queue`, waiting (bounded) for one to arrive.
    pub async fn next_message(&self, queue: &str) -> lapin::message::BasicGetMessage {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self
                .channel()
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(message) = got {
                return message;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message arrived in {queue}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Ready messages in `queue` right now.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel()
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .expect("queue exists")
            .message_count()
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// The daemon's `/metrics` text, for [`metric`].
    pub async fn metrics(&self) -> String {
        self.get("/metrics", None).await.text().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("GET")
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("POST")
    }

    /// A publisher to `exchange`, for tests that publish while no daemon runs.
    pub async fn publisher_for(exchange: &str) -> Publisher {
        let (connection, channel) = open_publisher().await;
        Publisher {
            _connection: connection,
            channel,
            exchange: exchange.to_owned(),
        }
    }

    /// Like [`Self::stop`]; the topology stays for the next instance (a [`Topology`] owns it).
    pub async fn stop_keeping_topology(mut self) {
        self.keep_topology = true;
        self.stop().await;
    }

    /// Stops the daemon gracefully and asserts it stopped cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().unwrap();
        let result = tokio::time::timeout(WAIT, handle)
            .await
            .expect("daemon stops in time");
        result.expect("daemon task").expect("daemon exits cleanly");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.rabbit && !self.keep_topology {
            drop(Topology {
                exchange: self.exchange.clone(),
                queue: self.queue.clone(),
                broker: self.test_broker.clone(),
            });
        }
    }
}

/// Deletes an exchange and a queue (with its `.dlx`, `.dead`, `.log` stream and `.fanout`)
/// when dropped, so tests leave
/// nothing behind on the shared broker even when they fail.
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    /// The broker it lives on.
    pub broker: String,
}

impl Topology {
    pub fn fresh() -> Self {
        Self::fresh_on(broker_url())
    }

    /// Fresh names on `broker` (an AMQP URL).
    pub fn fresh_on(broker: &str) -> Self {
        Self {
            exchange: unique("nb-test-ex"),
            queue: unique("nb-test-q"),
            broker: broker.to_owned(),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // On its own runtime: this may run on a runtime that is blocked or closing.
        let (exchange, queue, broker) = (
            self.exchange.clone(),
            self.queue.clone(),
            self.broker.clone(),
        );
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    delete_topology(&broker, &exchange, &queue),
                )
                .await;
            });
        })
        .join();
    }
}

async fn delete_topology(broker: &str, exchange: &str, queue: &str) {
    let Ok(connection) = Connection::connect(broker, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for q in [
            queue.to_owned(),
            format!("{queue}.dead"),
            format!("{queue}.log"),
        ] {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        // `.fanout`: the stream-less mode's exchange (contract v3 section 2).
        for e in [
            exchange.to_owned(),
            format!("{queue}.dlx"),
            format!("{queue}.fanout"),
        ] {
            let _ = channel
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "test cleanup".into()).await;
}

pub async fn open_publisher() -> (Connection, Channel) {
    open_publisher_to(broker_url()).await
}

/// A connection to `broker` with a channel in confirm mode.
pub async fn open_publisher_to(broker: &str) -> (Connection, Channel) {
    let connection = Connection::connect(broker, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ must answer at {broker} (NB_TEST_AMQP_URL; `make test` starts the \
                 local one): {e}"
            )
        });
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fresh unique message id.
pub fn message_id() -> String {
    unique("msg")
}

/// The value of one series (name and labels exactly as exposed) in `/metrics` text.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
}

/// Messages of `queue` delivered and not yet acked, as the broker counts them (see
/// [`queue_field`]).
pub async fn queue_unacked(queue: &str) -> Option<u32> {
    queue_field(queue, "messages_unacknowledged")
        .await?
        .parse()
        .ok()
}

/// One figure of `queue` as the broker reports it (`type`, `messages_unacknowledged`, ...: the
/// names are the same in the management API and `rabbitmqctl list_queues`): from the management
/// API when [`management_url`] is set, else from `rabbitmqctl` on the local node. `None` when
/// the queue or the figure is not there (yet: the management API refreshes its figures every
/// `collect_statistics_interval`).
pub async fn queue_field(queue: &str, field: &str) -> Option<String> {
    if let Some(base) = management_url() {
        let url = reqwest::Url::parse(base).expect("NB_TEST_MANAGEMENT_URL is a URL");
        let user = match url.username() {
            "" => "guest".to_owned(),
            user => user.to_owned(),
        };
        let password = url.password().unwrap_or("guest").to_owned();
        let mut api = url.clone();
        let _ = api.set_username("");
        let _ = api.set_password(None);
        let vhost = vhost_of(broker_url());
        api.path_segments_mut()
            .ok()?
            .pop_if_empty()
            .extend(["api", "queues", &vhost, queue]);
        let body: Value = reqwest::Client::new()
            .get(api)
            .basic_auth(user, Some(password))
            .timeout(WAIT)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        return match &body[field] {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
    }
    assert_eq!(
        broker_url(),
        LOCAL_BROKER,
        "set NB_TEST_MANAGEMENT_URL: rabbitmqctl only reads the local broker"
    );
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", field])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split('\t');
            (fields.next()? == queue).then(|| fields.next().map(str::to_owned))?
        })
}

/// The vhost an AMQP URL names, decoded (`/` when it names none).
fn vhost_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.split_once('/') {
        Some((_, path)) if !path.is_empty() => {
            let path = path.split('?').next().unwrap_or(path);
            percent_decode(path)
        }
        _ => "/".into(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
