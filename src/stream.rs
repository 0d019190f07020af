//! Reading the stream `notifications.log` (contract v2 sections 2, 3, 6).
//!
//! - [`follow`]: every instance reads the stream and hands each record to the fan-out under
//!   the id of its offset. A fresh instance starts `RABBITMQ_REBUILD_MAX_AGE` back to fill its
//!   memory windows, appends a marker record of its own, and is caught up (ready) when it reads
//!   that marker back: everything appended before it started reading has been read. After an
//!   outage it resumes at the offset after the last one it read.
//! - [`Replayer`]: a cursor older than a room's memory window is served from the stream by a
//!   short-lived consumer that reads from the cursor, keeps the room's records, and stops at
//!   the window or once it has as many items or bytes as its caller asked for (a join's round,
//!   a poll's page); `RABBITMQ_REPLAY_MAX` bounds what it reads, its prefetch is sized in
//!   bytes, replays queue first come, first served behind a small number of slots, and
//!   a replay whose range a read under way covers (the same range, or one from a cursor further
//!   back) shares that read.
//!
//! Stream filtering needs RabbitMQ 3.13, so records are filtered here, which also works on the
//! 3.10 brokers this daemon supports.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};

use crate::amqp::SessionError;
use crate::budget::GaugeGuard;
use crate::envelope::{Envelope, RECORD_HEADER};
use crate::fanout::{DeepHistory, FetchError, FetchFuture, FetchLimits, Fetched, Outcome};
use crate::history::Item;
use crate::ledger::Ids;
use crate::pipeline::Pipeline;
use crate::record::{APPENDED_AT_HEADER, ROUTING_KEY_HEADER, SOURCE_HEADER};
use crate::record::{Kind, LogTarget};
use crate::rooms::Room;
use crate::telemetry;

/// Records the broker may push ahead of our acks (streams need acks as credit).
const STREAM_PREFETCH: u16 = 1000;
/// Acks of read records are sent per this many, or when the reader is idle.
const ACK_EVERY: usize = 200;
/// One replay gives up after this long and answers with a reset.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// With no record for this long, the reader is at the tail: its lag is zero.
const IDLE_IS_CAUGHT_UP: Duration = Duration::from_secs(1);

/// Where a stream consumer starts.
enum Start {
    Offset(u64),
    /// Seconds since the epoch.
    Timestamp(u64),
}

