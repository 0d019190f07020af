//! The queue's consumer (contract section 2): validates each message, dead-letters what
//! cannot be delivered, drops what was seen before, and appends the rest to the shared log
//! (the stream, or the stream-less mode's fanout exchange) with a publisher confirm. A queue
//! message is acked only after its record is confirmed.
//!
//! Every instance runs this; the queue's single active consumer lets one at a time receive.
//! It declares the queues itself, retrying for as long as it takes (a queue's node may be
//! down) while the session's reader goes on reading the log.
//! Appends are pipelined: the next delivery is validated and appended while earlier confirms
//! are on their way, and confirms are taken in delivery order, so a `multiple` ack never covers
//! a delivery whose record is not confirmed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::{Future, StreamExt};
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Acker, Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::amqp::{PUBLISH_CONFIRM_TIMEOUT, REASON_HEADER, SessionError, WarnOnce};
use crate::dedupe::{AppendState, fingerprint};
use crate::envelope::{self, CategoryFrom, RECORD_HEADER, Rejection, Source};
use crate::metrics::DeadLetterLabels;
use crate::pipeline::Pipeline;
use crate::record::{APPENDED_AT_HEADER, ROUTING_KEY_HEADER, SOURCE_HEADER, unix_micros};
use crate::record::{CHECKPOINT_HEADER, ID_HEADER, LogTarget, TRACEPARENT_HEADER};
use crate::rooms::metric_category;

/// How long a handled delivery's ack may wait for others to share its frame. It delays only
/// the broker's ack, never the append or the emit.
const ACK_DELAY: Duration = Duration::from_millis(5);

type Confirmed = Pin<Box<dyn Future<Output = Result<Handled, SessionError>> + Send>>;

/// A delivery on its way to being acked.
struct Handled {
    acker: Acker,
    /// A messageId to remember once the record is confirmed.
    message_id: Option<Arc<str>>,
    /// A fingerprint that is unsettled until the ack goes out.
    fingerprint: Option<u64>,
    /// Appended to the stream (not a dropped duplicate).
    appended: bool,
}

/// What the consumer learns from the session's reader.
pub(crate) struct ReaderState {
    /// Set once the reader has read everything appended before the session began.
    pub caught_up: tokio::sync::watch::Receiver<bool>,
    /// The last marker the reader read (stream-less mode: the consumer's sync point).
    pub synced: tokio::sync::watch::Receiver<Option<String>>,
}

/// The session's first try at declaring the queues.
pub(crate) enum Queues {
    Declared,
    /// Not done: why (already logged at WARN), for the consumer to try again.
    Failed(String),
}

pub(crate) async fn consume(
    pipeline: &Pipeline,
    connection: &Connection,
    queues: Queues,
    stop: &CancellationToken,
    mut reader: ReaderState,
) -> Result<(), SessionError> {
    pipeline
        .append_state()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .new_session();
    if let Queues::Failed(first) = queues {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            declared = declare_until_done(pipeline, connection, stop, first) => declared?,
        }
    }
    // Redeliveries of the last session's appends are judged against what the stream holds, so
    // nothing is consumed before the reader has read everything appended before this session.
    tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        caught_up = reader.caught_up.wait_for(|caught_up| *caught_up) => {
            if caught_up.is_err() {
                return Ok(());
            }
        }
    }
    let channel = connection.create_channel().await?;
    // Prefetch bounds what the broker pushes ahead of our acks: enough to keep the pipeline
    // busy, never unbounded memory.
    let prefetch = pipeline.config.prefetch;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let appender = connection.create_channel().await?;
    appender
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            pipeline.config.queue.as_str().into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let state = pipeline.append_state();
    let mut checkpoints = tokio::time::interval(checkpoint_interval(pipeline));
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: FuturesOrdered<Confirmed> = FuturesOrdered::new();
    let mut acks = PendingAcks::new(ack_batch(prefetch));
    loop {
        tokio::select! {
            // Checked first so that shutdown stops taking new deliveries at once.
            biased;
            _ = stop.cancelled() => {
                // What was appended is acked; closing returns every other delivery to the queue.
                while let Some(handled) = in_flight.next().await {
                    let Ok(handled) = handled else { break };
                    acks.add(handled, state);
                }
                let _ = acks.flush(state).await;
                let _ = channel.close(200, "shutting down".into()).await;
                return Ok(());
            }
            Some(handled) = in_flight.next(), if !in_flight.is_empty() => {
                if acks.add(handled?, state) {
                    acks.flush(state).await?;
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    if pipeline.metrics.stream_active_consumer.get() == 0 {
                        // Only the single active consumer receives: this instance is it.
                        if pipeline.config.streamless {
                            // Ids continue after every id the previous active instance gave:
                            // read all it published first.
                            sync_with_log(pipeline, connection, &mut reader.synced).await?;
                        }
                        pipeline.metrics.stream_active_consumer.set(1);
                        tracing::info!(queue = %pipeline.config.queue, "this instance is the queue's active consumer");
                    }
                    if let Some(pending) = handle(pipeline, delivery, &appender, state).await? {
                        in_flight.push_back(pending);
                    }
                }
                Some(Err(error)) => return Err(error.into()),
                None => return Err(SessionError::ConsumerCancelled(pipeline.config.queue.clone())),
            },
            // The active instance records the statistics in the stream, so that they outlive
            // its retention and every reader that starts later takes them over.
            _ = checkpoints.tick(), if !pipeline.config.streamless
                && pipeline.metrics.stream_active_consumer.get() == 1 =>
            {
                if let Some(body) = pipeline.stats.checkpoint() {
                    let mut headers = FieldTable::default();
                    headers.insert(CHECKPOINT_HEADER.into(), AMQPValue::LongInt(1));
                    pipeline.append_control(connection, headers, &body).await?;
                }
            }
            // Polled only when nothing else is ready: ack what was appended, once the oldest
            // pending ack has waited ACK_DELAY.
            _ = tokio::time::sleep_until(acks.due()), if acks.pending() => {
                acks.flush(state).await?;
            }
        }
    }
}

