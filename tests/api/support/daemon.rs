//! `Daemon`: the real `notify-bridge` binary as a child process, for what an in-process
//! `TestApp` cannot show: signals, exit codes, restarts on the same port, the log as written,
//! the process's memory.
//!
//! It starts in a clean environment (only `PORT`, `PATH` and what the caller sets) and in an
//! empty working directory, so no `.env` file of the machine's is picked up. Its stderr is always
//! drained (a full pipe would block the daemon's logging), kept, and echoed when `TEST_LOG` is
//! set. Every wait is bounded. It is killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::{WAIT, broker_vars, unique};

/// The repository's `public/`, for daemons that serve the pages from disk.
pub const PUBLIC_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/public");

/// What to start: see [`Daemon::builder`].
pub struct Builder {
    /// The executable: the crate's binary unless a test runs a copy of it.
    binary: PathBuf,
    /// A given port (a restart where the last instance was), or `None` for a free one.
    port: Option<u16>,
    /// In order: a later value for the same name wins, as with `Command::env`.
    vars: Vec<(String, String)>,
    /// A given working directory, or `None` for a fresh empty one.
    dir: Option<PathBuf>,
}

impl Builder {
    /// On `port` rather than a free one: the next instance where its clients left the last.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn vars(mut self, vars: &[(&str, &str)]) -> Self {
        for (name, value) in vars {
            self = self.var(name, value);
        }
        self
    }

    /// The broker under test ([`broker_vars`]: its `RABBITMQ_URL`, and `RABBITMQ_STREAM=off`
    /// in stream-less mode). A test's own `RABBITMQ_URL`, set after this, wins.
    pub fn broker(mut self) -> Self {
        self.vars.extend(broker_vars());
        self
    }

    /// `LOG_FORMAT=json`: one JSON object per line, what [`Daemon::wait_log`] reads.
    pub fn json_logs(self) -> Self {
        self.var("LOG_FORMAT", "json")
    }

    /// `PUBLIC_DIR` set to the repository's `public/`.
    pub fn public_dir(self) -> Self {
        self.var("PUBLIC_DIR", PUBLIC_DIR)
    }

    /// Runs `binary` (a copy of the daemon) instead of the crate's own.
    pub fn binary(mut self, binary: &Path) -> Self {
        self.binary = binary.to_owned();
        self
    }

    /// Runs in `dir`, which the caller owns, instead of a fresh empty directory.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    /// Spawns the process (it is not waited for: see [`Daemon::wait_listening`] and
    /// [`Daemon::wait_ready`]). Needs a Tokio runtime, which drains its stderr.
    pub fn start(self) -> Daemon {
        let port = self.port.unwrap_or_else(free_port);
        let (dir, own_dir) = match self.dir {
            Some(dir) => (dir, false),
            None => {
                let dir = std::env::temp_dir().join(unique("nb-daemon"));
                std::fs::create_dir_all(&dir).expect("create the daemon's directory");
                (dir, true)
            }
        };
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .envs(self.vars)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the daemon binary starts");
        // Unwrap: stderr was piped just above.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let echo = std::env::var_os("TEST_LOG").is_some();
            // Ends when the daemon's stderr closes, that is when it has exited.
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[daemon {port}] {line}");
                }
                // The daemon may outlive the test's interest in its log.
                let _ = tx.send(line);
            }
        });
        Daemon {
            child,
            port,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            base: format!("http://127.0.0.1:{port}"),
            log,
            seen: Vec::new(),
            dir: own_dir.then_some(dir),
        }
    }
}

/// A port nothing listened on a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|probe| probe.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The running binary: see the module's documentation.
pub struct Daemon {
    child: tokio::process::Child,
    pub port: u16,
    /// `127.0.0.1:port`, for sockets.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port`, for HTTP.
    pub base: String,
    /// Its stderr, line by line, as the drain task reads it.
    log: mpsc::UnboundedReceiver<String>,
    /// Every line taken from `log` so far.
    seen: Vec<String>,
    /// The fresh directory it runs in, removed on drop; `None` if the caller's.
    dir: Option<PathBuf>,
}

