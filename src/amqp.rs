//! RabbitMQ: the connection and its supervisor, the topology (contract v2 section 2), and
//! confirmed publishing.
//!
//! lapin's own recovery is not used: [`Broker::run`] owns the connection's whole life. Each
//! session connects, declares the topology again, then runs two loops on one connection until
//! it fails: the stream reader ([`crate::stream`], every instance) and the queue consumer
//! ([`crate::consumer`], active on one instance at a time). The supervisor retries with capped
//! exponential backoff and jitter. While disconnected the daemon keeps serving sockets, polling
//! and history; `/readyz` stays ready once it has caught up with the stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::RabbitConfig;
use crate::envelope;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::readiness::{BrokerState, Readiness};
use crate::telemetry;

/// Header that tells an operator why a message was dead-lettered (contract section 2).
pub const REASON_HEADER: &str = "x-notify-bridge-reason";
/// How long `POST /api/notifications` waits for the broker's confirm (contract section 6).
pub const PUBLISH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting (TCP, TLS, AMQP handshake) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat asked for when the URL sets none: a silently dead connection is noticed in ~2x this.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// First retry delay; doubles up to `RABBITMQ_RECONNECT_MAX_MS`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Stream replays read at the same time; more queue behind them, so a reconnect storm of
/// dashboards reads the stream a few at a time instead of all at once.
const CONCURRENT_REPLAYS: usize = 2;
/// At shutdown, how long the consumer and the reader get to finish what is in hand.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("RabbitMQ did not confirm the message within {0:?}")]
    Timeout(Duration),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error(
        "{kind} {name:?} already exists with other arguments ({detail}). notify-bridge v2 \
         declares it with {expected}: {fix}"
    )]
    Mismatch {
        kind: &'static str,
        name: String,
        expected: String,
        fix: String,
        detail: String,
    },
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer of {0}")]
    ConsumerCancelled(String),
    #[error("the connection closed")]
    ConnectionClosed,
    #[error("the stream {0:?} did not confirm an append")]
    AppendRefused(String),
}

pub struct Broker {
    pub(crate) config: RabbitConfig,
    pub(crate) limits: envelope::Limits,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) readiness: Readiness,
    /// Confirm-mode channel of the current session, used for ingest and dead letters.
    publisher: RwLock<Option<Channel>>,
    /// The current session's connection, for replays from the stream.
    connection: RwLock<Option<Arc<Connection>>>,
    pub(crate) replay_slots: Semaphore,
    /// What the queue consumer appended, kept across sessions for the dedupe rules.
    append_state: std::sync::Mutex<crate::consumer::AppendState>,
}

impl Broker {
    pub fn new(
        config: RabbitConfig,
        limits: envelope::Limits,
        dedupe_window: usize,
        fanout: Arc<Fanout>,
        metrics: Arc<Metrics>,
        readiness: Readiness,
    ) -> Self {
        Self {
            limits,
            fanout,
            metrics,
            readiness,
            publisher: RwLock::new(None),
            connection: RwLock::new(None),
            replay_slots: Semaphore::new(CONCURRENT_REPLAYS),
            append_state: std::sync::Mutex::new(crate::consumer::AppendState::new(
                dedupe_window,
                config.prefetch,
            )),
            config,
        }
    }

    pub(crate) fn append_state(&self) -> &std::sync::Mutex<crate::consumer::AppendState> {
        &self.append_state
    }

