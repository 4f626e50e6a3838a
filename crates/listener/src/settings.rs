//! Listener settings: environment variables and the matching CLI flags.

use std::time::Duration;

use accrual_core::progress::RedisSettings;
use accrual_core::settings::{DatabaseSettings, Problems, SqsSettings, parse_duration};

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

    /// Concurrent long-poll receive tasks (each asks for 10 messages a call); at least 1.
    #[arg(long, env = "RECEIVE_TASKS", default_value_t = 8)]
    pub receive_tasks: usize,

    /// Long-poll wait per ReceiveMessage call, 1-20 seconds (0, a short poll, would make every
    /// receive task spin while the queue is empty). Shutdown waits for at most one.
    #[arg(long, env = "RECEIVE_WAIT_SECS", default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=20))]
    pub receive_wait_secs: i32,

    /// A batch is written when it holds this many points...
    #[arg(long, env = "BATCH_MAX_ROWS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch_max_rows: u32,

    /// ...or when its first point has waited this long (e.g. 200ms; at least 1ms).
    #[arg(long, env = "BATCH_LINGER", default_value = "200ms", value_parser = parse_duration)]
    pub batch_linger: Duration,

    /// After SIGTERM/SIGINT: how long to keep trying to write what is held (for example while
    /// MySQL is down) before handing those messages back to SQS and exiting.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// How often the main queue's `maxReceiveCount` and visibility timeout are read again (e.g.
    /// 60s; more than 0): `accrualctl init` may change them on the live queue. Advanced: tests
    /// shorten it.
    #[arg(long, env = "QUEUE_ATTRIBUTES_REFRESH", default_value = "60s", value_parser = parse_duration, hide = true)]
    pub queue_attributes_refresh: Duration,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub sqs: SqsSettings,

    #[command(flatten)]
    pub redis: RedisSettings,
}

impl ListenerSettings {
    /// Refuses values that would make a component spin, hang or panic, naming each one. Flags
    /// with a range are checked when parsed already; they are checked again here for settings
    /// built in code.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Problems::default();
        problems.require(
            self.receive_tasks >= 1,
            "RECEIVE_TASKS must be at least 1 (nothing would be received)",
        );
        problems.require(
            (1..=20).contains(&self.receive_wait_secs),
            "RECEIVE_WAIT_SECS must be 1-20 (0 makes the receive tasks spin on an empty queue)",
        );
        problems.require(
            (1..=4096).contains(&self.batch_max_rows),
            "BATCH_MAX_ROWS must be 1-4096",
        );
        problems.require(
            !self.batch_linger.is_zero(),
            "BATCH_LINGER must be at least 1ms",
        );
        problems.require(
            !self.queue_attributes_refresh.is_zero(),
            "QUEUE_ATTRIBUTES_REFRESH must be more than 0 (the queue would be read in a loop)",
        );
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

    fn parse(args: &[&str]) -> Result<ListenerSettings, clap::Error> {
        let mut all = vec!["accrual-listener"];
        all.extend_from_slice(args);
        ListenerSettings::try_parse_from(all)
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(parse(&[]).expect("parses").validate().is_ok());
    }

    #[test]
    fn settings_that_would_spin_or_hang_are_refused_by_name() {
        for (args, named) in [
            (&["--receive-tasks", "0"][..], "RECEIVE_TASKS"),
            (&["--batch-linger", "0ms"], "BATCH_LINGER"),
            (
                &["--queue-attributes-refresh", "0s"],
                "QUEUE_ATTRIBUTES_REFRESH",
            ),
            (
                &["--database-max-connections", "0"],
                "DATABASE_MAX_CONNECTIONS",
            ),
            (&["--redis-url", "localhost"], "REDIS_URL"),
        ] {
            let message = parse(args)
                .expect("parses")
                .validate()
                .expect_err("refused")
                .to_string();
            assert!(message.contains(named), "{args:?}: {message}");
        }
    }

    #[test]
    fn a_zero_long_poll_wait_is_refused_when_parsed_and_when_built_in_code() {
        assert!(parse(&["--receive-wait-secs", "0"]).is_err());
        assert!(parse(&["--receive-wait-secs", "21"]).is_err());
        let mut settings = parse(&[]).expect("parses");
        settings.receive_wait_secs = 0;
        settings.batch_max_rows = 0;
        let message = settings.validate().expect_err("refused").to_string();
        assert!(
            message.contains("RECEIVE_WAIT_SECS") && message.contains("BATCH_MAX_ROWS"),
            "{message}"
        );
    }
}
