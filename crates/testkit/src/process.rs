//! Our binaries as OS processes, for tests that run several or kill one.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::{TestEnv, eventually};

/// A free TCP port on 127.0.0.1 (free when asked; the process started next binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestEnv {
    /// The environment that points a binary at this test's database, queues and Redis prefix, with
    /// static test credentials for the SDK.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.database.database_url.clone()),
            ("AWS_ENDPOINT_URL", self.sqs.aws_endpoint_url.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("ACCRUAL_QUEUE", self.sqs.accrual_queue.clone()),
            ("ACCRUAL_DLQ", self.sqs.accrual_dlq.clone()),
            ("REDIS_URL", self.redis.redis_url.clone()),
            ("REDIS_KEY_PREFIX", self.redis.redis_key_prefix.clone()),
        ]
    }
}

/// The environment that runs a process with its wall clock `offset` away from the machine's, e.g.
/// `"+10m"`, through libfaketime (Debian's `faketime` package, which `scripts/services-up`
/// installs): `LD_PRELOAD` catches the `clock_gettime` behind Rust's `SystemTime`, so `Utc::now()`
/// in the process is shifted while MySQL's `NOW(6)` is not. The monotonic clock (`Instant`, tokio's
/// timers) is left alone; `FAKETIME` is a fixed offset, so libfaketime's cache of it does no harm.
pub fn clock_shifted(offset: &str) -> Vec<(&'static str, String)> {
    let arch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let library = [arch.as_str(), "/usr/lib", "/usr/local/lib"]
        .iter()
        .map(|dir| format!("{dir}/faketime/libfaketime.so.1"))
        .find(|path| std::path::Path::new(path).exists())
        .expect(
            "libfaketime not found: install Debian's faketime package (scripts/services-up does)",
        );
    vec![
        ("LD_PRELOAD", library),
        ("FAKETIME", offset.to_owned()),
        ("DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}

/// A running service process that serves `/healthz` on `port`; killed when dropped.
pub struct ServiceProcess {
    child: Child,
    pub port: u16,
}

impl ServiceProcess {
    /// Spawns `command` and waits until `http://127.0.0.1:{port}/healthz` answers.
    pub async fn start(mut command: Command, port: u16) -> Self {
        let process = Self {
            child: command.spawn().unwrap(),
            port,
        };
        let health = format!("http://127.0.0.1:{port}/healthz");
        let http = reqwest::Client::new();
        eventually(
            Duration::from_secs(30),
            "the process to answer /healthz",
            || async { http.get(&health).send().await.is_ok() },
        )
        .await;
        process
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

    /// SIGKILL: no chance to finish, hand back or delete anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit; returns the exit status and how long the exit took.
    ///
    /// The wait yields to the runtime: a blocking wait would freeze a listener or sender running
    /// in the test's own runtime, perhaps inside a transaction holding the very row lock the
    /// stopping process needs to hand its work back (two CI runs: the job-row lock waited out the
    /// 30 s statement timeout).
    pub async fn terminate(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the metric `name` (a full sample name such as `accrual_listener_points_written_total`)
/// in a Prometheus/OpenMetrics text, if it has an unlabelled sample.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}
