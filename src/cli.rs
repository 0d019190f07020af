//! Command-line tools for operators: `publish` (a smoke test through the real broker) and
//! `healthcheck` (for container health checks, where there is no curl).
//!
//! `publish` judges the body with the daemon's own parser first, so it refuses exactly what the
//! daemon would dead-letter, with the same reason code as the `x-notify-bridge-reason` header.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::amqp;
use crate::config::Config;
use crate::envelope::{self, CategoryFrom, Rejection, Source};

/// What `notify-bridge publish` was asked to do.
#[derive(Debug, Clone, Copy)]
pub struct PublishRequest<'a> {
    pub routing_key: &'a str,
    /// The body as one argument...
    pub json: Option<&'a str>,
    /// ...or read from this file.
    pub file: Option<&'a Path>,
    /// The AMQP `message_id`; a fresh UUID when `None`. A `messageId` in the body wins.
    pub message_id: Option<&'a str>,
    /// Judge and print the verdict; do not connect to the broker.
    pub dry_run: bool,
}

/// The daemon would dead-letter the body: the reason is the header it would carry.
#[derive(Debug, thiserror::Error)]
#[error(
    "rejected: {code} ({description}); the daemon would dead-letter it with {header}: {code}",
    code = .0.code(),
    description = .0.describe(),
    header = amqp::REASON_HEADER
)]
pub struct Rejected(pub Rejection);

/// Publishes one notification to `RABBITMQ_EXCHANGE` with a publisher confirm, after judging it
/// as the daemon would. Prints `ok`, the rooms and the `messageId` to retry with.
pub async fn publish(config: &Config, request: PublishRequest<'_>) -> anyhow::Result<()> {
    let body = match (request.json, request.file) {
        (Some(json), None) => json.as_bytes().to_vec(),
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        _ => bail!("give the notification as one JSON argument or with --file, not both"),
    };
    let message_id = match request.message_id {
        // The parser would silently drop an unusable property id: refuse it instead.
        Some(id) if id.is_empty() || id.len() > 256 => {
            bail!("--message-id must be 1 to 256 bytes")
        }
        Some(id) => id.to_owned(),
        None => uuid_v4(),
    };
    // A clock before 1970 only loses the property; the daemon then uses the time of receipt.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let source = Source {
        category: CategoryFrom::RoutingKey(request.routing_key),
        message_id: Some(&message_id),
        timestamp: Some(now),
    };
    let limits = envelope::Limits {
        max_bytes: config.limits.max_message_bytes,
        max_rooms: config.limits.max_recipients,
    };
    let envelope = envelope::parse(&body, source, &limits).map_err(Rejected)?;
    // The body's `messageId` wins, as it does in the daemon; the property then repeats it.
    let message_id = envelope.message_id.as_deref().unwrap_or(&message_id);
    let rooms: Vec<&str> = envelope.rooms.iter().map(|r| r.as_str()).collect();
    println!(
        "ok: type {:?}, category {:?}, rooms {}{}",
        envelope.kind,
        envelope.category,
        rooms.join(" "),
        if envelope.broadcast {
            ", broadcast"
        } else {
            ""
        }
    );
    println!("messageId: {message_id}");
    if request.dry_run {
        println!("dry run: not published");
        return Ok(());
    }

    let rabbit = &config.rabbitmq;
    let (connection, _) = amqp::connect(rabbit, 0)
        .await
        .with_context(|| format!("cannot connect to RabbitMQ at {}", rabbit.url.redacted()))?;
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_timestamp(now);
    let confirmed = amqp::publish_confirmed(
        &channel,
        &rabbit.exchange,
        request.routing_key,
        // Mandatory: a message no queue is bound for comes back instead of vanishing.
        BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        },
        &body,
        properties,
    )
    .await;
    let _ = connection.close(200, "done".into()).await;
    let confirmation =
        confirmed.with_context(|| format!("publishing; retry with --message-id {message_id}"))?;
    if confirmation.take_message().is_some() {
        bail!(
            "no queue is bound to exchange {:?} for routing key {:?}: the message was returned",
            rabbit.exchange,
            request.routing_key
        );
    }
    println!(
        "published to exchange {:?} with routing key {:?} (confirmed)",
        rabbit.exchange, request.routing_key
    );
    Ok(())
}

/// A random (version 4) UUID, as producers' libraries write message ids.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Exits successfully when `GET /healthz` on this host's `PORT` answers 200.
pub async fn healthcheck(config: &Config) -> anyhow::Result<()> {
    let host = match config.host.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        host => host,
    };
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", config.port)
    } else {
        format!("{host}:{}", config.port)
    };
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .with_context(|| format!("{address} did not answer within 3 s"))?
        .with_context(|| format!("connecting to {address}"))?;
    let status_line = String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    if status_line.split_whitespace().nth(1) != Some("200") {
        bail!("unhealthy: {status_line:?}");
    }
    Ok(())
}
