//! The stream hop without the daemon: records appended to a RabbitMQ stream of our own at the
//! latency scenario's rate, the way the daemon's active consumer appends them (persistent, with
//! publisher confirms, through the default exchange), and read back the way every instance reads
//! the stream (`x-stream-offset: next`, prefetch 1000, a `multiple` ack per 200). What it
//! measures, publish to read, is what the broker and the AMQP client alone cost for the hop,
//! against which to read the daemon's own `notify_bridge_stream_hop_seconds`. Unpaced, it is
//! the stream's ceiling: how fast the broker alone takes records through a stream and back.

use std::time::Duration;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use crate::amqp::{self, Result};
use crate::tally::unix_micros;

/// The daemon's stream reader settings (src/stream.rs).
const PREFETCH: u16 = 1000;
const ACK_EVERY: u64 = 200;
/// The reader gives up when nothing arrives for this long.
const IDLE: Duration = Duration::from_secs(10);

/// Publishes in flight at once when unpaced.
const IN_FLIGHT: usize = 64;

pub struct Hop {
    /// Publish to read, in microseconds.
    pub latency: Histogram<u64>,
    /// Records read back, and the seconds from the first publish to the last read.
    pub read: u64,
    pub secs: f64,
}

/// Appends `count` records at `rate` (or as fast as the broker takes them) and reads them back.
pub async fn measure(url: &str, run: u64, rate: Option<u64>, count: u64) -> Result<Hop> {
    let stream = format!("loadgen-hop-{run}.log");
    let connection = amqp::connect(url, "loadgen stream hop").await?;
    let reader_connection = amqp::connect(url, "loadgen stream hop reader").await?;
    let result = hop(&connection, &reader_connection, &stream, rate, count).await;
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = reader_connection.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    result
}

async fn hop(
    connection: &lapin::Connection,
    reader_connection: &lapin::Connection,
    stream: &str,
    rate: Option<u64>,
    count: u64,
) -> Result<Hop> {
    let e = |e: lapin::Error| e.to_string();
    let channel = connection.create_channel().await.map_err(e)?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    arguments.insert("x-max-age".into(), AMQPValue::LongString("10m".into()));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(stream.into(), durable, arguments)
        .await
        .map_err(|e| format!("declare {stream}: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(e)?;

    let reader = reader_connection.create_channel().await.map_err(e)?;
    reader
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(e)?;
    let mut offset = FieldTable::default();
    offset.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("next".into()),
    );
    let mut consumer = reader
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            offset,
        )
        .await
        .map_err(e)?;

    let started = tokio::time::Instant::now();
    let read = tokio::spawn(async move {
        let mut latency = Histogram::<u64>::new(3).expect("histogram");
        let mut read = 0u64;
        while read < count {
            let Ok(Some(Ok(delivery))) = tokio::time::timeout(IDLE, consumer.next()).await else {
                break;
            };
            let now = unix_micros();
            if let Some(sent) = std::str::from_utf8(&delivery.data)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                let _ = latency.record(now.saturating_sub(sent));
            }
            read += 1;
            if read.is_multiple_of(ACK_EVERY) || read == count {
                let _ = delivery.acker.ack(BasicAckOptions { multiple: true }).await;
            }
        }
        Hop {
            latency,
            read,
            secs: started.elapsed().as_secs_f64(),
        }
    });

    let publish = || async {
        let body = unix_micros().to_string();
        channel
            .basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
    };
    let mut confirms = Vec::with_capacity(count as usize);
    match rate {
        // Paced like the latency scenario: every millisecond, what is due by then.
        Some(rate) => {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut sent = 0u64;
            while sent < count {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                while sent < due.min(count) {
                    confirms.push(publish().await.map_err(e)?);
                    sent += 1;
                }
            }
        }
        None => {
            let mut published = futures_util::stream::iter(0..count)
                .map(|_| publish())
                .buffered(IN_FLIGHT);
            while let Some(confirm) = published.next().await {
                confirms.push(confirm.map_err(e)?);
            }
        }
    }
    for confirm in confirms {
        confirm.await.map_err(e)?;
    }
    read.await.map_err(|e| e.to_string())
}
