//! Sender settings: environment variables and the matching CLI flags.

use std::net::SocketAddr;

use accrual_core::settings::{DatabaseSettings, SqsSettings};

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

    /// Clients and their keys: `client_a:key_a,client_b:key_b`.
    #[arg(
        long,
        env = "ACCRUAL_API_KEYS",
        default_value = "client_a:key_a,client_b:key_b",
        hide_env_values = true
    )]
    pub accrual_api_keys: String,

    /// Most SendMessageBatch calls in flight per job fan-out.
    #[arg(long, env = "SEND_CONCURRENCY", default_value_t = 16)]
    pub send_concurrency: usize,

    /// Seconds to let running fan-outs finish after SIGTERM before exiting anyway.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub sqs: SqsSettings,
}