    /// Runs sessions until `shutdown`, reconnecting for as long as it takes.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut last_error = String::new();
        loop {
            let result = self.session(&shutdown, &mut failures).await;
            self.set_session(None, None);
            self.metrics.broker_connected.set(0);
            self.metrics.stream_active_consumer.set(0);
            self.readiness.set_broker(BrokerState::Reconnecting);
            let error = match result {
                Ok(()) => return,
                Err(error) => error,
            };
            let reason = format!("RabbitMQ at {}: {error}", self.config.url.redacted());
            self.readiness.set_broker_problem(
                matches!(error, SessionError::Mismatch { .. }).then(|| error.to_string()),
            );
            self.metrics.broker_reconnects.inc();
            let delay = backoff(failures, self.config.reconnect_max);
            // One WARN per outage (its first failure; the retries that follow fail for other
            // reasons, refused or reset, and are logged at debug), so nobody is paged for an
            // outage the daemon rides out. A mismatch needs an operator: ERROR, once.
            let mismatch = matches!(error, SessionError::Mismatch { .. });
            if mismatch && reason != last_error {
                tracing::error!("{reason}");
                last_error = reason;
            } else if failures == 0 && !mismatch {
                tracing::warn!(retry_in = ?delay, "{reason}");
                last_error = reason;
            } else {
                tracing::debug!(retry_in = ?delay, "{reason}");
            }
            failures = failures.saturating_add(1);
            tokio::select! {
                // Shutdown wins over the wait.
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<(), SessionError> {
        let connection = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect(&self.config) => Arc::new(c?),
        };
        // Connection errors arrive here even when a consumer stream or a pending ack would
        // never resolve (lapin's recovery path is young), so a dead connection is always noticed.
        let mut events = connection.events_listener();
        let channel = connection.create_channel().await?;
        self.declare(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;

        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.set_session(Some(publisher.clone()), Some(connection.clone()));
        self.readiness.set_broker(BrokerState::Connected);
        self.readiness.set_broker_problem(None);
        self.metrics.broker_connected.set(1);
        // After an outage this is its one INFO line: recovered.
        tracing::info!(
            recovered_after_attempts = *failures,
            broker = %self.config.url.redacted(),
            exchange = %self.config.exchange,
            queue = %self.config.queue,
            stream = %self.config.stream,
            "consuming from RabbitMQ"
        );
        *failures = 0;

        let (caught_up, reader_caught_up) = tokio::sync::watch::channel(false);
        let (drain, drain_marker) = tokio::sync::watch::channel(None);
        let signals = crate::stream::ReaderSignals {
            caught_up,
            drain: drain_marker,
        };
        let consumer_stop = CancellationToken::new();
        let reader = crate::stream::follow(self, &connection, signals);
        let consumer = crate::consumer::consume(
            self,
            &connection,
            &publisher,
            &consumer_stop,
            reader_caught_up,
        );
        tokio::pin!(reader, consumer);
        // Whichever ends first ends the session; the other is dropped with it, and its
        // unacked deliveries return to the queue.
        let result = tokio::select! {
            error = connection_error(&mut events) => Err(error),
            result = &mut reader => result.and(Err(SessionError::ConnectionClosed)),
            result = &mut consumer => result.and(Err(SessionError::ConnectionClosed)),
            _ = shutdown.cancelled() => {
                self.drain(&connection, &mut events, &consumer_stop, consumer, reader, &drain).await;
                Ok(())
            }
        };
        if shutdown.is_cancelled() {
            let _ = connection.close(200, "shutting down".into()).await;
            tracing::info!("stopped consuming from RabbitMQ");
        }
        result
    }

    /// At shutdown: stop taking deliveries and ack what was appended, then let the reader
    /// emit what this instance appended, up to a last marker (bounded by [`DRAIN_TIMEOUT`]).
    async fn drain(
        &self,
        connection: &Connection,
        events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
        consumer_stop: &CancellationToken,
        mut consumer: Pin<&mut impl Future<Output = Result<(), SessionError>>>,
        mut reader: Pin<&mut impl Future<Output = Result<(), SessionError>>>,
        drain: &tokio::sync::watch::Sender<Option<String>>,
    ) {
        consumer_stop.cancel();
        let work = async {
            // The reader keeps emitting while the consumer finishes.
            tokio::select! {
                _ = &mut consumer => {}
                _ = connection_error(events) => return,
                _ = &mut reader => return,
            }
            let Ok(marker) = crate::stream::append_marker(connection, &self.config.stream).await
            else {
                return;
            };
            let _ = drain.send(Some(marker));
            tokio::select! {
                _ = &mut reader => {}
                _ = connection_error(events) => {}
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, work).await.is_err() {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "the stream reader did not drain in time");
        }
    }

    async fn declare(&self, channel: &Channel) -> Result<(), SessionError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let dlx = self.config.dead_letter_exchange();
        let dead = self.config.dead_letter_queue();
        let queue = &self.config.queue;
        let stream = &self.config.stream;
        channel
            .exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(dead.as_str().into(), durable_queue, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                dead.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.as_str().into()),
        );
        // Every instance consumes the one queue; the broker lets one at a time receive, so
        // notifications reach the stream in the order the queue holds them.
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        if let Some(ms) = self.config.queue_expires_ms {
            arguments.insert("x-expires".into(), AMQPValue::LongUInt(ms));
        }
        channel
            .queue_declare(queue.as_str().into(), durable_queue, arguments)
            .await
            .map_err(|error| {
                mismatch(error, "queue", queue, format!(
                    "durable, x-dead-letter-exchange={dlx:?}, x-single-active-consumer=true"
                ), format!(
                    "a v1 queue cannot be changed in place. Stop the v1 instances, let the queue drain, \
                     then delete it (rabbitmqctl delete_queue {queue}) and start v2, which declares it \
                     again; or set RABBITMQ_QUEUE to a new name and bind it before switching producers"
                ))
            })?;
        for key in &self.config.binding_keys {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.config.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }

        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert(
            "x-max-age".into(),
            AMQPValue::LongString(self.config.stream_max_age.as_str().into()),
        );
        channel
            .queue_declare(stream.as_str().into(), durable_queue, arguments)
            .await
            .map_err(|error| {
                mismatch(error, "stream", stream, format!(
                    "x-queue-type=stream, x-max-age={:?}", self.config.stream_max_age
                ), format!(
                    "set RABBITMQ_STREAM_MAX_AGE to the stream's x-max-age, or RABBITMQ_STREAM to a new \
                     name (or delete it: rabbitmqctl delete_queue {stream}, which loses its history)"
                ))
            })?;
        Ok(())
    }