async fn consume_from(
    channel: &Channel,
    stream: &str,
    start: Start,
) -> Result<lapin::Consumer, lapin::Error> {
    // Streams deliver only to consumers with a prefetch and manual acks.
    channel
        .basic_qos(STREAM_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    let offset = match start {
        Start::Offset(offset) => AMQPValue::LongLongInt(offset as i64),
        Start::Timestamp(seconds) => AMQPValue::Timestamp(seconds),
    };
    arguments.insert("x-stream-offset".into(), offset);
    channel
        .basic_consume(
            stream.into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
}

/// The stream offset of a delivery, from the header RabbitMQ adds to every stream message.
fn offset_of(delivery: &AmqpDelivery) -> Option<u64> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get("x-stream-offset")?
    {
        AMQPValue::LongLongInt(offset) => u64::try_from(*offset).ok(),
        AMQPValue::Timestamp(offset) => Some(*offset),
        AMQPValue::LongInt(offset) => u64::try_from(*offset).ok(),
        _ => None,
    }
}

fn header<'a>(delivery: &'a AmqpDelivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

/// How the reader tells the rest of the session where it is.
pub(crate) struct ReaderSignals {
    /// Set once the reader has read this session's marker: everything appended before the
    /// session began (a previous session's in-flight appends included) has been read.
    pub caught_up: tokio::sync::watch::Sender<bool>,
    /// At shutdown, the id of a last marker: the reader stops once it has read it, so what the
    /// consumer appended before it stopped is emitted to this instance's sockets first.
    pub drain: tokio::sync::watch::Receiver<Option<String>>,
    /// The id of every marker read, in turn (the stream-less consumer's sync point).
    pub synced: tokio::sync::watch::Sender<Option<String>>,
}

/// Reads the stream until it reads the drain marker, or a failure; see the module doc.
pub(crate) async fn follow(
    pipeline: &Pipeline,
    connection: &Connection,
    mut signals: ReaderSignals,
) -> Result<(), SessionError> {
    let stream = pipeline.config.stream.as_str();
    let channel = connection.create_channel().await?;
    let head = pipeline.fanout.head();
    let start = if head == 0 {
        let back = pipeline.config.rebuild_max_age.as_secs();
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        Start::Timestamp(now.saturating_sub(back))
    } else {
        Start::Offset(Ids::next_offset(head))
    };
    let mut consumer = consume_from(&channel, stream, start).await?;
    // Every session appends one: reading it back means everything appended before is read.
    let marker = pipeline.append_marker(connection).await?;
    tracing::debug!(%stream, resume_after = head, "reading the notification stream");

    let mut unacked = None;
    let mut count = 0usize;
    let mut idle = tokio::time::interval(IDLE_IS_CAUGHT_UP);
    let mut since_last = false;
    loop {
        tokio::select! {
            next = consumer.next() => {
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(SessionError::ConsumerCancelled(stream.to_owned())),
                };
                since_last = true;
                let drain = signals.drain.borrow().clone();
                match read_one(pipeline, &delivery, &marker, drain.as_deref(), &signals.synced) {
                    Read::Record => {}
                    Read::OurMarker => {
                        let _ = signals.caught_up.send(true);
                    }
                    Read::Drained => {
                        let _ = ack_through(delivery).await;
                        let _ = channel.close(200, "drained".into()).await;
                        return Ok(());
                    }
                }
                unacked = Some(delivery);
                count += 1;
                if count >= ACK_EVERY && let Some(delivery) = unacked.take() {
                    count = 0;
                    ack_through(delivery).await?;
                }
            }
            // Wakes the loop when the drain marker is set; the marker itself is matched above.
            Ok(()) = signals.drain.changed() => {}
            _ = idle.tick() => {
                if let Some(delivery) = unacked.take() {
                    count = 0;
                    ack_through(delivery).await?;
                }
                if !since_last {
                    pipeline.metrics.stream_lag.set(0.0);
                }
                since_last = false;
            }
        }
    }
}

async fn ack_through(delivery: AmqpDelivery) -> Result<(), lapin::Error> {
    delivery
        .acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .map(|_| ())
}

/// What one log delivery was.
pub(crate) enum Read {
    Record,
    /// This session's marker: caught up.
    OurMarker,
    /// The drain marker: stop.
    Drained,
}

/// Hands one stream delivery to the fan-out.
fn read_one(
    pipeline: &Pipeline,
    delivery: &AmqpDelivery,
    marker: &str,
    drain: Option<&str>,
    synced: &tokio::sync::watch::Sender<Option<String>>,
) -> Read {
    let stream = pipeline.config.stream.as_str();
    let Some(offset) = offset_of(delivery) else {
        tracing::warn!(%stream, "a stream delivery without x-stream-offset: skipped");
        return Read::Record;
    };
    let fanout = &pipeline.fanout;
    let head = fanout.head();
    let expected = Ids::next_offset(head);
    if head > 0 && offset < expected {
        // A reconnect may re-read the start of a chunk: already read.
        return Read::Record;
    }
    if head > 0 && offset > expected {
        // Retention removed records this instance had not read yet (it was away longer than
        // RABBITMQ_STREAM_MAX_AGE): what they held is a gap, answered with `reset`.
        tracing::warn!(%stream, expected, got = offset, "stream records expired before this instance read them");
        fanout.forget_through(Ids::of_offset(offset) - 1);
    }
    match crate::record::kind(&delivery.properties) {
        Kind::Marker(id) => {
            fanout.skip(offset);
            let id = String::from_utf8_lossy(id).into_owned();
            let read = marker_read(pipeline, &id, marker, drain, synced);
            if matches!(read, Read::OurMarker) {
                tracing::info!(%stream, offset, "caught up with the notification stream");
            }
            read
        }
        Kind::Checkpoint => {
            fanout.skip(offset);
            pipeline.stats.read_checkpoint(offset, &delivery.data);
            Read::Record
        }
        Kind::Foreign => {
            // Another writer's message: not ours to emit.
            fanout.skip(offset);
            Read::Record
        }
        Kind::Notification => {
            if !emit_record(pipeline, &delivery.properties, &delivery.data, offset) {
                fanout.skip(offset);
            }
            Read::Record
        }
    }
}

