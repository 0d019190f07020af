//! RabbitMQ as a plain client: connecting to one of `RABBITMQ_URL`'s nodes, the session's
//! [`Link`] (its connection and confirm-mode channel), the one confirmed publish every
//! publisher uses ([`publish_confirmed`]), bounded declares, the errors a session ends with,
//! and the reconnect backoff. It knows nothing of what runs on the connection: that is
//! [`crate::bridge`]'s.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use rand::Rng;

use crate::config::RabbitConfig;
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
    /// What kind of failure this is, for logging each cause once: losing the connection or
    /// not reaching a node is one cause however the socket said it (refused, reset, aborted,
    /// timed out); anything else is its own text.
    pub(crate) fn cause(&self) -> String {
        let lost = match self {
            SessionError::ConnectionClosed
            | SessionError::Connect(ConnectError::Timeout(_) | ConnectError::EveryNode(_)) => true,
            SessionError::Connect(ConnectError::Amqp(error)) | SessionError::Amqp(error) => {
                error.is_io_error()
            }
            _ => false,
        };
        if lost {
            "the connection to RabbitMQ was lost or could not be made".to_owned()
        } else {
            self.to_string()
        }
    }

    /// Needs an operator: the daemon cannot fix it by reconnecting, and `/readyz` says so.
    pub(crate) fn needs_operator(&self) -> bool {
        matches!(
            self,
            SessionError::Mismatch { .. } | SessionError::NoStreams { .. }
        )
    }
}

/// The current session's connection and its confirm-mode channel for ingest and dead letters:
/// what publishers and replays reach the broker through, whichever session is current.
#[derive(Default)]
pub struct Link {
    /// Confirm-mode channel of the current session, used for ingest and dead letters.
    publisher: RwLock<Option<Channel>>,
    /// The current session's connection, for replays from the stream.
    connection: RwLock<Option<Arc<Connection>>>,
}

impl Link {
    pub(crate) fn set(&self, publisher: Option<Channel>, connection: Option<Arc<Connection>>) {
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

    /// Publishes `body` to `exchange` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
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
            exchange,
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
pub(crate) fn describe(arguments: &FieldTable) -> String {
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
pub(crate) fn refuses_streams(error: &lapin::Error) -> bool {
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
pub(crate) fn mismatch(
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
    fn an_outage_is_one_cause_however_the_socket_says_it() {
        let io = |kind: std::io::ErrorKind| {
            SessionError::Amqp(lapin::Error::from(ErrorKind::IOError(Arc::new(
                std::io::Error::from(kind),
            ))))
        };
        let mut warned = WarnOnce::default();
        assert!(warned.is_new(&io(std::io::ErrorKind::ConnectionAborted).cause()));
        assert!(!warned.is_new(&io(std::io::ErrorKind::ConnectionReset).cause()));
        assert!(!warned.is_new(&SessionError::ConnectionClosed.cause()));
        assert!(
            !warned.is_new(
                &SessionError::Connect(ConnectError::Timeout(Duration::from_secs(5))).cause()
            )
        );
        // A cause an operator must act on is never folded into the outage.
        let no_streams = SessionError::NoStreams {
            name: "notifications.log".into(),
            detail: "NOT_IMPLEMENTED".into(),
        };
        assert!(warned.is_new(&no_streams.cause()));
    }

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
