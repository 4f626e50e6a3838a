//! The listener as a separate OS process, for tests that run several or kill one.

use std::process::Command;

use accrual_testkit::TestEnv;
use accrual_testkit::process::{ServiceProcess, free_port, metric};

/// A running `accrual-listener` process; killed when dropped.
pub struct ListenerProcess {
    process: ServiceProcess,
    http: reqwest::Client,
}

impl std::ops::Deref for ListenerProcess {
    type Target = ServiceProcess;
    fn deref(&self) -> &ServiceProcess {
        &self.process
    }
}

impl std::ops::DerefMut for ListenerProcess {
    fn deref_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }
}

impl ListenerProcess {
    /// Starts the binary against the test's database, queues and Redis prefix, with `extra`
    /// environment variables on top, and waits until `/healthz` answers.
    pub async fn spawn(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_accrual-listener"));
        command
            .envs(env.service_env())
            .env("LISTENER_ADDR", format!("127.0.0.1:{port}"))
            .env("RECEIVE_TASKS", "4")
            .env("RECEIVE_WAIT_SECS", "2")
            .env("RUST_LOG", "warn")
            .envs(extra.iter().copied());
        Self {
            process: ServiceProcess::start(command, port).await,
            http: reqwest::Client::new(),
        }
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
        metric(&text, name).unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}
