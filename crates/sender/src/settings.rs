//! Sender settings: environment variables and the matching CLI flags.

use std::net::SocketAddr;
use std::time::Duration;

use accrual_core::progress::RedisSettings;
use accrual_core::retention::RetentionSettings;
use accrual_core::settings::{DatabaseSettings, Problems, SqsSettings, parse_duration};

use crate::api::accruals::MAX_BODY_BYTES;

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
    /// new` prints) or, for development, `client:key`. None by default: set it, or
    /// `ACCRUAL_API_KEYS_FILE`, or both.
    #[arg(
        long,
        env = "ACCRUAL_API_KEYS",
        default_value = "",
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

    /// Most SendMessageBatch calls in flight per dispatcher task (at least 1).
    #[arg(long, env = "SEND_CONCURRENCY", default_value_t = 8)]
    pub send_concurrency: usize,

    /// Dispatcher tasks in this replica (each fans out one chunk at a time); 0 makes an
    /// accept-only replica.
    #[arg(long, env = "DISPATCH_TASKS", default_value_t = 2)]
    pub dispatch_tasks: usize,

    /// Most messages the queue may hold (visible and in flight) before this replica's dispatchers
    /// wait for the listeners: how far dispatch may run ahead of the ledger, and so how much work
    /// a crash can leave in flight. 0: no bound; otherwise at least 1000. Keep it above the KEDA
    /// trigger's `queueLength` times the listeners' `maxReplicaCount`, so that the queue can still
    /// grow deep enough to scale the listeners out fully.
    #[arg(long, env = "DISPATCH_MAX_QUEUE_DEPTH", default_value_t = 1_000_000)]
    pub dispatch_max_queue_depth: u64,

    /// Points per stored chunk: the unit a dispatcher claims and re-sends after a crash.
    #[arg(long, env = "CHUNK_ITEMS", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub chunk_items: u32,

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

    /// How often idle dispatchers look for due chunks, e.g. reserved jobs coming due (e.g. 1s; at
    /// least 10ms).
    #[arg(long, env = "DISPATCH_POLL", default_value = "1s", value_parser = parse_duration)]
    pub dispatch_poll: Duration,

    /// Seconds to let requests and dispatchers finish after SIGTERM; connections still open then
    /// are dropped.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Longest a client may take to send a request's headers, counted from the connection's
    /// accept or from the first byte of a later request on a kept-alive connection (e.g. 10s).
    #[arg(long, env = "SENDER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub sender_header_read_timeout: Duration,

    /// Longest a kept-alive connection may wait for its next request before it is closed (e.g.
    /// 75s).
    #[arg(long, env = "SENDER_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub sender_idle_timeout: Duration,

    /// Most HTTP connections served at once; further ones wait in the listen backlog until one
    /// closes. Keep it under the open-file limit less the pools' connections.
    #[arg(long, env = "SENDER_MAX_CONNECTIONS", default_value_t = 1024)]
    pub sender_max_connections: usize,

    /// Slowest average rate, in bytes per second, at which a request body may arrive once
    /// `SENDER_BODY_RATE_GRACE` has passed; a slower body is refused with 408.
    #[arg(long, env = "SENDER_BODY_MIN_BYTES_PER_SEC", default_value_t = 64 * 1024)]
    pub sender_body_min_bytes_per_sec: u64,

    /// How long a request body may take before `SENDER_BODY_MIN_BYTES_PER_SEC` applies (e.g. 5s).
    #[arg(long, env = "SENDER_BODY_RATE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub sender_body_rate_grace: Duration,

    /// Longest a request body may take to arrive, whatever its rate (e.g. 300s); then 408.
    #[arg(long, env = "SENDER_BODY_TIMEOUT", default_value = "300s", value_parser = parse_duration)]
    pub sender_body_timeout: Duration,

    /// Bytes of request bodies held at once, across all uploads in flight (at least the 100 MiB
    /// largest body); a body that does not fit is refused with 503 and `Retry-After`.
    #[arg(long, env = "SENDER_BODY_BUDGET_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub sender_body_budget_bytes: u64,

    /// How often the retention task looks for chunk bodies and idempotency keys past their
    /// retention (e.g. 10m; at least 1s, at most 24h). One replica at a time does it, by lease.
    #[arg(long, env = "RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub retention_interval: Duration,

    #[command(flatten)]
    pub retention: RetentionSettings,

    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookSettings,

    #[command(flatten)]
    pub reconciler: crate::reconciler::ReconcilerSettings,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub sqs: SqsSettings,

    #[command(flatten)]
    pub redis: RedisSettings,
}

