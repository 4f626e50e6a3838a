//! Listener settings: environment variables and the matching CLI flags.

use std::time::Duration;

use accrual_core::progress::RedisSettings;
use accrual_core::settings::{DatabaseSettings, SqsSettings, parse_duration};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "accrual-listener",
    version,
    about = "Consumes point accruals from SQS into MySQL"
)]
pub struct ListenerSettings {
    /// Address of the listener's own HTTP endpoints (`/healthz`, `/metrics`). Port 0 picks a free
    /// port; each listener process on one host needs its own.
    #[arg(long, env = "LISTENER_ADDR", default_value = "127.0.0.1:8081")]
    pub listener_addr: std::net::SocketAddr,

    /// Concurrent long-poll receive tasks (each asks for 10 messages a call).
    #[arg(long, env = "RECEIVE_TASKS", default_value_t = 8)]
    pub receive_tasks: usize,

    /// Long-poll wait per ReceiveMessage call, 0-20 seconds. Shutdown waits for at most one.
    #[arg(long, env = "RECEIVE_WAIT_SECS", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=20))]
    pub receive_wait_secs: i32,

    /// A batch is written when it holds this many points...
    #[arg(long, env = "BATCH_MAX_ROWS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_max_rows: u32,

    /// ...or when its first point has waited this long (e.g. 200ms).
    #[arg(long, env = "BATCH_LINGER", default_value = "200ms", value_parser = parse_duration)]
    pub batch_linger: Duration,

    /// After SIGTERM/SIGINT: how long to keep trying to write what is held (for example while
    /// MySQL is down) before handing those messages back to SQS and exiting.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub sqs: SqsSettings,

    #[command(flatten)]
    pub redis: RedisSettings,
}
