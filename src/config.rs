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

/// Every variable the daemon reads, as found in the environment.
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    enable_rabbitmq: Option<String>,
    rabbitmq_url: Option<String>,
    rabbitmq_exchange: Option<String>,
    rabbitmq_queue: Option<String>,
    rabbitmq_binding_keys: Option<String>,
    rabbitmq_prefetch: Option<String>,
    rabbitmq_ca_file: Option<String>,
    rabbitmq_queue_expires_ms: Option<String>,
    rabbitmq_reconnect_max_ms: Option<String>,
    host: Option<String>,
    port: Option<String>,
    jwt_secret: Option<String>,
    auth_disabled: Option<String>,
    poll_interval_ms: Option<String>,
    history_per_room: Option<String>,
    history_max_rooms: Option<String>,
    history_max_total: Option<String>,
    history_room_idle_secs: Option<String>,
    dedupe_window: Option<String>,
    cors_origins: Option<String>,
    max_message_bytes: Option<String>,
    max_connections: Option<String>,
    max_rooms_per_socket: Option<String>,
    join_rate_per_sec: Option<String>,
    socket_buffer: Option<String>,
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

/// Masks the password of `scheme://user:password@host…`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone)]
pub struct RabbitConfig {
    pub url: BrokerUrl,
    pub exchange: String,
    pub queue: String,
    pub binding_keys: Vec<String>,
    pub prefetch: u16,
    /// Extra CA certificates (PEM) to trust for `amqps://`, on top of the system roots.
    pub ca_file: Option<PathBuf>,
    /// `x-expires` for the queue, so per-instance queues of instances that are gone get deleted.
    pub queue_expires_ms: Option<u32>,
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
}

#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Tokens are required and verified with this HS256 secret.
    Required(Secret),
    /// Every valid room is open to everyone; the reason is logged at start.
    Disabled(&'static str),
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
    pub room_idle: Duration,
}

