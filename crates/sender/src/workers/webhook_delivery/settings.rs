//! `WEBHOOK_*` settings, refused at start-up when they would make the task spin, hang or never
//! retry.

use std::time::Duration;

use accrual_core::settings::parse_duration;
use accrual_core::webhook;

/// Most deliveries one replica may have in flight: each holds a connection to a receiver and, for
/// a moment when it ends, one of the background pool's MySQL connections.
pub const MAX_CONCURRENCY: usize = 256;

/// `WEBHOOK_*`: how webhooks are delivered.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookSettings {
    /// How long an event is retried after it happened before it is given up (e.g. 24h; at least
    /// 1s, at most 30 days).
    #[arg(long, env = "WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = parse_long_duration)]
    pub webhook_retry_for: Duration,

    /// Longest a delivery may take, connection included, before it counts as failed (e.g. 10s;
    /// at least 100ms, at most 5m).
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_long_duration)]
    pub webhook_timeout: Duration,

    /// Wait after the first failed attempt; it doubles after each further one, up to an hour,
    /// plus up to a fifth of jitter (e.g. 10s; at least 10ms, at most 1h).
    #[arg(long, env = "WEBHOOK_BACKOFF_FIRST", default_value = "10s", value_parser = parse_long_duration)]
    pub webhook_backoff_first: Duration,

    /// How often the delivery task looks for due events when no delivery has ended meanwhile, and
    /// renews its lease (e.g. 1s; at least 10ms, at most 1h).
    #[arg(long, env = "WEBHOOK_POLL", default_value = "1s", value_parser = parse_long_duration)]
    pub webhook_poll: Duration,

    /// Deliveries the lease holder keeps in flight at once, all clients together (1-256); as one
    /// ends, the next due event is claimed.
    #[arg(long, env = "WEBHOOK_CONCURRENCY", default_value_t = 16)]
    pub webhook_concurrency: usize,

    /// Deliveries in flight at once to one client's endpoint (at least 1, at most
    /// `WEBHOOK_CONCURRENCY`): what a client's slow or dead endpoint can hold of the others' share.
    #[arg(long, env = "WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 4)]
    pub webhook_endpoint_concurrency: usize,

    /// Consecutive failed deliveries to an endpoint (timeouts, connection errors, 5xx answers)
    /// that open its circuit (1-1000).
    #[arg(long, env = "WEBHOOK_BREAKER_FAILURES", default_value_t = 5)]
    pub webhook_breaker_failures: u32,

    /// How long an open circuit keeps an endpoint's events back before one trial delivery (e.g.
    /// 30s; at least 100ms, at most 1h).
    #[arg(long, env = "WEBHOOK_BREAKER_COOL_OFF", default_value = "30s", value_parser = parse_long_duration)]
    pub webhook_breaker_cool_off: Duration,
}

impl WebhookSettings {
    /// Refuses values that would make the task spin, hang or never retry.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut require = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        require(
            (Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3_600))
                .contains(&self.webhook_retry_for),
            "WEBHOOK_RETRY_FOR must be at least 1s and at most 30 days",
        );
        require(
            (Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.webhook_timeout),
            "WEBHOOK_TIMEOUT must be at least 100ms and at most 5m (deliveries would all fail, or hang)",
        );
        require(
            (Duration::from_millis(10)..=webhook::MAX_BACKOFF)
                .contains(&self.webhook_backoff_first),
            "WEBHOOK_BACKOFF_FIRST must be at least 10ms (failing endpoints would be hammered) and at most 1h",
        );
        require(
            (Duration::from_millis(10)..=Duration::from_secs(3_600)).contains(&self.webhook_poll),
            "WEBHOOK_POLL must be at least 10ms (the task would query MySQL without pause) and at most 1h",
        );
        require(
            (1..=MAX_CONCURRENCY).contains(&self.webhook_concurrency),
            "WEBHOOK_CONCURRENCY must be 1-256 (nothing would be delivered, or the receivers' and MySQL's connections swamped)",
        );
        require(
            (1..=self.webhook_concurrency.max(1)).contains(&self.webhook_endpoint_concurrency),
            "WEBHOOK_ENDPOINT_CONCURRENCY must be at least 1 (nothing would be delivered) and at most WEBHOOK_CONCURRENCY",
        );
        require(
            (1..=1_000).contains(&self.webhook_breaker_failures),
            "WEBHOOK_BREAKER_FAILURES must be 1-1000",
        );
        require(
            (Duration::from_millis(100)..=Duration::from_secs(3_600))
                .contains(&self.webhook_breaker_cool_off),
            "WEBHOOK_BREAKER_COOL_OFF must be at least 100ms (a dead endpoint would be tried without pause) and at most 1h",
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// How far ahead a claimed event is moved, and how long the lease lasts: a delivery ends
    /// within `WEBHOOK_TIMEOUT` of its claim, and the holder renews the lease every
    /// `WEBHOOK_POLL`, so two of each leave room for a slow MySQL.
    pub(super) fn lease_length(&self) -> Duration {
        (self.webhook_timeout + self.webhook_poll) * 2 + Duration::from_secs(1)
    }
}

