//! notify-bridge: consumes EV-charging notifications from RabbitMQ and emits them as the
//! Socket.IO event `notification` into customer and CMS rooms, with an HTTP polling fallback.
//!
//! The wire contract (config, AMQP input, payload, rooms, Socket.IO, HTTP, statistics) is
//! `docs/contract.md`. Modules, from the pure core outwards:
//!
//! - [`config`]: environment variables, validated at start.
//! - [`rooms`], [`auth`], [`envelope`]: room grammar and default routing, JWT roles, parsing a
//!   message body and a stream record. No I/O.
//! - `dedupe`, `history`, `ledger`: the core, no I/O: what was seen before, each room's memory
//!   window, and the ledger that numbers notifications and answers "what follows cursor C".
//! - `fanout`: emits the ledger's answers to this instance's sockets; joins and polls;
//!   `sockets`: what it needs from Socket.IO, as a seam it is unit-tested through; `budget`:
//!   what each token subject may read from the stream.
//! - `stats`: the dashboards' counts (contract section 7), derived from what the log holds.
//! - The AMQP side, as a pipeline: `amqp` (a plain client: connecting to one of several nodes,
//!   the session's link, confirmed publishing), `topology` (what is declared), `record` (the
//!   shared log's record format), `pipeline` (what the parts below share), `consumer` (the
//!   queue's active consumer: validate, dead-letter, append to the log), `stream` (every
//!   instance reads the stream; replays beyond the memory window), `streamless` (the log
//!   without streams: a fanout exchange), and `bridge`, which runs them in sessions.
//! - `socket`, `http`, `pages`: the Socket.IO and HTTP surfaces, the built-in pages; `expiry`:
//!   tokens that end on live sockets.
//! - `state` (what handlers share, and ingest's `submit`), `supervisor`, `readiness`,
//!   `metrics`, [`telemetry`], [`environment`], `demo`, [`cli`]: operations.
//!
//! [`run`] starts everything on a given listener and stops on a cancellation token, so tests
//! start the real daemon on port 0.

pub(crate) mod amqp;
pub(crate) mod auth;
pub(crate) mod bridge;
pub(crate) mod budget;
pub mod cli;
pub mod config;
pub(crate) mod consumer;
pub(crate) mod dedupe;
pub(crate) mod demo;
pub mod envelope;
pub mod environment;
pub(crate) mod expiry;
pub(crate) mod fanout;
pub(crate) mod history;
pub(crate) mod http;
pub(crate) mod ledger;
pub(crate) mod metrics;
pub(crate) mod pages;
pub(crate) mod pipeline;
pub(crate) mod readiness;
pub(crate) mod record;
pub mod rooms;
pub(crate) mod socket;
pub(crate) mod sockets;
pub(crate) mod state;
pub mod stats;
pub(crate) mod stream;
pub(crate) mod streamless;
pub(crate) mod supervisor;
pub mod telemetry;
pub(crate) mod topology;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{AuthMode, Config};
use crate::fanout::Fanout;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::state::AppState;
use crate::supervisor::supervise;

/// On shutdown, how long sockets get to receive what was already emitted before they close.
const SOCKET_FLUSH_GRACE: Duration = Duration::from_millis(500);
/// How often idle history rooms are looked for.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);