/// Validates a delivery and appends it, or dead-letters or drops it. Returns the future of
/// its confirm (a dropped duplicate's resolves at once), or `None` when it was settled here.
async fn handle(
    pipeline: &Pipeline,
    delivery: AmqpDelivery,
    appender: &Channel,
    state: &std::sync::Mutex<AppendState>,
) -> Result<Option<Confirmed>, SessionError> {
    let properties = &delivery.properties;
    let source = Source {
        category: CategoryFrom::RoutingKey(delivery.routing_key.as_str()),
        message_id: properties.message_id().as_ref().map(|id| id.as_str()),
        timestamp: *properties.timestamp(),
    };
    let envelope = match envelope::parse(&delivery.data, source, &pipeline.limits) {
        Ok(envelope) => envelope,
        Err(rejection) => {
            dead_letter(pipeline, delivery, rejection).await?;
            return Ok(None);
        }
    };
    let message_id: Option<Arc<str>> = envelope.message_id.as_deref().map(Arc::from);
    let print = message_id
        .is_none()
        .then(|| fingerprint(delivery.routing_key.as_str(), &delivery.data));
    let duplicate = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        match (&message_id, print) {
            (Some(id), _) => state.appended.contains(id) || pipeline.fanout.seen_message_id(id),
            // Only a redelivery of something appended and not yet acked is the same message.
            (None, Some(print)) => delivery.redelivered && state.unsettled.take_redelivery(print),
            (None, None) => false,
        }
    };
    let label = metric_category(&envelope.category);
    if duplicate {
        pipeline
            .metrics
            .deduplicated
            .get_or_create(&crate::metrics::CategoryLabels { category: label })
            .inc();
        let handled = Handled {
            acker: delivery.acker,
            message_id: None,
            fingerprint: None,
            appended: false,
        };
        return Ok(Some(Box::pin(std::future::ready(Ok(handled)))));
    }

    let mut headers = FieldTable::default();
    headers.insert(RECORD_HEADER.into(), AMQPValue::LongInt(1));
    // Stream-less mode: the id this instance must read back before the delivery is acked. Its
    // own queue goes with a lost connection, so a record confirmed but not yet read would be
    // lost to its sockets with the queue message already acked; unacked, it is redelivered
    // and appended again (the dedupe rules keep that from doubling anything).
    let mut read_back = None;
    if pipeline.config.streamless {
        let head = pipeline.fanout.head();
        let id = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_id(head);
        headers.insert(ID_HEADER.into(), AMQPValue::LongLongInt(id as i64));
        read_back = Some(id);
    }
    headers.insert(
        APPENDED_AT_HEADER.into(),
        AMQPValue::LongLongInt(unix_micros()),
    );
    headers.insert(
        ROUTING_KEY_HEADER.into(),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    if let Some(print) = print {
        headers.insert(SOURCE_HEADER.into(), AMQPValue::LongLongInt(print as i64));
    }
    if let Some(traceparent) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(TRACEPARENT_HEADER))
    {
        headers.insert(TRACEPARENT_HEADER.into(), traceparent.clone());
    }
    let record_properties = crate::record::properties(headers);
    let record = envelope.to_record();
    let target = LogTarget::of(&pipeline.config);
    let log_name = target.describe();
    let appender = appender.clone();
    let mut publish = Box::pin(async move {
        appender
            .basic_publish(
                target.exchange.as_str().into(),
                target.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &record,
                record_properties,
            )
            .await
    });
    // lapin queues the frames on the first poll, then waits for its I/O thread to have written
    // them. That wait is left to the confirm future: a burst of deliveries is appended in one
    // write rather than one I/O-thread round trip each, and the stream still gets them in the
    // order of these first polls, the queue's.
    let queued = futures_util::poll!(&mut publish);
    state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .publishing
        .push_back(print);
    let handled = Handled {
        acker: delivery.acker,
        message_id,
        fingerprint: print,
        appended: true,
    };
    let read_back = read_back.map(|id| (id, pipeline.fanout.watch_head()));
    Ok(Some(Box::pin(async move {
        let confirm = match queued {
            std::task::Poll::Ready(confirm) => confirm?,
            std::task::Poll::Pending => publish.await?,
        };
        match tokio::time::timeout(PUBLISH_CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(confirmation)) if confirmation.is_ack() => {
                if let Some((id, mut head)) = read_back {
                    let read = tokio::time::timeout(
                        PUBLISH_CONFIRM_TIMEOUT,
                        head.wait_for(|head| *head >= id),
                    )
                    .await;
                    if !matches!(read, Ok(Ok(_))) {
                        return Err(SessionError::AppendRefused(log_name));
                    }
                }
                Ok(handled)
            }
            // The broker could not store it: end the session; the delivery and every later
            // one are redelivered, and the dedupe rules keep that from doubling anything.
            Ok(Ok(_)) => Err(SessionError::AppendRefused(log_name)),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(SessionError::AppendRefused(log_name)),
        }
    })))
}