/// Limits that protect the daemon from abusive or broken clients.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_rooms_per_socket: usize,
    pub join_rate_per_sec: u32,
    /// Packets queued for one socket before it counts as stalled and is disconnected.
    pub socket_buffer: usize,
    pub max_message_bytes: usize,
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
        // Parsed first: the loopback rule below depends on it.
        let host = raw.host.unwrap_or_else(|| "127.0.0.1".to_owned());
        if host.trim().is_empty() {
            return Err(ConfigError::new("HOST", "must not be empty"));
        }
        let port = parse_num::<u16>("PORT", raw.port, 3000, 0, u16::MAX)?;

        let url = raw
            .rabbitmq_url
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        validate_amqp_url(&url)?;
        let rabbitmq = RabbitConfig {
            url: BrokerUrl {
                redacted: redact_url(&url),
                raw: Secret(url),
            },
            exchange: parse_name("RABBITMQ_EXCHANGE", raw.rabbitmq_exchange, "notifications")?,
            queue: parse_name("RABBITMQ_QUEUE", raw.rabbitmq_queue, "notifications")?,
            binding_keys: parse_binding_keys(raw.rabbitmq_binding_keys)?,
            prefetch: parse_num("RABBITMQ_PREFETCH", raw.rabbitmq_prefetch, 256, 1, u16::MAX)?,
            ca_file: parse_file("RABBITMQ_CA_FILE", raw.rabbitmq_ca_file)?,
            queue_expires_ms: parse_opt_num(
                "RABBITMQ_QUEUE_EXPIRES_MS",
                raw.rabbitmq_queue_expires_ms,
                1,
                u32::MAX,
            )?,
            reconnect_max: Duration::from_millis(parse_num(
                "RABBITMQ_RECONNECT_MAX_MS",
                raw.rabbitmq_reconnect_max_ms,
                30_000,
                100,
                3_600_000,
            )?),
        };

        let auth_disabled = parse_bool("AUTH_DISABLED", raw.auth_disabled, false)?;
        let secret = raw.jwt_secret.filter(|s| !s.is_empty());
        let auth = match (secret, auth_disabled) {
            (_, true) => AuthMode::Disabled("AUTH_DISABLED=true"),
            (Some(secret), false) => AuthMode::Required(Secret(secret)),
            (None, false) if is_loopback(&host) => {
                AuthMode::Disabled("JWT_SECRET is unset and HOST is a loopback address (dev mode)")
            }
            (None, false) => {
                return Err(ConfigError::new(
                    "JWT_SECRET",
                    format!(
                        "must be set when HOST ({host}) is not a loopback address; \
                         set JWT_SECRET, or AUTH_DISABLED=true to run without authentication"
                    ),
                ));
            }
        };

        let max_message_bytes = parse_num(
            "MAX_MESSAGE_BYTES",
            raw.max_message_bytes,
            131_072,
            64,
            64 << 20,
        )?;
        Ok(Config {
            enable_rabbitmq: parse_bool("ENABLE_RABBITMQ", raw.enable_rabbitmq, false)?,
            rabbitmq,
            host,
            port,
            auth,
            poll_interval_ms: parse_num(
                "POLL_INTERVAL_MS",
                raw.poll_interval_ms,
                10_000,
                100,
                86_400_000,
            )?,
            history: HistoryConfig {
                per_room: parse_num("HISTORY_PER_ROOM", raw.history_per_room, 100, 0, 100_000)?,
                max_rooms: parse_num(
                    "HISTORY_MAX_ROOMS",
                    raw.history_max_rooms,
                    10_000,
                    1,
                    10_000_000,
                )?,
                max_total: parse_num(
                    "HISTORY_MAX_TOTAL",
                    raw.history_max_total,
                    200_000,
                    1,
                    100_000_000,
                )?,
                room_idle: Duration::from_secs(parse_num(
                    "HISTORY_ROOM_IDLE_SECS",
                    raw.history_room_idle_secs,
                    3600,
                    1,
                    31_536_000,
                )?),
            },
            dedupe_window: parse_num(
                "DEDUPE_WINDOW",
                raw.dedupe_window,
                10_000,
                10_000,
                10_000_000,
            )?,
            cors: parse_cors(raw.cors_origins)?,
            limits: Limits {
                max_connections: parse_num(
                    "MAX_CONNECTIONS",
                    raw.max_connections,
                    20_000,
                    1,
                    10_000_000,
                )?,
                max_rooms_per_socket: parse_num(
                    "MAX_ROOMS_PER_SOCKET",
                    raw.max_rooms_per_socket,
                    50,
                    1,
                    100_000,
                )?,
                join_rate_per_sec: parse_num(
                    "JOIN_RATE_PER_SEC",
                    raw.join_rate_per_sec,
                    20,
                    1,
                    1_000_000,
                )?,
                socket_buffer: parse_num("SOCKET_BUFFER", raw.socket_buffer, 4096, 8, 1_000_000)?,
                max_message_bytes,
                // Socket.IO's own defaults; clients learn them in the handshake.
                ping_interval: Duration::from_millis(parse_num(
                    "PING_INTERVAL_MS",
                    raw.ping_interval_ms,
                    25_000,
                    100,
                    3_600_000,
                )?),
                ping_timeout: Duration::from_millis(parse_num(
                    "PING_TIMEOUT_MS",
                    raw.ping_timeout_ms,
                    20_000,
                    100,
                    3_600_000,
                )?),
            },
            shutdown_timeout: Duration::from_millis(parse_num(
                "SHUTDOWN_TIMEOUT_MS",
                raw.shutdown_timeout_ms,
                10_000,
                0,
                600_000,
            )?),
            worker_threads: parse_num(
                "WORKER_THREADS",
                raw.worker_threads,
                default_worker_threads(),
                1,
                1024,
            )?,
            public_dir: raw
                .public_dir
                .filter(|dir| !dir.is_empty() && dir != "embedded")
                .map(PathBuf::from),
            demo: parse_bool("DEMO", raw.demo, false)?,
            log_filter: parse_log_filter(raw.rust_log)?,
            token_claims: parse_token_claims(raw.jwt_issuer, raw.jwt_audience)?,
            log_format: match raw.log_format.as_deref() {
                None | Some("pretty") => LogFormat::Pretty,
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

/// One runtime thread per core (tokio's default), following a container's CPU quota. Fewer
/// trade polling throughput for delivery CPU: on two cores, one worker measured 16 % less CPU
/// per notification (a second worker is woken per notification to steal socket writes) and
/// 17 % fewer `GET /api/notifications` per second.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
    let value = value.unwrap_or_else(|| "notification.*".to_owned());
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
        .unwrap_or_else(|| "info".to_owned());
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
        assert_eq!(
            c.rabbitmq.url.expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
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
        assert_eq!(
            (c.limits.ping_interval, c.limits.ping_timeout),
            (Duration::from_secs(25), Duration::from_secs(20))
        );
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.rabbitmq.dead_letter_exchange(), "notifications.dlx");
        assert_eq!(c.rabbitmq.dead_letter_queue(), "notifications.dead");
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
        ] {
            let err = config(&[(var, value)]).expect_err(var);
            assert_eq!(err.variable, var, "{var}={value}: {err}");
        }
    }

    #[test]
    fn a_public_host_needs_a_secret_or_an_explicit_opt_out() {
        let err = config(&[("HOST", "0.0.0.0")]).unwrap_err();
        assert_eq!(err.variable, "JWT_SECRET");
        assert!(matches!(
            config(&[("HOST", "0.0.0.0"), ("JWT_SECRET", "s")])
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
}
