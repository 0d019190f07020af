//! RabbitMQ: the connection and its supervisor, the topology (contract section 2), and
//! confirmed publishing.
//!
//! lapin's own recovery is not used: [`Broker::run`] owns the connection's whole life. Each
//! session connects to one of `RABBITMQ_URL`'s nodes (the next one after a node is lost),
//! declares the shared log's topology, then runs two loops on one connection until it fails:
//! the log reader (every instance: [`crate::stream`], or [`crate::streamless`] with
//! `RABBITMQ_STREAM=off`) and the queue consumer ([`crate::consumer`], active on one instance at
//! a time). The consumer declares the queues itself and retries on its own, so a queue whose
//! node is down never stops the reader. The supervisor retries with capped exponential backoff
//! and jitter. While disconnected the daemon keeps serving sockets, polling and history;
//! `/readyz` stays ready once it has caught up with the log.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{QueueType, RabbitConfig};
use crate::envelope;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::readiness::{BrokerState, Readiness};
use crate::telemetry;

/// Header that tells an operator why a message was dead-lettered (contract section 2).
pub const REASON_HEADER: &str = "x-notify-bridge-reason";
/// How long `POST /api/notifications` waits for the broker's confirm (contract section 6).
pub const PUBLISH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting (TCP, TLS, AMQP handshake) to one node must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same with several nodes to try: a node that does not answer is passed over sooner.
const CONNECT_TIMEOUT_PER_NODE: Duration = Duration::from_secs(5);
/// A declare must be answered within this: RabbitMQ 4 blocks a declare of a queue whose node
/// is down rather than refusing it.
pub(crate) const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first try at the queues, before the reader starts: short, so that a queue whose node
/// is down delays reading the log by this much at most.
const FIRST_DECLARE_TIMEOUT: Duration = Duration::from_secs(2);
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
    #[error(
        "RabbitMQ refused to declare the stream {name:?} ({detail}). If this broker has no \
         streams (Amazon MQ, for one), set RABBITMQ_STREAM=off to run in the stream-less mode"
    )]
    NoStreams { name: String, detail: String },
    #[error("declaring {what} did not finish within {timeout:?}")]
    DeclareTimeout { what: String, timeout: Duration },
}

impl SessionError {
    /// Needs an operator: the daemon cannot fix it by reconnecting, and `/readyz` says so.
    fn needs_operator(&self) -> bool {
        matches!(
            self,
            SessionError::Mismatch { .. } | SessionError::NoStreams { .. }
        )
    }
}

pub struct Broker {
    pub(crate) config: RabbitConfig,
    pub(crate) limits: envelope::Limits,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) readiness: Readiness,
    pub(crate) stats: Arc<crate::stats::Stats>,
    /// Confirm-mode channel of the current session, used for ingest and dead letters.
    publisher: RwLock<Option<Channel>>,
    /// The current session's connection, for replays from the stream.
    connection: RwLock<Option<Arc<Connection>>>,
    pub(crate) replay_slots: Semaphore,
    /// What the queue consumer appended, kept across sessions for the dedupe rules.
    append_state: std::sync::Mutex<crate::consumer::AppendState>,
    /// Index in `RABBITMQ_URL` of the node the next session tries first.
    next_node: AtomicUsize,
}

impl Broker {
    pub fn new(
        config: RabbitConfig,
        limits: envelope::Limits,
        dedupe_window: usize,
        fanout: Arc<Fanout>,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        stats: Arc<crate::stats::Stats>,
    ) -> Self {
        Self {
            limits,
            fanout,
            metrics,
            readiness,
            stats,
            publisher: RwLock::new(None),
            connection: RwLock::new(None),
            replay_slots: Semaphore::new(CONCURRENT_REPLAYS),
            append_state: std::sync::Mutex::new(crate::consumer::AppendState::new(
                dedupe_window,
                config.prefetch,
            )),
            next_node: AtomicUsize::new(0),
            config,
        }
    }

    pub(crate) fn append_state(&self) -> &std::sync::Mutex<crate::consumer::AppendState> {
        &self.append_state
    }