/// How often the active instance appends a statistics checkpoint: often enough that a reader
/// starting `RABBITMQ_REBUILD_MAX_AGE` back finds one (four per that age, at most one a
/// second and at least one a minute).
fn checkpoint_interval(pipeline: &Pipeline) -> Duration {
    (pipeline.config.rebuild_max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Declares the queues, retrying with backoff until it works or the consumer stops. A queue
/// whose node is down is waited for here, while the reader keeps reading; each cause is
/// logged at WARN once. A declare that needs an operator ends the session (and `/readyz`
/// says why).
async fn declare_until_done(
    pipeline: &Pipeline,
    connection: &Connection,
    stop: &CancellationToken,
    first: String,
) -> Result<(), SessionError> {
    let mut warned = WarnOnce::default();
    let mut failures = 0u32;
    let mut error = first;
    loop {
        let delay = crate::amqp::backoff(failures, pipeline.config.reconnect_max);
        failures = failures.saturating_add(1);
        if warned.is_new(&error) {
            tracing::warn!(
                queue = %pipeline.config.queue,
                retry_in = ?delay,
                "cannot declare the queues, so nothing is consumed until this is fixed (the log is still read): {error}"
            );
        } else {
            tracing::debug!(retry_in = ?delay, "cannot declare the queues: {error}");
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        error = match crate::amqp::declaring(
            "the queues",
            crate::topology::declare_queues(&pipeline.config, connection),
        )
        .await
        {
            Ok(()) => {
                tracing::info!(queue = %pipeline.config.queue, "the queues are declared: consuming");
                return Ok(());
            }
            Err(error @ SessionError::Mismatch { .. }) => return Err(error),
            Err(error) => error.to_string(),
        };
    }
}

/// Stream-less mode: appends a marker and waits until the reader has read it, so that this
/// instance has read every record the previous active instance published (each was routed to
/// this instance's queue before its message was acked) before it numbers its own.
async fn sync_with_log(
    pipeline: &Pipeline,
    connection: &Connection,
    synced: &mut tokio::sync::watch::Receiver<Option<String>>,
) -> Result<(), SessionError> {
    let marker = pipeline.append_marker(connection).await?;
    let read = tokio::time::timeout(
        PUBLISH_CONFIRM_TIMEOUT,
        synced.wait_for(|last| last.as_deref() == Some(marker.as_str())),
    )
    .await;
    match read {
        Ok(Ok(_)) => Ok(()),
        _ => Err(SessionError::AppendRefused(
            pipeline.config.fanout_exchange(),
        )),
    }
}

/// Republishes a rejected message to the dead-letter exchange with its reason, then acks it.
/// If the broker does not confirm that, the message is rejected without requeue, so the
/// queue's own dead-lettering still moves it (without the reason header): never a requeue loop.
async fn dead_letter(
    pipeline: &Pipeline,
    delivery: AmqpDelivery,
    rejection: Rejection,
) -> Result<(), SessionError> {
    let category = delivery
        .routing_key
        .as_str()
        .rsplit('.')
        .next()
        .unwrap_or("");
    pipeline
        .metrics
        .dead_lettered
        .get_or_create(&DeadLetterLabels {
            category: metric_category(category),
            reason: rejection.code(),
        })
        .inc();
    tracing::warn!(
        reason = rejection.code(),
        routing_key = %delivery.routing_key.as_str().escape_debug(),
        bytes = delivery.data.len(),
        message_id = ?delivery.properties.message_id().as_ref().map(|id| id.as_str()),
        dead_letter_queue = %pipeline.config.dead_letter_queue(),
        "message dead-lettered: {}",
        rejection.describe()
    );
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(rejection.code().into()),
    );
    let properties = delivery.properties.clone().with_headers(headers);
    let publisher = match pipeline.link.publisher().await {
        Ok(publisher) => publisher,
        Err(crate::amqp::PublishError::Amqp(error)) => return Err(error.into()),
        Err(_) => return Err(SessionError::ConnectionClosed),
    };
    let confirmed = crate::amqp::publish_confirmed(
        &publisher,
        &pipeline.config.dead_letter_exchange(),
        delivery.routing_key.as_str(),
        BasicPublishOptions::default(),
        &delivery.data,
        properties,
    )
    .await;
    match confirmed {
        Ok(_) => {
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        Err(error) => {
            tracing::warn!(
                %error,
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

/// Acks of appended deliveries, sent as one `multiple` ack for the whole batch: one frame and
/// one wake-up of lapin's I/O thread instead of one per message. A batch is acked when full or
/// after `ACK_DELAY`.
struct PendingAcks {
    /// Acker of the latest appended delivery; acking it with `multiple` acks all before it.
    last: Option<Acker>,
    /// Fingerprints that become settled once this batch's ack goes out.
    fingerprints: VecDeque<u64>,
    count: usize,
    batch: usize,
    /// When the batch is acked even if it is not full.
    due: tokio::time::Instant,
}

impl PendingAcks {
    fn new(batch: usize) -> Self {
        Self {
            last: None,
            fingerprints: VecDeque::new(),
            count: 0,
            batch,
            due: tokio::time::Instant::now(),
        }
    }

    /// Adds a confirmed delivery; `true` when the batch is full and should be flushed now.
    fn add(&mut self, handled: Handled, state: &std::sync::Mutex<AppendState>) -> bool {
        {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            if handled.appended {
                state.publishing.pop_front();
            }
            if let Some(id) = handled.message_id {
                state.appended.check_and_insert(id);
            }
            if let Some(print) = handled.fingerprint {
                state.unsettled.handled(print);
                self.fingerprints.push_back(print);
            }
        }
        if self.last.is_none() {
            self.due = tokio::time::Instant::now() + ACK_DELAY;
        }
        self.last = Some(handled.acker);
        self.count += 1;
        self.count >= self.batch
    }

    fn due(&self) -> tokio::time::Instant {
        self.due
    }

    fn pending(&self) -> bool {
        self.last.is_some()
    }

    async fn flush(&mut self, state: &std::sync::Mutex<AppendState>) -> Result<(), SessionError> {
        if let Some(acker) = self.last.take() {
            self.count = 0;
            acker.ack(BasicAckOptions { multiple: true }).await?;
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            for print in self.fingerprints.drain(..) {
                state.unsettled.settled(print);
            }
        }
        Ok(())
    }
}

/// The largest ack batch: a quarter of the prefetch, so the broker keeps sending while a batch
/// fills, and at most 64 deliveries to redeliver after a connection loss.
fn ack_batch(prefetch: u16) -> usize {
    (usize::from(prefetch) / 4).clamp(1, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_batches_stay_well_inside_the_prefetch() {
        assert_eq!(ack_batch(1), 1);
        assert_eq!(ack_batch(20), 5);
        assert_eq!(ack_batch(256), 64);
        assert_eq!(ack_batch(u16::MAX), 64);
    }
}
