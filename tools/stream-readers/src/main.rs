//! Reading a stream over AMQP 0-9-1 against reading it over RabbitMQ's native stream protocol,
//! on CPU: records appended at a steady rate to a stream of our own (as the daemon's active
//! consumer appends them: persistent, with confirms, through the default exchange) and read in
//! a child process, once by a lapin consumer as every daemon instance reads the stream
//! (`x-stream-offset: next`, prefetch 1000, a `multiple` ack per 200), once the same way by an
//! amqprs consumer (an AMQP 0-9-1 client whose socket I/O runs as tasks on the tokio runtime,
//! where lapin has a thread of its own), once by the `rabbitmq-stream-client` consumer (offset
//! `next`, chunked deliveries, no acks). The child's CPU per 10,000 records is what reading the
//! stream costs with each client, nothing else.
//!
//! The broker must offer the stream protocol (the `rabbitmq_stream` plugin, port 5552 by
//! default); `run.sh` beside this crate starts a node of its own that does. See README.md.

use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use rabbitmq_stream_client::Environment;
use rabbitmq_stream_client::types::OffsetSpecification;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

type Result<T> = std::result::Result<T, String>;

/// The daemon's stream reader settings (src/stream.rs).
const PREFETCH: u16 = 1000;
const ACK_EVERY: u64 = 200;
/// The child gives up when nothing arrives for this long.
const IDLE: Duration = Duration::from_secs(15);

/// Which client reads the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// lapin, AMQP 0-9-1, as the daemon reads it.
    Amqp,
    /// amqprs, AMQP 0-9-1 with its I/O on the runtime.
    Amqprs,
    /// rabbitmq-stream-client, the native stream protocol.
    Native,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Amqp => "amqp",
            Via::Amqprs => "amqprs",
            Via::Native => "native",
        }
    }
}

/// Where the broker is, for both protocols.
pub struct Broker {
    pub amqp_url: String,
    pub stream_host: String,
    pub stream_port: u16,
}

/// Runs both readers at `rate` for `count` records each and prints their CPU per 10,000.
pub async fn compare(broker: &Broker, rate: u64, count: u64, run: u64) -> Result<Vec<(Via, f64)>> {
    println!(
        "\n== stream readers: {count} records at {rate}/s, read over AMQP 0-9-1 (lapin, amqprs) and \
         over the native stream protocol (rabbitmq-stream-client, port {}), each in a process of \
         its own ==",
        broker.stream_port
    );
    let mut figures = Vec::new();
    for via in [Via::Amqp, Via::Amqprs, Via::Native] {
        let stream = format!("stream-readers-{run}-{}.log", via.name());
        let result = measure(broker, &stream, via, rate, count).await;
        delete_stream(&broker.amqp_url, &stream).await;
        let (read, cpu) = result?;
        let per_10k = cpu / read.max(1) as f64 * 10_000.0;
        println!(
            "{:<16} read {read} of {count}, {cpu:.2} CPU-s = {per_10k:.3} CPU-s per 10,000 records",
            via.name()
        );
        figures.push((via, per_10k));
    }
    Ok(figures)
}

