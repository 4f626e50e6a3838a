//! The dispatchers' settings group and what they are built on besides it.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use accrual_core::settings::{Problems, parse_duration};
use sqlx::MySqlPool;

use super::DeadLetterQueue;
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

    /// How much of the listeners' work the queue may hold, in time (e.g. 2s): before claiming, a
    /// dispatcher waits while the queue holds more messages than the listeners drain in this long
    /// at their measured rate (never fewer than 100 messages). Short, so that what fairness decides at
    /// dispatch is what the listeners see next; 0 for no bound; otherwise at least 500ms and
    /// twice `DISPATCH_POLL`, or the queue could run dry between looks.
    #[arg(long, env = "DISPATCH_QUEUE_HORIZON", default_value = "2s", value_parser = parse_duration)]
    pub dispatch_queue_horizon: Duration,

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

/// The shortest horizon: less is a queue the listeners empty between two readings.
pub const MIN_QUEUE_HORIZON: Duration = Duration::from_millis(500);
/// The longest horizon: more is no bound worth the name.
pub const MAX_QUEUE_HORIZON: Duration = Duration::from_secs(3600);

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
            self.dispatch_queue_horizon.is_zero()
                || (self.dispatch_queue_horizon >= MIN_QUEUE_HORIZON
                    && self.dispatch_queue_horizon >= 2 * self.dispatch_poll
                    && self.dispatch_queue_horizon <= MAX_QUEUE_HORIZON),
            "DISPATCH_QUEUE_HORIZON must be 0 (no bound) or 500ms-60m and at least twice DISPATCH_POLL (the queue would run dry between looks)",
        );
        problems.require(
            std::env::var_os("DISPATCH_MAX_QUEUE_DEPTH").is_none(),
            "DISPATCH_MAX_QUEUE_DEPTH is gone: the queue's bound is now a time, DISPATCH_QUEUE_HORIZON (default 2s; docs/operations.md)",
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
