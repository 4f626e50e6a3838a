//! Sender settings: environment variables and the matching CLI flags.

use std::net::SocketAddr;

use std::time::Duration;

use accrual_core::progress::RedisSettings;
use accrual_core::settings::{DatabaseSettings, SqsSettings, parse_duration};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "accrual-sender",
    version,
    about = "HTTP API that accepts bulk point accruals"
)]
pub struct SenderSettings {
    /// Address the HTTP API listens on.
    #[arg(long, env = "SENDER_ADDR", default_value = "127.0.0.1:8080")]
    pub sender_addr: SocketAddr,

    /// Clients and their keys, comma-separated: `client:sha256:<hex digest>` (what `accrualctl keys
    /// new` prints) or, for development, `client:key`. Empty to use only `ACCRUAL_API_KEYS_FILE`.
    #[arg(
        long,
        env = "ACCRUAL_API_KEYS",
        default_value = "client_a:key_a,client_b:key_b",
        hide_env_values = true
    )]
    pub accrual_api_keys: String,

    /// A file of further keys, one `client:sha256:<hex digest>` per line (`#` comments).
    #[arg(long, env = "ACCRUAL_API_KEYS_FILE")]
    pub accrual_api_keys_file: Option<std::path::PathBuf>,

    /// Requests per minute a client may make (any route but health, metrics and the contract).
    #[arg(long, env = "RATE_LIMIT_REQUESTS_PER_MINUTE", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_limit_requests_per_minute: u64,

    /// Points per minute a client may submit.
    #[arg(long, env = "RATE_LIMIT_POINTS_PER_MINUTE", default_value_t = 3_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_limit_points_per_minute: u64,

    /// Per-client limits that replace the defaults: `client=<requests>/<points>,...` per minute.
    #[arg(long, env = "RATE_LIMITS", default_value = "")]
    pub rate_limits: String,

    /// Most SendMessageBatch calls in flight per dispatcher task.
    #[arg(long, env = "SEND_CONCURRENCY", default_value_t = 8)]
    pub send_concurrency: usize,

    /// Dispatcher tasks in this replica (each fans out one chunk at a time); 0 makes an
    /// accept-only replica.
    #[arg(long, env = "DISPATCH_TASKS", default_value_t = 2)]
    pub dispatch_tasks: usize,

    /// Points per stored chunk: the unit a dispatcher claims and re-sends after a crash.
    #[arg(long, env = "CHUNK_ITEMS", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub chunk_items: u32,

    /// Points packed into one SQS message (`{"v":2,"points":[…]}`); 1 sends one v1 message per
    /// point. A message also stays under 256 KiB, so very large values are capped by size.
    #[arg(long, env = "ACCRUAL_POINTS_PER_MESSAGE", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub points_per_message: u32,

    /// How long a claimed chunk stays with its replica without renewal (e.g. 60s).
    #[arg(long, env = "DISPATCH_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub dispatch_lease: Duration,

    /// How often idle dispatchers look for due chunks, e.g. reserved jobs coming due (e.g. 1s).
    #[arg(long, env = "DISPATCH_POLL", default_value = "1s", value_parser = parse_duration)]
    pub dispatch_poll: Duration,

    /// Seconds to let requests and dispatchers finish after SIGTERM before exiting anyway.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub sqs: SqsSettings,

    #[command(flatten)]
    pub redis: RedisSettings,
}
