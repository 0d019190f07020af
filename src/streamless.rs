//! The stream-less mode's reader (`RABBITMQ_STREAM=off`, contract v3 section 2), for brokers
//! without streams such as Amazon MQ.
//!
//! The active instance publishes each record to the durable fanout exchange `<queue>.fanout`;
//! every instance reads it through a queue of its own, exclusive, so it goes with the
//! instance's connection. A record's id is the one the active instance gave it (a header), so
//! ids are the same on every instance; history lives only in memory. Like the stream reader,
//! a session appends a marker and is caught up when it reads it back.
//!
//! What this mode gives up: an instance reads only what is published while its queue exists,
//! so a restart, or a lost connection, starts its memory again from that moment, and older
//! cursors answer `reset: true`. The active instance acks a queue message only once it has
//! read its record back here, so a cut between the confirm and the read loses nothing to its
//! own sockets: the message is redelivered and appended again.

use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};

use crate::amqp::SessionError;
use crate::ledger::Ids;
use crate::pipeline::Pipeline;
use crate::record::{self, ID_HEADER, Kind};
use crate::stream::{Read, ReaderSignals, emit_record, marker_read};

/// Records the broker may push ahead of our acks.
const PREFETCH: u16 = 1000;
/// Acks are sent per this many records (`multiple`), or when the reader is idle.
const ACK_EVERY: usize = 200;
/// With no record for this long, the reader acks what it read.
const IDLE: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) async fn follow(
    pipeline: &Pipeline,
    connection: &Connection,
    mut signals: ReaderSignals,
) -> Result<(), SessionError> {
    let exchange = pipeline.config.fanout_exchange();
    let channel = connection.create_channel().await?;
    // Exclusive and server-named: never a transient non-exclusive queue (refused by RabbitMQ
    // 4.3's defaults), and deleted with this connection.
    let queue = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Not global: RabbitMQ 4.3 refuses global QoS.
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let head = pipeline.fanout.head();
    let marker = pipeline.append_marker(connection).await?;
    tracing::debug!(%exchange, resume_after = head, "reading the stream-less log");
    // What was published while this instance had no queue never reaches it: cursors from
    // before this moment can no longer be answered in full.
    let mut first_of_session = head > 0;

    let mut unacked = None;
    let mut count = 0usize;
    let mut idle = tokio::time::interval(IDLE);
    loop {
        tokio::select! {
            next = consumer.next() => {
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => return Err(error.into()),
                    None => return Err(SessionError::ConsumerCancelled(exchange)),
                };
                let drain = signals.drain.borrow().clone();
                match record::kind(&delivery.properties) {
                    Kind::Marker(id) => {
                        let id = String::from_utf8_lossy(id).into_owned();
                        let read = marker_read(pipeline, &id, &marker, drain.as_deref(), &signals.synced);
                        if matches!(read, Read::OurMarker) {
                            let _ = signals.caught_up.send(true);
                        }
                        if matches!(read, Read::Drained) {
                            let _ = delivery.acker.ack(BasicAckOptions { multiple: true }).await;
                            let _ = channel.close(200, "drained".into()).await;
                            return Ok(());
                        }
                    }
                    Kind::Notification => match record::integer(&delivery.properties, ID_HEADER) {
                        Some(id) if id > 0 => {
                            let id = id as u64;
                            if first_of_session {
                                first_of_session = false;
                                pipeline.fanout.forget_through(id - 1);
                            }
                            let position = id - 1;
                            if Ids::of_offset(position) > pipeline.fanout.head()
                                && !emit_record(pipeline, &delivery.properties, &delivery.data, position)
                            {
                                pipeline.fanout.skip(position);
                            }
                        }
                        _ => tracing::warn!(%exchange, "a record without its id: skipped"),
                    },
                    // Checkpoints are the stream's; another writer's messages are not ours.
                    Kind::Checkpoint | Kind::Foreign => {}
                }
                unacked = Some(delivery);
                count += 1;
                if count >= ACK_EVERY && let Some(delivery) = unacked.take() {
                    count = 0;
                    delivery.acker.ack(BasicAckOptions { multiple: true }).await?;
                }
            }
            // Wakes the loop when the drain marker is set; the marker itself is matched above.
            Ok(()) = signals.drain.changed() => {}
            _ = idle.tick() => {
                if let Some(delivery) = unacked.take() {
                    count = 0;
                    delivery.acker.ack(BasicAckOptions { multiple: true }).await?;
                }
            }
        }
    }
}