/// Serves on `listener` until `shutdown` is cancelled, then drains within `SHUTDOWN_TIMEOUT_MS`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = listener
        .local_addr()
        .context("reading the listener's address")?;
    warn_about_risky_settings(&config);

    let metrics = Arc::new(Metrics::new());
    metrics.record_config(&config);
    let socket_buffer = socket::buffer_size(&config);
    let (socket_layer, io) = socket::layer(&config);
    metrics.watch_transports(&io);
    let ledger = if config.enable_rabbitmq && config.rabbitmq.streamless {
        // Memory only: nothing to replay from beyond it.
        Ledger::new(
            ledger::Ids::fanout(),
            config.history.clone(),
            config.dedupe_window,
            0,
        )
    } else if config.enable_rabbitmq {
        Ledger::streamed(
            config.history.clone(),
            config.dedupe_window,
            config.rabbitmq.replay_max,
        )
    } else {
        Ledger::local(config.history.clone(), config.dedupe_window)
    };
    let budget = budget::ReplayBudget::new(
        config.limits.replay_budget_per_sub,
        metrics.replays_waiting.clone(),
        metrics.replays_refused.clone(),
        metrics.replay_records.clone(),
    );
    let fanout = Arc::new(Fanout::new(
        sockets::Io(io.clone()),
        ledger,
        metrics.clone(),
        socket_buffer,
        config.limits.socket_buffer_bytes,
        budget,
    ));
    let limits = envelope::Limits {
        max_bytes: config.limits.max_message_bytes,
        max_rooms: config.limits.max_recipients,
    };

    // With the stream, the counts wait for a checkpoint (or the reader's catching up) before
    // they stand; otherwise they start with this instance.
    let stats = Arc::new(stats::Stats::new(
        &config.stats_zone,
        !config.enable_rabbitmq || config.rabbitmq.streamless,
    ));
    let (readiness, broker) = if config.enable_rabbitmq {
        let readiness = Readiness::with_broker();
        let pipeline = Arc::new(pipeline::Pipeline::new(
            config.rabbitmq.clone(),
            limits,
            config.dedupe_window,
            fanout.clone(),
            metrics.clone(),
            readiness.clone(),
            stats.clone(),
        ));
        fanout.set_deep_history(Arc::new(stream::Replayer::new(&pipeline)));
        (readiness, Some(pipeline))
    } else {
        (Readiness::without_broker(), None)
    };

    let connections = socket::Connections::new(&config.limits, metrics.sockets_connected.clone());
    let app = Arc::new(AppState {
        auth: Authenticator::with_claims(&config.auth, &config.token_claims),
        config,
        fanout: fanout.clone(),
        metrics,
        readiness: readiness.clone(),
        broker: broker.as_ref().map(|pipeline| pipeline.link.clone()),
        connections,
        expiry: Arc::new(expiry::Expiry::new()),
        stats: stats.clone(),
    });
    socket::attach(&io, app.clone());

    // Socket.IO sits in front of the router, on handshakes detached from the connection's read
    // buffer (see `http::detach_handshake`); CORS covers both, and `http::guard` everything.
    let service = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            http::guard,
        ))
        .map_response(|response: axum::http::Response<_>| response.map(axum::body::Body::new))
        .option_layer(http::cors(&app.config.cors))
        .map_request(http::detach_handshake)
        .layer(socket_layer)
        .service(
            http::router(app.clone()).layer(axum::middleware::from_fn(telemetry::http_request)),
        );

    // Every task the daemon starts is tracked, so that shutdown waits for all of them.
    let tasks = CancellationToken::new();
    let tracker = TaskTracker::new();
    let consumer = broker.map(|pipeline| {
        let bridge = Arc::new(bridge::Bridge::new(pipeline));
        let stop = tasks.clone();
        spawn_supervised(&tracker, "broker", &readiness, &tasks, move || {
            bridge.clone().run(stop.clone())
        })
    });
    {
        let (fanout, stop) = (fanout.clone(), tasks.clone());
        spawn_supervised(&tracker, "housekeeping", &readiness, &tasks, move || {
            housekeeping(fanout.clone(), stop.clone())
        });
    }
    {
        let (expiry, io, stop) = (app.expiry.clone(), io.clone(), tasks.clone());
        spawn_supervised(&tracker, "token expiry", &readiness, &tasks, move || {
            expiry.clone().run(io.clone(), stop.clone())
        });
    }
    {
        let (stats, io, stop) = (stats.clone(), io.clone(), tasks.clone());
        spawn_supervised(&tracker, "statistics", &readiness, &tasks, move || {
            stats::push(stats.clone(), io.clone(), stop.clone())
        });
    }
    if app.config.demo {
        let (app, stop) = (app.clone(), tasks.clone());
        spawn_supervised(&tracker, "demo", &readiness, &tasks, move || {
            demo::run(app.clone(), stop.clone())
        });
    }
    tracker.close();

    let server_stop = CancellationToken::new();
    let server = http::serve(listener, service, server_stop.clone());
    let mut server = tokio::spawn(server);
    tracing::info!(
        %address,
        version = env!("CARGO_PKG_VERSION"),
        rabbitmq = app.config.enable_rabbitmq,
        auth = app.auth.required(),
        worker_threads = app.config.worker_threads,
        "notify-bridge listening"
    );

    tokio::select! {
        _ = shutdown.cancelled() => {}
        // The server only ends by itself if its task panicked.
        result = &mut server => {
            tasks.cancel();
            result.context("HTTP server task")?;
            anyhow::bail!("the HTTP server stopped");
        }
    }

    tracing::info!(timeout = ?app.config.shutdown_timeout, "shutting down");
    readiness.set_shutting_down();
    tasks.cancel();
    let drain = async {
        // Stop consuming first: unacked deliveries go back to the queue, nothing is half done.
        if let Some(consumer) = consumer {
            let _ = consumer.await;
        }
        // Closing a transport drops what is still queued for it, so sockets first get a moment
        // to receive what was already emitted (and acked). Closing the transport rather than
        // sending DISCONNECT makes standard clients reconnect, to another instance.
        if app.metrics.sockets_connected.get() > 0 {
            tokio::time::sleep(SOCKET_FLUSH_GRACE.min(app.config.shutdown_timeout / 2)).await;
        }
        io.close().await;
        server_stop.cancel();
        let _ = (&mut server).await;
        // The other tasks saw the cancellation too: wait until each has ended.
        tracker.wait().await;
    };
    if tokio::time::timeout(app.config.shutdown_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?app.config.shutdown_timeout, "shutdown timed out; closing remaining connections");
        server.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts `task` under [`supervise`], tracked by `tracker` so that shutdown waits for it.
fn spawn_supervised<F, Fut>(
    tracker: &TaskTracker,
    name: &'static str,
    readiness: &Readiness,
    stop: &CancellationToken,
    task: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tracker.spawn(supervise(name, readiness.clone(), stop.clone(), task))
}

/// Pending connections the kernel queues for `accept`: bursts of reconnecting clients (after a
/// deploy, say) are queued instead of dropped and retried a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `HOST:PORT` with a listen backlog sized for reconnect storms.
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // A restarted daemon can bind again while old connections are in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error
        .unwrap_or_else(|| std::io::Error::other(format!("{address} resolves to no address"))))
}

async fn housekeeping(fanout: Arc<Fanout>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => fanout.evict_idle(),
        }
    }
}

fn warn_about_risky_settings(config: &Config) {
    if let AuthMode::Disabled(reason) = &config.auth {
        tracing::warn!("AUTHENTICATION IS OFF ({reason}): every client may join every room");
    }
    if let AuthMode::Required(secret) = &config.auth
        && secret.expose().len() < 32
    {
        tracing::warn!("JWT_SECRET is shorter than 32 bytes; use a long random secret");
    }
    if matches!(config.cors, config::CorsOrigins::Any) {
        tracing::warn!("CORS_ORIGINS=* lets any web page call this daemon");
    }
}
