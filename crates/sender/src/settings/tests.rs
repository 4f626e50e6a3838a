//! The settings' parsing and start-up refusals.

use std::time::Duration;

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
    assert_eq!(settings.keys.accrual_api_keys, "");
}

#[test]
fn the_operations_port_is_its_own_and_port_zero_picks_one_for_each() {
    let defaults = parse(&[]);
    assert_eq!(defaults.http.sender_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(defaults.http.sender_ops_addr.to_string(), "127.0.0.1:8082");
    let both_free = parse(&[
        "--sender-addr",
        "127.0.0.1:0",
        "--sender-ops-addr",
        "0.0.0.0:0",
    ]);
    assert!(both_free.validate().is_ok());
    let other_host = parse(&[
        "--sender-addr",
        "10.0.0.1:9000",
        "--sender-ops-addr",
        "127.0.0.1:9000",
    ]);
    assert!(other_host.validate().is_ok());
}

#[test]
fn settings_that_would_spin_or_hang_are_refused_by_name() {
    for (args, named) in [
        (
            &["--sender-ops-addr", "127.0.0.1:8080"][..],
            "SENDER_OPS_ADDR",
        ),
        (
            &[
                "--sender-addr",
                "0.0.0.0:9000",
                "--sender-ops-addr",
                "127.0.0.1:9000",
            ],
            "SENDER_OPS_ADDR",
        ),
        (&["--dispatch-lease", "0s"], "DISPATCH_LEASE"),
        (&["--dispatch-lease", "500ms"], "DISPATCH_LEASE"),
        (&["--dispatch-poll", "0ms"], "DISPATCH_POLL"),
        (&["--dispatch-poll", "1ms"], "DISPATCH_POLL"),
        (
            &["--dispatch-queue-horizon", "100ms"],
            "DISPATCH_QUEUE_HORIZON",
        ),
        (
            &["--dispatch-queue-horizon", "1s", "--dispatch-poll", "1s"],
            "DISPATCH_QUEUE_HORIZON",
        ),
        (
            &["--dispatch-queue-horizon", "61m"],
            "DISPATCH_QUEUE_HORIZON",
        ),
        (&["--send-concurrency", "0"], "SEND_CONCURRENCY"),
        (
            &["--sender-write-stall-timeout", "500ms"],
            "SENDER_WRITE_STALL_TIMEOUT",
        ),
        (
            &["--sender-results-streams-per-client", "0"],
            "SENDER_RESULTS_STREAMS_PER_CLIENT",
        ),
        (&["--sender-reversals-max", "65"], "SENDER_REVERSALS_MAX"),
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
        (
            &["--sender-body-client-share-bytes", "104857599"],
            "SENDER_BODY_CLIENT_SHARE_BYTES",
        ),
        (
            &["--sender-body-client-share-bytes", "536870913"],
            "SENDER_BODY_CLIENT_SHARE_BYTES",
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
        defaults.retention.rules.results_retention,
        Duration::from_secs(30 * 24 * 3_600)
    );
    assert_eq!(
        defaults.retention.rules.idempotency_retention,
        Duration::from_secs(168 * 3_600)
    );
    assert_eq!(
        defaults.retention.retention_interval,
        Duration::from_secs(600)
    );
    let short = parse(&[
        "--results-retention-days",
        "90s",
        "--idempotency-retention-hours",
        "2",
    ]);
    assert_eq!(
        short.retention.rules.results_retention,
        Duration::from_secs(90)
    );
    assert_eq!(
        short.retention.rules.idempotency_retention,
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
    settings.api.chunk_items = 0;
    settings.rate.rate_limit_points_per_minute = 0;
    let message = refusal(&settings);
    assert!(
        message.contains("CHUNK_ITEMS") && message.contains("RATE_LIMIT_POINTS_PER_MINUTE"),
        "{message}"
    );
    for nice in [-1, 20] {
        let mut settings = parse(&[]);
        settings.dispatch.dispatch_nice = nice;
        assert!(refusal(&settings).contains("DISPATCH_NICE"), "{nice}");
    }
    assert_eq!(parse(&[]).dispatch.dispatch_nice, 10);
    assert_eq!(parse(&["--dispatch-nice", "19"]).dispatch.dispatch_nice, 19);
}
