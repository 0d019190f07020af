//! What the consumer, the log readers and the replays of one instance share: the
//! configuration and limits, the fan-out, the statistics, metrics and readiness, the session's
//! [`Link`], and the consumer's memory of its appends. A plain struct of dependencies, so that
//! none of them reaches into another.

use std::sync::{Arc, Mutex};

use lapin::Connection;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::amqp::{Link, SessionError};
use crate::config::RabbitConfig;
use crate::dedupe::AppendState;
use crate::envelope;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::record::{LogTarget, MARKER_HEADER};
use crate::stats::Stats;

/// Stream replays read at the same time; more queue behind them, so a reconnect storm of
/// dashboards reads the stream a few at a time instead of all at once.
const CONCURRENT_REPLAYS: usize = 2;

pub struct Pipeline {
    pub config: RabbitConfig,
    /// What a record is judged by, as a message is.
    pub limits: envelope::Limits,
    pub fanout: Arc<Fanout>,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub stats: Arc<Stats>,
    /// The current session's connection and publishing channel.
    pub link: Arc<Link>,
    pub replay_slots: Semaphore,
    /// What the queue consumer appended, kept across sessions for the dedupe rules; the
    /// reader tells it which in-doubt appends did land.
    pub appends: Mutex<AppendState>,
}

impl Pipeline {
    pub fn new(
        config: RabbitConfig,
        limits: envelope::Limits,
        dedupe_window: usize,
        fanout: Arc<Fanout>,
        metrics: Arc<Metrics>,
        readiness: Readiness,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            limits,
            fanout,
            metrics,
            readiness,
            stats,
            link: Arc::new(Link::default()),
            replay_slots: Semaphore::new(CONCURRENT_REPLAYS),
            appends: Mutex::new(AppendState::new(dedupe_window, config.prefetch)),
            config,
        }
    }

    pub fn append_state(&self) -> &Mutex<AppendState> {
        &self.appends
    }

    /// The current session's connection, if there is one.
    pub fn connection(&self) -> Option<Arc<lapin::Connection>> {
        self.link.connection()
    }

    /// Appends a marker with a fresh id to the log and waits for its confirm; returns the id.
    pub async fn append_marker(&self, connection: &Connection) -> Result<String, SessionError> {
        let id = format!("{:032x}", rand::rng().random::<u128>());
        let mut headers = FieldTable::default();
        headers.insert(
            MARKER_HEADER.into(),
            AMQPValue::LongString(id.as_str().into()),
        );
        let body = format!(r#"{{"marker":"{id}"}}"#);
        self.append_control(connection, headers, body.as_bytes())
            .await?;
        Ok(id)
    }

    /// Appends a control record (a marker, a checkpoint) on a channel of its own, confirmed.
    pub async fn append_control(
        &self,
        connection: &Connection,
        headers: FieldTable,
        body: &[u8],
    ) -> Result<(), SessionError> {
        let target = LogTarget::of(&self.config);
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let confirmed = crate::amqp::publish_confirmed(
            &channel,
            &target.exchange,
            &target.routing_key,
            BasicPublishOptions::default(),
            body,
            crate::record::properties(headers),
        )
        .await;
        let _ = channel.close(200, "appended".into()).await;
        match confirmed {
            Ok(_) => Ok(()),
            Err(crate::amqp::PublishError::Amqp(error)) => Err(error.into()),
            Err(_) => Err(SessionError::AppendRefused(target.describe())),
        }
    }
}