    /// Runs sessions until `shutdown`, reconnecting for as long as it takes.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut warned = WarnOnce::default();
        loop {
            let result = self.session(&shutdown, &mut failures, &mut warned).await;
            self.set_session(None, None);
            self.metrics.broker_connected.set(0);
            self.metrics.stream_active_consumer.set(0);
            self.readiness.set_broker(BrokerState::Reconnecting);
            let error = match result {
                Ok(()) => return,
                Err(error) => error,
            };
            let reason = format!("RabbitMQ at {}: {error}", self.config.url.redacted());
            self.readiness
                .set_broker_problem(error.needs_operator().then(|| error.to_string()));
            self.metrics.broker_reconnects.inc();
            let delay = backoff(failures, self.config.reconnect_max);
            // One line per cause of an outage, so nobody is paged for an outage the daemon
            // rides out, and a new cause is never hidden. A cause that needs an operator is an
            // ERROR.
            if warned.is_new(&error) {
                if error.needs_operator() {
                    tracing::error!("{reason}");
                } else {
                    tracing::warn!(retry_in = ?delay, "{reason}");
                }
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
        warned: &mut WarnOnce,
    ) -> Result<(), SessionError> {
        let first = self.next_node.load(Ordering::Relaxed);
        let (connection, node) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect(&self.config, first) => c?,
        };
        let connection = Arc::new(connection);
        // When this connection is lost, the next session starts with the next node.
        self.next_node.store(node + 1, Ordering::Relaxed);
        // Connection errors arrive here even when a consumer stream or a pending ack would
        // never resolve (lapin's recovery path is young), so a dead connection is always noticed.
        let mut events = connection.events_listener();
        let channel = connection.create_channel().await?;
        declaring("the log's topology", self.declare_log(&channel)).await?;
        let _ = channel.close(200, "declared".into()).await;
        // The queues are declared before anything is read, so that a producer who sees this
        // instance ready finds them bound. If that cannot be done now (a queue's node is down),
        // the consumer keeps trying while the reader reads.
        let queues =
            match tokio::time::timeout(FIRST_DECLARE_TIMEOUT, self.declare_queues(&connection))
                .await
            {
                Ok(Ok(())) => crate::consumer::Queues::Declared,
                Ok(Err(error @ SessionError::Mismatch { .. })) => return Err(error),
                Ok(Err(error)) => crate::consumer::Queues::Failed(error.to_string()),
                Err(_) => crate::consumer::Queues::Failed(format!(
                    "declaring the queues did not finish within {FIRST_DECLARE_TIMEOUT:?}"
                )),
            };

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
            broker = %self.config.url.get(node).redacted(),
            exchange = %self.config.exchange,
            queue = %self.config.queue,
            log = %self.log_name(),
            "consuming from RabbitMQ"
        );
        *failures = 0;
        *warned = WarnOnce::default();

