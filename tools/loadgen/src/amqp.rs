//! Publishing bench notifications (paced or as fast as the broker takes them), the bare-consumer
//! ceiling, the queues of our own measurements, and deleting what a bench run declared.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
    PublisherConfirm,
};
use tokio::sync::mpsc;

use crate::tally::{Bits, unix_micros};

/// Category `customer`: the daemon's default room is `cms:dashboard` only, plus the recipient's.
pub const ROUTING_KEY: &str = "notification.customer";
/// Same as the daemon's default `RABBITMQ_PREFETCH`.
const PREFETCH: u16 = 256;
/// Publishes in flight at once: keeps lapin's writer busy without waiting on each frame.
const IN_FLIGHT: usize = 64;
/// Unconfirmed messages allowed before the publisher waits for confirms.
const MAX_UNCONFIRMED: usize = 20_000;

pub type Result<T> = std::result::Result<T, String>;

pub async fn connect(url: &str, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, properties),
    )
    .await
    .map_err(|_| format!("RabbitMQ at {}: no connection within 10 s", redact(url)))?
    .map_err(|e| format!("RabbitMQ at {}: {e}", redact(url)))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

/// What to publish: message `n` goes to customer `n % customers`.
#[derive(Clone)]
pub struct Plan {
    pub run: u64,
    pub customers: u32,
    pub exchange: String,
    pub persistent: bool,
}

impl Plan {
    pub fn recipient(&self, n: u64) -> u32 {
        (n % u64::from(self.customers.max(1))) as u32
    }

    /// The AMQP body of message `n`, stamped with the current time.
    fn body(&self, n: u64, out: &mut String) {
        out.clear();
        let (run, to, t0) = (self.run, self.recipient(n), unix_micros());
        let _ = write!(
            out,
            r#"{{"type":"bench","recipients":[{to}],"messageId":"{run}-{n}","data":{{"n":{n},"t0":{t0},"r":{run}}}}}"#
        );
    }

    fn properties(&self) -> BasicProperties {
        let properties = BasicProperties::default().with_content_type("application/json".into());
        if self.persistent {
            properties.with_delivery_mode(2)
        } else {
            properties
        }
    }
}

/// What the broker confirmed.
#[derive(Default)]
pub struct Confirmed {
    pub sent: u64,
    pub acked: Bits,
    pub nacked: u64,
    pub failed: u64,
    pub first_sent: Option<Instant>,
    pub last_sent: Option<Instant>,
}

impl Confirmed {
    pub fn acked_count(&self) -> u64 {
        self.acked.count()
    }

    pub fn send_secs(&self) -> f64 {
        match (self.first_sent, self.last_sent) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// A confirm-mode channel; confirms are awaited by a separate task, in order, so publishing
/// never waits on one message's round trip.
pub struct Publisher {
    channel: Channel,
    plan: Plan,
    confirms: Option<mpsc::Sender<(u64, PublisherConfirm)>>,
    tracker: tokio::task::JoinHandle<Confirmed>,
    sent: u64,
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
}

impl Publisher {
    pub async fn new(connection: &Connection, plan: Plan) -> Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let (confirms, mut pending) = mpsc::channel::<(u64, PublisherConfirm)>(MAX_UNCONFIRMED);
        let tracker = tokio::spawn(async move {
            let mut confirmed = Confirmed::default();
            while let Some((n, confirm)) = pending.recv().await {
                match tokio::time::timeout(Duration::from_secs(30), confirm).await {
                    Ok(Ok(c)) if c.is_ack() => {
                        confirmed.acked.insert(n);
                    }
                    Ok(Ok(_)) => confirmed.nacked += 1,
                    _ => confirmed.failed += 1,
                }
            }
            confirmed
        });
        Ok(Self {
            channel,
            plan,
            confirms: Some(confirms),
            tracker,
            sent: 0,
            first_sent: None,
            last_sent: None,
        })
    }

    /// Publishes messages `range`, up to [`IN_FLIGHT`] at once.
    pub async fn publish(&mut self, range: std::ops::Range<u64>) -> Result<()> {
        let (channel, plan) = (&self.channel, &self.plan);
        let exchange = ShortString::from(plan.exchange.as_str());
        let mut published = futures_util::stream::iter(range)
            .map(|n| {
                let exchange = exchange.clone();
                async move {
                    let mut body = String::with_capacity(160);
                    plan.body(n, &mut body);
                    let confirm = channel
                        .basic_publish(
                            exchange,
                            ROUTING_KEY.into(),
                            BasicPublishOptions::default(),
                            body.as_bytes(),
                            plan.properties(),
                        )
                        .await;
                    (n, confirm)
                }
            })
            .buffered(IN_FLIGHT);
        let confirms = self.confirms.as_ref().expect("publisher not finished");
        while let Some((n, confirm)) = published.next().await {
            let confirm = confirm.map_err(|e| format!("publish: {e}"))?;
            let now = Instant::now();
            self.first_sent.get_or_insert(now);
            self.last_sent = Some(now);
            self.sent += 1;
            // Waits only when MAX_UNCONFIRMED are outstanding.
            confirms
                .send((n, confirm))
                .await
                .map_err(|_| "confirm tracker ended".to_string())?;
        }
        Ok(())
    }

    /// Publishes `count` messages at `rate` a second, in small batches every millisecond so that
    /// the average rate is exact and bursts stay tiny.
    pub async fn publish_paced(&mut self, count: u64, rate: u64) -> Result<()> {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut next = 0;
        while next < count {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64 + 1).min(count);
            if due > next {
                self.publish(next..due).await?;
                next = due;
            }
        }
        Ok(())
    }

