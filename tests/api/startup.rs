//! The binary refuses bad configuration at start, naming the variable (contract section 1).

use std::process::{Command, Output};

fn run_with(vars: &[(&str, &str)]) -> Output {
    // An empty working directory, so no .env file is picked up, and a clean environment.
    let dir = std::env::temp_dir().join(format!("nb-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_notify-bridge"));
    command
        .env_clear()
        .current_dir(&dir)
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in vars {
        command.env(k, v);
    }
    // Bad configuration exits at once; a start that is wrongly accepted is caught by the
    // port: 1 is privileged and unbindable here, so even then the process ends.
    command.env(
        "PORT",
        vars.iter()
            .find(|(k, _)| *k == "PORT")
            .map(|(_, v)| *v)
            .unwrap_or("1"),
    );
    command.output().expect("binary runs")
}

#[test]
fn a_bad_value_exits_non_zero_naming_the_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("ENABLE_RABBITMQ", "yes"),
        ("RABBITMQ_PREFETCH", "lots"),
        ("RABBITMQ_URL", "http://not-amqp"),
        ("MAX_MESSAGE_BYTES", "-5"),
        ("POLL_INTERVAL_MS", "x"),
        ("LOG_FORMAT", "xml"),
    ] {
        let out = run_with(&[(var, value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(
            stderr.contains(var),
            "{var}={value}: stderr does not name it: {stderr}"
        );
    }
}

#[test]
fn a_public_host_without_jwt_secret_refuses_to_start() {
    let out = run_with(&[("HOST", "0.0.0.0")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("JWT_SECRET"), "{stderr}");
}
