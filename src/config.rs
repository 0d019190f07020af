//! Configuration from the environment (contract section 1), validated as a whole at start.
//!
//! envy reads every variable as an optional string; each one is then parsed here so that a bad
//! value stops the daemon with an error naming the variable, whether the setting is in use or not.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A configuration error: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl ConfigError {
    fn new(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            variable,
            message: message.into(),
        }
    }
}

/// The contract's defaults (section 1) and the daemon's own, in one place.
pub mod defaults {
    pub const ENABLE_RABBITMQ: bool = false;
    pub const AUTH_DISABLED: bool = false;
    pub const DEMO: bool = false;
    pub const LOG_FORMAT: &str = "pretty";
    pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    pub const RABBITMQ_EXCHANGE: &str = "notifications";
    pub const RABBITMQ_QUEUE: &str = "notifications";
    /// The stream's name is the queue's plus this suffix.
    pub const RABBITMQ_STREAM_SUFFIX: &str = ".log";
    /// `RABBITMQ_STREAM`'s value for brokers without streams (contract v3 section 2).
    pub const RABBITMQ_STREAM_OFF: &str = "off";
    pub const RABBITMQ_QUEUE_TYPE: &str = "quorum";
    pub const STATS_TIMEZONE: &str = "UTC";
    pub const RABBITMQ_STREAM_MAX_AGE: &str = "24h";
    pub const RABBITMQ_REBUILD_MAX_AGE: &str = "15m";
    pub const RABBITMQ_REPLAY_MAX: u64 = 20_000;
    pub const RABBITMQ_BINDING_KEYS: &str = "notification.*";
    pub const RABBITMQ_PREFETCH: u16 = 256;
    pub const RABBITMQ_RECONNECT_MAX_MS: u64 = 30_000;
    pub const HOST: &str = "127.0.0.1";
    pub const PORT: u16 = 3000;
    pub const POLL_INTERVAL_MS: u64 = 10_000;
    pub const HISTORY_PER_ROOM: usize = 100;
    pub const HISTORY_MAX_ROOMS: usize = 10_000;
    pub const HISTORY_MAX_TOTAL: usize = 200_000;
    pub const HISTORY_MAX_BYTES: usize = 64 << 20;
    pub const HISTORY_ROOM_IDLE_SECS: u64 = 3600;
    pub const MAX_RECIPIENTS: usize = 1000;
    /// The contract's minimum: "at least the last 10,000 ids".
    pub const DEDUPE_WINDOW: usize = 10_000;
    pub const MAX_MESSAGE_BYTES: usize = 128 << 10;
    pub const MAX_CONNECTIONS: usize = 20_000;
    pub const MAX_CONNECTIONS_PER_SUB: usize = 64;
    pub const MAX_PENDING_CONNECTIONS: usize = 1024;
    pub const MAX_ROOMS_PER_SOCKET: usize = 50;
    pub const JOIN_RATE_PER_SEC: u32 = 20;
    pub const SOCKET_BUFFER: usize = 4096;
    pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;
    /// Socket.IO's own heartbeat defaults; clients learn them in the handshake.
    pub const PING_INTERVAL_MS: u64 = 25_000;
    pub const PING_TIMEOUT_MS: u64 = 20_000;
    pub const SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
    /// `PUBLIC_DIR`'s default: the pages embedded in the binary.
    pub const PUBLIC_DIR: &str = "embedded";
    pub const RUST_LOG: &str = "info";
}

/// Every variable the daemon reads, as found in the environment.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    enable_rabbitmq: Option<String>,
    rabbitmq_url: Option<String>,
    rabbitmq_exchange: Option<String>,
    rabbitmq_queue: Option<String>,
    rabbitmq_queue_type: Option<String>,
    rabbitmq_stream: Option<String>,
    rabbitmq_stream_max_age: Option<String>,
    rabbitmq_rebuild_max_age: Option<String>,
    rabbitmq_replay_max: Option<String>,
    rabbitmq_binding_keys: Option<String>,
    rabbitmq_prefetch: Option<String>,
    rabbitmq_ca_file: Option<String>,
    rabbitmq_queue_expires_ms: Option<String>,
    rabbitmq_stream_max_segment_bytes: Option<String>,
    rabbitmq_reconnect_max_ms: Option<String>,
    host: Option<String>,
    port: Option<String>,
    jwt_secret: Option<String>,
    auth_disabled: Option<String>,
    poll_interval_ms: Option<String>,
    history_per_room: Option<String>,
    history_max_rooms: Option<String>,
    history_max_total: Option<String>,
    history_max_bytes: Option<String>,
    max_recipients: Option<String>,
    history_room_idle_secs: Option<String>,
    dedupe_window: Option<String>,
    cors_origins: Option<String>,
    max_message_bytes: Option<String>,
    max_connections: Option<String>,
    max_connections_per_sub: Option<String>,
    max_pending_connections: Option<String>,
    max_rooms_per_socket: Option<String>,
    join_rate_per_sec: Option<String>,
    socket_buffer: Option<String>,
    socket_buffer_bytes: Option<String>,
    ping_interval_ms: Option<String>,
    ping_timeout_ms: Option<String>,
    shutdown_timeout_ms: Option<String>,
    worker_threads: Option<String>,
    public_dir: Option<String>,
    demo: Option<String>,
    rust_log: Option<String>,
    log_format: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    stats_timezone: Option<String>,
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The broker URL, kept with a copy whose password is masked for logs.
#[derive(Clone)]
pub struct BrokerUrl {
    raw: Secret,
    redacted: String,
}