/// A duration as [`parse_duration`] takes it, or in hours (`24h`) or days (`7d`).
fn parse_long_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let long = |suffix: char, unit: u64| {
        s.strip_suffix(suffix)
            .and_then(|n| n.parse::<u64>().ok())
            .map(|n| Duration::from_secs(n.saturating_mul(unit)))
    };
    if let Some(d) = long('h', 3_600).or_else(|| long('d', 86_400)) {
        return Ok(d);
    }
    parse_duration(s).map_err(|e| format!("{e}, h or d"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhooks: WebhookSettings,
    }

    fn parse(args: &[&str]) -> WebhookSettings {
        let all = std::iter::once("test").chain(args.iter().copied());
        Cli::try_parse_from(all).expect("parses").webhooks
    }

    #[test]
    fn the_defaults_retry_for_a_day() {
        let s = parse(&[]);
        assert_eq!(s.webhook_retry_for, Duration::from_secs(24 * 3_600));
        assert_eq!(s.webhook_timeout, Duration::from_secs(10));
        assert_eq!(s.webhook_concurrency, 16);
        assert_eq!(s.webhook_endpoint_concurrency, 4);
        assert_eq!(s.webhook_breaker_failures, 5);
        assert_eq!(s.webhook_breaker_cool_off, Duration::from_secs(30));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn settings_that_would_spin_or_hang_are_refused_by_name() {
        for (args, named) in [
            (&["--webhook-retry-for", "0s"][..], "WEBHOOK_RETRY_FOR"),
            (&["--webhook-retry-for", "31d"], "WEBHOOK_RETRY_FOR"),
            (&["--webhook-timeout", "0s"], "WEBHOOK_TIMEOUT"),
            (&["--webhook-timeout", "6m"], "WEBHOOK_TIMEOUT"),
            (&["--webhook-backoff-first", "0ms"], "WEBHOOK_BACKOFF_FIRST"),
            (&["--webhook-backoff-first", "2h"], "WEBHOOK_BACKOFF_FIRST"),
            (&["--webhook-poll", "0s"], "WEBHOOK_POLL"),
            (&["--webhook-poll", "2h"], "WEBHOOK_POLL"),
            (&["--webhook-concurrency", "0"], "WEBHOOK_CONCURRENCY"),
            (&["--webhook-concurrency", "257"], "WEBHOOK_CONCURRENCY"),
            (
                &["--webhook-endpoint-concurrency", "0"],
                "WEBHOOK_ENDPOINT_CONCURRENCY",
            ),
            (
                &[
                    "--webhook-concurrency",
                    "4",
                    "--webhook-endpoint-concurrency",
                    "5",
                ],
                "WEBHOOK_ENDPOINT_CONCURRENCY",
            ),
            (
                &["--webhook-breaker-failures", "0"],
                "WEBHOOK_BREAKER_FAILURES",
            ),
            (
                &["--webhook-breaker-cool-off", "10ms"],
                "WEBHOOK_BREAKER_COOL_OFF",
            ),
            (
                &["--webhook-breaker-cool-off", "2h"],
                "WEBHOOK_BREAKER_COOL_OFF",
            ),
        ] {
            let message = parse(args).validate().expect_err("refused");
            assert!(message.contains(named), "{args:?}: {message}");
        }
    }

    #[test]
    fn the_retry_period_takes_hours_and_days_too() {
        assert_eq!(parse_long_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_long_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_long_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_long_duration("soon").is_err());
    }
}
