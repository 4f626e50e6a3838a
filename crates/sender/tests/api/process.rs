//! The sender as a separate OS process, for tests that kill it.

use std::process::{Command, Stdio};

use accrual_testkit::TestEnv;
use accrual_testkit::process::{ServiceProcess, free_port};

/// A running `accrual-sender` process; killed when dropped.
pub struct SenderProcess {
    process: ServiceProcess,
    /// The API port, as `http://127.0.0.1:{port}`.
    pub address: String,
    /// The operations port (`/metrics`, `/readyz`), as `http://127.0.0.1:{port}`.
    pub ops_address: String,
}

impl std::ops::Deref for SenderProcess {
    type Target = ServiceProcess;
    fn deref(&self) -> &ServiceProcess {
        &self.process
    }
}

impl std::ops::DerefMut for SenderProcess {
    fn deref_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }
}

impl SenderProcess {
    /// Starts the binary on two free ports (API and operations) against the test's database, queues and Redis prefix.
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
        let port = free_port();
        // Two ports free at once: the same one twice would make the sender refuse to start.
        let ops_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_accrual-sender"));
        command
            .envs(env.service_env())
            .env("SENDER_ADDR", format!("127.0.0.1:{port}"))
            .env("SENDER_OPS_ADDR", format!("127.0.0.1:{ops_port}"))
            .env("ACCRUAL_API_KEYS", crate::helpers::DEV_KEYS)
            .env("CHUNK_ITEMS", "2000")
            .env("DISPATCH_LEASE", "3s")
            .env("DISPATCH_POLL", "200ms")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr);
        Self {
            process: ServiceProcess::start(command, port).await,
            address: format!("http://127.0.0.1:{port}"),
            ops_address: format!("http://127.0.0.1:{ops_port}"),
        }
    }
}