impl BrokerUrl {
    pub fn expose(&self) -> &str {
        self.raw.expose()
    }
    /// The URL with its password replaced by `***`: the only form that may be logged.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `RABBITMQ_URL`: one URL, or the comma-separated URLs of one cluster's nodes (contract v3
/// section 1), tried in turn.
#[derive(Clone)]
pub struct BrokerUrls {
    urls: Vec<BrokerUrl>,
    /// All of them, passwords masked, for logs.
    redacted: String,
}

impl BrokerUrls {
    /// Splits at each comma that starts another `amqp://` or `amqps://` URL, so that a comma
    /// inside a password does not split it; validates each one.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let mut starts = vec![0];
        for (at, _) in value.match_indices(',') {
            let next = value[at + 1..].trim_start();
            if next.starts_with("amqp://") || next.starts_with("amqps://") {
                starts.push(at + 1);
            }
        }
        starts.push(value.len() + 1);
        let mut urls = Vec::new();
        for pair in starts.windows(2) {
            let url = value[pair[0]..pair[1] - 1].trim();
            validate_amqp_url(url)?;
            urls.push(BrokerUrl {
                redacted: redact_url(url),
                raw: Secret(url.to_owned()),
            });
        }
        let redacted = urls
            .iter()
            .map(BrokerUrl::redacted)
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self { urls, redacted })
    }

    pub fn iter(&self) -> impl Iterator<Item = &BrokerUrl> {
        self.urls.iter()
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The URL at `index`, counting round.
    pub fn get(&self, index: usize) -> &BrokerUrl {
        &self.urls[index % self.urls.len()]
    }

    /// Every URL with its password masked.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }
}

impl std::fmt::Debug for BrokerUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// `RABBITMQ_QUEUE_TYPE`: the `x-queue-type` of queues the daemon creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated on a cluster (RabbitMQ 4 has no mirrored classic queues).
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// `STATS_TIMEZONE`: where the statistics' "today" begins (contract v3 section 7).
#[derive(Clone)]
pub struct StatsZone {
    pub name: String,
    pub zone: jiff::tz::TimeZone,
}

impl StatsZone {
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let name = value.trim();
        let zone = jiff::tz::TimeZone::get(name).map_err(|_| {
            ConfigError::new(
                "STATS_TIMEZONE",
                format!("expected an IANA time zone such as UTC or Europe/Amsterdam, got {name:?}"),
            )
        })?;
        Ok(Self {
            name: name.to_owned(),
            zone,
        })
    }
}

impl std::fmt::Debug for StatsZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Masks the password of `scheme://user:password@host…`.
///
/// The userinfo ends at the last `@` before the path: a password may itself hold `/`, `@`, `?`
/// or `#` (unescaped, as people paste them), so the authority cannot end at the first `/`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    // Host, port and path never contain `@`; the userinfo is everything before the last one.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// Secrets that ship in this repository's examples, docs and tests: anyone can read them, so
/// none of them may guard a daemon that listens beyond loopback.
const PLACEHOLDER_SECRETS: &[&str] = &[
    "change-me-to-a-long-random-secret",
    "replace-with-at-least-32-random-bytes",
    "change-me-admin",
    "change-me-bridge",
    "change-me-producer",
    "integration-test-secret-0123456789abcdef",
    "devsecret",
    "s3cret",
];

/// Shortest `JWT_SECRET` accepted on a non-loopback `HOST`: HS256 wants a key of at least the
/// hash's 32 bytes (RFC 7518 section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why `AuthMode::Disabled` holds in dev mode: `JWT_SECRET` unset on a loopback `HOST`.
pub const DEV_MODE: &str = "JWT_SECRET is unset and HOST is a loopback address (dev mode)";

#[derive(Debug, Clone)]
pub struct RabbitConfig {
    pub url: BrokerUrls,
    /// `x-queue-type` of the queue and the dead-letter queue when the daemon creates them.
    pub queue_type: QueueType,
    /// `RABBITMQ_STREAM=off`: the shared log is the fanout exchange `<queue>.fanout` (contract
    /// v3 section 2), for brokers without streams.
    pub streamless: bool,
    pub exchange: String,
    pub queue: String,
    /// The stream every instance reads (contract v2 section 2).
    pub stream: String,
    /// `x-max-age` of the stream, in RabbitMQ's units (`24h`, `7D`).
    pub stream_max_age: String,
    /// How far back an instance reads the stream at start to fill its windows.
    pub rebuild_max_age: Duration,
    /// Most stream records one replay may read beyond the memory window.
    pub replay_max: u64,
    pub binding_keys: Vec<String>,
    pub prefetch: u16,
    /// Extra CA certificates (PEM) to trust for `amqps://`, on top of the system roots.
    pub ca_file: Option<PathBuf>,
    /// `x-expires` for the queue, so per-instance queues of instances that are gone get deleted.
    pub queue_expires_ms: Option<u32>,
    /// `x-stream-max-segment-size-bytes` of the stream, when set.
    pub stream_max_segment_bytes: Option<u64>,
    /// Cap of the exponential reconnect backoff.
    pub reconnect_max: Duration,
}

impl RabbitConfig {
    /// Fanout exchange that dead letters go through (contract section 2).
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.queue)
    }
    /// Queue that keeps the dead letters.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
    /// The stream-less mode's shared log: a durable fanout exchange.
    pub fn fanout_exchange(&self) -> String {
        format!("{}.fanout", self.queue)
    }
}

#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Tokens are required and verified with this HS256 secret.
    Required(Secret),
    /// Every valid room is open to everyone; the reason is logged at start.
    Disabled(&'static str),
}

