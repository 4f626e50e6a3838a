//! The dispatchers' settings group and what they are built on besides it.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use accrual_core::settings::{Problems, parse_duration};
use sqlx::MySqlPool;

use super::DeadLetterQueue;
use super::backlog;
use crate::metrics::SenderMetrics;
use crate::store::chunks::ClientWeights;

/// The dispatchers: how many, how fast, how far ahead of the listeners, and their leases.
#[derive(Debug, Clone, clap::Args)]
pub struct DispatchSettings {
    /// Dispatcher tasks in this replica (each fans out one chunk at a time); 0 makes an
    /// accept-only replica.
    #[arg(long, env = "DISPATCH_TASKS", default_value_t = 2)]
    pub dispatch_tasks: usize,

    /// Most SendMessageBatch calls in flight per dispatcher task (at least 1).
    #[arg(long, env = "SEND_CONCURRENCY", default_value_t = 8)]
    pub send_concurrency: usize,

    /// Most messages the queue may hold (visible and in flight) before this replica's dispatchers
    /// wait for the listeners: how far dispatch may run ahead of the ledger, and so how much work
    /// a crash can leave in flight. 0: no bound; otherwise at least 1000. Keep it above the KEDA
    /// trigger's `queueLength` times the listeners' `maxReplicaCount`, so that the queue can still
    /// grow deep enough to scale the listeners out fully.
    #[arg(long, env = "DISPATCH_MAX_QUEUE_DEPTH", default_value_t = 1_000_000)]
    pub dispatch_max_queue_depth: u64,

    /// Points packed into one SQS message (`{"v":2,"points":[…]}`); 1 sends one v1 message per
    /// point. A message also stays under 256 KiB, so very large values are capped by size.
    #[arg(long, env = "ACCRUAL_POINTS_PER_MESSAGE", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub points_per_message: u32,

    /// Nice value (0-19) of the threads that run dispatch, completion, retention and webhooks
    /// (Linux): above 0, requests get the CPU before them, so a large request is answered quickly
    /// while earlier jobs are sent. 0 keeps them at the sender's priority.
    #[arg(long, env = "DISPATCH_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub dispatch_nice: i32,

    /// How long a claimed chunk stays with its replica without renewal (e.g. 60s; at least 1s).
    #[arg(long, env = "DISPATCH_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub dispatch_lease: Duration,

    /// Each client's share of dispatch relative to the others, as `client=weight` pairs separated
    /// by commas (e.g. `crm=3,service=1`; weights 0.01-1000); a client not named weighs 1. Due
    /// chunks go out client by client in proportion to these weights (in points), then job by job
    /// within a client. Give every replica the same value.
    #[arg(long, env = "DISPATCH_CLIENT_WEIGHTS", default_value = "", value_parser = ClientWeights::parse)]
    pub dispatch_client_weights: ClientWeights,

    /// Give every message its job's client as `MessageGroupId`, so Amazon SQS fair queues
    /// (standard queues) keep a quiet client's messages from waiting behind a busy one's; `false`
    /// for an SQS emulator that refuses the field on a standard queue (LocalStack 4.9 and fauxqs
    /// 2.4 accept it).
    #[arg(long, env = "DISPATCH_MESSAGE_GROUPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub dispatch_message_groups: bool,

    /// How often idle dispatchers look for due chunks, e.g. reserved jobs coming due (e.g. 1s; at
    /// least 10ms).
    #[arg(long, env = "DISPATCH_POLL", default_value = "1s", value_parser = parse_duration)]
    pub dispatch_poll: Duration,
}

/// A lease is renewed every third of its length; shorter than this, renewals would be all it does.
pub const MIN_DISPATCH_LEASE: Duration = Duration::from_secs(1);

/// Idle dispatchers poll MySQL this often at most; below it they would do little else.
pub const MIN_DISPATCH_POLL: Duration = Duration::from_millis(10);

impl DispatchSettings {
    /// Refuses values that would make the dispatchers spin, stall or send nothing.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        problems.require(
            self.dispatch_lease >= MIN_DISPATCH_LEASE,
            "DISPATCH_LEASE must be at least 1s (a lease is renewed every third of it)",
        );
        problems.require(
            self.dispatch_poll >= MIN_DISPATCH_POLL,
            "DISPATCH_POLL must be at least 10ms (idle dispatchers would query MySQL without pause)",
        );
        problems.require(
            (0..=19).contains(&self.dispatch_nice),
            "DISPATCH_NICE must be 0-19 (a nice value; below 0 would raise the background above requests)",
        );
        problems.require(
            self.send_concurrency >= 1,
            "SEND_CONCURRENCY must be at least 1 (no chunk could be sent)",
        );
        problems.require(
            self.dispatch_max_queue_depth == 0
                || self.dispatch_max_queue_depth >= backlog::MIN_MAX_DEPTH,
            "DISPATCH_MAX_QUEUE_DEPTH must be 0 (no bound) or at least 1000 (dispatch would stop and start all the time)",
        );
        problems.require(
            (1..=10_000).contains(&self.points_per_message),
            "ACCRUAL_POINTS_PER_MESSAGE must be 1-10000",
        );
        problems.into_group_result()
    }
}

/// What the dispatchers work with, besides their settings.
#[derive(Clone, Debug)]
pub struct DispatchDeps {
    /// The background's pool.
    pub pool: MySqlPool,
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub dead_letters: DeadLetterQueue,
    pub progress: Progress,
    pub metrics: Arc<SenderMetrics>,
    /// This replica's name in leases.
    pub owner: String,
}