/// What reading marker `id` means, for a reader whose own marker is `ours`.
pub(crate) fn marker_read(
    pipeline: &Pipeline,
    id: &str,
    ours: &str,
    drain: Option<&str>,
    synced: &tokio::sync::watch::Sender<Option<String>>,
) -> Read {
    let _ = synced.send(Some(id.to_owned()));
    if drain == Some(id) {
        return Read::Drained;
    }
    if id != ours {
        return Read::Record;
    }
    if !pipeline.readiness.is_caught_up() {
        pipeline.readiness.set_caught_up();
        tracing::info!(log = %LogTarget::of(&pipeline.config).describe(), "caught up with the log: ready");
    }
    pipeline.stats.caught_up();
    Read::OurMarker
}

/// Judges a notification record at `position` (the offset whose id it gets) and hands it to the
/// fan-out and the statistics; `false` when it was refused (the caller skips the position).
pub(crate) fn emit_record(
    pipeline: &Pipeline,
    properties: &lapin::BasicProperties,
    body: &[u8],
    position: u64,
) -> bool {
    let log = LogTarget::of(&pipeline.config).describe();
    if let Some(AMQPValue::LongLongInt(source)) = crate::record::header(properties, SOURCE_HEADER) {
        // An append whose confirm never came (its session ended) did land: its redelivery
        // must not be appended again.
        pipeline
            .append_state()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .landed(*source as u64);
    }
    // One span from the producer's message to the emit: the consumer copied its traceparent
    // into the record.
    let (traceparent, _) = telemetry::amqp_trace_context(properties.headers().as_ref());
    let routing_key = match crate::record::header(properties, ROUTING_KEY_HEADER) {
        Some(AMQPValue::LongString(key)) => String::from_utf8_lossy(key.as_bytes()).into_owned(),
        _ => log.clone(),
    };
    let span = telemetry::delivery_span(traceparent.as_deref(), &routing_key);
    telemetry::record_stream_offset(&span, position);
    let envelope = match Envelope::from_record_judged(body, &pipeline.limits) {
        Ok(envelope) => Arc::new(envelope),
        Err(rejection) => {
            tracing::warn!(%log, position, reason = rejection.code(), bytes = body.len(), "a record that a producer could not have sent: skipped");
            pipeline
                .metrics
                .records_refused
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: rejection.code(),
                })
                .inc();
            return false;
        }
    };
    let appended_us = crate::record::integer(properties, APPENDED_AT_HEADER);
    let live = pipeline.readiness.is_caught_up();
    let outcome = span.in_scope(|| pipeline.fanout.publish(Some(position), envelope.clone()));
    let copies = match outcome {
        Outcome::Delivered { copies } => Some(copies),
        Outcome::Duplicate | Outcome::AlreadyRead => None,
    };
    telemetry::record_delivery(
        &span,
        envelope.message_id.as_deref(),
        &envelope.rooms,
        copies,
    );
    if matches!(outcome, Outcome::Delivered { .. }) {
        pipeline.stats.count(position, &envelope, appended_us);
        if live {
            pipeline.fanout.observe_lag(&envelope);
            if let Some(appended_us) = appended_us {
                // Clocks of two instances may differ: a negative hop counts as none.
                let hop = (crate::record::unix_micros() - appended_us).max(0) as f64 / 1e6;
                pipeline.metrics.stream_lag.set(hop);
                pipeline.metrics.stream_hop.observe(hop);
            }
        }
    }
    true
}