impl AuthMode {
    /// Auth is off only because `JWT_SECRET` is unset on loopback (not `AUTH_DISABLED=true`):
    /// such a daemon must never answer a request that came through a proxy.
    pub fn is_dev_mode(&self) -> bool {
        matches!(self, AuthMode::Disabled(reason) if *reason == DEV_MODE)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub enum CorsOrigins {
    SameOrigin,
    Any,
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct HistoryConfig {
    pub per_room: usize,
    pub max_rooms: usize,
    pub max_total: usize,
    /// Bytes of notifications held, all rooms together (`HISTORY_MAX_BYTES`).
    pub max_bytes: usize,
    pub room_idle: Duration,
}

/// Limits that protect the daemon from abusive or broken clients.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// Sockets one token subject (`sub`) may hold at once, so one token cannot take every slot.
    pub max_connections_per_sub: usize,
    /// Engine.IO sessions that have not (yet) completed a Socket.IO CONNECT.
    pub max_pending_connections: usize,
    pub max_rooms_per_socket: usize,
    pub join_rate_per_sec: u32,
    /// Packets queued for one socket before it counts as stalled and is disconnected.
    pub socket_buffer: usize,
    /// Bytes of messages queued for one socket before it counts as stalled, likewise.
    pub socket_buffer_bytes: usize,
    pub max_message_bytes: usize,
    /// Most rooms one message may name (`MAX_RECIPIENTS`).
    pub max_recipients: usize,
    /// Engine.IO heartbeat: the server pings this often, and closes a socket whose client has
    /// not answered within `ping_timeout` (dead peers, half-open TCP, stalled readers).
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub enable_rabbitmq: bool,
    pub rabbitmq: RabbitConfig,
    pub host: String,
    pub port: u16,
    pub auth: AuthMode,
    pub poll_interval_ms: u64,
    pub history: HistoryConfig,
    pub dedupe_window: usize,
    pub cors: CorsOrigins,
    pub limits: Limits,
    pub shutdown_timeout: Duration,
    /// Threads of the async runtime (lapin runs the AMQP connection's I/O on a thread of its own).
    pub worker_threads: usize,
    /// `PUBLIC_DIR`: the pages are served from this directory; `None` (unset or `embedded`, the
    /// default): from the copy of `public/` built into the binary.
    pub public_dir: Option<PathBuf>,
    pub demo: bool,
    pub log_filter: String,
    pub log_format: LogFormat,
    /// `JWT_ISSUER` / `JWT_AUDIENCE`: claims a token must carry, when set.
    pub token_claims: TokenClaims,
    /// `STATS_TIMEZONE`.
    pub stats_zone: StatsZone,
}

/// The `iss` and `aud` a token must carry (contract v2 section 4); unchecked when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenClaims {
    pub issuer: Option<String>,
    /// A token's `aud` must contain one of these; empty: `aud` is not checked.
    pub audience: Vec<String>,
}

impl Config {
    /// Reads the process environment (a `.env` file must already be loaded by the caller).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Builds the configuration from `(NAME, value)` pairs; unknown names are ignored.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        // envy only fails on a value that is not a string, which the environment cannot hold.
        let raw: RawEnv = envy::from_iter(vars.into_iter().map(|(k, v)| (k.into(), v.into())))
            .map_err(|e| ConfigError::new("environment", e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawEnv) -> Result<Self, ConfigError> {
        // Parsed first: the loopback rule of `auth_mode` depends on it.
        let host = raw
            .host
            .clone()
            .unwrap_or_else(|| defaults::HOST.to_owned());
        if host.trim().is_empty() {
            return Err(ConfigError::new("HOST", "must not be empty"));
        }
        let port = parse_num::<u16>("PORT", raw.port.clone(), defaults::PORT, 0, u16::MAX)?;
        let auth = auth_mode(&raw, &host)?;
        Ok(Config {
            enable_rabbitmq: parse_bool(
                "ENABLE_RABBITMQ",
                raw.enable_rabbitmq.clone(),
                defaults::ENABLE_RABBITMQ,
            )?,
            rabbitmq: rabbit_config(&raw)?,
            host,
            port,
            auth,
            poll_interval_ms: parse_num(
                "POLL_INTERVAL_MS",
                raw.poll_interval_ms.clone(),
                defaults::POLL_INTERVAL_MS,
                100,
                86_400_000,
            )?,
            history: history_config(&raw)?,
            dedupe_window: parse_num(
                "DEDUPE_WINDOW",
                raw.dedupe_window.clone(),
                defaults::DEDUPE_WINDOW,
                defaults::DEDUPE_WINDOW,
                10_000_000,
            )?,
            cors: parse_cors(raw.cors_origins.clone())?,
            limits: limits(&raw)?,
            shutdown_timeout: Duration::from_millis(parse_num(
                "SHUTDOWN_TIMEOUT_MS",
                raw.shutdown_timeout_ms.clone(),
                defaults::SHUTDOWN_TIMEOUT_MS,
                0,
                600_000,
            )?),
            worker_threads: parse_num(
                "WORKER_THREADS",
                raw.worker_threads.clone(),
                default_worker_threads(),
                1,
                1024,
            )?,
            public_dir: raw
                .public_dir
                .clone()
                .filter(|dir| !dir.is_empty() && dir != defaults::PUBLIC_DIR)
                .map(PathBuf::from),
            demo: parse_bool("DEMO", raw.demo.clone(), defaults::DEMO)?,
            log_filter: parse_log_filter(raw.rust_log.clone())?,
            token_claims: parse_token_claims(raw.jwt_issuer.clone(), raw.jwt_audience.clone())?,
            stats_zone: StatsZone::parse(
                raw.stats_timezone
                    .as_deref()
                    .unwrap_or(defaults::STATS_TIMEZONE),
            )?,
            log_format: match raw.log_format.as_deref() {
                None => LogFormat::Pretty,
                Some(format) if format == defaults::LOG_FORMAT => LogFormat::Pretty,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError::new(
                        "LOG_FORMAT",
                        format!("expected pretty or json, got {other:?}"),
                    ));
                }
            },
        })
    }

