//! The `notify-bridge` binary: parses the command line, reads the configuration, and runs the
//! daemon (or one of the operator tools) from the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use notify_bridge::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "RabbitMQ-to-Socket.IO notification bridge. Configured from the environment (see .env.example)."
)]
struct Cli {
    /// Feed sample EV-charging events (same as DEMO=true).
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Publish one notification to RABBITMQ_EXCHANGE and wait for the broker's confirm.
    Publish {
        /// Routing key, e.g. notification.session
        routing_key: String,
        /// The JSON body, e.g. '{"type":"charging.started","recipients":[123]}'
        json: Option<String>,
        /// Read the JSON body from this file instead.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Judge the body as the daemon would and print the verdict; do not publish.
        #[arg(long)]
        dry_run: bool,
        /// The AMQP message_id (a new UUID when not given, printed): retry with the printed one.
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Exit 0 if the daemon on HOST:PORT answers /healthz (for container health checks).
    Healthcheck,
}

fn main() -> ExitCode {
    let command = Cli::command().after_help(notify_bridge::environment::help());
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // A missing .env is normal; real environment variables win over the file.
    let _ = dotenvy::dotenv();
    let mut config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("notify-bridge: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    config.demo |= cli.demo;
    // Built here rather than by #[tokio::main] so that WORKER_THREADS sizes it.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("notify-bridge: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli, config))
}

async fn run(cli: Cli, config: Config) -> ExitCode {
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Publish {
            routing_key,
            json,
            file,
            dry_run,
            message_id,
        } => {
            let request = notify_bridge::cli::PublishRequest {
                routing_key: &routing_key,
                json: json.as_deref(),
                file: file.as_deref(),
                message_id: message_id.as_deref(),
                dry_run,
            };
            notify_bridge::cli::publish(&config, request).await
        }
        Command::Healthcheck => notify_bridge::cli::healthcheck(&config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("notify-bridge: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let telemetry = notify_bridge::telemetry::init(&config.log_filter, config.log_format);
    let address = config.listen_address();
    let listener = notify_bridge::bind(&address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} (HOST/PORT): {e}"))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let result = notify_bridge::run(config, listener, shutdown).await;
    telemetry.shutdown().await;
    result
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        // Installing a SIGTERM handler only fails if the runtime has no signal driver.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