/// A lease is renewed every third of its length; shorter than this, renewals would be all it does.
pub const MIN_DISPATCH_LEASE: Duration = Duration::from_secs(1);

/// Idle dispatchers poll MySQL this often at most; below it they would do little else.
pub const MIN_DISPATCH_POLL: Duration = Duration::from_millis(10);

/// The longest HTTP timeout accepted: longer is no limit at all, and far enough ahead a deadline
/// would overflow the clock.
pub const MAX_HTTP_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The retention task sweeps at most this often; more often would be all it does.
pub const MIN_RETENTION_INTERVAL: Duration = Duration::from_secs(1);

/// Above this a semaphore cannot count the bytes (tokio's `Semaphore::MAX_PERMITS`).
pub const MAX_BODY_BUDGET_BYTES: u64 = tokio::sync::Semaphore::MAX_PERMITS as u64;

impl SenderSettings {
    /// Refuses values that would make a component spin, hang or panic, naming each one. Flags
    /// with a range are checked when parsed already; they are checked again here for settings
    /// built in code.
    pub fn validate(&self) -> anyhow::Result<()> {
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
                || self.dispatch_max_queue_depth >= crate::backlog::MIN_MAX_DEPTH,
            "DISPATCH_MAX_QUEUE_DEPTH must be 0 (no bound) or at least 1000 (dispatch would stop and start all the time)",
        );
        problems.require(
            (1..=50_000).contains(&self.chunk_items),
            "CHUNK_ITEMS must be 1-50000",
        );
        problems.require(
            (1..=10_000).contains(&self.points_per_message),
            "ACCRUAL_POINTS_PER_MESSAGE must be 1-10000",
        );
        problems.require(
            self.rate_limit_requests_per_minute >= 1 && self.rate_limit_points_per_minute >= 1,
            "RATE_LIMIT_REQUESTS_PER_MINUTE and RATE_LIMIT_POINTS_PER_MINUTE must be at least 1",
        );
        for (timeout, name) in [
            (
                self.sender_header_read_timeout,
                "SENDER_HEADER_READ_TIMEOUT",
            ),
            (self.sender_idle_timeout, "SENDER_IDLE_TIMEOUT"),
            (self.sender_body_rate_grace, "SENDER_BODY_RATE_GRACE"),
            (self.sender_body_timeout, "SENDER_BODY_TIMEOUT"),
        ] {
            problems.require(
                !timeout.is_zero() && timeout <= MAX_HTTP_TIMEOUT,
                &format!(
                    "{name} must be above zero (every connection or body would be cut) and at most 24h"
                ),
            );
        }
        problems.require(
            self.sender_max_connections >= 1,
            "SENDER_MAX_CONNECTIONS must be at least 1 (no connection would be served)",
        );
        problems.require(
            self.sender_body_min_bytes_per_sec >= 1,
            "SENDER_BODY_MIN_BYTES_PER_SEC must be at least 1",
        );
        problems.require(
            (MAX_BODY_BYTES as u64..=MAX_BODY_BUDGET_BYTES)
                .contains(&self.sender_body_budget_bytes),
            &format!(
                "SENDER_BODY_BUDGET_BYTES must be {MAX_BODY_BYTES}-{MAX_BODY_BUDGET_BYTES} (at least one largest body must fit)"
            ),
        );
        problems.require(
            (MIN_RETENTION_INTERVAL..=MAX_HTTP_TIMEOUT).contains(&self.retention_interval),
            "RETENTION_INTERVAL must be at least 1s and at most 24h",
        );
        problems.check(self.retention.validate());
        problems.check(self.webhooks.validate());
        problems.check(self.reconciler.validate());
        problems.check(self.database.validate());
        problems.check(self.sqs.validate());
        problems.check(self.redis.validate());
        problems.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> SenderSettings {
        let mut all = vec!["accrual-sender", "--accrual-api-keys", "client_a:key_a"];
        all.extend_from_slice(args);
        SenderSettings::try_parse_from(all).expect("parses")
    }

    fn refusal(settings: &SenderSettings) -> String {
        settings.validate().expect_err("refused").to_string()
    }

    #[test]
    fn the_defaults_are_valid_and_hold_no_api_keys() {
        let settings = SenderSettings::try_parse_from(["accrual-sender"]).expect("parses");
        assert!(settings.validate().is_ok());
        assert_eq!(settings.accrual_api_keys, "");
    }