    /// `HOST:PORT`, with brackets around an IPv6 host.
    pub fn listen_address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn auth_mode(raw: &RawEnv, host: &str) -> Result<AuthMode, ConfigError> {
    let auth_disabled = parse_bool(
        "AUTH_DISABLED",
        raw.auth_disabled.clone(),
        defaults::AUTH_DISABLED,
    )?;
    let secret = raw.jwt_secret.clone().filter(|s| !s.is_empty());
    match (secret, auth_disabled) {
        (_, true) => Ok(AuthMode::Disabled("AUTH_DISABLED=true")),
        (Some(secret), false) => {
            if !is_loopback(host) {
                check_secret_strength(&secret)?;
            }
            Ok(AuthMode::Required(Secret(secret)))
        }
        (None, false) if is_loopback(host) => Ok(AuthMode::Disabled(DEV_MODE)),
        (None, false) => Err(ConfigError::new(
            "JWT_SECRET",
            format!(
                "must be set when HOST ({host}) is not a loopback address; \
                 set JWT_SECRET, or AUTH_DISABLED=true to run without authentication"
            ),
        )),
    }
}

fn rabbit_config(raw: &RawEnv) -> Result<RabbitConfig, ConfigError> {
    let url = raw
        .rabbitmq_url
        .clone()
        .unwrap_or_else(|| defaults::RABBITMQ_URL.to_owned());
    let url = BrokerUrls::parse(&url)?;
    let queue_type = match raw
        .rabbitmq_queue_type
        .as_deref()
        .unwrap_or(defaults::RABBITMQ_QUEUE_TYPE)
        .trim()
    {
        "quorum" => QueueType::Quorum,
        "classic" => QueueType::Classic,
        other => {
            return Err(ConfigError::new(
                "RABBITMQ_QUEUE_TYPE",
                format!("expected quorum or classic, got {other:?}"),
            ));
        }
    };
    let streamless =
        raw.rabbitmq_stream.as_deref().map(str::trim) == Some(defaults::RABBITMQ_STREAM_OFF);
    let queue = parse_name(
        "RABBITMQ_QUEUE",
        raw.rabbitmq_queue.clone(),
        defaults::RABBITMQ_QUEUE,
    )?;
    let default_stream = format!("{queue}{}", defaults::RABBITMQ_STREAM_SUFFIX);
    Ok(RabbitConfig {
        url,
        queue_type,
        streamless,
        exchange: parse_name(
            "RABBITMQ_EXCHANGE",
            raw.rabbitmq_exchange.clone(),
            defaults::RABBITMQ_EXCHANGE,
        )?,
        stream: parse_name(
            "RABBITMQ_STREAM",
            raw.rabbitmq_stream.clone().filter(|_| !streamless),
            &default_stream,
        )?,
        queue,
        stream_max_age: parse_age(
            "RABBITMQ_STREAM_MAX_AGE",
            raw.rabbitmq_stream_max_age.clone(),
            defaults::RABBITMQ_STREAM_MAX_AGE,
        )?
        .0,
        rebuild_max_age: parse_age(
            "RABBITMQ_REBUILD_MAX_AGE",
            raw.rabbitmq_rebuild_max_age.clone(),
            defaults::RABBITMQ_REBUILD_MAX_AGE,
        )?
        .1,
        replay_max: parse_num(
            "RABBITMQ_REPLAY_MAX",
            raw.rabbitmq_replay_max.clone(),
            defaults::RABBITMQ_REPLAY_MAX,
            0,
            100_000_000,
        )?,
        binding_keys: parse_binding_keys(raw.rabbitmq_binding_keys.clone())?,
        prefetch: parse_num(
            "RABBITMQ_PREFETCH",
            raw.rabbitmq_prefetch.clone(),
            defaults::RABBITMQ_PREFETCH,
            1,
            u16::MAX,
        )?,
        ca_file: parse_file("RABBITMQ_CA_FILE", raw.rabbitmq_ca_file.clone())?,
        queue_expires_ms: parse_opt_num(
            "RABBITMQ_QUEUE_EXPIRES_MS",
            raw.rabbitmq_queue_expires_ms.clone(),
            1,
            u32::MAX,
        )?,
        stream_max_segment_bytes: parse_opt_num(
            "RABBITMQ_STREAM_MAX_SEGMENT_BYTES",
            raw.rabbitmq_stream_max_segment_bytes.clone(),
            1,
            3_000_000_000,
        )?,
        reconnect_max: Duration::from_millis(parse_num(
            "RABBITMQ_RECONNECT_MAX_MS",
            raw.rabbitmq_reconnect_max_ms.clone(),
            defaults::RABBITMQ_RECONNECT_MAX_MS,
            100,
            3_600_000,
        )?),
    })
}

fn history_config(raw: &RawEnv) -> Result<HistoryConfig, ConfigError> {
    Ok(HistoryConfig {
        per_room: parse_num(
            "HISTORY_PER_ROOM",
            raw.history_per_room.clone(),
            defaults::HISTORY_PER_ROOM,
            0,
            100_000,
        )?,
        max_rooms: parse_num(
            "HISTORY_MAX_ROOMS",
            raw.history_max_rooms.clone(),
            defaults::HISTORY_MAX_ROOMS,
            1,
            10_000_000,
        )?,
        max_total: parse_num(
            "HISTORY_MAX_TOTAL",
            raw.history_max_total.clone(),
            defaults::HISTORY_MAX_TOTAL,
            1,
            100_000_000,
        )?,
        max_bytes: parse_num(
            "HISTORY_MAX_BYTES",
            raw.history_max_bytes.clone(),
            defaults::HISTORY_MAX_BYTES,
            4096,
            usize::MAX,
        )?,
        room_idle: Duration::from_secs(parse_num(
            "HISTORY_ROOM_IDLE_SECS",
            raw.history_room_idle_secs.clone(),
            defaults::HISTORY_ROOM_IDLE_SECS,
            1,
            31_536_000,
        )?),
    })
}

fn limits(raw: &RawEnv) -> Result<Limits, ConfigError> {
    Ok(Limits {
        max_connections: parse_num(
            "MAX_CONNECTIONS",
            raw.max_connections.clone(),
            defaults::MAX_CONNECTIONS,
            1,
            10_000_000,
        )?,
        max_connections_per_sub: parse_num(
            "MAX_CONNECTIONS_PER_SUB",
            raw.max_connections_per_sub.clone(),
            defaults::MAX_CONNECTIONS_PER_SUB,
            1,
            10_000_000,
        )?,
        max_pending_connections: parse_num(
            "MAX_PENDING_CONNECTIONS",
            raw.max_pending_connections.clone(),
            defaults::MAX_PENDING_CONNECTIONS,
            1,
            10_000_000,
        )?,
        max_rooms_per_socket: parse_num(
            "MAX_ROOMS_PER_SOCKET",
            raw.max_rooms_per_socket.clone(),
            defaults::MAX_ROOMS_PER_SOCKET,
            1,
            100_000,
        )?,
        join_rate_per_sec: parse_num(
            "JOIN_RATE_PER_SEC",
            raw.join_rate_per_sec.clone(),
            defaults::JOIN_RATE_PER_SEC,
            1,
            1_000_000,
        )?,
        socket_buffer: parse_num(
            "SOCKET_BUFFER",
            raw.socket_buffer.clone(),
            defaults::SOCKET_BUFFER,
            8,
            1_000_000,
        )?,
        socket_buffer_bytes: parse_num(
            "SOCKET_BUFFER_BYTES",
            raw.socket_buffer_bytes.clone(),
            defaults::SOCKET_BUFFER_BYTES,
            4096,
            1 << 30,
        )?,
        max_message_bytes: parse_num(
            "MAX_MESSAGE_BYTES",
            raw.max_message_bytes.clone(),
            defaults::MAX_MESSAGE_BYTES,
            64,
            64 << 20,
        )?,
        max_recipients: parse_num(
            "MAX_RECIPIENTS",
            raw.max_recipients.clone(),
            defaults::MAX_RECIPIENTS,
            1,
            1_000_000,
        )?,
        ping_interval: Duration::from_millis(parse_num(
            "PING_INTERVAL_MS",
            raw.ping_interval_ms.clone(),
            defaults::PING_INTERVAL_MS,
            100,
            3_600_000,
        )?),
        ping_timeout: Duration::from_millis(parse_num(
            "PING_TIMEOUT_MS",
            raw.ping_timeout_ms.clone(),
            defaults::PING_TIMEOUT_MS,
            100,
            3_600_000,
        )?),
    })
}

/// A RabbitMQ age (`x-max-age` syntax: a whole number and one of `Y M D h m s`), kept as given
/// for the broker and as a duration for the daemon (a month counted as 30 days, a year as 365).
fn parse_age(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<(String, Duration), ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    let text = text.trim();
    let invalid = || {
        ConfigError::new(
            variable,
            format!("expected a whole number and one of Y M D h m s (e.g. 24h, 7D), got {text:?}"),
        )
    };
    let unit = text.chars().last().ok_or_else(invalid)?;
    let seconds: u64 = match unit {
        'Y' => 365 * 86_400,
        'M' => 30 * 86_400,
        'D' => 86_400,
        'h' => 3600,
        'm' => 60,
        's' => 1,
        _ => return Err(invalid()),
    };
    let number = &text[..text.len() - 1];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let count: u64 = number.parse().map_err(|_| invalid())?;
    if count == 0 {
        return Err(invalid());
    }
    let duration = count
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(invalid)?;
    Ok((text.to_owned(), duration))
}

/// One runtime thread per core (tokio's default), following a container's CPU quota. Fewer
/// trade polling throughput for delivery CPU (measured in the README's Performance section).
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// On a non-loopback `HOST`, a guessable `JWT_SECRET` is as good as none: anyone who can reach
/// the port can mint an admin token.
fn check_secret_strength(secret: &str) -> Result<(), ConfigError> {
    if PLACEHOLDER_SECRETS.contains(&secret.trim()) {
        return Err(ConfigError::new(
            "JWT_SECRET",
            "is an example value from this repository; use a long random secret \
             (e.g. `openssl rand -hex 32`)",
        ));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::new(
            "JWT_SECRET",
            format!(
                "is {} bytes; a non-loopback HOST needs at least {MIN_SECRET_BYTES} \
                 (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
        ));
    }
    Ok(())
}

fn parse_bool(
    variable: &'static str,
    value: Option<String>,
    default: bool,
) -> Result<bool, ConfigError> {
    match value.as_deref() {
        None => Ok(default),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ConfigError::new(
            variable,
            format!("expected true, false, 1 or 0, got {other:?}"),
        )),
    }
}

