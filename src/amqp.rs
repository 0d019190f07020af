//! RabbitMQ: topology, the consumer and its supervisor, dead-lettering, confirmed publishing.
//!
//! lapin's own recovery is not used: [`Broker::run`] owns the connection's whole life. Each
//! session connects, declares the topology again, consumes until the connection fails, and the
//! supervisor retries with capped exponential backoff and jitter. While disconnected the daemon
//! keeps serving sockets and polling, and `/readyz` says why it is not ready. Deliveries are
//! acked only after they are emitted and stored; what was in flight when a connection dropped
//! is redelivered by the broker and recognised by the dedupe window.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    Acker, BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind,
};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::RabbitConfig;
use crate::delivery::{DedupeKey, Delivery};
use crate::envelope::{self, CategoryFrom, Rejection, Source};
use crate::metrics::{DeadLetterLabels, Metrics};
use crate::readiness::Readiness;
use crate::rooms::metric_category;
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
enum SessionError {
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error(
        "queue {queue:?} already exists with other arguments ({detail}); it must be declared \
         durable with x-dead-letter-exchange={dlx:?}: delete it (rabbitmqctl delete_queue {queue}) \
         or set RABBITMQ_QUEUE to a new name"
    )]
    QueueMismatch {
        queue: String,
        dlx: String,
        detail: String,
    },
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    ConsumerCancelled,
    #[error("the connection closed")]
    ConnectionClosed,
}

pub struct Broker {
    config: RabbitConfig,
    max_message_bytes: usize,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    /// Confirm-mode channel of the current session, used for ingest and dead letters.
    publisher: RwLock<Option<Channel>>,
}

impl Broker {
    pub fn new(
        config: RabbitConfig,
        max_message_bytes: usize,
        delivery: Arc<Delivery>,
        metrics: Arc<Metrics>,
        readiness: Readiness,
    ) -> Self {
        Self {
            config,
            max_message_bytes,
            delivery,
            metrics,
            readiness,
            publisher: RwLock::new(None),
        }
    }

