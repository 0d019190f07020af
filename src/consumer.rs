//! The queue's consumer (contract v2 section 2): validates each message, dead-letters what
//! cannot be delivered, drops what was seen before, and appends the rest to the stream with a
//! publisher confirm. A queue message is acked only after its record is confirmed.
//!
//! Every instance runs this; the queue's single active consumer lets one at a time receive.
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
use lapin::{Acker, BasicProperties, Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::amqp::{Broker, PUBLISH_CONFIRM_TIMEOUT, REASON_HEADER, SessionError};
use crate::dedupe::{Unsettled, Window, fingerprint};
use crate::envelope::{self, CategoryFrom, RECORD_HEADER, Rejection, Source};
use crate::metrics::DeadLetterLabels;
use crate::rooms::metric_category;

/// How long a handled delivery's ack may wait for others to share its frame. It delays only
/// the broker's ack, never the append or the emit.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// Header with the time a record was appended (µs since the epoch), for the reader's lag and
/// the stream hop.
pub const APPENDED_AT_HEADER: &str = "x-notify-bridge-appended-us";
/// Fingerprint of the queue message a record was appended from (only for messages without
/// `messageId`), so that a reader can tell an append whose confirm never came did land.
pub const SOURCE_HEADER: &str = "x-notify-bridge-source";
/// The routing key the producer published with, for the reader's span.
pub const ROUTING_KEY_HEADER: &str = "x-notify-bridge-routing-key";
/// W3C trace context, carried from the producer's message to the stream record.
const TRACEPARENT_HEADER: &str = "traceparent";

/// The consumer's memory of what it appended, across sessions of one process.
pub struct AppendState {
    /// `messageId`s whose records were confirmed by the stream.
    appended: Window<Arc<str>>,
    /// Fingerprints of messages without `messageId` appended but not yet acked.
    unsettled: Unsettled,
    /// Appends of the current session waiting for their confirm, in order (`None`: a message
    /// with `messageId`, which the reader's dedupe covers).
    publishing: VecDeque<Option<u64>>,
    /// Appends whose session ended before their confirm: they may or may not be in the stream.
    in_doubt: Unsettled,
}

impl AppendState {
    pub fn new(dedupe_window: usize, prefetch: u16) -> Self {
        Self {
            appended: Window::new(dedupe_window),
            unsettled: Unsettled::new(usize::from(prefetch).max(64) * 4),
            publishing: VecDeque::new(),
            in_doubt: Unsettled::new(usize::from(prefetch).max(64) * 4),
        }
    }

    /// A new session: what the last one was still publishing is in doubt.
    fn new_session(&mut self) {
        for print in self.publishing.drain(..).flatten() {
            self.in_doubt.handled(print);
        }
    }

    /// The reader found the record of an in-doubt append: it is appended, not yet acked.
    pub fn landed(&mut self, print: u64) {
        if self.in_doubt.take_redelivery(print) {
            self.unsettled.handled(print);
        }
    }
}

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

pub(crate) async fn consume(
    broker: &Broker,
    connection: &Connection,
    publisher: &Channel,
    stop: &CancellationToken,
    mut reader_caught_up: tokio::sync::watch::Receiver<bool>,
) -> Result<(), SessionError> {
    broker
        .append_state()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .new_session();
    // Redeliveries of the last session's appends are judged against what the stream holds, so
    // nothing is consumed before the reader has read everything appended before this session.
    tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        caught_up = reader_caught_up.wait_for(|caught_up| *caught_up) => {
            if caught_up.is_err() {
                return Ok(());
            }
        }
    }
    let channel = connection.create_channel().await?;
    // Prefetch bounds what the broker pushes ahead of our acks: enough to keep the pipeline
    // busy, never unbounded memory.
    let prefetch = broker.config.prefetch;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let appender = connection.create_channel().await?;
    appender
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            broker.config.queue.as_str().into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let state = broker.append_state();
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
                    if broker.metrics.stream_active_consumer.get() == 0 {
                        // Only the single active consumer receives: this instance is it.
                        broker.metrics.stream_active_consumer.set(1);
                        tracing::info!(queue = %broker.config.queue, "this instance is the queue's active consumer");
                    }
                    if let Some(pending) = handle(broker, delivery, publisher, &appender, state).await? {
                        in_flight.push_back(pending);
                    }
                }
                Some(Err(error)) => return Err(error.into()),
                None => return Err(SessionError::ConsumerCancelled(broker.config.queue.clone())),
            },
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
    broker: &Broker,
    delivery: AmqpDelivery,
    publisher: &Channel,
    appender: &Channel,
    state: &std::sync::Mutex<AppendState>,
) -> Result<Option<Confirmed>, SessionError> {
    let properties = &delivery.properties;
    let source = Source {
        category: CategoryFrom::RoutingKey(delivery.routing_key.as_str()),
        message_id: properties.message_id().as_ref().map(|id| id.as_str()),
        timestamp: *properties.timestamp(),
    };
    let envelope = match envelope::parse(&delivery.data, source, &broker.limits) {
        Ok(envelope) => envelope,
        Err(rejection) => {
            dead_letter(broker, delivery, rejection, publisher).await?;
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
            (Some(id), _) => state.appended.contains(id) || broker.fanout.seen_message_id(id),
            // Only a redelivery of something appended and not yet acked is the same message.
            (None, Some(print)) => delivery.redelivered && state.unsettled.take_redelivery(print),
            (None, None) => false,
        }
    };
    let label = metric_category(&envelope.category);
    if duplicate {
        broker
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
    let record_properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    let record = envelope.to_record();
    // The default exchange routes by queue name: straight into the stream.
    let (appender, stream_name) = (appender.clone(), broker.config.stream.as_str().into());
    let mut publish = Box::pin(async move {
        appender
            .basic_publish(
                "".into(),
                stream_name,
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
    let stream = broker.config.stream.clone();
    Ok(Some(Box::pin(async move {
        let confirm = match queued {
            std::task::Poll::Ready(confirm) => confirm?,
            std::task::Poll::Pending => publish.await?,
        };
        match tokio::time::timeout(PUBLISH_CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(confirmation)) if confirmation.is_ack() => Ok(handled),
            // The broker could not store it: end the session; the delivery and every later
            // one are redelivered, and the dedupe rules keep that from doubling anything.
            Ok(Ok(_)) => Err(SessionError::AppendRefused(stream)),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(SessionError::AppendRefused(stream)),
        }
    })))
}

/// Microseconds since the epoch: the append time the stream reader measures the hop from.
pub(crate) fn unix_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64
}

/// Republishes a rejected message to the dead-letter exchange with its reason, then acks it.
/// If the broker does not confirm that, the message is rejected without requeue, so the
/// queue's own dead-lettering still moves it (without the reason header): never a requeue loop.
async fn dead_letter(
    broker: &Broker,
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
    broker
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
        dead_letter_queue = %broker.config.dead_letter_queue(),
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
                broker.config.dead_letter_exchange().as_str().into(),
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
