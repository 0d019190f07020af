//! The `notify-bridge` binary: parses the command line, reads the configuration, and runs the
//! daemon (or one of the operator tools) from the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use notify_bridge::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "RabbitMQ-to-Socket.IO notification bridge. Configured from the environment (see .env.example)."
)]
struct Cli {
    /// Feed sample EV-charging events (same as DEMO=true).
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Publish one notification to RABBITMQ_EXCHANGE and wait for the broker's confirm.
    Publish {
        /// Routing key, e.g. notification.session
        routing_key: String,
        /// The JSON body, e.g. '{"type":"charging.started","recipients":[123]}'
        json: Option<String>,
        /// Read the JSON body from this file instead.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Judge the body as the daemon would and print the verdict; do not publish.
        #[arg(long)]
        dry_run: bool,
        /// The AMQP message_id (a new UUID when not given, printed): retry with the printed one.
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Exit 0 if the daemon on HOST:PORT answers /healthz (for container health checks).
    Healthcheck,
}

/// Every environment variable: name, default (`None`: unset), one-line meaning. The same list,
/// with the same defaults, as `.env.example` (a test checks that they agree).
const ENVIRONMENT: &[(&str, Option<&str>, &str)] = &[
    (
        "ENABLE_RABBITMQ",
        Some("false"),
        "true: consume from RabbitMQ, frontends use real time; false: no broker, frontends poll",
    ),
    (
        "POLL_INTERVAL_MS",
        Some("10000"),
        "interval (ms) advised to polling frontends",
    ),
    (
        "RABBITMQ_URL",
        Some("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "broker URL, amqp:// or amqps://, or a cluster's comma-separated node URLs, tried in turn",
    ),
    (
        "RABBITMQ_EXCHANGE",
        Some("notifications"),
        "topic exchange (durable), declared by the daemon",
    ),
    (
        "RABBITMQ_QUEUE",
        Some("notifications"),
        "durable queue shared by all instances (single active consumer), dead letters to <queue>.dlx / <queue>.dead",
    ),
    (
        "RABBITMQ_QUEUE_TYPE",
        Some("quorum"),
        "x-queue-type (quorum or classic) of the queues the daemon creates; existing ones are kept",
    ),
    (
        "RABBITMQ_STREAM",
        None,
        "stream every instance reads; unset: <RABBITMQ_QUEUE>.log; off: stream-less mode (no streams)",
    ),
    (
        "RABBITMQ_STREAM_MAX_AGE",
        Some("24h"),
        "the stream's retention (x-max-age: a number and one of Y M D h m s)",
    ),
    (
        "RABBITMQ_REBUILD_MAX_AGE",
        Some("15m"),
        "how far back an instance reads the stream at start to fill its windows",
    ),
    (
        "RABBITMQ_REPLAY_MAX",
        Some("20000"),
        "most stream records one replay reads beyond the memory window; further back: reset",
    ),
    (
        "RABBITMQ_BINDING_KEYS",
        Some("notification.*"),
        "comma-separated binding keys of the queue",
    ),
    (
        "RABBITMQ_PREFETCH",
        Some("256"),
        "consumer prefetch (QoS), 1-65535",
    ),
    (
        "RABBITMQ_CA_FILE",
        None,
        "PEM file of extra CA certificates trusted for amqps://",
    ),
    (
        "RABBITMQ_QUEUE_EXPIRES_MS",
        None,
        "x-expires (ms) of the queue; unset: it never expires",
    ),
    (
        "RABBITMQ_RECONNECT_MAX_MS",
        Some("30000"),
        "cap (ms) of the reconnect backoff",
    ),
    (
        "HOST",
        Some("127.0.0.1"),
        "listen address of HTTP and Socket.IO",
    ),
    ("PORT", Some("3000"), "listen port"),
    (
        "CORS_ORIGINS",
        None,
        "comma-separated allowed origins, * for any; unset: same origin only",
    ),
    (
        "PUBLIC_DIR",
        Some("embedded"),
        "the pages served at /: embedded (built into the binary) or a directory",
    ),
    (
        "JWT_SECRET",
        None,
        "HS256 secret of the JWTs; unset only on a loopback HOST (dev mode, auth off)",
    ),
    ("JWT_ISSUER", None, "when set, tokens must carry this iss"),
    (
        "JWT_AUDIENCE",
        None,
        "when set, tokens must carry an aud among these comma-separated audiences",
    ),
    (
        "STATS_TIMEZONE",
        Some("UTC"),
        "IANA time zone in which the statistics' today begins",
    ),
    (
        "AUTH_DISABLED",
        Some("false"),
        "true turns authentication off even with JWT_SECRET set",
    ),
    (
        "HISTORY_PER_ROOM",
        Some("100"),
        "notifications kept per room for polling and replay",
    ),
    (
        "HISTORY_MAX_ROOMS",
        Some("10000"),
        "rooms with history; the least recently written is evicted first",
    ),
    (
        "HISTORY_MAX_TOTAL",
        Some("200000"),
        "room entries kept over all rooms; the oldest notifications are evicted first",
    ),
    (
        "HISTORY_MAX_BYTES",
        Some("67108864"),
        "bytes of notifications kept over all rooms (each held once); the oldest are evicted first",
    ),
    (
        "HISTORY_ROOM_IDLE_SECS",
        Some("3600"),
        "rooms nothing was written to for this long (s) are dropped",
    ),
    (
        "DEDUPE_WINDOW",
        Some("10000"),
        "recent messageIds remembered to drop duplicates",
    ),
    (
        "MAX_MESSAGE_BYTES",
        Some("131072"),
        "larger messages are dead-lettered (too_large) or answered 413",
    ),
    (
        "MAX_RECIPIENTS",
        Some("1000"),
        "most rooms (distinct recipients plus rooms) one message may name; more: too_many_rooms",
    ),
    (
        "MAX_CONNECTIONS",
        Some("20000"),
        "Socket.IO connections; more are refused with server_full",
    ),
    (
        "MAX_CONNECTIONS_PER_SUB",
        Some("64"),
        "Socket.IO connections of one token subject; more are refused with too_many_connections",
    ),
    (
        "MAX_PENDING_CONNECTIONS",
        Some("1024"),
        "Engine.IO sessions that have not sent CONNECT yet; more handshakes get 503 server_full",
    ),
    (
        "MAX_ROOMS_PER_SOCKET",
        Some("50"),
        "rooms one socket may be in",
    ),
    (
        "JOIN_RATE_PER_SEC",
        Some("20"),
        "join-room calls per second per socket (burst of as many)",
    ),
    (
        "SOCKET_BUFFER",
        Some("4096"),
        "packets queued for one socket before it counts as stalled",
    ),
    (
        "SOCKET_BUFFER_BYTES",
        Some("4194304"),
        "bytes of messages queued for one socket before it counts as stalled",
    ),
    (
        "SHUTDOWN_TIMEOUT_MS",
        Some("10000"),
        "on SIGTERM/SIGINT, exit within this many ms",
    ),
    (
        "PING_INTERVAL_MS",
        Some("25000"),
        "Engine.IO heartbeat interval (ms)",
    ),
    (
        "PING_TIMEOUT_MS",
        Some("20000"),
        "ms a client may take to answer a ping before it is closed",
    ),
    (
        "WORKER_THREADS",
        None,
        "async runtime threads; unset: one per core",
    ),
    (
        "DEMO",
        Some("false"),
        "feed sample EV-charging events (same as --demo)",
    ),
    (
        "RUST_LOG",
        Some("info"),
        "log filter (tracing EnvFilter syntax); lapin's lines count as debug",
    ),
    ("LOG_FORMAT", Some("pretty"), "pretty or json"),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        None,
        "export spans over OTLP/HTTP to this collector; unset: no traces",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        Some("http/protobuf"),
        "http/protobuf or http/json",
    ),
    (
        "OTEL_SERVICE_NAME",
        Some("notify-bridge"),
        "service.name of the exported spans",
    ),
];

/// The `ENVIRONMENT` table as `--help` shows it.
fn environment_help() -> String {
    let width = ENVIRONMENT
        .iter()
        .map(|(name, ..)| name.len())
        .max()
        .unwrap_or(0);
    let mut help = String::from(
        "Environment (also read from ./.env; real variables win; every one validated at start):\n",
    );
    for (name, default, meaning) in ENVIRONMENT {
        let default = default.unwrap_or("unset");
        help.push_str(&format!(
            "  {name:<width$}  {meaning} [default: {default}]\n"
        ));
    }
    help
}

fn main() -> ExitCode {
    let command = Cli::command().after_help(environment_help());
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // A missing .env is normal; real environment variables win over the file.
    let _ = dotenvy::dotenv();
    let mut config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("notify-bridge: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    config.demo |= cli.demo;
    // Built here rather than by #[tokio::main] so that WORKER_THREADS sizes it.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("notify-bridge: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, config))
}

async fn run(cli: Cli, config: Config) -> ExitCode {
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Publish {
            routing_key,
            json,
            file,
            dry_run,
            message_id,
        } => {
            let request = notify_bridge::cli::PublishRequest {
                routing_key: &routing_key,
                json: json.as_deref(),
                file: file.as_deref(),
                message_id: message_id.as_deref(),
                dry_run,
            };
            notify_bridge::cli::publish(&config, request).await
        }
        Command::Healthcheck => notify_bridge::cli::healthcheck(&config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("notify-bridge: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let telemetry = notify_bridge::telemetry::init(&config.log_filter, config.log_format);
    let address = config.listen_address();
    let listener = notify_bridge::bind(&address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} (HOST/PORT): {e}"))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let result = notify_bridge::run(config, listener, shutdown).await;
    telemetry.shutdown().await;
    result
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        // Installing a SIGTERM handler only fails if the runtime has no signal driver.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