fn parse_num<T>(
    variable: &'static str,
    value: Option<String>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    Ok(parse_opt_num(variable, value, min, max)?.unwrap_or(default))
}

fn parse_opt_num<T>(
    variable: &'static str,
    value: Option<String>,
    min: T,
    max: T,
) -> Result<Option<T>, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(value) = value else { return Ok(None) };
    match value.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(Some(n)),
        _ => Err(ConfigError::new(
            variable,
            format!("expected a whole number from {min} to {max}, got {value:?}"),
        )),
    }
}

/// Exchange and queue names: printable, no spaces, at most 200 bytes (AMQP allows 255 and we
/// append `.dlx` / `.dead`).
fn parse_name(
    variable: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<String, ConfigError> {
    let name = value.unwrap_or_else(|| default.to_owned());
    let valid = !name.is_empty() && name.len() <= 200 && name.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(name)
    } else {
        Err(ConfigError::new(
            variable,
            format!("expected 1-200 printable ASCII characters without spaces, got {name:?}"),
        ))
    }
}

fn parse_binding_keys(value: Option<String>) -> Result<Vec<String>, ConfigError> {
    let value = value.unwrap_or_else(|| defaults::RABBITMQ_BINDING_KEYS.to_owned());
    let keys: Vec<String> = value.split(',').map(|k| k.trim().to_owned()).collect();
    if keys
        .iter()
        .any(|k| k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ConfigError::new(
            "RABBITMQ_BINDING_KEYS",
            format!("expected comma-separated routing key patterns, got {value:?}"),
        ));
    }
    Ok(keys)
}