    /// Consumes until `shutdown`, reconnecting for as long as it takes.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut last_error = String::new();
        loop {
            let result = self.session(&shutdown, &mut failures).await;
            self.set_publisher(None);
            self.metrics.broker_connected.set(0);
            let error = match result {
                Ok(()) => return,
                Err(error) => error,
            };
            let reason = format!("RabbitMQ at {}: {error}", self.config.url.redacted());
            self.readiness.set_not_ready(reason.clone());
            self.metrics.broker_reconnects.inc();
            let delay = backoff(failures, self.config.reconnect_max);
            // One WARN per outage (its first failure; the retries that follow fail for other
            // reasons, refused or reset, and are logged at debug), so nobody is paged for an
            // outage the daemon rides out. A queue mismatch needs an operator: ERROR, once.
            if matches!(error, SessionError::QueueMismatch { .. }) && reason != last_error {
                tracing::error!("{reason}");
                last_error = reason;
            } else if failures == 0 && !matches!(error, SessionError::QueueMismatch { .. }) {
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
            c = connect(&self.config) => c?,
        };
        // Connection errors arrive here even when the consumer stream or a pending ack would
        // never resolve (lapin's recovery path is young), so a dead connection is always noticed.
        let mut events = connection.events_listener();
        let channel = connection.create_channel().await?;
        self.declare(&channel).await?;
        // Prefetch bounds what the broker pushes ahead of our acks: enough to keep the consumer
        // busy, never unbounded memory.
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;

        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.set_publisher(Some(publisher.clone()));

        let mut consumer = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.readiness.set_ready();
        self.metrics.broker_connected.set(1);
        // After an outage this is its one INFO line: recovered.
        tracing::info!(
            recovered_after_attempts = *failures,
            broker = %self.config.url.redacted(),
            exchange = %self.config.exchange,
            queue = %self.config.queue,
            prefetch = self.config.prefetch,
            "consuming from RabbitMQ"
        );
        *failures = 0;

        let mut acks = PendingAcks::new(ack_batch(self.config.prefetch));
        loop {
            tokio::select! {
                // Checked first so that shutdown stops taking new deliveries at once.
                biased;
                _ = shutdown.cancelled() => {
                    // What was emitted is acked; closing returns every other delivery
                    // (prefetched, not yet emitted) to the queue.
                    let _ = guarded(acks.flush(), &mut events).await;
                    let _ = channel.close(200, "shutting down".into()).await;
                    let _ = connection.close(200, "shutting down".into()).await;
                    tracing::info!("stopped consuming from RabbitMQ");
                    return Ok(());
                }
                error = connection_error(&mut events) => return Err(error),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        if let Some(acker) = guarded(self.handle(delivery, &publisher), &mut events).await?
                            && acks.add(acker)
                        {
                            guarded(acks.flush(), &mut events).await?;
                        }
                    }
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(SessionError::ConsumerCancelled),
                },
                // Polled only when no delivery is ready: ack what was emitted, once the
                // oldest pending ack has waited ACK_DELAY.
                _ = tokio::time::sleep_until(acks.due()), if acks.pending() => {
                    guarded(acks.flush(), &mut events).await?;
                }
            }
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
        if let Some(ms) = self.config.queue_expires_ms {
            arguments.insert("x-expires".into(), AMQPValue::LongUInt(ms));
        }
        channel
            .queue_declare(queue.as_str().into(), durable_queue, arguments)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::ProtocolError(amqp)
                    if matches!(
                        amqp.kind(),
                        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                    ) =>
                {
                    SessionError::QueueMismatch {
                        queue: queue.clone(),
                        dlx: dlx.clone(),
                        detail: amqp.to_string(),
                    }
                }
                _ => SessionError::from(error),
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
        Ok(())
    }

    /// Emits a delivery, or dead-letters it. Returns the acker of an emitted delivery, whose
    /// ack the caller batches; a dead letter is settled here.
    async fn handle(
        &self,
        delivery: AmqpDelivery,
        publisher: &Channel,
    ) -> Result<Option<Acker>, SessionError> {
        let properties = &delivery.properties;
        let (traceparent, _) = telemetry::amqp_trace_context(properties.headers().as_ref());
        let span = telemetry::delivery_span(traceparent.as_deref(), delivery.routing_key.as_str());
        let source = Source {
            category: CategoryFrom::RoutingKey(delivery.routing_key.as_str()),
            message_id: properties.message_id().as_ref().map(|id| id.as_str()),
            timestamp: *properties.timestamp(),
        };
        match envelope::parse(&delivery.data, source, self.max_message_bytes) {
            Ok(envelope) => {
                let key = match envelope.message_id.as_deref() {
                    Some(id) => DedupeKey::MessageId(id),
                    None => DedupeKey::Fingerprint {
                        hash: fingerprint(delivery.routing_key.as_str(), &delivery.data),
                        redelivered: delivery.redelivered,
                    },
                };
                let outcome = span.in_scope(|| self.delivery.deliver(&envelope, key));
                let id = envelope.message_id.as_deref();
                telemetry::record_delivery(&span, id, &envelope.rooms, outcome);
                Ok(Some(delivery.acker))
            }
            Err(rejection) => {
                telemetry::record_dead_letter(&span, rejection.code());
                self.dead_letter(delivery, rejection, publisher).await?;
                Ok(None)
            }
        }
    }

    /// Republishes a rejected message to the dead-letter exchange with its reason, then acks it.
    /// If the broker does not confirm that, the message is rejected without requeue, so the
    /// queue's own dead-lettering still moves it (without the reason header): never a requeue loop.
    async fn dead_letter(
        &self,
        delivery: AmqpDelivery,
        rejection: Rejection,
        publisher: &Channel,
    ) -> Result<(), SessionError> {
        let category = delivery
            .routing_key
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or("");
        self.metrics
            .dead_lettered
            .get_or_create(&DeadLetterLabels {
                category: metric_category(category),
                reason: rejection.code(),
            })
            .inc();
        tracing::warn!(
            reason = rejection.code(),
            routing_key = %delivery.routing_key,
            bytes = delivery.data.len(),
            message_id = ?delivery.properties.message_id().as_ref().map(|id| id.as_str()),
            dead_letter_queue = %self.config.dead_letter_queue(),
            "message dead-lettered: {}",
            rejection.describe()
        );
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(rejection.code().into()),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        let confirmed = async {
            let confirm = publisher
                .basic_publish(
                    self.config.dead_letter_exchange().as_str().into(),
                    delivery.routing_key.clone(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    properties,
                )
                .await?;
            Ok::<bool, lapin::Error>(confirm.await?.is_ack())
        };
        match tokio::time::timeout(PUBLISH_CONFIRM_TIMEOUT, confirmed).await {
            Ok(Ok(true)) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            outcome => {
                tracing::warn!(
                    ?outcome,
                    "dead-letter publish not confirmed; rejecting without requeue instead"
                );
                delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        Ok(())
    }

    fn set_publisher(&self, channel: Option<Channel>) {
        // Only ever holds a cloneable handle; a panic elsewhere cannot leave it half-written.
        *self.publisher.write().unwrap_or_else(|p| p.into_inner()) = channel;
    }

    /// Publishes `body` to the exchange and waits for the broker's confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8]) -> Result<(), PublishError> {
        let channel = self
            .publisher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            // Persistent, like the durable queues it lands in.
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

/// Acks of emitted deliveries, sent as one `multiple` ack for the whole batch: one frame and
/// one wake-up of lapin's I/O thread instead of one per message. Only deliveries that were
/// emitted and stored are ever in a batch; a batch is acked when full or after `ACK_DELAY`.
struct PendingAcks {
    /// Acker of the latest emitted delivery; acking it with `multiple` acks all before it.
    last: Option<Acker>,
    count: usize,
    batch: usize,
    /// When the batch is acked even if it is not full.
    due: tokio::time::Instant,
}

/// How long an emitted delivery's ack may wait for others to share its frame. It delays only
/// the broker's ack, never the emit; at a steady 2,000 notifications/s it turns one ack frame
/// per message into one per ten.
const ACK_DELAY: Duration = Duration::from_millis(5);

impl PendingAcks {
    fn new(batch: usize) -> Self {
        Self {
            last: None,
            count: 0,
            batch,
            due: tokio::time::Instant::now(),
        }
    }

    /// Adds an emitted delivery; `true` when the batch is full and should be flushed now.
    fn add(&mut self, acker: Acker) -> bool {
        if self.last.is_none() {
            self.due = tokio::time::Instant::now() + ACK_DELAY;
        }
        self.last = Some(acker);
        self.count += 1;
        self.count >= self.batch
    }

    fn due(&self) -> tokio::time::Instant {
        self.due
    }

    fn pending(&self) -> bool {
        self.last.is_some()
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if let Some(acker) = self.last.take() {
            self.count = 0;
            acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }
}

/// The largest ack batch: a quarter of the prefetch, so the broker keeps sending while a batch
/// fills, and at most 64 deliveries to redeliver after a connection loss.
fn ack_batch(prefetch: u16) -> usize {
    (usize::from(prefetch) / 4).clamp(1, 64)
}

/// Runs `work`, unless the connection fails first: a lapin future may never resolve once its
/// connection is gone.
async fn guarded<T>(
    work: impl Future<Output = Result<T, SessionError>>,
    events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) -> Result<T, SessionError> {
    tokio::select! {
        result = work => result,
        // Work cut short (an ack, say) is redelivered by the broker, flagged redelivered, and
        // the dedupe window recognises it.
        error = connection_error(events) => Err(error),
    }
}

/// Resolves with the first connection-level error lapin reports.
async fn connection_error(
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

/// Identifies a message without `messageId`, to recognise broker redeliveries of it.
fn fingerprint(routing_key: &str, body: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    routing_key.hash(&mut hasher);
    body.hash(&mut hasher);
    hasher.finish()
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

    #[test]
    fn ack_batches_stay_well_inside_the_prefetch() {
        assert_eq!(ack_batch(1), 1);
        assert_eq!(ack_batch(20), 5);
        assert_eq!(ack_batch(256), 64);
        assert_eq!(ack_batch(u16::MAX), 64);
    }

    #[test]
    fn fingerprints_tell_bodies_and_keys_apart() {
        assert_eq!(fingerprint("a", b"x"), fingerprint("a", b"x"));
        assert_ne!(fingerprint("a", b"x"), fingerprint("b", b"x"));
        assert_ne!(fingerprint("a", b"x"), fingerprint("a", b"y"));
    }
}
