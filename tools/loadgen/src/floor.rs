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
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::amqp::{self, PREFETCH, Plan, Publisher, Result};
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
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    println!("ready");

    let multiple = BasicAckOptions { multiple: true };
    let (mut consumed, mut pending) = (0u64, None);
    let mut in_batch = 0;
    let mut due = tokio::time::Instant::now();
    while consumed < count {
        tokio::select! {
            biased;
            next = tokio::time::timeout(IDLE, consumer.next()) => {
                let Ok(Some(Ok(delivery))) = next else { break };
                consumed += 1;
                if in_batch == 0 {
                    due = tokio::time::Instant::now() + ACK_DELAY;
                }
                in_batch += 1;
                pending = Some(delivery.acker);
                if in_batch >= ACK_BATCH || consumed == count {
                    if let Some(acker) = pending.take() {
                        acker.ack(multiple).await.map_err(|e| e.to_string())?;
                    }
                    in_batch = 0;
                }
            }
            _ = tokio::time::sleep_until(due), if pending.is_some() => {
                if let Some(acker) = pending.take() {
                    acker.ack(multiple).await.map_err(|e| e.to_string())?;
                }
                in_batch = 0;
            }
        }
    }
    println!("done {consumed}");
    let _ = tokio::io::stdin().read_to_end(&mut Vec::new()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
