//! The topology the daemon declares (contract section 2): the exchange producers publish to,
//! the shared log (the stream, or the stream-less mode's fanout exchange), the queue with its
//! dead letters, and their bindings. Every declare is idempotent, so each session declares
//! again.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use crate::amqp::{SessionError, describe, mismatch, refuses_streams};
use crate::config::{QueueType, RabbitConfig};

/// The exchange producers publish to, and the shared log: the stream, or the stream-less
/// mode's fanout exchange. Nothing here is homed on one node, so a session can read the
/// log whatever node is down.
pub(crate) async fn declare_log(
    config: &RabbitConfig,
    channel: &Channel,
) -> Result<(), SessionError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    if config.streamless {
        channel
            .exchange_declare(
                config.fanout_exchange().as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        return Ok(());
    }
    let stream = &config.stream;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    arguments.insert(
        "x-max-age".into(),
        AMQPValue::LongString(config.stream_max_age.as_str().into()),
    );
    if let Some(bytes) = config.stream_max_segment_bytes {
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(bytes as i64),
        );
    }
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(stream.as_str().into(), durable_queue, arguments)
        .await
        .map_err(|error| {
            if refuses_streams(&error) {
                return SessionError::NoStreams {
                    name: stream.clone(),
                    detail: error.to_string(),
                };
            }
            mismatch(error, "stream", stream, format!(
                "x-queue-type=stream, x-max-age={:?}", config.stream_max_age
            ), format!(
                "set RABBITMQ_STREAM_MAX_AGE to the stream's x-max-age, or RABBITMQ_STREAM to a new \
                 name (or delete it: rabbitmqctl delete_queue {stream}, which loses its history)"
            ))
        })?;
    Ok(())
}

/// The queue, its dead-letter exchange and queue, and their bindings (contract section
/// 2). A queue that exists is used as it is, whatever its type; a new one gets
/// `RABBITMQ_QUEUE_TYPE`.
pub(crate) async fn declare_queues(
    config: &RabbitConfig,
    connection: &Connection,
) -> Result<(), SessionError> {
    let dlx = config.dead_letter_exchange();
    let dead = config.dead_letter_queue();
    let queue = &config.queue;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared".into()).await;
    declare_kept(config, connection, &dead, FieldTable::default(), || {
        format!(
            "a durable queue; delete it (rabbitmqctl delete_queue {dead}) once its dead \
             letters are read, and the daemon declares it again"
        )
    })
    .await?;

    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    // Every instance consumes the one queue; the broker lets one at a time receive, so
    // notifications reach the log in the order the queue holds them.
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    if let Some(ms) = config.queue_expires_ms {
        arguments.insert("x-expires".into(), AMQPValue::LongUInt(ms));
    }
    declare_kept(config, connection, queue, arguments, || {
        format!(
            "a v1 queue cannot be changed in place. Stop the v1 instances, let the queue drain, \
             then delete it (rabbitmqctl delete_queue {queue}) and start again, which declares it \
             again; or set RABBITMQ_QUEUE to a new name and bind it before switching producers"
        )
    })
    .await?;

    let channel = connection.create_channel().await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for key in &config.binding_keys {
        channel
            .queue_bind(
                queue.as_str().into(),
                config.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Declares the durable queue `name` with `arguments`. A new one gets `RABBITMQ_QUEUE_TYPE`.
/// One that exists keeps its type: it is declared again with its own type (found by trying
/// the configured one, then the other), so that neither a v2 classic queue nor a vhost
/// whose default type changed stops the daemon, while other arguments that differ still
/// answer [`SessionError::Mismatch`].
async fn declare_kept(
    config: &RabbitConfig,
    connection: &Connection,
    name: &str,
    arguments: FieldTable,
    fix: impl Fn() -> String,
) -> Result<(), SessionError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..durable
    };
    let configured = config.queue_type;
    // A failed declare closes its channel: each try gets a fresh one.
    let channel = connection.create_channel().await?;
    let exists = channel
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
        .is_ok();
    if exists {
        let _ = channel.close(200, "checked".into()).await;
    }
    let types = if exists {
        let other = match configured {
            QueueType::Quorum => QueueType::Classic,
            QueueType::Classic => QueueType::Quorum,
        };
        vec![configured, other]
    } else {
        vec![configured]
    };
    let mut last = None;
    for queue_type in types {
        let channel = connection.create_channel().await?;
        let mut arguments = arguments.clone();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.as_str().into()),
        );
        match channel.queue_declare(name.into(), durable, arguments).await {
            Ok(_) => {
                let _ = channel.close(200, "declared".into()).await;
                if exists {
                    tracing::info!(
                        queue = name,
                        r#type = queue_type.as_str(),
                        "the queue exists: used as it is"
                    );
                } else {
                    tracing::info!(
                        queue = name,
                        r#type = queue_type.as_str(),
                        "declared the queue"
                    );
                }
                return Ok(());
            }
            Err(error) => last = Some(error),
        }
    }
    let error = last.expect("at least one type was tried");
    Err(mismatch(
        error,
        "queue",
        name,
        format!("durable, {}", describe(&arguments)),
        fix(),
    ))
}
