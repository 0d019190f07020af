//! notify-bridge: consumes EV-charging notifications from RabbitMQ and emits them as the
//! Socket.IO event `notification` into customer and CMS rooms, with an HTTP polling fallback.
//!
//! The wire contract (config, AMQP input, payload, rooms, Socket.IO, HTTP) is
//! `shared/contract.md`. Modules, from the pure core outwards:
//!
//! - [`config`]: environment variables, validated at start.
//! - [`rooms`], [`auth`], [`envelope`]: room grammar and default routing, JWT roles, parsing a
//!   message body. No I/O.
//! - [`history`]: per-room history with epoch cursors and memory caps.
//! - [`delivery`]: the one delivery path: dedupe, number, store, emit.
//! - [`amqp`]: topology, consumer supervisor, dead letters, confirmed publish.
//! - [`socket`], [`http`], [`pages`]: the Socket.IO and HTTP surfaces, the built-in pages; [`expiry`]: tokens that end on
//!   live sockets.
//! - [`metrics`], [`readiness`], [`telemetry`], [`demo`], [`tools`]: operations.
//!
//! [`run`] starts everything on a given listener and stops on a cancellation token, so tests
//! start the real daemon on port 0.

pub mod amqp;
pub mod auth;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod envelope;
pub mod expiry;
pub mod history;
pub mod http;
pub mod metrics;
pub mod pages;
pub mod readiness;
pub mod rooms;
pub mod socket;
pub mod telemetry;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::amqp::Broker;
use crate::auth::Authenticator;
use crate::config::{AuthMode, Config};
use crate::delivery::Delivery;
use crate::history::History;
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Everything request handlers and tasks share.
pub struct AppState {
    pub config: Config,
    pub auth: Authenticator,
    pub delivery: Arc<Delivery>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// Present when `ENABLE_RABBITMQ=true`: ingest publishes through it.
    pub broker: Option<Arc<Broker>>,
    /// When each socket's token ends (contract v2 section 5).
    pub expiry: Arc<expiry::Expiry>,
}

/// Largest Socket.IO packet a client may send: clients only send `join-room` / `leave-room`.
const MAX_CLIENT_PACKET_BYTES: usize = 16 * 1024;
/// On shutdown, how long sockets get to receive what was already emitted before they close.
const SOCKET_FLUSH_GRACE: Duration = Duration::from_millis(500);
/// Read buffer of each websocket: clients send only small `join-room` / `leave-room` packets
/// (~100 bytes); a larger one (up to 16 KiB) grows the buffer while it is read.
const WS_READ_BUFFER_BYTES: usize = 512;
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
    // A socket's buffer must hold a full replay of one room on top of live traffic.
    let socket_buffer = config
        .limits
        .socket_buffer
        .max(config.history.per_room + 32);
    let (socket_layer, io) = SocketIo::builder()
        .max_buffer_size(socket_buffer)
        .ping_interval(config.limits.ping_interval)
        .ping_timeout(config.limits.ping_timeout)
        .max_payload(MAX_CLIENT_PACKET_BYTES as u64)
        .ws_max_message_size(MAX_CLIENT_PACKET_BYTES)
        // Every idle connection keeps one; clients only send small join/leave packets.
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .build_layer();
    let history = History::new(config.history.clone());
    let delivery = Arc::new(Delivery::new(
        io.clone(),
        history,
        config.dedupe_window,
        metrics.clone(),
    ));

    let (readiness, broker) = if config.enable_rabbitmq {
        let readiness = Readiness::not_ready("connecting to RabbitMQ");
        let broker = Arc::new(Broker::new(
            config.rabbitmq.clone(),
            config.limits.max_message_bytes,
            delivery.clone(),
            metrics.clone(),
            readiness.clone(),
        ));
        (readiness, Some(broker))
    } else {
        (Readiness::ready(), None)
    };

    let app = Arc::new(AppState {
        auth: Authenticator::with_claims(&config.auth, &config.token_claims),
        config,
        delivery: delivery.clone(),
        metrics,
        readiness: readiness.clone(),
        broker: broker.clone(),
        expiry: Arc::new(expiry::Expiry::new()),
    });
    socket::attach(&io, app.clone());

    // Socket.IO sits in front of the router, on handshakes detached from the connection's read
    // buffer (see `http::detach_handshake`); CORS covers both.
    let service = tower::ServiceBuilder::new()
        .map_response(|response: axum::http::Response<_>| response.map(axum::body::Body::new))
        .option_layer(http::cors(&app.config.cors))
        .map_request(http::detach_handshake)
        .layer(socket_layer)
        .service(http::router(app.clone()));

    let tasks = CancellationToken::new();
    let consumer = broker.map(|broker| tokio::spawn(broker.run(tasks.clone())));
    tokio::spawn(housekeeping(delivery.clone(), tasks.clone()));
    tokio::spawn(app.expiry.clone().run(io.clone(), tasks.clone()));
    if app.config.demo {
        tokio::spawn(demo::run(delivery.clone(), tasks.clone()));
    }

    let server_stop = CancellationToken::new();
    // Notifications are small writes that must leave at once: without TCP_NODELAY, Nagle's
    // algorithm holds them back waiting for the previous write's ACK (a 10 ms p99 measured).
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, tower::make::Shared::new(service))
        .with_graceful_shutdown(server_stop.clone().cancelled_owned());
    let mut server = tokio::spawn(server.into_future());
    tracing::info!(
        %address,
        rabbitmq = app.config.enable_rabbitmq,
        auth = app.auth.required(),
        worker_threads = app.config.worker_threads,
        "notify-bridge listening"
    );

    tokio::select! {
        _ = shutdown.cancelled() => {}
        // The server only ends by itself on a fatal accept error.
        result = &mut server => {
            tasks.cancel();
            return result.context("HTTP server task")?.context("HTTP server");
        }
    }

    tracing::info!(timeout = ?app.config.shutdown_timeout, "shutting down");
    readiness.set_not_ready("shutting down");
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

async fn housekeeping(delivery: Arc<Delivery>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => delivery.evict_idle(),
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
