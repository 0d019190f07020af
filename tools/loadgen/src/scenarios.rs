//! The scenarios. Each prints one block of figures and puts its headline numbers in the
//! summary (`--summary FILE`, read by run-bench.sh for its targets table).

use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::amqp::{self, Confirmed, Plan, Publisher};
use crate::bare_hop;
use crate::fleet::{self, Fleet, Role};
use crate::floor;
use crate::histogram;
use crate::procstat::{Proc, mib};
use crate::sio::{self, Endpoint};
use crate::tally::{Shared, Tally, unix_micros};
use crate::token::Tokens;

pub type Result<T> = std::result::Result<T, String>;

/// Everything the scenarios share.
pub struct Ctx {
    pub base: String,
    pub amqp: String,
    pub exchange: String,
    pub endpoint: Endpoint,
    pub tokens: Tokens,
    pub daemon: Proc,
    pub http: reqwest::Client,
    pub persistent: bool,
    pub concurrency: usize,
    pub summary: Summary,
}

/// `key=value` lines for scripts, keyed `<scenario>.<figure>`, or `<label>.<figure>` when one
/// scenario runs twice with different settings (latency at 500/s and at 2,000/s).
pub struct Summary {
    lines: Vec<String>,
    label: Option<String>,
}

impl Summary {
    pub fn labelled(label: Option<String>) -> Self {
        Summary {
            lines: Vec::new(),
            label,
        }
    }

    pub fn put(&mut self, key: &str, value: impl Display) {
        let line = match (&self.label, key.split_once('.')) {
            (Some(label), Some((_, figure))) => format!("{label}.{figure}={value}"),
            _ => format!("{key}={value}"),
        };
        self.lines.push(line);
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = self.lines.join("\n");
        text.push('\n');
        std::fs::write(path, text)
    }
}

/// A fresh id per scenario: message ids never repeat (the daemon dedupes them), and sockets
/// ignore late messages of an earlier scenario.
fn run_id() -> u64 {
    unix_micros()
}

/// The daemon (and our own process) at one moment.
struct Snapshot {
    rss: Option<u64>,
    cpu: Option<f64>,
    own_cpu: Option<f64>,
    stalled: Option<f64>,
    /// The daemon's stream-hop histogram (append of a record to its read).
    hop: Option<histogram::Buckets>,
}

/// The daemon's histogram of the stream hop.
const STREAM_HOP: &str = "notify_bridge_stream_hop_seconds";

impl Snapshot {
    async fn take(ctx: &Ctx) -> Self {
        let text = metrics_text(ctx).await;
        Self {
            rss: ctx.daemon.rss_kib(),
            cpu: ctx.daemon.cpu_secs(),
            own_cpu: Proc::current().cpu_secs(),
            stalled: text
                .as_deref()
                .map(|t| metric(t, "notify_bridge_sockets_stalled_total")),
            hop: text
                .as_deref()
                .and_then(|t| histogram::parse(t, STREAM_HOP)),
        }
    }
}

/// The daemon's `/metrics`.
async fn metrics_text(ctx: &Ctx) -> Option<String> {
    let response = ctx
        .http
        .get(format!("{}/metrics", ctx.base))
        .send()
        .await
        .ok()?;
    response.text().await.ok()
}

/// The sum of a metric's series in a text exposition.
fn metric(text: &str, name: &str) -> f64 {
    let values = text.lines().filter_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        rest.rsplit(' ').next()?.parse::<f64>().ok()
    });
    values.sum()
}

fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

fn opt<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "n/a".into(), |v| v.to_string())
}

/// CPU seconds per 10,000 of `count` things (notifications, records).
fn per_10k(cpu: Option<f64>, count: u64) -> Option<f64> {
    cpu.map(|cpu| cpu / count.max(1) as f64 * 10_000.0)
}

fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

fn sockets_line(fleet: &Fleet) -> String {
    format!(
        "{} connected+joined, {} failed, in {:.2} s ({:.0}/s){}",
        fleet.connected,
        fleet.failed(),
        fleet.secs,
        per_sec(fleet.connected, fleet.secs),
        fleet.describe_failures()
    )
}