/// Serves replays beyond the memory window from the stream (see the module doc).
pub struct Replayer {
    /// Weak: the pipeline owns the fan-out, which holds this.
    pipeline: Weak<Pipeline>,
    /// Reads under way, by what they read: a replay that asks for the same range of the same
    /// room while one reads it (a fleet of dashboards rejoining with one cursor after a
    /// restart) shares that read instead of reading the stream again. Weak, so a read that
    /// nobody waits for any more is dropped, and its consumer closed, at once.
    reading: Mutex<HashMap<ReadKey, WeakShared<SharedRead>>>,
}

/// What a read reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    room: Room,
    after: u64,
    upto: u64,
    limits: FetchLimits,
}

type SharedRead = BoxFuture<'static, Result<Arc<Fetched>, FetchError>>;

impl Replayer {
    pub fn new(pipeline: &Arc<Pipeline>) -> Self {
        Self {
            pipeline: Arc::downgrade(pipeline),
            reading: Mutex::new(HashMap::new()),
        }
    }

    /// The read of `key` under way, or a new one; and whether it is new (its reader is
    /// charged the records, the others share them for free).
    fn read_of(&self, key: ReadKey) -> (Shared<SharedRead>, bool) {
        let mut reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(read) = reading.get(&key).and_then(WeakShared::upgrade) {
            return (read, false);
        }
        self.start(&mut reading, key)
    }

    /// A read under way of the same room that covers `key`'s range (from a cursor further
    /// back, up to the same window or further): dashboards rejoining with cursors of their own
    /// after a restart read the stream once.
    fn covering(&self, key: &ReadKey) -> Option<Shared<SharedRead>> {
        let reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        reading
            .iter()
            .filter(|(k, _)| k.room == key.room && k.after <= key.after && k.upto >= key.upto)
            .find_map(|(_, read)| read.upgrade())
    }

    fn start(
        &self,
        reading: &mut HashMap<ReadKey, WeakShared<SharedRead>>,
        key: ReadKey,
    ) -> (Shared<SharedRead>, bool) {
        reading.retain(|_, read| read.upgrade().is_some());
        let read = read_shared(self.pipeline.clone(), key.clone())
            .boxed()
            .shared();
        if let Some(weak) = read.downgrade() {
            reading.insert(key, weak);
        }
        (read, true)
    }
}

impl DeepHistory for Replayer {
    fn fetch<'a>(
        &'a self,
        room: &'a Room,
        after: u64,
        upto: u64,
        limits: FetchLimits,
    ) -> FetchFuture<'a> {
        let key = ReadKey {
            room: room.clone(),
            after,
            upto,
            limits,
        };
        let covering = self.covering(&key);
        Box::pin(async move {
            if let Some(read) = covering
                && let Some(fetched) = derive(&*read.await?, after, upto, limits)
            {
                return Ok(fetched);
            }
            let (read, first) = self.read_of(key);
            let fetched = read.await?;
            let mut fetched = Fetched::clone(&fetched);
            if !first {
                fetched.records = 0;
            }
            Ok(fetched)
        })
    }
}

/// What a read of a wider range says about `(after, upto]` within `limits`, when it says all
/// of it: the range was read to its end, or `limits` cut it inside what was read. Shared: no
/// records charged.
fn derive(read: &Fetched, after: u64, upto: u64, limits: FetchLimits) -> Option<Fetched> {
    let mut items: Vec<Item> = read
        .items
        .iter()
        .filter(|item| item.id > after && item.id <= upto)
        .cloned()
        .collect();
    let found = items.len();
    crate::fanout::keep_within(&mut items, limits.items, limits.bytes);
    let through = if items.len() < found {
        items.last()?.id
    } else if read.through >= upto {
        upto
    } else {
        return None;
    };
    Some(Fetched {
        items,
        through,
        records: 0,
    })
}

