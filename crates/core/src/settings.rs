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
}

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
}

impl SqsSettings {
    /// The endpoint override, or `None` for real AWS.
    pub fn endpoint(&self) -> Option<&str> {
        Some(self.aws_endpoint_url.trim()).filter(|s| !s.is_empty())
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
        let mut s = SqsSettings {
            aws_endpoint_url: " ".into(),
            aws_region: "us-east-1".into(),
            accrual_queue: "q".into(),
            accrual_dlq: "d".into(),
        };
        assert_eq!(s.endpoint(), None);
        s.aws_endpoint_url = "http://127.0.0.1:4566".into();
        assert_eq!(s.endpoint(), Some("http://127.0.0.1:4566"));
    }
}
