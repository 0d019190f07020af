//! The bridge: runs the broker sessions of one instance and drains them at shutdown.
//!
//! lapin's own recovery is not used: [`Bridge::run`] owns the connection's whole life. Each
//! session connects to one of `RABBITMQ_URL`'s nodes (the next one after a node is lost),
//! declares the topology, then runs two tasks on one connection until it fails: the log
//! reader (every instance: [`crate::stream`], or [`crate::streamless`] with
//! `RABBITMQ_STREAM=off`) and the queue consumer ([`crate::consumer`], active on one instance
//! at a time), both on the [`Pipeline`] they share. When the queues cannot be declared (a
//! node is down), the consumer keeps trying on its own, so the reader is never held up by a
//! queue. The loop retries with capped exponential backoff and jitter. While disconnected the
//! daemon keeps serving sockets, polling and history; `/readyz` stays ready once it has caught
//! up with the log.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::Connection;
use lapin::options::ConfirmSelectOptions;
use tokio_util::sync::CancellationToken;

use crate::amqp::{SessionError, WarnOnce, backoff, connect, connection_error, declaring};
use crate::pipeline::Pipeline;
use crate::readiness::BrokerState;
use crate::topology;

/// At shutdown, how long the consumer and the reader get to finish what is in hand.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The first try at the queues, before the reader starts: short, so that a queue whose node
/// is down delays reading the log by this much at most.
const FIRST_DECLARE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Bridge {
    pipeline: Arc<Pipeline>,
    /// Index in `RABBITMQ_URL` of the node the next session tries first.
    next_node: AtomicUsize,
}

