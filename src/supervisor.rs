//! No task ends unseen: the broker session, housekeeping and the demo feed run under
//! [`supervise`]. A task that returns before shutdown, or panics, is logged with its cause,
//! makes `/readyz` fail while it is down, and is started again after a short pause.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

/// Pause before a failed task is started again (doubling to [`MAX_RESTART_DELAY`]).
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// Runs the task made by `start` until `stop`, restarting it whenever it ends or panics.
pub async fn supervise<F, Fut>(
    name: &'static str,
    readiness: Readiness,
    stop: CancellationToken,
    start: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut delay = FIRST_RESTART_DELAY;
    loop {
        let outcome = tokio::spawn(start()).await;
        if stop.is_cancelled() {
            return;
        }
        let why = match outcome {
            Ok(()) => "it returned".to_owned(),
            Err(error) if error.is_panic() => {
                format!("it panicked: {}", panic_message(error.into_panic()))
            }
            Err(error) => format!("it was cancelled: {error}"),
        };
        tracing::error!(task = name, retry_in = ?delay, "the {name} task stopped ({why}); restarting it");
        readiness.task_failed(name, why);
        tokio::select! {
            // Shutdown wins over the pause.
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RESTART_DELAY);
        readiness.task_running(name);
        tracing::info!(task = name, "the {name} task is running again");
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-text panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// Collects log output in memory.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Log {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    /// One thread, with time paused: restarts happen without real waits.
    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_task_that_panics_is_logged_fails_readiness_and_comes_back() {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // A callsite first hit by a thread without a subscriber is cached as uninteresting.
        tracing::callsite::rebuild_interest_cache();
        // One thread: the supervised task logs on the thread that holds the subscriber.
        let runtime = paused_runtime();
        runtime.block_on(async {
            let readiness = Readiness::without_broker();
            let stop = CancellationToken::new();
            let starts = Arc::new(AtomicUsize::new(0));
            let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel();
            let supervisor = {
                let (readiness, stop, starts) = (readiness.clone(), stop.clone(), starts.clone());
                tokio::spawn(supervise("consumer", readiness, stop, move || {
                    let n = starts.fetch_add(1, Ordering::SeqCst);
                    let running = running_tx.clone();
                    async move {
                        if n == 0 {
                            panic!("lost the channel");
                        }
                        let _ = running.send(());
                        std::future::pending::<()>().await;
                    }
                }))
            };
            // Right after the panic, the task is down and /readyz says why.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let why = readiness.check().unwrap_err();
            assert!(
                why.contains("consumer") && why.contains("lost the channel"),
                "{why}"
            );
            // After the pause it is started again and readiness returns.
            running.recv().await.unwrap();
            assert_eq!(starts.load(Ordering::SeqCst), 2);
            assert!(readiness.check().is_ok());
            stop.cancel();
            supervisor.abort();
        });
        let text = log.text();
        a_task_that_returns_before_shutdown_is_restarted_too();
        assert!(
            text.contains("ERROR")
                && text.contains("the consumer task stopped (it panicked: lost the channel)"),
            "{text}"
        );
    }

    /// Part of the test above: they share the supervisor's log callsites, and a test running
    /// beside it without a subscriber would make them uninteresting to it.
    fn a_task_that_returns_before_shutdown_is_restarted_too() {
        let runtime = paused_runtime();
        runtime.block_on(async {
            let readiness = Readiness::without_broker();
            let stop = CancellationToken::new();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let handle = tokio::spawn(supervise(
                "housekeeping",
                readiness,
                stop.clone(),
                move || {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(());
                    }
                },
            ));
            for _ in 0..3 {
                rx.recv().await.expect("started again");
            }
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .unwrap()
                .unwrap();
        });
    }
}
