//! loadgen: a load benchmark for a running notify-bridge daemon. It prints figures; it passes
//! or fails nothing. See README.md beside this crate.

mod amqp;
mod bare_hop;
mod fleet;
mod floor;
mod histogram;
mod procstat;
mod scenarios;
mod sio;
mod tally;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::procstat::Proc;
use crate::scenarios::{Ctx, Summary};
use crate::sio::Endpoint;
use crate::token::Tokens;

#[derive(Parser)]
#[command(
    about = "Load benchmark for a running notify-bridge daemon (latency, throughput, connections, HTTP polling)."
)]
struct Cli {
    /// The daemon's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// RabbitMQ, where the daemon consumes.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// The daemon's exchange (RABBITMQ_EXCHANGE).
    #[arg(long, default_value = "notifications")]
    exchange: String,
    /// The daemon's JWT_SECRET, to mint tokens; without it the daemon must have auth off.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The daemon's process id, for its CPU time and memory (from /proc).
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Customer sockets (latency, throughput).
    #[arg(long, default_value_t = 1000)]
    customers: u32,
    /// CMS sockets in cms:dashboard (latency).
    #[arg(long, default_value_t = 10)]
    cms: u32,
    /// Notifications a second (latency).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// How long to publish (latency), e.g. 20s, 500ms, 2m.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Notifications to push as fast as possible (throughput).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Idle sockets to open (connections).
    #[arg(long, default_value_t = 10_000)]
    connections: u32,
    /// Socket handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// HTTP clients (http).
    #[arg(long, default_value_t = 64)]
    http_connections: u32,
    /// wrk threads (http).
    #[arg(long, default_value_t = 2)]
    http_threads: u32,
    /// How long to load the HTTP route (http).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    http_duration: Duration,
    /// Publish persistent messages (delivery mode 2) instead of transient ones.
    #[arg(long)]
    persistent: bool,
    /// Notifications a join and a poller replay from a cursor before them (replay).
    #[arg(long, default_value_t = 10_000)]
    replay_records: u64,
    /// Also write the headline figures as key=value lines to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Key the summary's lines `<label>.<figure>` instead of `<scenario>.<figure>`.
    #[arg(long, requires = "summary")]
    summary_label: Option<String>,
    /// Instead of a benchmark: delete --exchange, --queue, <queue>.dead and <queue>.dlx.
    #[arg(long, requires = "queue")]
    cleanup: bool,
    /// The daemon's queue (RABBITMQ_QUEUE), for --cleanup.
    #[arg(long)]
    queue: Option<String>,
    /// Internal: be the latency scenario's bare consumer of this queue (--messages of them).
    #[arg(long, hide = true, conflicts_with = "cleanup")]
    bare_consumer: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Latency,
    Throughput,
    Connections,
    Http,
    Replay,
    All,
}

/// `20s`, `500ms`, `2m`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (e.g. 20s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {text:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Some(queue) = &cli.bare_consumer {
        return floor::consume(&cli.amqp, queue, cli.messages).await;
    }
    if cli.cleanup {
        let queue = cli.queue.as_deref().expect("clap requires --queue");
        return amqp::cleanup(&cli.amqp, &cli.exchange, queue).await;
    }
    let nofile = procstat::raise_nofile(65_536);
    let sockets_needed = u64::from(cli.connections.max(cli.customers + cli.cms)) + 256;
    if nofile < sockets_needed {
        println!(
            "warning: open-file limit is {nofile}, below the {sockets_needed} sockets need: run `ulimit -n 65536` first"
        );
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let base = cli.url.trim_end_matches('/').to_owned();
    check_daemon(&http, &base, cli.jwt_secret.is_some()).await?;
    let daemon = Proc::daemon(cli.pid);
    if !daemon.known() {
        println!("note: no --pid given: the daemon's CPU and memory are not measured");
    }
    println!(
        "loadgen against {base} (exchange {:?}), {} CPUs on this machine, shared by the daemon, RabbitMQ and loadgen",
        cli.exchange,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut ctx = Ctx {
        endpoint: Endpoint::from_base(&base)?,
        base,
        amqp: cli.amqp.clone(),
        exchange: cli.exchange.clone(),
        tokens: Tokens::new(cli.jwt_secret.as_deref()),
        daemon,
        http,
        persistent: cli.persistent,
        concurrency: cli.concurrency,
        summary: Summary::labelled(cli.summary_label.clone()),
    };
    let all = cli.scenario == Scenario::All;
    let mut failures = Vec::new();
    // A scenario that fails is reported and the next one still runs.
    let mut outcome = |name: &str, result: Result<(), String>| {
        if let Err(error) = result {
            println!("!! {name} failed: {error}");
            failures.push(name.to_owned());
        }
    };
    if all || cli.scenario == Scenario::Latency {
        outcome(
            "latency",
            scenarios::latency(&mut ctx, cli.customers, cli.cms, cli.rate, cli.duration).await,
        );
    }
    if all || cli.scenario == Scenario::Throughput {
        outcome(
            "throughput",
            scenarios::throughput(&mut ctx, cli.customers, cli.messages).await,
        );
    }
    if all || cli.scenario == Scenario::Connections {
        outcome(
            "connections",
            scenarios::connections(&mut ctx, cli.connections).await,
        );
    }
    if all || cli.scenario == Scenario::Http {
        let result = scenarios::http(
            &mut ctx,
            cli.http_connections,
            cli.http_threads,
            cli.http_duration,
        )
        .await;
        outcome("http", result);
    }
    if all || cli.scenario == Scenario::Replay {
        outcome(
            "replay",
            scenarios::replay(&mut ctx, cli.replay_records).await,
        );
    }
    if let Some(path) = &cli.summary {
        ctx.summary
            .write(path)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("scenarios failed: {}", failures.join(", ")))
    }
}

/// The daemon must be up, ready, and consuming from RabbitMQ, or the figures mean nothing.
async fn check_daemon(http: &reqwest::Client, base: &str, have_secret: bool) -> Result<(), String> {
    let unreachable =
        |e: reqwest::Error| format!("the daemon at {base} does not answer ({e}); start it first");
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_err(unreachable)?;
    if !ready.status().is_success() {
        return Err(format!(
            "{base}/readyz: {} {}",
            ready.status(),
            ready.text().await.unwrap_or_default()
        ));
    }
    let config: serde_json::Value = http
        .get(format!("{base}/api/config"))
        .send()
        .await
        .map_err(unreachable)?
        .json()
        .await
        .map_err(|e| format!("{base}/api/config: {e}"))?;
    if config["ENABLE_RABBITMQ"] != true {
        return Err(
            "the daemon runs with ENABLE_RABBITMQ=false: start it with ENABLE_RABBITMQ=true".into(),
        );
    }
    if config["authRequired"] == true && !have_secret {
        return Err(
            "the daemon requires tokens: pass its secret with --jwt-secret (or JWT_SECRET)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
