//! The binary refuses bad configuration at start, naming the variable (contract section 1).

use std::process::ExitStatus;

use crate::support::daemon::Daemon;

/// The binary with `vars` (in an empty directory, so no .env file is picked up, and a clean
/// environment): its exit status and log.
async fn run_with(vars: &[(&str, &str)]) -> (ExitStatus, String) {
    // Bad configuration exits at once; a start that is wrongly accepted is caught by the
    // port: 1 is privileged and unbindable here, so even then the process ends. A `PORT` in
    // `vars` comes later, and wins.
    let mut daemon = Daemon::builder().port(1).vars(vars).start();
    let status = daemon.wait_exit().await;
    (status, daemon.lines().join("\n"))
}

#[tokio::test]
async fn a_bad_value_exits_non_zero_naming_the_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("ENABLE_RABBITMQ", "yes"),
        ("RABBITMQ_PREFETCH", "lots"),
        ("RABBITMQ_URL", "http://not-amqp"),
        ("MAX_MESSAGE_BYTES", "-5"),
        ("POLL_INTERVAL_MS", "x"),
        ("LOG_FORMAT", "xml"),
    ] {
        let (status, stderr) = run_with(&[(var, value)]).await;
        assert!(!status.success(), "{var}={value} was accepted");
        assert!(
            stderr.contains(var),
            "{var}={value}: stderr does not name it: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_public_host_without_jwt_secret_refuses_to_start() {
    let (status, stderr) = run_with(&[("HOST", "0.0.0.0")]).await;
    assert!(!status.success());
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
}