        let (caught_up, reader_caught_up) = tokio::sync::watch::channel(false);
        let (drain, drain_marker) = tokio::sync::watch::channel(None);
        let (synced_tx, synced) = tokio::sync::watch::channel(None);
        let signals = crate::stream::ReaderSignals {
            caught_up,
            drain: drain_marker,
            synced: synced_tx,
        };
        let consumer_stop = CancellationToken::new();
        let reader: Pin<Box<dyn Future<Output = Result<(), SessionError>> + Send + '_>> =
            if self.config.streamless {
                Box::pin(crate::streamless::follow(self, &connection, signals))
            } else {
                Box::pin(crate::stream::follow(self, &connection, signals))
            };
        let consumer = crate::consumer::consume(
            self,
            &connection,
            queues,
            &consumer_stop,
            crate::consumer::ReaderState {
                caught_up: reader_caught_up,
                synced,
            },
        );
        let mut reader = reader;
        tokio::pin!(consumer);
        // Whichever ends first ends the session; the other is dropped with it, and its
        // unacked deliveries return to the queue.
        let result = tokio::select! {
            error = connection_error(&mut events) => Err(error),
            result = &mut reader => result.and(Err(SessionError::ConnectionClosed)),
            result = &mut consumer => result.and(Err(SessionError::ConnectionClosed)),
            _ = shutdown.cancelled() => {
                self.drain(&connection, &mut events, &consumer_stop, consumer, reader.as_mut(), &drain).await;
                Ok(())
            }
        };
        if shutdown.is_cancelled() {
            let _ = connection.close(200, "shutting down".into()).await;
            tracing::info!("stopped consuming from RabbitMQ");
        }
        result
    }

    /// The shared log's name, for logs.
    fn log_name(&self) -> String {
        if self.config.streamless {
            format!("{} (stream-less mode)", self.config.fanout_exchange())
        } else {
            self.config.stream.clone()
        }
    }

    /// At shutdown: stop taking deliveries and ack what was appended, then let the reader
    /// emit what this instance appended, up to a last marker (bounded by [`DRAIN_TIMEOUT`]).
    async fn drain(
        &self,
        connection: &Connection,
        events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
        consumer_stop: &CancellationToken,
        mut consumer: Pin<&mut impl Future<Output = Result<(), SessionError>>>,
        mut reader: Pin<&mut (dyn Future<Output = Result<(), SessionError>> + Send + '_)>,
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
            let Ok(marker) = crate::stream::append_marker(self, connection).await else {
                return;
            };
            let _ = drain.send(Some(marker));
            tokio::select! {
                _ = &mut reader => {}
                _ = connection_error(events) => {}
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, work).await.is_err() {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "the log reader did not drain in time");
        }
    }

    /// The exchange producers publish to, and the shared log: the stream, or the stream-less
    /// mode's fanout exchange. Nothing here is homed on one node, so a session can read the
    /// log whatever node is down.
    async fn declare_log(&self, channel: &Channel) -> Result<(), SessionError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        if self.config.streamless {
            channel
                .exchange_declare(
                    self.config.fanout_exchange().as_str().into(),
                    ExchangeKind::Fanout,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            return Ok(());
        }
        let stream = &self.config.stream;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert(
            "x-max-age".into(),
            AMQPValue::LongString(self.config.stream_max_age.as_str().into()),
        );
        if let Some(bytes) = self.config.stream_max_segment_bytes {
            arguments.insert(
                "x-stream-max-segment-size-bytes".into(),
                AMQPValue::LongLongInt(bytes as i64),
            );
        }
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(stream.as_str().into(), durable_queue, arguments)
            .await
            .map_err(|error| {
                if refuses_streams(&error) {
                    return SessionError::NoStreams {
                        name: stream.clone(),
                        detail: error.to_string(),
                    };
                }
                mismatch(error, "stream", stream, format!(
                    "x-queue-type=stream, x-max-age={:?}", self.config.stream_max_age
                ), format!(
                    "set RABBITMQ_STREAM_MAX_AGE to the stream's x-max-age, or RABBITMQ_STREAM to a new \
                     name (or delete it: rabbitmqctl delete_queue {stream}, which loses its history)"
                ))
            })?;
        Ok(())
    }

    /// The queue, its dead-letter exchange and queue, and their bindings (contract section
    /// 2). A queue that exists is used as it is, whatever its type; a new one gets
    /// `RABBITMQ_QUEUE_TYPE`.
    pub(crate) async fn declare_queues(&self, connection: &Connection) -> Result<(), SessionError> {
        let dlx = self.config.dead_letter_exchange();
        let dead = self.config.dead_letter_queue();
        let queue = &self.config.queue;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "declared".into()).await;
        self.declare_kept(connection, &dead, FieldTable::default(), || {
            format!(
                "a durable queue; delete it (rabbitmqctl delete_queue {dead}) once its dead \
                 letters are read, and the daemon declares it again"
            )
        })
        .await?;

        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.as_str().into()),
        );
        // Every instance consumes the one queue; the broker lets one at a time receive, so
        // notifications reach the log in the order the queue holds them.
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        if let Some(ms) = self.config.queue_expires_ms {
            arguments.insert("x-expires".into(), AMQPValue::LongUInt(ms));
        }
        self.declare_kept(connection, queue, arguments, || {
            format!(
                "a v1 queue cannot be changed in place. Stop the v1 instances, let the queue drain, \
                 then delete it (rabbitmqctl delete_queue {queue}) and start again, which declares it \
                 again; or set RABBITMQ_QUEUE to a new name and bind it before switching producers"
            )
        })
        .await?;

        let channel = connection.create_channel().await?;
        channel
            .queue_bind(
                dead.as_str().into(),
                dlx.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
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
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Declares the durable queue `name` with `arguments`. A new one gets `RABBITMQ_QUEUE_TYPE`.
    /// One that exists keeps its type: it is declared again with its own type (found by trying
    /// the configured one, then the other), so that neither a v2 classic queue nor a vhost
    /// whose default type changed stops the daemon, while other arguments that differ still
    /// answer [`SessionError::Mismatch`].
    async fn declare_kept(
        &self,
        connection: &Connection,
        name: &str,
        arguments: FieldTable,
        fix: impl Fn() -> String,
    ) -> Result<(), SessionError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..durable
        };
        let configured = self.config.queue_type;
        // A failed declare closes its channel: each try gets a fresh one.
        let channel = connection.create_channel().await?;
        let exists = channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
            .is_ok();
        if exists {
            let _ = channel.close(200, "checked".into()).await;
        }
        let types = if exists {
            let other = match configured {
                QueueType::Quorum => QueueType::Classic,
                QueueType::Classic => QueueType::Quorum,
            };
            vec![configured, other]
        } else {
            vec![configured]
        };
        let mut last = None;
        for queue_type in types {
            let channel = connection.create_channel().await?;
            let mut arguments = arguments.clone();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(queue_type.as_str().into()),
            );
            match channel.queue_declare(name.into(), durable, arguments).await {
                Ok(_) => {
                    let _ = channel.close(200, "declared".into()).await;
                    if exists {
                        tracing::info!(
                            queue = name,
                            r#type = queue_type.as_str(),
                            "the queue exists: used as it is"
                        );
                    } else {
                        tracing::info!(
                            queue = name,
                            r#type = queue_type.as_str(),
                            "declared the queue"
                        );
                    }
                    return Ok(());
                }
                Err(error) => last = Some(error),
            }
        }
        let error = last.expect("at least one type was tried");
        Err(mismatch(
            error,
            "queue",
            name,
            format!("durable, {}", describe(&arguments)),
            fix(),
        ))
    }

    fn set_session(&self, publisher: Option<Channel>, connection: Option<Arc<Connection>>) {
        // Only ever hold cloneable handles; a panic elsewhere cannot leave them half-written.
        *self.publisher.write().unwrap_or_else(|p| p.into_inner()) = publisher;
        *self.connection.write().unwrap_or_else(|p| p.into_inner()) = connection;
    }

    /// The session's confirm-mode channel for ingest and dead letters. A publish the broker
    /// refuses (an exchange deleted under the daemon, say) closes the channel but not the
    /// connection: the next publish opens a new one rather than failing for good.
    pub(crate) async fn publisher(&self) -> Result<Channel, PublishError> {
        let current = self
            .publisher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(PublishError::NotConnected)?;
        if current.status().connected() {
            return Ok(current);
        }
        let connection = self.connection().ok_or(PublishError::NotConnected)?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut slot = self.publisher.write().unwrap_or_else(|p| p.into_inner());
        // Only if the session it belongs to is still the current one.
        if slot.is_some() {
            *slot = Some(channel.clone());
        }
        Ok(channel)
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
        let channel = self.publisher().await?;
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
        publish_confirmed(
            &channel,
            &self.config.exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .map(|_| ())
    }
}