    fn set_session(&self, publisher: Option<Channel>, connection: Option<Arc<Connection>>) {
        // Only ever hold cloneable handles; a panic elsewhere cannot leave them half-written.
        *self.publisher.write().unwrap_or_else(|p| p.into_inner()) = publisher;
        *self.connection.write().unwrap_or_else(|p| p.into_inner()) = connection;
    }

    /// The current session's connection, if there is one.
    pub(crate) fn connection(&self) -> Option<Arc<Connection>> {
        self.connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes `body` to the exchange and waits for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self
            .publisher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let properties = properties
            .with_content_type("application/json".into())
            // Persistent, like the durable queue it lands in.
            .with_delivery_mode(2)
            .with_timestamp(time::OffsetDateTime::now_utc().unix_timestamp() as u64);
        // The consumer's span (on every instance) continues the ingest request's trace.
        let properties = match telemetry::current_traceparent() {
            Some(traceparent) => {
                properties.with_headers(FieldTable::from(std::collections::BTreeMap::from([(
                    ShortString::from(telemetry::TRACEPARENT),
                    AMQPValue::LongString(traceparent.into()),
                )])))
            }
            None => properties,
        };
        let publish = async {
            let confirm = channel
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await?;
            Ok::<_, PublishError>(confirm.await?)
        };
        match tokio::time::timeout(PUBLISH_CONFIRM_TIMEOUT, publish).await {
            Err(_) => Err(PublishError::Timeout(PUBLISH_CONFIRM_TIMEOUT)),
            Ok(Err(error)) => Err(error),
            Ok(Ok(confirmation)) if confirmation.is_ack() => Ok(()),
            Ok(Ok(_)) => Err(PublishError::Nacked),
        }
    }
}

/// A `PRECONDITION_FAILED` on a declare: the object exists with other arguments.
fn mismatch(
    error: lapin::Error,
    kind: &'static str,
    name: &str,
    expected: String,
    fix: String,
) -> SessionError {
    match error.kind() {
        ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) =>
        {
            SessionError::Mismatch {
                kind,
                name: name.to_owned(),
                expected,
                fix,
                detail: amqp.to_string(),
            }
        }
        _ => SessionError::from(error),
    }
}

/// Resolves with the first connection-level error lapin reports.
pub(crate) async fn connection_error(
    events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) -> SessionError {
    loop {
        match events.next().await {
            Some(lapin::Event::Error(error)) => return SessionError::Amqp(error),
            Some(_) => continue,
            None => return SessionError::ConnectionClosed,
        }
    }
}

/// Connects to `RABBITMQ_URL` (TLS for `amqps://`, trusting `RABBITMQ_CA_FILE` too).
pub async fn connect(config: &RabbitConfig) -> Result<Connection, ConnectError> {
    // Validated at start.
    let mut uri: AMQPUri = config
        .url
        .expose()
        .parse()
        .expect("RABBITMQ_URL was validated");
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    let tls = match &config.ca_file {
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(std::fs::read_to_string(path).map_err(ConnectError::CaFile)?),
        },
        None => OwnedTLSConfig::default(),
    };
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("notify-bridge {}", config.queue).into());
    let runtime = lapin::runtime::default_runtime()?;
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect_uri_with_config(uri, properties, tls, runtime),
    )
    .await
    .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
    .map_err(ConnectError::from)
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect within {0:?}")]
    Timeout(Duration),
    #[error("reading RABBITMQ_CA_FILE: {0}")]
    CaFile(std::io::Error),
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
}

/// Delay before retry number `failures`: exponential from 250 ms, capped, with jitter so that
/// many instances do not reconnect in lockstep after a broker restart.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exponential = INITIAL_BACKOFF.saturating_mul(1u32 << failures.min(16));
    let ceiling = exponential.min(cap);
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(30);
        for failures in 0..40 {
            let ceiling = INITIAL_BACKOFF
                .saturating_mul(1u32 << failures.min(16))
                .min(cap);
            let d = backoff(failures, cap);
            assert!(d <= ceiling && d >= ceiling / 2, "{failures}: {d:?}");
        }
        assert!(backoff(30, cap) >= Duration::from_secs(15));
    }
}
