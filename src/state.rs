//! What request handlers and tasks share ([`AppState`]), and the one way a producer's
//! notification enters the daemon ([`submit`]).

use std::sync::Arc;

use crate::amqp::{self, Link};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::envelope;
use crate::fanout::{self, Fanout};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::{expiry, socket, stats};

/// Everything request handlers and tasks share.
pub(crate) struct AppState {
    pub config: Config,
    pub auth: Authenticator,
    pub fanout: Arc<Fanout>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    /// Present when `ENABLE_RABBITMQ=true`: ingest publishes through it.
    pub broker: Option<Arc<Link>>,
    /// When each socket's token ends (contract v2 section 5).
    pub expiry: Arc<expiry::Expiry>,
    /// Socket.IO connection caps (`MAX_CONNECTIONS`, per `sub`, pending handshakes).
    pub connections: Arc<socket::Connections>,
    /// The dashboards' statistics (contract section 7).
    pub stats: Arc<stats::Stats>,
}

impl AppState {
    /// What limits a producer's body.
    pub fn parse_limits(&self) -> envelope::Limits {
        envelope::Limits {
            max_bytes: self.config.limits.max_message_bytes,
            max_rooms: self.config.limits.max_recipients,
        }
    }
}

/// Why a notification could not be submitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error(transparent)]
    Publish(#[from] amqp::PublishError),
}

/// Submits a producer's notification: with RabbitMQ, published to the exchange (so that it
/// reaches the stream and every instance); without, accepted and emitted here.
pub(crate) async fn submit(
    app: &AppState,
    envelope: envelope::Envelope,
    body: &[u8],
) -> Result<(), SubmitError> {
    match &app.broker {
        Some(broker) => {
            let routing_key = format!("notification.{}", envelope.category);
            let mut properties = lapin::BasicProperties::default();
            if let Some(id) = &envelope.message_id {
                properties = properties.with_message_id(id.as_ref().into());
            }
            broker
                .publish(
                    &app.config.rabbitmq.exchange,
                    &routing_key,
                    body,
                    properties,
                )
                .await?;
        }
        None => {
            let envelope = Arc::new(envelope);
            if let fanout::Outcome::Delivered { .. } = app.fanout.publish(None, envelope.clone()) {
                app.stats.count(app.fanout.head(), &envelope, None);
            }
            app.fanout.observe_lag(&envelope);
        }
    }
    Ok(())
}