fn parse_file(
    variable: &'static str,
    value: Option<String>,
) -> Result<Option<PathBuf>, ConfigError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(path) if std::path::Path::new(&path).is_file() => Ok(Some(PathBuf::from(path))),
        Some(path) => Err(ConfigError::new(
            variable,
            format!("no readable file at {path:?}"),
        )),
    }
}

fn validate_amqp_url(url: &str) -> Result<(), ConfigError> {
    let redacted = redact_url(url);
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(ConfigError::new(
            "RABBITMQ_URL",
            format!("expected an amqp:// or amqps:// URL, got {redacted:?}"),
        ));
    }
    url.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| ConfigError::new("RABBITMQ_URL", format!("malformed URL {redacted:?}: {e}")))
}

fn parse_cors(value: Option<String>) -> Result<CorsOrigins, ConfigError> {
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(CorsOrigins::SameOrigin);
    };
    if value.trim() == "*" {
        return Ok(CorsOrigins::Any);
    }
    let mut origins = Vec::new();
    for origin in value.split(',').map(str::trim) {
        let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
            && origin.parse::<axum::http::HeaderValue>().is_ok()
            && !origin
                .trim_end_matches('/')
                .split("://")
                .nth(1)
                .unwrap_or("")
                .contains('/');
        if !valid {
            return Err(ConfigError::new(
                "CORS_ORIGINS",
                format!(
                    "expected `*` or comma-separated origins like https://app.example.com, got {origin:?}"
                ),
            ));
        }
        origins.push(origin.trim_end_matches('/').to_owned());
    }
    Ok(CorsOrigins::List(origins))
}

fn parse_log_filter(value: Option<String>) -> Result<String, ConfigError> {
    let filter = value
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| defaults::RUST_LOG.to_owned());
    tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| ConfigError::new("RUST_LOG", format!("invalid filter {filter:?}: {e}")))?;
    Ok(filter)
}

fn parse_token_claims(
    issuer: Option<String>,
    audience: Option<String>,
) -> Result<TokenClaims, ConfigError> {
    let issuer = issuer
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty());
    let audience: Vec<String> = audience
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if audience.len() > 64 {
        return Err(ConfigError::new("JWT_AUDIENCE", "at most 64 audiences"));
    }
    Ok(TokenClaims { issuer, audience })
}