impl Daemon {
    /// A daemon on a free port with nothing set: add what the test needs, then `start()`.
    pub fn builder() -> Builder {
        Builder {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_notify-bridge")),
            port: None,
            vars: Vec::new(),
            dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        // Unwrap: `None` only once the child has been waited for, which the methods that do
        // so (`wait_exit`, `stop`) leave to the end of a test.
        self.child.id().expect("the daemon has not been waited for")
    }

    /// Whether the process still runs (it may have exited at once, e.g. its port was taken).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (bounded) until its port accepts connections.
    pub async fn wait_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(self.addr).await.is_err() {
            self.give_up_if(deadline, "never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + WAIT * 2;
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            self.give_up_if(deadline, "never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics with the log so far if the deadline has passed or the process has exited.
    fn give_up_if(&mut self, deadline: Instant, what: &str) {
        let exited = !self.is_running();
        if exited || Instant::now() >= deadline {
            self.drain();
            let how = if exited { "exited" } else { "timed out" };
            panic!(
                "the daemon on port {} {what} ({how}); its log:\n{}",
                self.port,
                self.seen.join("\n")
            );
        }
    }

    /// Waits (bounded) for a log line that satisfies `accept`, and returns it.
    pub async fn wait_line(&mut self, what: &str, accept: impl Fn(&str) -> bool) -> String {
        let found = timeout(WAIT * 2, async {
            while let Some(line) = self.log.recv().await {
                self.seen.push(line.clone());
                if accept(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no log line {what}; the log:\n{}", self.seen.join("\n")),
        }
    }

    /// Waits (bounded) for a JSON log line (see [`Builder::json_logs`]) that satisfies
    /// `accept`, and returns it parsed. Lines that are not JSON are skipped.
    pub async fn wait_log(&mut self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let line = self
            .wait_line(what, |line| {
                serde_json::from_str::<Value>(line).is_ok_and(|event| accept(&event))
            })
            .await;
        // Unwrap: the line was accepted only if it parsed.
        serde_json::from_str(&line).unwrap()
    }

    /// Takes the lines logged so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.log.try_recv() {
            self.seen.push(line);
        }
    }

    /// Every line taken so far (by the waits, [`Daemon::drain`] and [`Daemon::wait_exit`]).
    pub fn lines(&self) -> &[String] {
        &self.seen
    }

    /// Sends `signal` ("TERM", "INT", "KILL", ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits (bounded) for the process to exit, then for the rest of its log.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let Some(status) = self.wait_exit_within(WAIT).await else {
            self.drain();
            panic!(
                "the daemon did not exit within {WAIT:?}; its log:\n{}",
                self.seen.join("\n")
            );
        };
        status
    }

    /// The exit status if the process exits within `limit` (then its whole log has been
    /// taken), or `None` if it still runs.
    pub async fn wait_exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = timeout(limit, self.child.wait())
            .await
            .ok()?
            .expect("wait for the daemon");
        // Bounded: the pipe closes once the daemon has exited (unless it left a child holding
        // it, which it does not).
        let _ = timeout(WAIT, async {
            while let Some(line) = self.log.recv().await {
                self.seen.push(line);
            }
        })
        .await;
        Some(status)
    }

    /// SIGTERM; asserts that it exits 0 in time, and returns its whole log.
    pub async fn stop(mut self) -> Vec<String> {
        self.signal("TERM");
        let status = self.wait_exit().await;
        assert!(status.success(), "exit status {status:?}");
        std::mem::take(&mut self.seen)
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// The most resident memory it has had, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// A `kB` field of `/proc/<pid>/status`.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the daemon's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The process itself is killed by `kill_on_drop` (set at spawn) when `child` drops
        // after this, and reaped by Tokio. Its directory holds nothing of the test's.
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
