//! The sender as a separate OS process, for tests that kill it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use accrual_testkit::{TestEnv, eventually};

/// A running `accrual-sender` process; killed when dropped.
pub struct SenderProcess {
    child: Child,
    pub address: String,
}

impl SenderProcess {
    /// Starts the binary on a free port against the test's database, queues and Redis prefix.
    pub async fn spawn(env: &TestEnv) -> Self {
        Self::spawn_with(env, &[]).await
    }

    /// Like [`Self::spawn`], with `extra` environment variables on top.
    pub async fn spawn_with(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        Self::start(env, extra, Stdio::inherit()).await
    }

    /// Like [`Self::spawn_with`], with the process's log (stderr) written to `log`.
    pub async fn spawn_logging_to(
        env: &TestEnv,
        extra: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Self {
        let file = std::fs::File::create(log).unwrap();
        Self::start(env, extra, Stdio::from(file)).await
    }

    async fn start(env: &TestEnv, extra: &[(&str, &str)], stderr: Stdio) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_accrual-sender"))
            .env("SENDER_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &env.database.database_url)
            .env("AWS_ENDPOINT_URL", &env.sqs.aws_endpoint_url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ACCRUAL_QUEUE", &env.sqs.accrual_queue)
            .env("ACCRUAL_DLQ", &env.sqs.accrual_dlq)
            .env("REDIS_URL", &env.redis.redis_url)
            .env("REDIS_KEY_PREFIX", &env.redis.redis_key_prefix)
            .env("CHUNK_ITEMS", "2000")
            .env("DISPATCH_LEASE", "3s")
            .env("DISPATCH_POLL", "200ms")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let address = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let health = format!("{address}/healthz");
        eventually(
            Duration::from_secs(30),
            "the sender process to listen",
            || async { http.get(&health).send().await.is_ok() },
        )
        .await;
        Self { child, address }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGKILL: no chance to release leases or finish anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl SenderProcess {
    /// SIGTERM, then waits for the exit; returns the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        (status, started.elapsed())
    }
}

impl Drop for SenderProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