/// Waits until `expected` distinct notifications have arrived, or nothing has arrived for
/// `idle`. Returns whether everything arrived.
async fn wait_for_delivery(shared: &Shared, expected: u64, idle: Duration) -> bool {
    let mut last = shared.received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = shared.received.load(Ordering::Relaxed);
        if now >= expected {
            return true;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() >= idle {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What every socket should have received against what it did.
#[derive(Default)]
struct Accounting {
    /// Copies the sockets that joined should have received: per message, its customer's
    /// socket and every cms socket.
    expected: u64,
    /// Expected copies that arrived (each counted once).
    got: u64,
    duplicates: u64,
    /// Arrived at a socket that should not have had them.
    misrouted: u64,
    stray: u64,
    ended_early: u64,
    receipts: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    cms_receipts: u64,
    cms_first: Option<Instant>,
    cms_last: Option<Instant>,
}

impl Accounting {
    fn lost(&self) -> u64 {
        self.expected - self.got
    }

    fn window_secs(first: Option<Instant>, last: Option<Instant>) -> f64 {
        match (first, last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Expected copies with the messages the broker confirmed.
fn expected_copies(sockets: impl Iterator<Item = Role>, confirmed: &Confirmed, plan: &Plan) -> u64 {
    let per_customer = per_customer(confirmed, plan);
    let acked = confirmed.acked_count();
    sockets
        .map(|role| match role {
            Role::Customer(id) => per_customer[id as usize],
            Role::Cms => acked,
        })
        .sum()
}

fn per_customer(confirmed: &Confirmed, plan: &Plan) -> Vec<u64> {
    let mut counts = vec![0; plan.customers.max(1) as usize];
    for n in (0..confirmed.sent).filter(|&n| confirmed.acked.contains(n)) {
        counts[plan.recipient(n) as usize] += 1;
    }
    counts
}

fn account(tallies: &[(Role, Option<Tally>)], confirmed: &Confirmed, plan: &Plan) -> Accounting {
    let per_customer = per_customer(confirmed, plan);
    let acked = confirmed.acked_count();
    let mut total = Accounting::default();
    for (role, tally) in tallies {
        let Some(tally) = tally else { continue };
        let wanted = |n: u64| confirmed.acked.contains(n) && tally.seen.contains(n);
        let (expected, got) = match *role {
            Role::Customer(id) => {
                let step = usize::try_from(plan.customers.max(1)).unwrap_or(1);
                let got = (u64::from(id)..confirmed.sent)
                    .step_by(step)
                    .filter(|&n| wanted(n))
                    .count() as u64;
                (per_customer[id as usize], got)
            }
            Role::Cms => {
                total.cms_receipts += tally.receipts;
                total.cms_first = min_instant(total.cms_first, tally.first);
                total.cms_last = total.cms_last.max(tally.last);
                (
                    acked,
                    (0..confirmed.sent).filter(|&n| wanted(n)).count() as u64,
                )
            }
        };
        total.expected += expected;
        total.got += got;
        total.misrouted += tally.seen.count() - got;
        total.duplicates += tally.duplicates;
        total.stray += tally.stray;
        total.ended_early += u64::from(tally.ended_early.is_some());
        total.receipts += tally.receipts;
        total.first = min_instant(total.first, tally.first);
        total.last = total.last.max(tally.last);
    }
    total
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn delivery_line(acc: &Accounting) -> String {
    format!(
        "{} of {} expected copies, lost {}, duplicated {}, misrouted {}, stray {}, sockets closed early {}",
        acc.got,
        acc.expected,
        acc.lost(),
        acc.duplicates,
        acc.misrouted,
        acc.stray,
        acc.ended_early
    )
}

/// p50 … max in milliseconds.
fn percentiles(shared: &Shared) -> [f64; 6] {
    let h = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
    let ms = |us: u64| us as f64 / 1000.0;
    [
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.len() as f64,
    ]
}

fn latency_line(p: &[f64; 6]) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms  ({} samples)",
        p[0], p[1], p[2], p[3], p[4], p[5]
    )
}

async fn publisher(ctx: &Ctx, plan: &Plan) -> Result<(lapin::Connection, Publisher)> {
    let connection = amqp::connect(&ctx.amqp, "loadgen publisher").await?;
    let publisher = Publisher::new(&connection, plan.clone()).await?;
    Ok((connection, publisher))
}

/// Scenario 1: end-to-end latency at a fixed rate.
pub async fn latency(
    ctx: &mut Ctx,
    customers: u32,
    cms: u32,
    rate: u64,
    duration: Duration,
) -> Result<()> {
    let count = (rate as f64 * duration.as_secs_f64()).round() as u64;
    println!(
        "\n== latency: {customers} customer + {cms} cms sockets, {rate} notifications/s for {:.0} s \
         (each to 1 customer + {cms} cms sockets) ==",
        duration.as_secs_f64()
    );
    let plan = Plan {
        run: run_id(),
        customers,
        exchange: ctx.exchange.clone(),
        persistent: ctx.persistent,
    };
    let shared = Arc::new(Shared::new(plan.run));
    let rss_idle = ctx.daemon.rss_kib();
    let fleet = Fleet::open(
        &ctx.endpoint,
        fleet::specs(&ctx.tokens, customers, cms),
        ctx.concurrency,
        Some(shared.clone()),
    )
    .await;
    println!("sockets          {}", sockets_line(&fleet));
    if fleet.connected == 0 {
        fleet.close().await;
        return Err("no socket could connect".into());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (connection, mut publisher) = publisher(ctx, &plan).await?;
    let before = Snapshot::take(ctx).await;
    let started = Instant::now();
    publisher.publish_paced(count, rate).await?;
    let confirmed = publisher.finish().await;
    let publish_secs = started.elapsed().as_secs_f64();
    let _ = connection.close(200, "done".into()).await;

    let expected = expected_copies(fleet.joined_roles(), &confirmed, &plan);
    let complete = wait_for_delivery(&shared, expected, Duration::from_secs(5)).await;
    let after = Snapshot::take(ctx).await;
    let tallies = fleet.close().await;
    let acc = account(&tallies, &confirmed, &plan);
    let p = percentiles(&shared);

    let acked = confirmed.acked_count();
    println!(
        "published        {} (acked {}, nacked {}, unconfirmed {}) in {:.2} s = {:.1}/s",
        confirmed.sent,
        acked,
        confirmed.nacked,
        confirmed.failed,
        publish_secs,
        per_sec(confirmed.sent, publish_secs)
    );
    println!(
        "delivered        {}{}",
        delivery_line(&acc),
        if complete {
            ""
        } else {
            " (gave up after 5 s without progress)"
        }
    );
    println!(
        "received/s       {:.0} copies/s (from first to last receipt)",
        per_sec(acc.receipts, Accounting::window_secs(acc.first, acc.last))
    );
    println!("latency          {}", latency_line(&p));
    let cpu = delta(before.cpu, after.cpu);
    let cpu_per_10k = per_10k(cpu, acked);
    println!(
        "daemon CPU       {} s for {acked} notifications = {} CPU-s per 10,000 notifications",
        opt(cpu.map(|c| format!("{c:.2}"))),
        opt(cpu_per_10k.map(|c| format!("{c:.3}")))
    );
    println!(
        "daemon RSS       {} idle, {} with sockets before the run, {} after",
        mib(rss_idle),
        mib(before.rss),
        mib(after.rss)
    );
    println!(
        "loadgen CPU      {} s (shares the 2 cores with the daemon and RabbitMQ)",
        opt(delta(before.own_cpu, after.own_cpu).map(|c| format!("{c:.2}")))
    );
    println!(
        "stalled sockets  {} (daemon metric, during the run)",
        opt(delta(before.stalled, after.stalled))
    );
    let hop = stream_hop(&before, &after);
    println!("stream hop       {}", hop.line);

    // The same rate into a bare consumer in a process of its own: what consuming and acking
    // alone cost here, against which to read the daemon's CPU.
    let floor_count = count.min(rate * 10);
    let floor_per_10k = match floor::measure(&ctx.amqp, &plan, rate, floor_count).await {
        Ok(floor) => {
            let per_10k = floor
                .cpu_secs
                .map(|c| c / floor.consumed.max(1) as f64 * 10_000.0);
            println!(
                "CPU floor        bare lapin consumer, own process, same rate, acks batched like the daemon: \
                 {} s for {} = {} CPU-s per 10,000 notifications",
                opt(floor.cpu_secs.map(|c| format!("{c:.2}"))),
                floor.consumed,
                opt(per_10k.map(|c| format!("{c:.3}")))
            );
            per_10k
        }
        Err(error) => {
            println!("CPU floor        not measured: {error}");
            None
        }
    };
    // The hop again without the daemon: what the broker and the client alone cost for it.
    match bare_hop::measure(&ctx.amqp, plan.run, Some(rate), floor_count).await {
        Ok(hop) if !hop.latency.is_empty() => {
            let h = hop.latency;
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "stream hop, bare p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} ms over {} records \
                 (a stream of our own at the same rate, appended and read as the daemon does, \
                 no daemon)",
                ms(0.5),
                ms(0.9),
                ms(0.99),
                h.max() as f64 / 1000.0,
                h.len()
            );
            ctx.summary
                .put("latency.bare_hop_p50_ms", format!("{:.3}", ms(0.5)));
            ctx.summary
                .put("latency.bare_hop_p99_ms", format!("{:.3}", ms(0.99)));
        }
        Ok(_) => println!("stream hop, bare not measured: nothing was read back"),
        Err(error) => println!("stream hop, bare not measured: {error}"),
    }

    let s = &mut ctx.summary;
    s.put("latency.sockets", fleet_sockets(&tallies));
    s.put(
        "latency.rate",
        format!("{:.1}", per_sec(confirmed.sent, publish_secs)),
    );
    s.put("latency.p50_ms", format!("{:.3}", p[0]));
    s.put("latency.p99_ms", format!("{:.3}", p[2]));
    s.put("latency.p999_ms", format!("{:.3}", p[3]));
    s.put("latency.max_ms", format!("{:.3}", p[4]));
    s.put("latency.lost", acc.lost());
    s.put("latency.duplicated", acc.duplicates);
    s.put("latency.misrouted", acc.misrouted);
    if let Some(c) = cpu_per_10k {
        s.put("latency.cpu_s_per_10k", format!("{c:.3}"));
    }
    if let Some(c) = floor_per_10k {
        s.put("latency.floor_cpu_s_per_10k", format!("{c:.3}"));
    }
    if let Some((p50, p99)) = hop.p50_p99 {
        s.put("latency.stream_hop_p50_ms", format!("{:.3}", p50 * 1e3));
        s.put("latency.stream_hop_p99_ms", format!("{:.3}", p99 * 1e3));
    }
    Ok(())
}

/// The stream hop during a run, from the daemon's histogram.
struct Hop {
    line: String,
    /// Seconds.
    p50_p99: Option<(f64, f64)>,
}

fn stream_hop(before: &Snapshot, after: &Snapshot) -> Hop {
    let (Some(b), Some(a)) = (&before.hop, &after.hop) else {
        return Hop {
            line: format!("n/a (no {STREAM_HOP} on the daemon: RabbitMQ off?)"),
            p50_p99: None,
        };
    };
    let q = |q| histogram::quantile(b, a, q);
    let p50_p99 = q(0.5).zip(q(0.99));
    let ms = |v: Option<f64>| opt(v.map(|s| format!("{:.3}", s * 1e3)));
    Hop {
        line: format!(
            "p50 {}  p90 {}  p99 {} ms over {} records (daemon histogram: the active consumer's \
             append of a record to this instance's read of it)",
            ms(q(0.5)),
            ms(q(0.9)),
            ms(q(0.99)),
            histogram::count(b, a)
        ),
        p50_p99,
    }
}

fn fleet_sockets(tallies: &[(Role, Option<Tally>)]) -> usize {
    tallies.iter().filter(|(_, t)| t.is_some()).count()
}

/// Scenario 2: how close the bridge gets to what one bare consumer can take from the broker.
pub async fn throughput(ctx: &mut Ctx, customers: u32, count: u64) -> Result<()> {
    println!(
        "\n== throughput: {count} notifications as fast as the broker takes them; {customers} customer + 1 cms sockets =="
    );
    let plan = Plan {
        run: run_id(),
        customers,
        exchange: ctx.exchange.clone(),
        persistent: ctx.persistent,
    };
    let ceiling = amqp::ceiling(&ctx.amqp, &plan, count).await?;
    let ceiling_rate = per_sec(ceiling.consumed, ceiling.secs);
    println!(
        "ceiling          bare lapin consumer (own queue, prefetch 256, ack each): {} of {count} in {:.2} s = {:.0} msg/s \
         (published at {:.0}/s)",
        ceiling.consumed, ceiling.secs, ceiling_rate, ceiling.publish_rate
    );

    // The bridge's path costs the broker more than a queue: each notification is also appended
    // to the stream and read back. The same broker, through a stream alone:
    let stream_ceiling = match bare_hop::measure(&ctx.amqp, plan.run, None, count).await {
        Ok(hop) => {
            let rate = per_sec(hop.read, hop.secs);
            println!(
                "stream ceiling   bare append (confirms) + read back (prefetch 1000) through a stream of our own: \
                 {} of {count} in {:.2} s = {rate:.0} msg/s",
                hop.read, hop.secs
            );
            Some(rate)
        }
        Err(error) => {
            println!("stream ceiling   not measured: {error}");
            None
        }
    };

    let plan = Plan {
        run: run_id(),
        ..plan
    };
    let shared = Arc::new(Shared::new(plan.run));
    let fleet = Fleet::open(
        &ctx.endpoint,
        fleet::specs(&ctx.tokens, customers, 1),
        ctx.concurrency,
        Some(shared.clone()),
    )
    .await;
    println!("sockets          {}", sockets_line(&fleet));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (connection, mut publisher) = publisher(ctx, &plan).await?;
    let before = Snapshot::take(ctx).await;
    publisher.publish(0..count).await?;
    let confirmed = publisher.finish().await;
    let _ = connection.close(200, "done".into()).await;
    let expected = expected_copies(fleet.joined_roles(), &confirmed, &plan);
    let complete = wait_for_delivery(&shared, expected, Duration::from_secs(10)).await;
    let after = Snapshot::take(ctx).await;
    let tallies = fleet.close().await;
    let acc = account(&tallies, &confirmed, &plan);
    let p = percentiles(&shared);

    let cms_secs = Accounting::window_secs(acc.cms_first, acc.cms_last);
    let bridge_rate = per_sec(acc.cms_receipts, cms_secs);
    let ratio = if ceiling_rate > 0.0 {
        bridge_rate / ceiling_rate * 100.0
    } else {
        0.0
    };
    println!(
        "published        {} (acked {}) at {:.0}/s",
        confirmed.sent,
        confirmed.acked_count(),
        per_sec(confirmed.sent, confirmed.send_secs())
    );
    println!(
        "bridge           cms socket received {} in {:.2} s = {:.0} msg/s ({:.0} copies/s over all sockets)",
        acc.cms_receipts,
        cms_secs,
        bridge_rate,
        per_sec(acc.receipts, Accounting::window_secs(acc.first, acc.last))
    );
    println!(
        "delivered        {}{}",
        delivery_line(&acc),
        if complete {
            ""
        } else {
            " (gave up after 10 s without progress)"
        }
    );
    println!("bridge/ceiling   {ratio:.1} % of the bare queue consumer");
    // Both hops on one broker: a queue delivery and a stream append + read per notification.
    let combined = stream_ceiling
        .filter(|s| *s > 0.0 && ceiling_rate > 0.0)
        .map(|s| 1.0 / (1.0 / ceiling_rate + 1.0 / s));
    if let Some(combined) = combined {
        println!(
            "bridge/both      {:.1} % of {combined:.0} msg/s, the broker's own limit for a queue hop plus a \
             stream hop (1 / (1/ceiling + 1/stream ceiling))",
            bridge_rate / combined * 100.0
        );
        ctx.summary.put(
            "throughput.ratio_both_pct",
            format!("{:.1}", bridge_rate / combined * 100.0),
        );
    }
    println!("queueing delay   {}", latency_line(&p));
    let cpu = delta(before.cpu, after.cpu);
    let cpu_per_10k = per_10k(cpu, confirmed.sent);
    println!(
        "daemon CPU       {} s = {} CPU-s per 10,000 notifications at full speed; RSS {} before, {} after",
        opt(cpu.map(|c| format!("{c:.2}"))),
        opt(cpu_per_10k.map(|c| format!("{c:.3}"))),
        mib(before.rss),
        mib(after.rss)
    );
    println!(
        "stalled sockets  {} (daemon metric, during the run)",
        opt(delta(before.stalled, after.stalled))
    );

    let s = &mut ctx.summary;
    s.put("throughput.ceiling_per_s", format!("{ceiling_rate:.0}"));
    s.put("throughput.bridge_per_s", format!("{bridge_rate:.0}"));
    s.put("throughput.ratio_pct", format!("{ratio:.1}"));
    if let Some(c) = cpu_per_10k {
        s.put("throughput.cpu_s_per_10k", format!("{c:.3}"));
    }
    s.put("throughput.lost", acc.lost());
    s.put("throughput.duplicated", acc.duplicates);
    s.put("throughput.misrouted", acc.misrouted);
    Ok(())
}

/// Scenario 3: many idle sockets: how fast they connect and join, and what each costs.
pub async fn connections(ctx: &mut Ctx, count: u32) -> Result<()> {
    println!(
        "\n== connections: {count} customer sockets, {} handshakes in flight ==",
        ctx.concurrency
    );
    let before = ctx.daemon.rss_kib();
    let fleet = Fleet::open(
        &ctx.endpoint,
        fleet::specs(&ctx.tokens, count, 0),
        ctx.concurrency,
        None,
    )
    .await;
    let rate = per_sec(fleet.connected, fleet.secs);
    println!("sockets          {}", sockets_line(&fleet));
    // Let allocator caches and the first heartbeat settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = ctx.daemon.rss_kib();
    let gauge = metrics_text(ctx)
        .await
        .map(|t| metric(&t, "notify_bridge_sockets_connected"));
    let per_connection = match (before, with) {
        (Some(before), Some(with)) if fleet.connected > 0 => {
            Some(with.saturating_sub(before) as f64 / fleet.connected as f64)
        }
        _ => None,
    };
    let tallies = fleet.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ctx.daemon.rss_kib();
    let early = tallies
        .iter()
        .filter(|(_, t)| t.as_ref().is_some_and(|t| t.ended_early.is_some()))
        .count();
    println!(
        "daemon gauge     sockets_connected = {} while all were open",
        opt(gauge)
    );
    println!(
        "daemon RSS       {} before, {} with the sockets open, {} after closing them",
        mib(before),
        mib(with),
        mib(after)
    );
    println!(
        "per connection   {} KiB RSS per idle connection (delta / connected)",
        opt(per_connection.map(|k| format!("{k:.1}")))
    );
    println!("closed early     {early} sockets were closed by the server while idle");

    let s = &mut ctx.summary;
    s.put("connections.connected", fleet_sockets(&tallies));
    s.put(
        "connections.failed",
        count as usize - fleet_sockets(&tallies),
    );
    s.put("connections.per_s", format!("{rate:.0}"));
    if let Some(k) = per_connection {
        s.put("connections.kib_per_conn", format!("{k:.2}"));
    }
    Ok(())
}

/// Scenario 4: the polling route under a closed loop of `connections` clients.
pub async fn http(ctx: &mut Ctx, connections: u32, threads: u32, duration: Duration) -> Result<()> {
    let url = format!(
        "{}/api/notifications?room=cms:dashboard&limit=100",
        ctx.base
    );
    println!(
        "\n== http: GET /api/notifications?room=cms:dashboard&limit=100, {connections} connections, {:.0} s ==",
        duration.as_secs_f64()
    );
    let token = ctx.tokens.cms(0);
    let (items, bytes) = seed(ctx, &url, token.as_deref()).await?;
    println!("response         {items} notifications, {bytes} bytes");
    let before = Snapshot::take(ctx).await;
    let (rps, tool) = match wrk(&url, token.as_deref(), connections, threads, duration).await {
        Some(rps) => (rps, "wrk"),
        None => (
            closed_loop(&url, token.as_deref(), connections, duration).await,
            "reqwest closed loop",
        ),
    };
    let after = Snapshot::take(ctx).await;
    println!("requests/s       {rps:.0} ({tool})");
    println!(
        "daemon CPU       {} s",
        opt(delta(before.cpu, after.cpu).map(|c| format!("{c:.2}")))
    );
    ctx.summary.put("http.rps", format!("{rps:.0}"));
    Ok(())
}

/// Makes sure the room has a full page of history, so that every request serializes 100
/// notifications as a real dashboard's would. Returns the page size in items and bytes.
async fn seed(ctx: &Ctx, url: &str, token: Option<&str>) -> Result<(usize, usize)> {
    let page = |ctx: &Ctx| {
        let mut request = ctx.http.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!(
                    "GET {url}: {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            let value: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let items = value["notifications"].as_array().map_or(0, Vec::len);
            Ok::<_, String>((items, body.len()))
        }
    };
    let (items, bytes) = page(ctx).await?;
    if items >= 100 {
        return Ok((items, bytes));
    }
    let plan = Plan {
        run: run_id(),
        customers: 1,
        exchange: ctx.exchange.clone(),
        persistent: ctx.persistent,
    };
    let (connection, mut publisher) = publisher(ctx, &plan).await?;
    publisher.publish(0..100).await?;
    publisher.finish().await;
    let _ = connection.close(200, "done".into()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (items, bytes) = page(ctx).await?;
        if items >= 100 || Instant::now() > deadline {
            return Ok((items, bytes));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs wrk if it is installed; its output is printed as is. `None` if wrk is missing.
async fn wrk(
    url: &str,
    token: Option<&str>,
    connections: u32,
    threads: u32,
    duration: Duration,
) -> Option<f64> {
    let mut command = tokio::process::Command::new("wrk");
    command.args([
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{}s", duration.as_secs().max(1)),
        "--latency".into(),
    ]);
    if let Some(token) = token {
        command.args(["-H".to_string(), format!("Authorization: Bearer {token}")]);
    }
    let output = match command.arg(url).output().await {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "wrk              not installed (apt-get install -y wrk): using a reqwest closed loop"
            );
            return None;
        }
        Err(error) => {
            println!("wrk              failed to start ({error}): using a reqwest closed loop");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        println!("  wrk | {line}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok());
    if rps.is_none() {
        println!(
            "wrk              no Requests/sec in its output: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    rps
}

/// `connections` tasks, each sending the next request as soon as the last one is answered.
async fn closed_loop(url: &str, token: Option<&str>, connections: u32, duration: Duration) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections as usize)
        .build()
        .expect("HTTP client");
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url, token) = (client.clone(), url.to_owned(), token.map(str::to_owned));
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let mut request = client.get(&url);
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    match request.send().await {
                        Ok(response) if response.status().is_success() => {
                            ok += u64::from(response.bytes().await.is_ok());
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        if let Ok((o, f)) = task.await {
            ok += o;
            failed += f;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("closed loop      {ok} ok, {failed} failed in {secs:.1} s");
    per_sec(ok, secs)
}

/// Scenario 5: replay. `count` notifications to one customer, published as fast as the broker
/// takes them and read by the daemon; then a socket joins that customer's room from a cursor
/// before them (the replay comes before the join's ack), and a poller pages through them from
/// the same cursor, `limit=100` a page. Records per second for each, and the daemon's CPU per
/// 10,000 records replayed.
pub async fn replay(ctx: &mut Ctx, count: u64) -> Result<()> {
    println!(
        "\n== replay: {count} notifications to one customer, then a join and a poller from a cursor before them =="
    );
    let plan = Plan {
        run: run_id(),
        customers: 1,
        exchange: ctx.exchange.clone(),
        persistent: ctx.persistent,
    };
    let room = "customer:0";
    let token = ctx.tokens.customer(0);
    // A room of this run's own is empty: its poll's cursor is the head, before what follows.
    let probe = 1_000_000 + (plan.run % 1_000_000) as u32;
    let cursor = head(ctx, probe).await?;
    let consumed = || async {
        let text = metrics_text(ctx).await.unwrap_or_default();
        metric(&text, "notify_bridge_notifications_consumed_total")
    };
    let consumed_before = consumed().await;

    let (connection, mut publisher) = publisher(ctx, &plan).await?;
    publisher.publish(0..count).await?;
    let confirmed = publisher.finish().await;
    let _ = connection.close(200, "done".into()).await;
    // Replayed, not live: wait until the daemon has read them all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while consumed().await < consumed_before + confirmed.acked_count() as f64 {
        if tokio::time::Instant::now() > deadline {
            return Err("the daemon did not read the notifications within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "published        {} (acked {}) at {:.0}/s, all read by the daemon",
        confirmed.sent,
        confirmed.acked_count(),
        per_sec(confirmed.sent, confirmed.send_secs())
    );

    // This run's bench notifications carry `"r":<run>` in their data.
    let of_run = format!(r#""r":{}"#, plan.run);
    let mut replayed = 0u64;
    let before = Snapshot::take(ctx).await;
    let started = tokio::time::Instant::now();
    let (mut ws, ack) =
        sio::connect_and_replay(&ctx.endpoint, token.as_deref(), room, &cursor, |event| {
            if event.contains(&of_run) {
                replayed += 1;
            }
        })
        .await?;
    let join_secs = started.elapsed().as_secs_f64();
    let after = Snapshot::take(ctx).await;
    let _ = ws.close(None).await;
    let join_cpu = delta(before.cpu, after.cpu);
    let join_per_10k = per_10k(join_cpu, replayed);
    println!(
        "join replay      {replayed} of {count} before the ack in {join_secs:.2} s = {:.0} records/s; daemon CPU {} \
         = {} CPU-s per 10,000 replayed; ack {ack:.60}",
        per_sec(replayed, join_secs),
        opt(join_cpu.map(|c| format!("{c:.2} s"))),
        opt(join_per_10k.map(|c| format!("{c:.3}"))),
    );

    let before = Snapshot::take(ctx).await;
    let started = tokio::time::Instant::now();
    let (mut polled, mut pages, mut limited) = (0u64, 0u64, 0u64);
    let mut after_cursor = cursor;
    while polled < count && started.elapsed() < Duration::from_secs(120) {
        let mut request = ctx.http.get(format!(
            "{}/api/notifications?room={room}&after={after_cursor}&limit=100",
            ctx.base
        ));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| format!("poll: {e}"))?;
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        let page: serde_json::Value = response
            .error_for_status()
            .map_err(|e| format!("poll: {e}"))?
            .json()
            .await
            .map_err(|e| format!("poll: {e}"))?;
        let items = page["notifications"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        pages += 1;
        if items.is_empty() {
            break;
        }
        polled += items
            .iter()
            .filter(|item| item["data"]["r"].as_u64() == Some(plan.run))
            .count() as u64;
        after_cursor = page["cursor"].as_str().unwrap_or_default().to_owned();
    }
    let poll_secs = started.elapsed().as_secs_f64();
    let after = Snapshot::take(ctx).await;
    let poll_cpu = delta(before.cpu, after.cpu);
    let poll_per_10k = per_10k(poll_cpu, polled);
    println!(
        "poll pages       {polled} of {count} in {pages} pages of 100 in {poll_secs:.2} s = {:.0} records/s \
         ({limited} answered 429); daemon CPU {} = {} CPU-s per 10,000 polled",
        per_sec(polled, poll_secs),
        opt(poll_cpu.map(|c| format!("{c:.2} s"))),
        opt(poll_per_10k.map(|c| format!("{c:.3}"))),
    );

    let s = &mut ctx.summary;
    s.put("replay.join_records", replayed);
    s.put(
        "replay.join_per_s",
        format!("{:.0}", per_sec(replayed, join_secs)),
    );
    if let Some(c) = join_per_10k {
        s.put("replay.join_cpu_s_per_10k", format!("{c:.3}"));
    }
    s.put("replay.poll_records", polled);
    s.put(
        "replay.poll_per_s",
        format!("{:.0}", per_sec(polled, poll_secs)),
    );
    if let Some(c) = poll_per_10k {
        s.put("replay.poll_cpu_s_per_10k", format!("{c:.3}"));
    }
    s.put("replay.missed", count.saturating_sub(replayed.min(polled)));
    Ok(())
}

/// The head cursor, as a poll of `customer`'s empty room answers it.
async fn head(ctx: &Ctx, customer: u32) -> Result<String> {
    let mut request = ctx.http.get(format!(
        "{}/api/notifications?room=customer:{customer}&limit=1",
        ctx.base
    ));
    if let Some(token) = ctx.tokens.customer(customer) {
        request = request.bearer_auth(token);
    }
    let page: serde_json::Value = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("poll: {e}"))?
        .json()
        .await
        .map_err(|e| format!("poll: {e}"))?;
    page["cursor"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("a poll without a cursor: {page}"))
}