/// Publishes one message on a confirm-mode channel and waits (at most
/// [`PUBLISH_CONFIRM_TIMEOUT`]) for the broker's ack: the one confirmed publish that ingest,
/// dead letters, markers, checkpoints and the command line share.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    options: BasicPublishOptions,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Confirmation, PublishError> {
    let publish = async {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await?;
        Ok::<_, PublishError>(confirm.await?)
    };
    match tokio::time::timeout(PUBLISH_CONFIRM_TIMEOUT, publish).await {
        Err(_) => Err(PublishError::Timeout(PUBLISH_CONFIRM_TIMEOUT)),
        Ok(Err(error)) => Err(error),
        Ok(Ok(confirmation)) if confirmation.is_ack() => Ok(confirmation),
        Ok(Ok(_)) => Err(PublishError::Nacked),
    }
}

/// Bounds a declare: RabbitMQ 4 blocks one whose queue's node is down instead of failing it.
pub(crate) async fn declaring<T>(
    what: &str,
    declare: impl Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    tokio::time::timeout(DECLARE_TIMEOUT, declare)
        .await
        .unwrap_or_else(|_| {
            Err(SessionError::DeclareTimeout {
                what: what.to_owned(),
                timeout: DECLARE_TIMEOUT,
            })
        })
}

/// Remembers which causes of failure were already logged at WARN, so that an outage logs
/// each of its causes once (a retry that fails the same way is logged at debug).
#[derive(Default)]
pub(crate) struct WarnOnce {
    seen: std::collections::HashSet<String>,
}