/// `127.0.0.0/8`, `::1` and `localhost`: the only hosts where auth may be off by default.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&[]).unwrap();
        assert!(!c.enable_rabbitmq);
        assert_eq!(c.rabbitmq.url.len(), 1);
        assert_eq!(
            c.rabbitmq.url.get(0).expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(c.rabbitmq.queue_type, QueueType::Quorum);
        assert!(!c.rabbitmq.streamless);
        assert_eq!(c.rabbitmq.stream, "notifications.log");
        assert_eq!(c.stats_zone.name, "UTC");
        assert_eq!(c.rabbitmq.exchange, "notifications");
        assert_eq!(c.rabbitmq.queue, "notifications");
        assert_eq!(c.rabbitmq.binding_keys, ["notification.*"]);
        assert_eq!(c.rabbitmq.prefetch, 256);
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 3000));
        assert!(matches!(c.auth, AuthMode::Disabled(_)));
        assert_eq!(c.poll_interval_ms, 10_000);
        assert_eq!(c.history.per_room, 100);
        assert!(matches!(c.cors, CorsOrigins::SameOrigin));
        assert_eq!(c.limits.max_message_bytes, 131_072);
        assert_eq!(c.limits.socket_buffer, 4096);
        assert_eq!(c.limits.socket_buffer_bytes, 4 << 20);
        assert_eq!(
            (c.limits.ping_interval, c.limits.ping_timeout),
            (Duration::from_secs(25), Duration::from_secs(20))
        );
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.rabbitmq.dead_letter_exchange(), "notifications.dlx");
        assert_eq!(c.rabbitmq.dead_letter_queue(), "notifications.dead");
    }

    #[test]
    fn v2_defaults_follow_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.rabbitmq.stream, "notifications.log");
        assert_eq!(c.rabbitmq.stream_max_age, "24h");
        assert_eq!(c.rabbitmq.rebuild_max_age, Duration::from_secs(15 * 60));
        assert_eq!(c.rabbitmq.replay_max, 20_000);
        assert_eq!(c.history.max_bytes, 67_108_864);
        assert_eq!(c.limits.max_recipients, 1000);
        let c = config(&[("RABBITMQ_QUEUE", "q1")]).unwrap();
        assert_eq!(
            c.rabbitmq.stream, "q1.log",
            "the stream follows the queue's name"
        );
    }

    #[test]
    fn ages_take_rabbitmq_units() {
        for (text, secs) in [
            ("24h", 86_400),
            ("7D", 604_800),
            ("90s", 90),
            ("1Y", 31_536_000),
        ] {
            let (kept, duration) = parse_age("X", Some(text.into()), "1h").unwrap();
            assert_eq!((kept.as_str(), duration.as_secs()), (text, secs));
        }
        for bad in ["", "h", "24", "24x", "-1h", "0h", "1.5h", "24 h"] {
            assert!(parse_age("X", Some(bad.into()), "1h").is_err(), "{bad:?}");
        }
        let err = config(&[("RABBITMQ_STREAM_MAX_AGE", "forever")]).unwrap_err();
        assert_eq!(err.variable, "RABBITMQ_STREAM_MAX_AGE");
    }

    #[test]
    fn booleans_accept_true_false_1_0_only() {
        assert!(config(&[("ENABLE_RABBITMQ", "1")]).unwrap().enable_rabbitmq);
        assert!(!config(&[("ENABLE_RABBITMQ", "0")]).unwrap().enable_rabbitmq);
        let err = config(&[("ENABLE_RABBITMQ", "yes")]).unwrap_err();
        assert_eq!(err.variable, "ENABLE_RABBITMQ");
    }

    #[test]
    fn bad_values_name_their_variable_even_when_unused() {
        for (var, value) in [
            ("PORT", "http"),
            ("PORT", "70000"),
            ("RABBITMQ_PREFETCH", "-1"),
            ("RABBITMQ_URL", "http://example.com"),
            ("RABBITMQ_URL", "amqp://[bad"),
            ("POLL_INTERVAL_MS", "soon"),
            ("HISTORY_PER_ROOM", "1e3"),
            ("MAX_MESSAGE_BYTES", "big"),
            ("CORS_ORIGINS", "not an origin"),
            ("LOG_FORMAT", "xml"),
            ("RUST_LOG", "info,[="),
            ("AUTH_DISABLED", "maybe"),
            ("RABBITMQ_CA_FILE", "/nonexistent/ca.pem"),
            ("RABBITMQ_BINDING_KEYS", "a,,b"),
            ("WORKER_THREADS", "0"),
            ("PING_INTERVAL_MS", "50"),
            ("PING_TIMEOUT_MS", "20s"),
            ("RABBITMQ_REBUILD_MAX_AGE", "15 minutes"),
            ("RABBITMQ_REPLAY_MAX", "all"),
            ("RABBITMQ_STREAM", "has space"),
            ("HISTORY_MAX_BYTES", "64MiB"),
            ("MAX_RECIPIENTS", "0"),
        ] {
            let err = config(&[(var, value)]).expect_err(var);
            assert_eq!(err.variable, var, "{var}={value}: {err}");
        }
    }

    const STRONG: &str = "7f3c9a1e5b2d8f4a6c0e9b1d3f5a7c9e";

    #[test]
    fn a_public_host_refuses_a_short_or_example_secret() {
        for weak in ["s", "0123456789abcdef0123456789abcde"] {
            let err = config(&[("HOST", "0.0.0.0"), ("JWT_SECRET", weak)]).unwrap_err();
            assert_eq!(err.variable, "JWT_SECRET");
            assert!(err.to_string().contains("32"), "{err}");
            if weak.len() > 1 {
                assert!(
                    !err.to_string().contains(weak),
                    "the secret is not printed: {err}"
                );
            }
        }
        for placeholder in PLACEHOLDER_SECRETS {
            let err = config(&[("HOST", "10.0.0.5"), ("JWT_SECRET", placeholder)]).unwrap_err();
            assert_eq!(err.variable, "JWT_SECRET", "{placeholder}");
            assert!(!err.to_string().contains(placeholder), "{err}");
        }
        // Every secret the repository ships is in the list (the .env.example one included).
        let example = include_str!("../.env.example");
        let shipped = example
            .lines()
            .find_map(|l| l.trim_start_matches('#').strip_prefix("JWT_SECRET="))
            .expect(".env.example shows a JWT_SECRET");
        assert!(PLACEHOLDER_SECRETS.contains(&shipped), "{shipped}");
        // Exactly 32 random bytes is enough; loopback keeps accepting a short development one.
        assert!(matches!(
            config(&[("HOST", "0.0.0.0"), ("JWT_SECRET", STRONG)])
                .unwrap()
                .auth,
            AuthMode::Required(_)
        ));
        assert!(matches!(
            config(&[("JWT_SECRET", "devsecret")]).unwrap().auth,
            AuthMode::Required(_)
        ));
    }

    #[test]
    fn only_an_unset_secret_on_loopback_is_dev_mode() {
        assert!(config(&[]).unwrap().auth.is_dev_mode());
        assert!(
            !config(&[("AUTH_DISABLED", "true")])
                .unwrap()
                .auth
                .is_dev_mode()
        );
        assert!(
            !config(&[("HOST", "0.0.0.0"), ("AUTH_DISABLED", "true")])
                .unwrap()
                .auth
                .is_dev_mode()
        );
        assert!(!config(&[("JWT_SECRET", "x")]).unwrap().auth.is_dev_mode());
    }

    #[test]
    fn connection_caps_are_validated() {
        let c = config(&[]).unwrap();
        assert_eq!(c.limits.max_connections_per_sub, 64);
        assert_eq!(c.limits.max_pending_connections, 1024);
        for var in ["MAX_CONNECTIONS_PER_SUB", "MAX_PENDING_CONNECTIONS"] {
            for bad in ["0", "many", "-1"] {
                assert_eq!(config(&[(var, bad)]).unwrap_err().variable, var, "{bad}");
            }
        }
        let c = config(&[
            ("MAX_CONNECTIONS_PER_SUB", "3"),
            ("MAX_PENDING_CONNECTIONS", "7"),
        ])
        .unwrap();
        assert_eq!(
            (
                c.limits.max_connections_per_sub,
                c.limits.max_pending_connections
            ),
            (3, 7)
        );
    }

    #[test]
    fn redaction_finds_the_userinfo_by_its_last_at() {
        for (url, password) in [
            ("amqp://bridge:pa/ss@mq.example.com:5672/%2f", "pa/ss"),
            ("amqp://bridge:p@ss@mq.example.com/notify", "p@ss"),
            ("amqp://bridge:p?a#ss@mq.example.com/notify", "p?a#ss"),
            ("amqps://bridge:a/b@c?d#e@mq:5671/v", "a/b@c?d#e"),
            ("amqp://bridge:plain@mq/%2f", "plain"),
        ] {
            let redacted = redact_url(url);
            assert!(!redacted.contains(password), "{url} -> {redacted}");
            assert!(
                redacted.starts_with("amqp") && redacted.contains("bridge:***@mq"),
                "{redacted}"
            );
        }
        assert_eq!(
            redact_url("amqp://bridge:pa/ss@mq.example.com:5672/%2f"),
            "amqp://bridge:***@mq.example.com:5672/%2f"
        );
        // No userinfo, or a user without a password: nothing to hide.
        assert_eq!(redact_url("amqp://mq:5672/%2f"), "amqp://mq:5672/%2f");
        assert_eq!(redact_url("amqp://bridge@mq/%2f"), "amqp://bridge@mq/%2f");
    }

    #[test]
    fn a_public_host_needs_a_secret_or_an_explicit_opt_out() {
        let err = config(&[("HOST", "0.0.0.0")]).unwrap_err();
        assert_eq!(err.variable, "JWT_SECRET");
        assert!(matches!(
            config(&[("HOST", "0.0.0.0"), ("JWT_SECRET", STRONG)])
                .unwrap()
                .auth,
            AuthMode::Required(_)
        ));
        assert!(matches!(
            config(&[("HOST", "0.0.0.0"), ("AUTH_DISABLED", "true")])
                .unwrap()
                .auth,
            AuthMode::Disabled(_)
        ));
        assert!(matches!(
            config(&[("JWT_SECRET", "s"), ("AUTH_DISABLED", "true")])
                .unwrap()
                .auth,
            AuthMode::Disabled(_)
        ));
        for host in ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"] {
            assert!(
                matches!(
                    config(&[("HOST", host)]).unwrap().auth,
                    AuthMode::Disabled(_)
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn the_password_never_reaches_debug_output() {
        let c = config(&[(
            "RABBITMQ_URL",
            "amqps://bridge:s3cret@mq.example.com:5671/notify",
        )])
        .unwrap();
        assert_eq!(
            c.rabbitmq.url.redacted(),
            "amqps://bridge:***@mq.example.com:5671/notify"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let err = config(&[("RABBITMQ_URL", "amqp://u:hunter2@[bad")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn cors_origins_are_parsed() {
        assert!(matches!(
            config(&[("CORS_ORIGINS", "*")]).unwrap().cors,
            CorsOrigins::Any
        ));
        match config(&[("CORS_ORIGINS", "https://a.example, http://localhost:5173")])
            .unwrap()
            .cors
        {
            CorsOrigins::List(list) => {
                assert_eq!(list, ["https://a.example", "http://localhost:5173"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn worker_threads_default_to_one_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(config(&[]).unwrap().worker_threads, cores);
        assert_eq!(
            config(&[("WORKER_THREADS", "4")]).unwrap().worker_threads,
            4
        );
    }

    #[test]
    fn listen_address_brackets_ipv6() {
        assert_eq!(
            config(&[("HOST", "::1"), ("PORT", "0")])
                .unwrap()
                .listen_address(),
            "[::1]:0"
        );
    }

    #[test]
    fn issuer_and_comma_separated_audiences_are_optional() {
        assert_eq!(config(&[]).unwrap().token_claims, TokenClaims::default());
        let c = config(&[
            ("JWT_ISSUER", "https://id.example.com"),
            ("JWT_AUDIENCE", "cms, app,"),
        ])
        .unwrap();
        assert_eq!(
            c.token_claims.issuer.as_deref(),
            Some("https://id.example.com")
        );
        assert_eq!(c.token_claims.audience, ["cms", "app"]);
    }

    #[test]
    fn several_node_urls_are_tried_in_turn_and_none_of_their_passwords_is_shown() {
        let c = config(&[(
            "RABBITMQ_URL",
            "amqp://u:pa,ss1@node-1:5672/%2f, amqps://u:pass2@node-2:5671/prod,amqp://u:pass3@node-3",
        )])
        .unwrap();
        let urls = &c.rabbitmq.url;
        assert_eq!(urls.len(), 3);
        // A comma inside a password does not split the URL.
        assert_eq!(urls.get(0).expose(), "amqp://u:pa,ss1@node-1:5672/%2f");
        assert_eq!(urls.get(1).expose(), "amqps://u:pass2@node-2:5671/prod");
        assert_eq!(urls.get(2).expose(), "amqp://u:pass3@node-3");
        assert_eq!(urls.get(3).expose(), urls.get(0).expose(), "counts round");
        assert_eq!(
            urls.redacted(),
            "amqp://u:***@node-1:5672/%2f,amqps://u:***@node-2:5671/prod,amqp://u:***@node-3"
        );
        let shown = format!("{c:?}");
        for secret in ["pa,ss1", "pass2", "pass3"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let err = config(&[("RABBITMQ_URL", "amqp://u:p1@a,amqp://u:hunter2@[bad")]).unwrap_err();
        assert_eq!(err.variable, "RABBITMQ_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn queue_type_and_the_stream_less_mode_are_read() {
        let c = config(&[
            ("RABBITMQ_QUEUE_TYPE", "classic"),
            ("RABBITMQ_STREAM", "off"),
        ])
        .unwrap();
        assert_eq!(c.rabbitmq.queue_type, QueueType::Classic);
        assert!(c.rabbitmq.streamless);
        assert_eq!(c.rabbitmq.fanout_exchange(), "notifications.fanout");
        let c = config(&[("RABBITMQ_STREAM", "audit.log")]).unwrap();
        assert!(!c.rabbitmq.streamless);
        assert_eq!(c.rabbitmq.stream, "audit.log");
        let err = config(&[("RABBITMQ_QUEUE_TYPE", "stream")]).unwrap_err();
        assert_eq!(err.variable, "RABBITMQ_QUEUE_TYPE");
    }

    #[test]
    fn stats_timezone_takes_iana_names_only() {
        let c = config(&[("STATS_TIMEZONE", "Asia/Karachi")]).unwrap();
        assert_eq!(c.stats_zone.name, "Asia/Karachi");
        let err = config(&[("STATS_TIMEZONE", "Mars/Olympus")]).unwrap_err();
        assert_eq!(err.variable, "STATS_TIMEZONE");
    }
}
