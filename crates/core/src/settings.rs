//! Settings shared by every binary, each an environment variable and the matching CLI flag.

use std::time::Duration;

/// Where the MySQL/MariaDB database is.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseSettings {
    /// MySQL URL; the database is created by `accrualctl init` if absent.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/accrual"
    )]
    pub database_url: String,

    /// Most pooled connections per process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub database_max_connections: u32,

    /// Longest wait for a pooled connection (e.g. 10s) before the caller gets an error.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub database_acquire_timeout: Duration,

    /// Longest a statement may run or wait for a lock (e.g. 30s): the server aborts it after that
    /// (`max_statement_time` on MariaDB, `max_execution_time` for reads on MySQL, and the row and
    /// metadata lock waits on both).
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub database_statement_timeout: Duration,

    /// Longest a transaction may sit idle between statements (e.g. 60s) before the server ends its
    /// session and rolls it back (`idle_transaction_timeout` on MariaDB; `wait_timeout` on MySQL,
    /// which has no such limit): a transaction left open on a dead client's connection cannot
    /// hold a job's row lock for hours. At least 1s.
    #[arg(long, env = "DATABASE_IDLE_TRANSACTION_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub database_idle_transaction_timeout: Duration,
}

impl DatabaseSettings {
    /// Settings for `url` with `max_connections` and the default timeouts.
    pub fn new(url: impl Into<String>, max_connections: u32) -> Self {
        Self {
            database_url: url.into(),
            database_max_connections: max_connections,
            database_acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            database_statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            database_idle_transaction_timeout: DEFAULT_IDLE_TRANSACTION_TIMEOUT,
        }
    }

    /// Refuses values that would make every database call fail or wait forever.
    pub fn validate(&self) -> Result<(), String> {
        if self.database_max_connections == 0 {
            return Err("DATABASE_MAX_CONNECTIONS must be at least 1".into());
        }
        if self.database_acquire_timeout < Duration::from_millis(100) {
            return Err("DATABASE_ACQUIRE_TIMEOUT must be at least 100ms".into());
        }
        if self.database_statement_timeout < Duration::from_secs(1) {
            return Err("DATABASE_STATEMENT_TIMEOUT must be at least 1s".into());
        }
        if self.database_idle_transaction_timeout < Duration::from_secs(1) {
            return Err("DATABASE_IDLE_TRANSACTION_TIMEOUT must be at least 1s".into());
        }
        Ok(())
    }
}

const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SQS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SQS_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Where SQS is and which queues to use.
#[derive(Debug, Clone, clap::Args)]
pub struct SqsSettings {
    /// SQS endpoint; LocalStack by default. Set it empty to use real AWS.
    #[arg(
        long,
        env = "AWS_ENDPOINT_URL",
        default_value = "http://127.0.0.1:4566"
    )]
    pub aws_endpoint_url: String,

    /// AWS region of the queues.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub aws_region: String,

    /// Name of the queue that carries one message per point.
    #[arg(long, env = "ACCRUAL_QUEUE", default_value = "point-accruals")]
    pub accrual_queue: String,

    /// Name of the dead-letter queue.
    #[arg(long, env = "ACCRUAL_DLQ", default_value = "point-accruals-dlq")]
    pub accrual_dlq: String,

    /// Longest one SQS request may take (e.g. 10s); a long poll gets its wait on top. A request
    /// that takes longer is abandoned and retried like a network error.
    #[arg(long, env = "SQS_ATTEMPT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub sqs_attempt_timeout: Duration,

    /// Longest one SQS call may take with the SDK's own retries (e.g. 60s).
    #[arg(long, env = "SQS_OPERATION_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub sqs_operation_timeout: Duration,
}

impl SqsSettings {
    /// Settings for these queues at `endpoint` (empty: real AWS) with the default timeouts.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        queue: impl Into<String>,
        dlq: impl Into<String>,
    ) -> Self {
        Self {
            aws_endpoint_url: endpoint.into(),
            aws_region: region.into(),
            accrual_queue: queue.into(),
            accrual_dlq: dlq.into(),
            sqs_attempt_timeout: DEFAULT_SQS_ATTEMPT_TIMEOUT,
            sqs_operation_timeout: DEFAULT_SQS_OPERATION_TIMEOUT,
        }
    }

    /// Refuses timeouts that would fail every call or let one hang.
    pub fn validate(&self) -> Result<(), String> {
        if self.sqs_attempt_timeout < Duration::from_millis(100) {
            return Err("SQS_ATTEMPT_TIMEOUT must be at least 100ms".into());
        }
        if self.sqs_operation_timeout < self.sqs_attempt_timeout {
            return Err("SQS_OPERATION_TIMEOUT must be at least SQS_ATTEMPT_TIMEOUT".into());
        }
        Ok(())
    }

    /// The endpoint override, or `None` for real AWS.
    pub fn endpoint(&self) -> Option<&str> {
        Some(self.aws_endpoint_url.trim()).filter(|s| !s.is_empty())
    }
}

/// The problems found while validating settings at start-up, each naming its setting, so one
/// message lists every value to fix rather than the first.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records `problem` unless `ok`.
    pub fn require(&mut self, ok: bool, problem: &str) {
        if !ok {
            self.0.push(problem.to_owned());
        }
    }

    /// Records the problem a settings group's own `validate` found.
    pub fn check(&mut self, checked: Result<(), String>) {
        if let Err(problem) = checked {
            self.0.push(problem);
        }
    }

    /// A settings group's answer: `Ok` when nothing was found, else every problem in one line
    /// (for [`Problems::check`] of the whole).
    pub fn into_group_result(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("; "))
        }
    }

    /// `Ok` when nothing was found, else one error listing everything.
    pub fn into_result(self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("Invalid settings: {}", self.0.join("; "))
        }
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => s.split_at(at),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 250ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}` has an unknown unit; use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_and_m() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn an_empty_endpoint_means_real_aws() {
        let mut s = SqsSettings::new(" ", "us-east-1", "q", "d");
        assert_eq!(s.endpoint(), None);
        s.aws_endpoint_url = "http://127.0.0.1:4566".into();
        assert_eq!(s.endpoint(), Some("http://127.0.0.1:4566"));
    }

    #[test]
    fn timeouts_that_would_fail_every_call_are_refused() {
        let mut s = SqsSettings::new("", "us-east-1", "q", "d");
        assert!(s.validate().is_ok());
        s.sqs_attempt_timeout = Duration::ZERO;
        assert!(s.validate().is_err());
        s.sqs_attempt_timeout = Duration::from_secs(120);
        assert!(s.validate().is_err(), "operation shorter than one attempt");
        let mut d = DatabaseSettings::new("mysql://root@127.0.0.1/a", 8);
        assert!(d.validate().is_ok());
        d.database_statement_timeout = Duration::ZERO;
        assert!(d.validate().is_err());
        d = DatabaseSettings::new("mysql://root@127.0.0.1/a", 0);
        assert!(d.validate().is_err());
    }
}
