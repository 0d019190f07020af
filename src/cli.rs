//! Command-line tools for operators: `publish` (a smoke test through the real broker) and
//! `healthcheck` (for container health checks, where there is no curl).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::amqp;
use crate::config::Config;

/// Publishes one notification to `RABBITMQ_EXCHANGE` with a publisher confirm.
pub async fn publish(
    config: &Config,
    routing_key: &str,
    json: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let body = match (json, file) {
        (Some(json), None) => json.to_owned(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        _ => bail!("give the notification as one JSON argument or with --file, not both"),
    };
    let value: serde_json::Value =
        serde_json::from_str(&body).context("the notification is not valid JSON")?;
    if !value.is_object() || !value.get("type").is_some_and(serde_json::Value::is_string) {
        bail!("the notification must be a JSON object with a string \"type\"");
    }
    let rabbit = &config.rabbitmq;
    let connection = amqp::connect(rabbit)
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
        .with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            rabbit.exchange.as_str().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await
        .context("publishing")?;
    let confirmation = tokio::time::timeout(amqp::PUBLISH_CONFIRM_TIMEOUT, confirm)
        .await
        .context("RabbitMQ did not confirm within 5 s")?
        .context("waiting for the confirm")?;
    let _ = connection.close(200, "done".into()).await;
    if !confirmation.is_ack() {
        bail!("RabbitMQ refused the message (nack)");
    }
    println!(
        "published to exchange {:?} with routing key {routing_key:?} (confirmed)",
        rabbit.exchange
    );
    Ok(())
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