async fn measure(
    broker: &Broker,
    stream: &str,
    via: Via,
    rate: u64,
    count: u64,
) -> Result<(u64, f64)> {
    let connection = connect(&broker.amqp_url, "stream-readers appends").await?;
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

    let exe = std::env::current_exe().map_err(|e| format!("finding stream-readers itself: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .args(["--reader", stream, "--via", via.name()])
        .args([
            "--amqp",
            &broker.amqp_url,
            "--stream-host",
            &broker.stream_host,
        ])
        .args(["--stream-port", &broker.stream_port.to_string()])
        .args(["--messages", &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the stream reader: {e}"))?;
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next_line = async || {
        tokio::time::timeout(IDLE + Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "the stream reader went silent".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the stream reader exited early".to_string())
    };
    let ready = next_line().await?;
    if ready != "ready" {
        return Err(format!("the stream reader said {ready:?}"));
    }

    let pid = child.id();
    let before = pid.and_then(cpu_secs);
    // Paced like the latency scenario: every millisecond, what is due by then.
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut confirms = Vec::with_capacity(count as usize);
    let mut sent = 0u64;
    while sent < count {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(count) {
            let body =
                format!(r#"{{"n":{sent},"data":{{"station":"ST-{sent}","status":"offline"}}}}"#);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    stream.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(e)?;
            confirms.push(confirm);
            sent += 1;
        }
    }
    for confirm in confirms {
        confirm.await.map_err(e)?;
    }
    let done = next_line().await?;
    let after = pid.and_then(cpu_secs);
    // Closing its stdin lets the child exit.
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let _ = connection.close(200, "done".into()).await;
    let read = done
        .strip_prefix("done ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("the stream reader said {done:?}"))?;
    let cpu = before
        .zip(after)
        .map(|(before, after)| after - before)
        .ok_or("no CPU figure for the stream reader (/proc)")?;
    Ok((read, cpu))
}

async fn delete_stream(url: &str, stream: &str) {
    if let Ok(connection) = connect(url, "stream-readers cleanup").await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(stream.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
}

/// The child: reads `count` records of `stream` from its end, prints `ready` once subscribed
/// and `done N` at the end, then waits for its stdin to close so that the parent can read its
/// CPU time.
pub async fn read(broker: &Broker, stream: &str, via: Via, count: u64) -> Result<()> {
    let read = match via {
        Via::Amqp => read_amqp(&broker.amqp_url, stream, count).await?,
        Via::Amqprs => read_amqprs(&broker.amqp_url, stream, count).await?,
        Via::Native => read_native(broker, stream, count).await?,
    };
    println!("done {read}");
    let _ = tokio::io::stdin().read_to_end(&mut Vec::new()).await;
    Ok(())
}

async fn read_amqp(url: &str, stream: &str, count: u64) -> Result<u64> {
    let e = |e: lapin::Error| e.to_string();
    let connection = connect(url, "stream-readers reader (amqp)").await?;
    let channel = connection.create_channel().await.map_err(e)?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(e)?;
    let mut offset = FieldTable::default();
    offset.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("next".into()),
    );
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            offset,
        )
        .await
        .map_err(e)?;
    println!("ready");
    let mut read = 0u64;
    while read < count {
        let Ok(Some(Ok(delivery))) = tokio::time::timeout(IDLE, consumer.next()).await else {
            break;
        };
        read += 1;
        if read.is_multiple_of(ACK_EVERY) || read == count {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(e)?;
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(read)
}

async fn read_amqprs(url: &str, stream: &str, count: u64) -> Result<u64> {
    use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicQosArguments};
    use amqprs::connection::{Connection, OpenConnectionArguments};
    let e = |e: amqprs::error::Error| e.to_string();
    let mut arguments = OpenConnectionArguments::try_from(url).map_err(e)?;
    // amqprs takes the URL's vhost as written; `%2f` is the default vhost `/`.
    if let Some((_, vhost)) = url.rsplit_once('/')
        && vhost.eq_ignore_ascii_case("%2f")
    {
        arguments.virtual_host("/");
    }
    let connection = Connection::open(&arguments).await.map_err(e)?;
    let channel = connection.open_channel(None).await.map_err(e)?;
    channel
        .basic_qos(BasicQosArguments::new(0, PREFETCH, false))
        .await
        .map_err(e)?;
    let mut consume = BasicConsumeArguments::new(stream, "");
    consume.arguments.insert(
        "x-stream-offset".try_into().map_err(|_| "field name")?,
        amqprs::FieldValue::S("next".try_into().map_err(|_| "field value")?),
    );
    let (_tag, mut deliveries) = channel.basic_consume_rx(consume).await.map_err(e)?;
    println!("ready");
    let mut read = 0u64;
    while read < count {
        let Ok(Some(message)) = tokio::time::timeout(IDLE, deliveries.recv()).await else {
            break;
        };
        let Some(deliver) = message.deliver else {
            continue;
        };
        read += 1;
        if read.is_multiple_of(ACK_EVERY) || read == count {
            channel
                .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), true))
                .await
                .map_err(e)?;
        }
    }
    let _ = connection.close().await;
    Ok(read)
}

async fn read_native(broker: &Broker, stream: &str, count: u64) -> Result<u64> {
    let environment = Environment::builder()
        .host(&broker.stream_host)
        .port(broker.stream_port)
        .build()
        .await
        .map_err(|e| {
            format!(
                "the stream protocol at {}:{}: {e}",
                broker.stream_host, broker.stream_port
            )
        })?;
    let mut consumer = environment
        .consumer()
        .offset(OffsetSpecification::Next)
        .build(stream)
        .await
        .map_err(|e| format!("subscribing to {stream}: {e}"))?;
    println!("ready");
    let mut read = 0u64;
    while read < count {
        let Ok(Some(Ok(_delivery))) = tokio::time::timeout(IDLE, consumer.next()).await else {
            break;
        };
        read += 1;
    }
    let _ = consumer.handle().close().await;
    Ok(read)
}

/// User + system CPU seconds process `pid` has used so far (/proc/PID/stat).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc counts in USER_HZ, 100 a second on Linux whatever the kernel's own tick.
    Some((utime + stime) as f64 / 100.0)
}

async fn connect(url: &str, name: &str) -> Result<lapin::Connection> {
    let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(
        Duration::from_secs(10),
        lapin::Connection::connect(url, properties),
    )
    .await
    .map_err(|_| "RabbitMQ: no connection within 10 s".to_string())?
    .map_err(|e| format!("RabbitMQ: {e}"))
}

#[derive(Parser)]
#[command(
    about = "CPU of reading a RabbitMQ stream over AMQP 0-9-1 (lapin, amqprs) against the native stream protocol (rabbitmq-stream-client)."
)]
struct Cli {
    /// The node, over AMQP 0-9-1 (appends, and the lapin reader).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// The same node's stream protocol listener (guest/guest).
    #[arg(long, default_value = "127.0.0.1")]
    stream_host: String,
    #[arg(long, default_value_t = 5552)]
    stream_port: u16,
    /// Records appended a second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of appends for each reader.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Internal: be the reader of this stream (--messages records).
    #[arg(long, hide = true, requires = "via")]
    reader: Option<String>,
    #[arg(long, hide = true, value_enum)]
    via: Option<Via>,
    #[arg(long, hide = true, default_value_t = 0)]
    messages: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let broker = Broker {
        amqp_url: cli.amqp.clone(),
        stream_host: cli.stream_host.clone(),
        stream_port: cli.stream_port,
    };
    let result = match (&cli.reader, cli.via) {
        (Some(stream), Some(via)) => read(&broker, stream, via, cli.messages).await,
        _ => {
            let run = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or_default();
            compare(&broker, cli.rate, cli.rate * cli.seconds, run)
                .await
                .map(|figures| {
                    for (via, per_10k) in figures {
                        println!(
                            "stream_readers_{}.{}_cpu_s_per_10k={per_10k:.3}",
                            cli.rate,
                            via.name()
                        );
                    }
                })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stream-readers: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
