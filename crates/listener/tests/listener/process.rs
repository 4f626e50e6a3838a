//! The listener as a separate OS process, for tests that run several or kill one.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use accrual_testkit::{TestEnv, eventually};

/// A running `accrual-listener` process; killed when dropped.
pub struct ListenerProcess {
    child: Child,
    pub port: u16,
    http: reqwest::Client,
}

impl ListenerProcess {
    /// Starts the binary against the test's database, queues and Redis prefix, with `extra`
    /// environment variables on top, and waits until `/healthz` answers.
    pub async fn spawn(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_accrual-listener"));
        command
            .env("LISTENER_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &env.database.database_url)
            .env("AWS_ENDPOINT_URL", &env.sqs.aws_endpoint_url)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ACCRUAL_QUEUE", &env.sqs.accrual_queue)
            .env("ACCRUAL_DLQ", &env.sqs.accrual_dlq)
            .env("REDIS_URL", &env.redis.redis_url)
            .env("REDIS_KEY_PREFIX", &env.redis.redis_key_prefix)
            .env("RECEIVE_TASKS", "4")
            .env("RECEIVE_WAIT_SECS", "2")
            .env("RUST_LOG", "warn");
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        let process = Self {
            child,
            port,
            http: reqwest::Client::new(),
        };
        let health = format!("http://127.0.0.1:{port}/healthz");
        eventually(
            Duration::from_secs(30),
            "the listener process to answer /healthz",
            || async { process.http.get(&health).send().await.is_ok() },
        )
        .await;
        process
    }

    /// The value of one metric on the process's `/metrics` (for example
    /// `accrual_listener_points_written_total`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
            .parse()
            .unwrap()
    }

    /// SIGKILL: no chance to flush, delete or hand anything back.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        (status, started.elapsed())
    }
}

impl Drop for ListenerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
