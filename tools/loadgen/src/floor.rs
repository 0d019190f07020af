//! The CPU floor: what a bare lapin consumer, alone in its own process, spends to consume and
//! ack notifications at the latency scenario's rate. It consumes as the daemon does (prefetch
//! 256, a `multiple` ack per 64 deliveries or after 5 ms, a multi-threaded tokio runtime with
//! one worker per core) and does nothing else, so the daemon's CPU per notification can be read
//! against what the AMQP client alone costs on this machine.
//!
//! The parent ([`measure`]) starts `loadgen --bare-consumer QUEUE` ([`consume`]) and reads the
//! child's CPU time from /proc before and after publishing.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::amqp::{self, Plan, Publisher, Result};
use crate::procstat::Proc;

/// The daemon's ack batching (src/amqp.rs): a batch is acked when full or this long after its
/// first delivery.
const ACK_BATCH: u64 = 64;
const ACK_DELAY: Duration = Duration::from_millis(5);
/// The child gives up when nothing arrives for this long.
const IDLE: Duration = Duration::from_secs(30);

pub struct Floor {
    pub consumed: u64,
    pub cpu_secs: Option<f64>,
}

/// Publishes `count` notifications at `rate` to a queue of our own consumed by a bare consumer
/// in a child process, and returns that process's CPU time for them.
pub async fn measure(url: &str, plan: &Plan, rate: u64, count: u64) -> Result<Floor> {
    let name = format!("loadgen-floor-{}", plan.run);
    let connection = amqp::connect(url, "loadgen floor publisher").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    amqp::declare_own_queue(&channel, &name).await?;

    let exe = std::env::current_exe().map_err(|e| format!("finding loadgen itself: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .args(["--bare-consumer", &name, "--amqp", url])
        .args(["--messages", &count.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the bare consumer: {e}"))?;
    let stdin = child.stdin.take();
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next_line = async || {
        tokio::time::timeout(IDLE + Duration::from_secs(5), lines.next_line())
            .await
            .map_err(|_| "the bare consumer went silent".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the bare consumer exited early".to_string())
    };
    let ready = next_line().await?;
    if ready != "ready" {
        return Err(format!("the bare consumer said {ready:?}"));
    }

    let process = Proc::daemon(child.id());
    let before = process.cpu_secs();
    let plan = Plan {
        exchange: name.clone(),
        ..plan.clone()
    };
    let mut publisher = Publisher::new(&connection, plan).await?;
    publisher.publish_paced(count, rate).await?;
    publisher.finish().await;
    let done = next_line().await?;
    let after = process.cpu_secs();
    // Closing its stdin lets the child exit.
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;

    amqp::delete_own_queue(&channel, &name).await;
    let _ = connection.close(200, "done".into()).await;
    let consumed = done
        .strip_prefix("done ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("the bare consumer said {done:?}"))?;
    Ok(Floor {
        consumed,
        cpu_secs: before.zip(after).map(|(before, after)| after - before),
    })
}

/// The child: consumes `count` messages from `queue`, acking like the daemon, prints `ready`
/// once consuming and `done N` at the end, then waits for its stdin to close so that the parent
/// can read its CPU time.
pub async fn consume(url: &str, queue: &str, count: u64) -> Result<()> {
    let connection = amqp::connect(url, "loadgen bare consumer").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = amqp::start_consumer(&channel, queue).await?;
    println!("ready");

    // The latest delivery's acker (acking it with `multiple` acks the whole batch) and how many
    // deliveries it covers.
    let mut batch: Option<(Acker, u64)> = None;
    let mut due = tokio::time::Instant::now();
    let mut consumed = 0u64;
    while consumed < count {
        tokio::select! {
            biased;
            next = tokio::time::timeout(IDLE, consumer.next()) => {
                let Ok(Some(Ok(delivery))) = next else { break };
                consumed += 1;
                let size = match batch.take() {
                    Some((_, size)) => size + 1,
                    None => {
                        due = tokio::time::Instant::now() + ACK_DELAY;
                        1
                    }
                };
                batch = Some((delivery.acker, size));
                if size >= ACK_BATCH || consumed == count {
                    ack(&mut batch).await?;
                }
            }
            _ = tokio::time::sleep_until(due), if batch.is_some() => ack(&mut batch).await?,
        }
    }
    println!("done {consumed}");
    let _ = tokio::io::stdin().read_to_end(&mut Vec::new()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Acks the whole pending batch with one `multiple` ack.
async fn ack(batch: &mut Option<(Acker, u64)>) -> Result<()> {
    match batch.take() {
        Some((acker, _)) => {
            acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        None => Ok(()),
    }
}
