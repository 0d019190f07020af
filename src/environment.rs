//! Every environment variable the daemon reads, with its default and meaning: what `--help`
//! lists, what `.env.example` and `docs/contract.md` are checked against. Defaults come from
//! [`crate::config::defaults`], where each is defined once.

use crate::config::defaults;

/// One variable: its name, its default (`None`: unset), and a line on what it means.
pub struct Variable {
    pub name: &'static str,
    pub default: Option<String>,
    pub meaning: &'static str,
}

fn var(name: &'static str, default: Option<String>, meaning: &'static str) -> Variable {
    Variable {
        name,
        default,
        meaning,
    }
}

/// Every variable, in the order `--help` lists them.
pub fn variables() -> Vec<Variable> {
    vec![
        var(
            "ENABLE_RABBITMQ",
            Some(defaults::ENABLE_RABBITMQ.to_string()),
            "true: consume from RabbitMQ, frontends use real time; false: no broker, frontends poll",
        ),
        var(
            "POLL_INTERVAL_MS",
            Some(defaults::POLL_INTERVAL_MS.to_string()),
            "interval (ms) advised to polling frontends",
        ),
        var(
            "RABBITMQ_URL",
            Some(defaults::RABBITMQ_URL.to_string()),
            "broker URL, amqp:// or amqps://, or a cluster's comma-separated node URLs, tried in turn",
        ),
        var(
            "RABBITMQ_EXCHANGE",
            Some(defaults::RABBITMQ_EXCHANGE.to_string()),
            "topic exchange (durable), declared by the daemon",
        ),
        var(
            "RABBITMQ_QUEUE",
            Some(defaults::RABBITMQ_QUEUE.to_string()),
            "durable queue shared by all instances (single active consumer), dead letters to <queue>.dlx / <queue>.dead",
        ),
        var(
            "RABBITMQ_QUEUE_TYPE",
            Some(defaults::RABBITMQ_QUEUE_TYPE.to_string()),
            "x-queue-type (quorum or classic) of the queues the daemon creates; existing ones are kept",
        ),
        var(
            "RABBITMQ_STREAM",
            None,
            "stream every instance reads; unset: <RABBITMQ_QUEUE>.log; off: stream-less mode (no streams)",
        ),
        var(
            "RABBITMQ_STREAM_MAX_AGE",
            Some(defaults::RABBITMQ_STREAM_MAX_AGE.to_string()),
            "the stream's retention (x-max-age: a number and one of Y M D h m s)",
        ),
        var(
            "RABBITMQ_REBUILD_MAX_AGE",
            Some(defaults::RABBITMQ_REBUILD_MAX_AGE.to_string()),
            "how far back an instance reads the stream at start to fill its windows",
        ),
        var(
            "RABBITMQ_REPLAY_MAX",
            Some(defaults::RABBITMQ_REPLAY_MAX.to_string()),
            "most stream records one replay reads beyond the memory window; further back: reset",
        ),
        var(
            "RABBITMQ_BINDING_KEYS",
            Some(defaults::RABBITMQ_BINDING_KEYS.to_string()),
            "comma-separated binding keys of the queue",
        ),
        var(
            "RABBITMQ_PREFETCH",
            Some(defaults::RABBITMQ_PREFETCH.to_string()),
            "consumer prefetch (QoS), 1-65535",
        ),
        var(
            "RABBITMQ_CA_FILE",
            None,
            "PEM file of extra CA certificates trusted for amqps://",
        ),
        var(
            "RABBITMQ_STREAM_MAX_SEGMENT_BYTES",
            None,
            "x-stream-max-segment-size-bytes of the stream; unset: the broker's (500 MB)",
        ),
        var(
            "RABBITMQ_QUEUE_EXPIRES_MS",
            None,
            "x-expires (ms) of the queue; unset: it never expires",
        ),
        var(
            "RABBITMQ_RECONNECT_MAX_MS",
            Some(defaults::RABBITMQ_RECONNECT_MAX_MS.to_string()),
            "cap (ms) of the reconnect backoff",
        ),
        var(
            "HOST",
            Some(defaults::HOST.to_string()),
            "listen address of HTTP and Socket.IO",
        ),
        var("PORT", Some(defaults::PORT.to_string()), "listen port"),
        var(
            "CORS_ORIGINS",
            None,
            "comma-separated allowed origins, * for any; unset: same origin only",
        ),
        var(
            "PUBLIC_DIR",
            Some(defaults::PUBLIC_DIR.to_string()),
            "the pages served at /: embedded (built into the binary) or a directory",
        ),
        var(
            "JWT_SECRET",
            None,
            "HS256 secret of the JWTs; unset only on a loopback HOST (dev mode, auth off)",
        ),
        var("JWT_ISSUER", None, "when set, tokens must carry this iss"),
        var(
            "JWT_AUDIENCE",
            None,
            "when set, tokens must carry an aud among these comma-separated audiences",
        ),
        var(
            "STATS_TIMEZONE",
            Some(defaults::STATS_TIMEZONE.to_string()),
            "IANA time zone in which the statistics' today begins",
        ),
        var(
            "AUTH_DISABLED",
            Some(defaults::AUTH_DISABLED.to_string()),
            "true turns authentication off even with JWT_SECRET set",
        ),
        var(
            "HISTORY_PER_ROOM",
            Some(defaults::HISTORY_PER_ROOM.to_string()),
            "notifications kept per room for polling and replay",
        ),
        var(
            "HISTORY_MAX_ROOMS",
            Some(defaults::HISTORY_MAX_ROOMS.to_string()),
            "rooms with history; the least recently written is evicted first",
        ),
        var(
            "HISTORY_MAX_TOTAL",
            Some(defaults::HISTORY_MAX_TOTAL.to_string()),
            "room entries kept over all rooms; the oldest notifications are evicted first",
        ),
        var(
            "HISTORY_MAX_BYTES",
            Some(defaults::HISTORY_MAX_BYTES.to_string()),
            "bytes of notifications kept over all rooms (each held once); the oldest are evicted first",
        ),
        var(
            "HISTORY_ROOM_IDLE_SECS",
            Some(defaults::HISTORY_ROOM_IDLE_SECS.to_string()),
            "rooms nothing was written to for this long (s) are dropped",
        ),
        var(
            "DEDUPE_WINDOW",
            Some(defaults::DEDUPE_WINDOW.to_string()),
            "recent messageIds remembered to drop duplicates",
        ),
        var(
            "MAX_MESSAGE_BYTES",
            Some(defaults::MAX_MESSAGE_BYTES.to_string()),
            "larger messages are dead-lettered (too_large) or answered 413",
        ),
        var(
            "MAX_RECIPIENTS",
            Some(defaults::MAX_RECIPIENTS.to_string()),
            "most rooms (distinct recipients plus rooms) one message may name; more: too_many_rooms",
        ),
        var(
            "MAX_CONNECTIONS",
            Some(defaults::MAX_CONNECTIONS.to_string()),
            "Socket.IO connections; more are refused with server_full",
        ),
        var(
            "MAX_CONNECTIONS_PER_SUB",
            Some(defaults::MAX_CONNECTIONS_PER_SUB.to_string()),
            "Socket.IO connections of one token subject; more are refused with too_many_connections",
        ),
        var(
            "MAX_PENDING_CONNECTIONS",
            Some(defaults::MAX_PENDING_CONNECTIONS.to_string()),
            "Engine.IO sessions that have not sent CONNECT yet; more handshakes get 503 server_full",
        ),
        var(
            "MAX_ROOMS_PER_SOCKET",
            Some(defaults::MAX_ROOMS_PER_SOCKET.to_string()),
            "rooms one socket may be in",
        ),
        var(
            "JOIN_RATE_PER_SEC",
            Some(defaults::JOIN_RATE_PER_SEC.to_string()),
            "join-room calls per second per socket (burst of as many)",
        ),
        var(
            "SOCKET_BUFFER",
            Some(defaults::SOCKET_BUFFER.to_string()),
            "packets queued for one socket before it counts as stalled",
        ),
        var(
            "SOCKET_BUFFER_BYTES",
            Some(defaults::SOCKET_BUFFER_BYTES.to_string()),
            "bytes of messages queued for one socket before it counts as stalled",
        ),
        var(
            "SHUTDOWN_TIMEOUT_MS",
            Some(defaults::SHUTDOWN_TIMEOUT_MS.to_string()),
            "on SIGTERM/SIGINT, exit within this many ms",
        ),
        var(
            "PING_INTERVAL_MS",
            Some(defaults::PING_INTERVAL_MS.to_string()),
            "Engine.IO heartbeat interval (ms)",
        ),
        var(
            "PING_TIMEOUT_MS",
            Some(defaults::PING_TIMEOUT_MS.to_string()),
            "ms a client may take to answer a ping before it is closed",
        ),
        var(
            "WORKER_THREADS",
            None,
            "async runtime threads; unset: one per core",
        ),
        var(
            "DEMO",
            Some(defaults::DEMO.to_string()),
            "feed sample EV-charging events (same as --demo)",
        ),
        var(
            "RUST_LOG",
            Some(defaults::RUST_LOG.to_string()),
            "log filter (tracing EnvFilter syntax); lapin's lines count as debug",
        ),
        var(
            "LOG_FORMAT",
            Some(defaults::LOG_FORMAT.to_string()),
            "pretty or json",
        ),
        var(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            None,
            "export spans over OTLP/HTTP to this collector; unset: no traces",
        ),
        var(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            Some(crate::telemetry::DEFAULT_OTLP_PROTOCOL.to_string()),
            "http/protobuf or http/json",
        ),
        var(
            "OTEL_SERVICE_NAME",
            Some(crate::telemetry::DEFAULT_SERVICE_NAME.to_string()),
            "service.name of the exported spans",
        ),
    ]
}

/// The table as `--help` shows it.
pub fn help() -> String {
    let variables = variables();
    let width = variables.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut help = String::from(
        "Environment (also read from ./.env; real variables win; every one validated at start):\n",
    );
    for v in &variables {
        let default = v.default.as_deref().unwrap_or("unset");
        help.push_str(&format!(
            "  {:<width$}  {} [default: {default}]\n",
            v.name, v.meaning
        ));
    }
    help
}