    #[test]
    fn settings_that_would_spin_or_hang_are_refused_by_name() {
        for (args, named) in [
            (&["--dispatch-lease", "0s"][..], "DISPATCH_LEASE"),
            (&["--dispatch-lease", "500ms"], "DISPATCH_LEASE"),
            (&["--dispatch-poll", "0ms"], "DISPATCH_POLL"),
            (&["--dispatch-poll", "1ms"], "DISPATCH_POLL"),
            (
                &["--dispatch-max-queue-depth", "999"],
                "DISPATCH_MAX_QUEUE_DEPTH",
            ),
            (
                &["--dispatch-max-queue-depth", "1"],
                "DISPATCH_MAX_QUEUE_DEPTH",
            ),
            (&["--send-concurrency", "0"], "SEND_CONCURRENCY"),
            (
                &["--database-max-connections", "0"],
                "DATABASE_MAX_CONNECTIONS",
            ),
            (&["--redis-url", "localhost"], "REDIS_URL"),
            (
                &["--sender-header-read-timeout", "0s"],
                "SENDER_HEADER_READ_TIMEOUT",
            ),
            (&["--sender-idle-timeout", "0ms"], "SENDER_IDLE_TIMEOUT"),
            (
                &["--sender-body-rate-grace", "0s"],
                "SENDER_BODY_RATE_GRACE",
            ),
            (&["--sender-body-timeout", "0s"], "SENDER_BODY_TIMEOUT"),
            (&["--sender-idle-timeout", "1441m"], "SENDER_IDLE_TIMEOUT"),
            (&["--sender-max-connections", "0"], "SENDER_MAX_CONNECTIONS"),
            (
                &["--sender-body-min-bytes-per-sec", "0"],
                "SENDER_BODY_MIN_BYTES_PER_SEC",
            ),
            (
                &["--sender-body-budget-bytes", "104857599"],
                "SENDER_BODY_BUDGET_BYTES",
            ),
            (&["--retention-interval", "0s"], "RETENTION_INTERVAL"),
            (&["--reconcile-interval", "0s"], "RECONCILE_INTERVAL"),
            (&["--reconcile-quiet-floor", "0s"], "RECONCILE_QUIET_FLOOR"),
            (&["--retention-interval", "1441m"], "RETENTION_INTERVAL"),
            (&["--results-retention-days", "0"], "RESULTS_RETENTION_DAYS"),
            (
                &["--results-retention-days", "3651"],
                "RESULTS_RETENTION_DAYS",
            ),
            (
                &["--idempotency-retention-hours", "0s"],
                "IDEMPOTENCY_RETENTION_HOURS",
            ),
        ] {
            let message = refusal(&parse(args));
            assert!(message.contains(named), "{args:?}: {message}");
        }
    }

    #[test]
    fn retentions_are_days_and_hours_or_a_duration_with_its_unit() {
        let defaults = parse(&[]);
        assert_eq!(
            defaults.retention.results_retention,
            Duration::from_secs(30 * 24 * 3_600)
        );
        assert_eq!(
            defaults.retention.idempotency_retention,
            Duration::from_secs(168 * 3_600)
        );
        assert_eq!(defaults.retention_interval, Duration::from_secs(600));
        let short = parse(&[
            "--results-retention-days",
            "90s",
            "--idempotency-retention-hours",
            "2",
        ]);
        assert_eq!(short.retention.results_retention, Duration::from_secs(90));
        assert_eq!(
            short.retention.idempotency_retention,
            Duration::from_secs(7_200)
        );
        assert!(short.validate().is_ok());
    }

    #[test]
    fn ranged_flags_are_refused_when_parsed_and_when_built_in_code() {
        for args in [
            &["--chunk-items", "0"][..],
            &["--rate-limit-requests-per-minute", "0"],
            &["--rate-limit-points-per-minute", "0"],
            &["--accrual-points-per-message", "0"],
            &["--dispatch-nice", "20"],
            &["--dispatch-nice", "-1"],
        ] {
            let mut all = vec!["accrual-sender"];
            all.extend_from_slice(args);
            assert!(SenderSettings::try_parse_from(all).is_err(), "{args:?}");
        }
        let mut settings = parse(&[]);
        settings.chunk_items = 0;
        settings.rate_limit_points_per_minute = 0;
        let message = refusal(&settings);
        assert!(
            message.contains("CHUNK_ITEMS") && message.contains("RATE_LIMIT_POINTS_PER_MINUTE"),
            "{message}"
        );
        for nice in [-1, 20] {
            let mut settings = parse(&[]);
            settings.dispatch_nice = nice;
            assert!(refusal(&settings).contains("DISPATCH_NICE"), "{nice}");
        }
        assert_eq!(parse(&[]).dispatch_nice, 10);
        assert_eq!(parse(&["--dispatch-nice", "19"]).dispatch_nice, 19);
    }
}