impl WarnOnce {
    /// Whether `error`'s cause is new. The cause is its text with digits folded, so that a
    /// changing channel id or address in the same failure does not count as a new one.
    pub fn is_new(&mut self, error: &impl std::fmt::Display) -> bool {
        let cause: String = error
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        // Bounded: a flood of distinct causes keeps logging, the set does not grow.
        if self.seen.len() >= 64 {
            self.seen.clear();
        }
        self.seen.insert(cause)
    }
}

/// `x-…` arguments as an operator would compare them with `rabbitmqctl list_queues`.
fn describe(arguments: &FieldTable) -> String {
    arguments
        .inner()
        .iter()
        .map(|(key, value)| match value {
            AMQPValue::LongString(text) => {
                format!(
                    "{}={:?}",
                    key.as_str(),
                    String::from_utf8_lossy(text.as_bytes())
                )
            }
            AMQPValue::Boolean(flag) => format!("{}={flag}", key.as_str()),
            AMQPValue::LongUInt(n) => format!("{}={n}", key.as_str()),
            other => format!("{}={other:?}", key.as_str()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A broker's answer to a stream declare that says it cannot have a stream at all, rather
/// than "not with these arguments": NOT_IMPLEMENTED, COMMAND_INVALID or NOT_ALLOWED, or a
/// PRECONDITION_FAILED about the arguments themselves ("invalid arg 'x-queue-type'") rather
/// than about an existing stream ("inequivalent arg").
fn refuses_streams(error: &lapin::Error) -> bool {
    use lapin::protocol::AMQPHardError;
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return false;
    };
    match amqp.kind() {
        AMQPErrorKind::Hard(
            AMQPHardError::NOTIMPLEMENTED
            | AMQPHardError::COMMANDINVALID
            | AMQPHardError::NOTALLOWED,
        ) => true,
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
            let text = amqp.to_string();
            !text.contains("inequivalent") && text.contains("x-queue-type")
        }
        _ => false,
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

/// Resolves with the first connection-level error lapin reports. lapin reports a channel's
/// errors there too: a soft error closes only its channel (a passive declare of a queue that
/// does not exist, a publish the broker refuses), and whoever uses that channel sees it.
pub(crate) async fn connection_error(
    events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) -> SessionError {
    loop {
        match events.next().await {
            Some(lapin::Event::Error(error)) if !closes_only_its_channel(&error) => {
                return SessionError::Amqp(error);
            }
            Some(_) => continue,
            None => return SessionError::ConnectionClosed,
        }
    }
}

fn closes_only_its_channel(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(_)))
}

/// Connects to one of `RABBITMQ_URL`'s nodes, trying them in turn from the one at `first`;
/// returns the connection and the index of the node that answered.
pub async fn connect(
    config: &RabbitConfig,
    first: usize,
) -> Result<(Connection, usize), ConnectError> {
    let nodes = config.url.len();
    let timeout = if nodes > 1 {
        CONNECT_TIMEOUT_PER_NODE
    } else {
        CONNECT_TIMEOUT
    };
    let mut failures = Vec::new();
    for index in first..first + nodes {
        let url = config.url.get(index);
        match connect_one(config, url.expose(), timeout).await {
            Ok(connection) => return Ok((connection, index % nodes)),
            // A CA file that cannot be read fails every node alike.
            Err(error @ ConnectError::CaFile(_)) => return Err(error),
            // With one node the caller names it already; with several, say which said what.
            Err(error) if nodes == 1 => return Err(error),
            Err(error) => failures.push(format!("{}: {error}", url.redacted())),
        }
    }
    Err(ConnectError::EveryNode(failures.join("; ")))
}

async fn connect_one(
    config: &RabbitConfig,
    url: &str,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    // Validated at start.
    let mut uri: AMQPUri = url.parse().expect("RABBITMQ_URL was validated");
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
        timeout,
        Connection::connect_uri_with_config(uri, properties, tls, runtime),
    )
    .await
    .map_err(|_| ConnectError::Timeout(timeout))?
    .map_err(ConnectError::from)
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect within {0:?}")]
    Timeout(Duration),
    #[error("no node answered: {0}")]
    EveryNode(String),
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