    /// Waits for every outstanding confirm.
    pub async fn finish(mut self) -> Confirmed {
        self.confirms = None;
        let mut confirmed = self.tracker.await.unwrap_or_default();
        confirmed.sent = self.sent;
        confirmed.first_sent = self.first_sent;
        confirmed.last_sent = self.last_sent;
        let _ = self.channel.close(200, "done".into()).await;
        confirmed
    }
}

/// The bare consumer's result.
pub struct Ceiling {
    pub consumed: u64,
    pub secs: f64,
    pub publish_rate: f64,
}

/// What RabbitMQ and one lapin consumer can do on this machine with nothing else in the way:
/// a fresh exchange and durable queue (like the daemon's), prefetch 256, one ack per message,
/// awaited before the next, as the daemon does. `count` messages are published as fast as the
/// broker takes them; the ceiling is `count` over the time from the first to the last ack.
pub async fn ceiling(url: &str, plan: &Plan, count: u64) -> Result<Ceiling> {
    let name = format!("loadgen-ceiling-{}", plan.run);
    let plan = Plan {
        exchange: name.clone(),
        ..plan.clone()
    };
    let consumer_connection = connect(url, "loadgen ceiling consumer").await?;
    let channel = consumer_connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    declare_own_queue(&channel, &name).await?;
    let mut consumer = start_consumer(&channel, &name).await?;

    let consume = tokio::spawn(async move {
        let (mut consumed, mut first, mut last) = (0u64, None, None);
        while consumed < count {
            let next = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else { break };
            if delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .is_err()
            {
                break;
            }
            consumed += 1;
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
        }
        let secs = match (first, last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        };
        (consumed, secs)
    });

    let publisher_connection = connect(url, "loadgen ceiling publisher").await?;
    let mut publisher = Publisher::new(&publisher_connection, plan).await?;
    publisher.publish(0..count).await?;
    let confirmed = publisher.finish().await;
    let (consumed, secs) = consume.await.map_err(|e| e.to_string())?;

    delete_own_queue(&channel, &name).await;
    let _ = consumer_connection.close(200, "done".into()).await;
    let _ = publisher_connection.close(200, "done".into()).await;
    let publish_rate = confirmed.sent as f64 / confirmed.send_secs().max(1e-9);
    Ok(Ceiling {
        consumed,
        secs,
        publish_rate,
    })
}

/// Declares exchange and queue `name` for a measurement of our own, the queue durable like the
/// daemon's and bound to every notification. The exchange goes with its last binding; if a run
/// dies before [`delete_own_queue`], the broker drops the queue after 10 idle minutes.
pub async fn declare_own_queue(channel: &Channel, name: &str) -> Result<()> {
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            auto_delete,
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declare {name}: {e}"))?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongUInt(600_000));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), durable, arguments)
        .await
        .map_err(|e| format!("declare {name}: {e}"))?;
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "notification.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("bind {name}: {e}"))?;
    Ok(())
}

/// Consumes `queue` on `channel` with the daemon's prefetch.
pub async fn start_consumer(channel: &Channel, queue: &str) -> Result<Consumer> {
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consume {queue}: {e}"))
}

/// Deletes what [`declare_own_queue`] made.
pub async fn delete_own_queue(channel: &Channel, name: &str) {
    let _ = channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await;
}

/// Deletes the daemon's queue, its dead-letter queue and exchange, and `exchange`.
pub async fn cleanup(url: &str, exchange: &str, queue: &str) -> Result<()> {
    let connection = connect(url, "loadgen cleanup").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    for q in [
        queue.to_owned(),
        format!("{queue}.dead"),
        format!("{queue}.log"),
    ] {
        match channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            Ok(left) => println!("deleted queue {q} ({left} messages left in it)"),
            Err(e) => println!("queue {q}: {e}"),
        }
    }
    for x in [exchange.to_owned(), format!("{queue}.dlx")] {
        match channel
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await
        {
            Ok(()) => println!("deleted exchange {x}"),
            Err(e) => println!("exchange {x}: {e}"),
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_the_documented_shape() {
        let plan = Plan {
            run: 9,
            customers: 1000,
            exchange: "x".into(),
            persistent: false,
        };
        let mut body = String::new();
        plan.body(1234, &mut body);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["type"], "bench");
        assert_eq!(value["recipients"][0], 234);
        assert_eq!(value["messageId"], "9-1234");
        assert_eq!(value["data"]["n"], 1234);
        assert_eq!(value["data"]["r"], 9);
        assert!(value["data"]["t0"].as_u64().unwrap() > 0);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://…@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