/// One read of the stream, which any number of replays may wait for.
async fn read_shared(pipeline: Weak<Pipeline>, key: ReadKey) -> Result<Arc<Fetched>, FetchError> {
    let pipeline = pipeline
        .upgrade()
        .ok_or_else(|| FetchError::Unavailable("shutting down".into()))?;
    // First come, first served; a subject has at most one replay here (its budget's turn), so
    // no subject stands in front of all the others. Dropping the future (its socket went)
    // leaves the queue at once.
    let slot = {
        let _waiting = GaugeGuard::new(pipeline.fanout.budget().waiting());
        pipeline.replay_slots.acquire().await
    };
    // Closed only when the broker goes away, which ends this process's replays anyway.
    let _slot = slot.map_err(|_| FetchError::Unavailable("shutting down".into()))?;
    let connection = pipeline
        .connection()
        .ok_or_else(|| FetchError::Unavailable("not connected".into()))?;
    let ReadKey {
        room,
        after,
        upto,
        limits,
    } = key;
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        REPLAY_TIMEOUT,
        read_range(&pipeline, &connection, &room, after, upto, limits),
    )
    .await
    .unwrap_or_else(|_| {
        Err(FetchError::Unavailable(format!(
            "no answer within {REPLAY_TIMEOUT:?}"
        )))
    });
    tracing::debug!(%room, after, upto, elapsed = ?started.elapsed(), ok = result.is_ok(), "replay from the stream");
    result.map(Arc::new)
}

/// Bytes of records one replay's consumer may have in flight: its prefetch is this over the
/// largest record it may meet, so a stream of large records costs what one of small ones does.
const REPLAY_PREFETCH_BYTES: usize = 8 << 20;
/// What a record may hold beyond the message it was made from (its resolved rooms).
const RECORD_OVERHEAD_BYTES: usize = 32 << 10;

/// The prefetch of a replay's consumer, for messages of at most `max_message_bytes`.
fn replay_prefetch(max_message_bytes: usize) -> u16 {
    let per_record = max_message_bytes + RECORD_OVERHEAD_BYTES;
    (REPLAY_PREFETCH_BYTES / per_record).clamp(4, STREAM_PREFETCH as usize) as u16
}

/// A replay's consumer on the stream from `first`, with `prefetch` records of credit.
async fn consume_replay(
    channel: &Channel,
    stream: &str,
    first: u64,
    prefetch: u16,
) -> Result<lapin::Consumer, lapin::Error> {
    // Streams deliver only to consumers with a prefetch and manual acks.
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongLongInt(first as i64),
    );
    channel
        .basic_consume(
            stream.into(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
}

/// Closes a replay's channel if the replay is abandoned mid-read (its socket went away, or it
/// timed out), so the broker stops delivering to it.
struct ChannelGuard(Option<Channel>);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        if let Some(channel) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = channel.close(200, "replay abandoned".into()).await;
            });
        }
    }
}