impl Bridge {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Self {
            pipeline,
            next_node: AtomicUsize::new(0),
        }
    }

    /// Runs sessions until `shutdown`, reconnecting for as long as it takes.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut warned = WarnOnce::default();
        loop {
            let result = self.session(&shutdown, &mut failures, &mut warned).await;
            self.pipeline.link.set(None, None);
            self.pipeline.metrics.broker_connected.set(0);
            self.pipeline.metrics.stream_active_consumer.set(0);
            self.pipeline
                .readiness
                .set_broker(BrokerState::Reconnecting);
            let error = match result {
                Ok(()) => return,
                Err(error) => error,
            };
            let reason = format!(
                "RabbitMQ at {}: {error}",
                self.pipeline.config.url.redacted()
            );
            self.pipeline
                .readiness
                .set_broker_problem(error.needs_operator().then(|| error.to_string()));
            self.pipeline.metrics.broker_reconnects.inc();
            let delay = backoff(failures, self.pipeline.config.reconnect_max);
            // One line per cause of an outage, so nobody is paged for an outage the daemon
            // rides out, and a new cause is never hidden. A cause that needs an operator is an
            // ERROR.
            if warned.is_new(&error.cause()) {
                if error.needs_operator() {
                    tracing::error!("{reason}");
                } else {
                    tracing::warn!(retry_in = ?delay, "{reason}");
                }
            } else {
                tracing::debug!(retry_in = ?delay, "{reason}");
            }
            failures = failures.saturating_add(1);
            tokio::select! {
                // Shutdown wins over the wait.
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        failures: &mut u32,
        warned: &mut WarnOnce,
    ) -> Result<(), SessionError> {
        let first = self.next_node.load(Ordering::Relaxed);
        let (connection, node) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect(&self.pipeline.config, first) => c?,
        };
        let connection = Arc::new(connection);
        // When this connection is lost, the next session starts with the next node.
        self.next_node.store(node + 1, Ordering::Relaxed);
        // Connection errors arrive here even when a consumer stream or a pending ack would
        // never resolve (lapin's recovery path is young), so a dead connection is always noticed.
        let mut events = connection.events_listener();
        let channel = connection.create_channel().await?;
        declaring(
            "the log's topology",
            topology::declare_log(&self.pipeline.config, &channel),
        )
        .await?;
        let _ = channel.close(200, "declared".into()).await;
        // The queues are declared before anything is read, so that a producer who sees this
        // instance ready finds them bound. If that cannot be done now (a queue's node is down),
        // the consumer keeps trying while the reader reads.
        let queues = match tokio::time::timeout(
            FIRST_DECLARE_TIMEOUT,
            topology::declare_queues(&self.pipeline.config, &connection),
        )
        .await
        {
            Ok(Ok(())) => crate::consumer::Queues::Declared,
            Ok(Err(error @ SessionError::Mismatch { .. })) => return Err(error),
            Ok(Err(error)) => crate::consumer::Queues::Failed(error.to_string()),
            Err(_) => crate::consumer::Queues::Failed(format!(
                "declaring the queues did not finish within {FIRST_DECLARE_TIMEOUT:?}"
            )),
        };

        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        self.pipeline
            .link
            .set(Some(publisher.clone()), Some(connection.clone()));
        self.pipeline.readiness.set_broker(BrokerState::Connected);
        self.pipeline.readiness.set_broker_problem(None);
        self.pipeline.metrics.broker_connected.set(1);
        // After an outage this is its one INFO line: recovered.
        tracing::info!(
            recovered_after_attempts = *failures,
            broker = %self.pipeline.config.url.get(node).redacted(),
            exchange = %self.pipeline.config.exchange,
            queue = %self.pipeline.config.queue,
            log = %self.log_name(),
            "consuming from RabbitMQ"
        );
        *failures = 0;
        *warned = WarnOnce::default();

        let (caught_up, reader_caught_up) = tokio::sync::watch::channel(false);
        let (drain, drain_marker) = tokio::sync::watch::channel(None);
        let (synced_tx, synced) = tokio::sync::watch::channel(None);
        let signals = crate::stream::ReaderSignals {
            caught_up,
            drain: drain_marker,
            synced: synced_tx,
        };
        let consumer_stop = CancellationToken::new();
        let reader: Pin<Box<dyn Future<Output = Result<(), SessionError>> + Send + '_>> =
            if self.pipeline.config.streamless {
                Box::pin(crate::streamless::follow(
                    &self.pipeline,
                    &connection,
                    signals,
                ))
            } else {
                Box::pin(crate::stream::follow(&self.pipeline, &connection, signals))
            };
        let consumer = crate::consumer::consume(
            &self.pipeline,
            &connection,
            queues,
            &consumer_stop,
            crate::consumer::ReaderState {
                caught_up: reader_caught_up,
                synced,
            },
        );
        let mut reader = reader;
        tokio::pin!(consumer);
        // Whichever ends first ends the session; the other is dropped with it, and its
        // unacked deliveries return to the queue.
        let result = tokio::select! {
            error = connection_error(&mut events) => Err(error),
            result = &mut reader => result.and(Err(SessionError::ConnectionClosed)),
            result = &mut consumer => result.and(Err(SessionError::ConnectionClosed)),
            _ = shutdown.cancelled() => {
                self.drain(&connection, &mut events, &consumer_stop, consumer, reader.as_mut(), &drain).await;
                Ok(())
            }
        };
        if shutdown.is_cancelled() {
            let _ = connection.close(200, "shutting down".into()).await;
            tracing::info!("stopped consuming from RabbitMQ");
        }
        result
    }

    /// The shared log's name, for logs.
    fn log_name(&self) -> String {
        if self.pipeline.config.streamless {
            format!(
                "{} (stream-less mode)",
                self.pipeline.config.fanout_exchange()
            )
        } else {
            self.pipeline.config.stream.clone()
        }
    }

    /// At shutdown: stop taking deliveries and ack what was appended, then let the reader
    /// emit what this instance appended, up to a last marker (bounded by [`DRAIN_TIMEOUT`]).
    async fn drain(
        &self,
        connection: &Connection,
        events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
        consumer_stop: &CancellationToken,
        mut consumer: Pin<&mut impl Future<Output = Result<(), SessionError>>>,
        mut reader: Pin<&mut (dyn Future<Output = Result<(), SessionError>> + Send + '_)>,
        drain: &tokio::sync::watch::Sender<Option<String>>,
    ) {
        consumer_stop.cancel();
        let work = async {
            // The reader keeps emitting while the consumer finishes.
            tokio::select! {
                _ = &mut consumer => {}
                _ = connection_error(events) => return,
                _ = &mut reader => return,
            }
            let Ok(marker) = self.pipeline.append_marker(connection).await else {
                return;
            };
            let _ = drain.send(Some(marker));
            tokio::select! {
                _ = &mut reader => {}
                _ = connection_error(events) => {}
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, work).await.is_err() {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "the log reader did not drain in time");
        }
    }
}
