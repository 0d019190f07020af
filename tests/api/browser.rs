//! End-to-end in headless Chromium (Debian's, driven by playwright-core): the customer page and
//! the CMS dashboard show notifications in real time, by polling, and after a cut connection.
//! Screenshots land in `artifacts/screenshots/`.

use std::process::Stdio;

use crate::support::{SECRET, Settings, TestApp};

/// Runs one `tests/browser/*.mjs` script against `app` and asserts it passed.
async fn run_browser_test(app: &TestApp, script: &str, extra: &[&str]) {
    let path = format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(&path)
            .args(["--base", &app.base, "--jwt-secret", SECRET])
            .args(extra)
            // The broker under test, for the pages' scripts that publish to it.
            .env("AMQP_URL", crate::support::broker_url())
            .env(
                "SCREENSHOT_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts/screenshots"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("browser test finished in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("PASS"), "{script}: {stdout}");
}

#[tokio::test]
async fn pages_show_a_notification_published_to_the_exchange_in_real_time() {
    let app = TestApp::spawn(Settings::rabbit()).await;
    run_browser_test(&app, "realtime.mjs", &["--exchange", &app.exchange]).await;
    app.stop().await;
}

#[tokio::test]
async fn pages_show_a_posted_notification_after_a_poll_without_rabbitmq() {
    let app = TestApp::spawn(Settings::local().var("POLL_INTERVAL_MS", "500")).await;
    run_browser_test(&app, "polling.mjs", &[]).await;
    app.stop().await;
}

#[tokio::test]
async fn a_notification_sent_while_the_socket_was_cut_appears_once() {
    let app = TestApp::spawn(Settings::rabbit().var("POLL_INTERVAL_MS", "600000")).await;
    run_browser_test(&app, "reconnect.mjs", &["--exchange", &app.exchange]).await;
    app.stop().await;
}