/// The oldest items of `room` with ids in `(after, upto]`, read from the stream, within
/// `limits`.
async fn read_range(
    pipeline: &Pipeline,
    connection: &Connection,
    room: &Room,
    after: u64,
    upto: u64,
    limits: FetchLimits,
) -> Result<Fetched, FetchError> {
    let unavailable = |error: lapin::Error| FetchError::Unavailable(error.to_string());
    let first = Ids::next_offset(after);
    let last = Ids::next_offset(upto) - 1;
    let channel = connection.create_channel().await.map_err(unavailable)?;
    let mut guard = ChannelGuard(Some(channel.clone()));
    let prefetch = replay_prefetch(pipeline.limits.max_bytes);
    // Half the credit is given back at a time, so the broker never waits for it.
    let ack_every = u64::from(prefetch / 2).max(1);
    let mut consumer = consume_replay(&channel, &pipeline.config.stream, first, prefetch)
        .await
        .map_err(unavailable)?;
    let tag = consumer.tag();
    let mut fetched = Fetched {
        through: upto,
        ..Fetched::default()
    };
    let mut bytes = 0;
    let mut message_ids = HashSet::new();
    let mut checked_start = false;
    let outcome = loop {
        let delivery = match consumer.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => break Err(unavailable(error)),
            None => {
                break Err(FetchError::Unavailable(
                    "the replay consumer was cancelled".into(),
                ));
            }
        };
        fetched.records += 1;
        if fetched.records.is_multiple_of(ack_every) {
            let _ = delivery.acker.ack(BasicAckOptions { multiple: true }).await;
        }
        let Some(offset) = offset_of(&delivery) else {
            continue;
        };
        if offset < first {
            // The broker starts at the chunk holding `first`.
            continue;
        }
        if !checked_start {
            checked_start = true;
            if offset > first {
                break Err(FetchError::Truncated);
            }
        }
        if offset > last {
            break Ok(());
        }
        if header(&delivery, RECORD_HEADER).is_some()
            && let Ok(envelope) = Envelope::from_record(&delivery.data)
            && envelope.rooms.contains(room)
            // A record appended twice was emitted once, and is replayed once.
            && envelope.message_id.as_ref().is_none_or(|id| message_ids.insert(id.clone()))
        {
            let item = Item {
                id: Ids::of_offset(offset),
                envelope: Arc::new(envelope),
            };
            bytes += item.envelope.payload_tail().len();
            fetched.items.push(item);
            if fetched.items.len() >= limits.items || bytes >= limits.bytes {
                // Cut short: what follows this item is read by the next replay round or poll.
                fetched.through = Ids::of_offset(offset);
                break Ok(());
            }
        }
        if offset == last {
            break Ok(());
        }
    };
    guard.0 = None;
    let _ = channel
        .basic_cancel(tag, BasicCancelOptions::default())
        .await;
    let _ = channel.close(200, "replayed".into()).await;
    outcome.map(|()| fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replays_prefetch_is_sized_by_the_largest_record() {
        // The default MAX_MESSAGE_BYTES (128 KiB): about 8 MiB in flight.
        let prefetch = replay_prefetch(128 << 10);
        assert!((40..=64).contains(&prefetch), "{prefetch}");
        assert!(usize::from(prefetch) * ((128 << 10) + RECORD_OVERHEAD_BYTES) <= 8 << 20);
        // Small messages: a few hundred records, still a few MiB at most.
        assert!(replay_prefetch(64) >= 200);
        // Huge messages: still a few records at a time.
        assert_eq!(replay_prefetch(64 << 20), 4);
    }

    fn item(id: u64) -> Item {
        let source = crate::envelope::Source {
            category: crate::envelope::CategoryFrom::RoutingKey("notification.customer"),
            message_id: None,
            timestamp: None,
        };
        let limits = crate::envelope::Limits {
            max_bytes: 1 << 20,
            max_rooms: 10,
        };
        let body = br#"{"type":"t","recipients":[1]}"#;
        Item {
            id,
            envelope: Arc::new(crate::envelope::parse(body, source, &limits).unwrap()),
        }
    }

    fn ids(fetched: &Fetched) -> Vec<u64> {
        fetched.items.iter().map(|item| item.id).collect()
    }

    #[test]
    fn a_wider_read_answers_a_narrower_range_only_when_it_says_all_of_it() {
        let wide = |limits: usize| FetchLimits {
            items: limits,
            bytes: usize::MAX,
        };
        // Ids 10, 20, .. 100 of the room, read to the end of (0, 100].
        let read = Fetched {
            items: (1..=10).map(|n| item(n * 10)).collect(),
            through: 100,
            records: 400,
        };
        let narrower = derive(&read, 35, 80, wide(100)).unwrap();
        assert_eq!(ids(&narrower), [40, 50, 60, 70, 80]);
        assert_eq!(narrower.through, 80);
        assert_eq!(narrower.records, 0, "shared reads are not charged");
        // Cut by its own limit inside what was read.
        let cut = derive(&read, 35, 100, wide(2)).unwrap();
        assert_eq!((ids(&cut), cut.through), (vec![40, 50], 50));

        // A read that stopped at 60 (its own limit) says nothing past 60.
        let short = Fetched {
            items: (1..=6).map(|n| item(n * 10)).collect(),
            through: 60,
            records: 200,
        };
        assert!(derive(&short, 35, 100, wide(100)).is_none());
        let within = derive(&short, 35, 100, wide(2)).unwrap();
        assert_eq!((ids(&within), within.through), (vec![40, 50], 50));
        assert_eq!(derive(&short, 0, 60, wide(100)).unwrap().through, 60);
    }
}
