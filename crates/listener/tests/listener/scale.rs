//! Several listener processes on one queue, and listeners that are killed or stopped mid-stream:
//! the ledger still holds every point exactly once.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::sqs::QueueOptions;
use accrual_testkit::{TestEnv, eventually};

use crate::helpers::point;
use crate::process::ListenerProcess;

const WRITTEN: &str = "accrual_listener_points_written_total";

/// `n` v1 message bodies over 7,000 members, and the sum of their amounts.
fn bodies(n: usize) -> (Vec<String>, i64) {
    let mut sum = 0;
    let bodies = (0..n)
        .map(|i| {
            let amount = 1 + (i % 100) as i64;
            sum += amount;
            point(&format!("member-{}", i % 7_000), amount).encode()
        })
        .collect();
    (bodies, sum)
}

/// A queue whose messages come back 10 s after a listener dies holding them (not SQS's 30 s or
/// our default 60 s), so the tests that kill a listener wait less.
async fn env_with_short_visibility() -> Arc<TestEnv> {
    Arc::new(
        TestEnv::with_queue_options(QueueOptions {
            visibility_timeout_secs: 10,
            ..QueueOptions::default()
        })
        .await,
    )
}

async fn ledger_sum(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT CAST(COALESCE(SUM(amount), 0) AS SIGNED) FROM point_accruals")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Waits until the ledger holds `n` rows and both queues are empty, then checks the rows.
async fn assert_exactly_in_ledger(env: &TestEnv, n: i64, sum: i64) {
    eventually(
        Duration::from_secs(600),
        &format!("{n} rows in the ledger"),
        || async { env.ledger_rows().await >= n },
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "the main queue to drain",
        || async { env.depth(&env.queues.main).await == 0 },
    )
    .await;
    assert_eq!(env.ledger_rows().await, n, "every point exactly once");
    assert_eq!(ledger_sum(env).await, sum);
    assert_eq!(env.depth(&env.queues.dlq).await, 0, "nothing dead-lettered");
}

#[tokio::test]
async fn three_listener_processes_write_60000_points_exactly_once_and_each_writes_some() {
    let env = env_with_short_visibility().await;
    let (bodies, sum) = bodies(60_000);
    let listeners = [
        ListenerProcess::spawn(&env, &[]).await,
        ListenerProcess::spawn(&env, &[]).await,
        ListenerProcess::spawn(&env, &[]).await,
    ];

    env.send_bodies(&bodies).await;

    assert_exactly_in_ledger(&env, 60_000, sum).await;
    let mut written = Vec::new();
    for listener in &listeners {
        written.push(listener.metric(WRITTEN).await);
    }
    assert!(
        written.iter().all(|w| *w > 0.0),
        "each listener wrote some: {written:?}"
    );
    assert_eq!(written.iter().sum::<f64>(), 60_000.0, "{written:?}");
}

#[tokio::test]
async fn a_listener_killed_mid_stream_and_restarted_leaves_exactly_60000_rows() {
    let env = env_with_short_visibility().await;
    let (bodies, sum) = bodies(60_000);
    let mut listeners = [
        ListenerProcess::spawn(&env, &[]).await,
        ListenerProcess::spawn(&env, &[]).await,
        ListenerProcess::spawn(&env, &[]).await,
    ];
    let sending = tokio::spawn({
        let env = env.clone();
        async move { env.send_bodies(&bodies).await }
    });
    eventually(
        Duration::from_secs(300),
        "the listeners to be mid-stream",
        || async { env.ledger_rows().await >= 10_000 },
    )
    .await;
    let held = listeners[0]
        .metric("accrual_listener_messages_in_flight")
        .await;

    listeners[0].kill();
    let before_restart = env.ledger_rows().await;
    listeners[0] = ListenerProcess::spawn(&env, &[]).await;
    sending.await.unwrap();

    assert!(
        before_restart < 60_000,
        "killed mid-stream ({before_restart} rows written, {held} messages held)"
    );
    assert_exactly_in_ledger(&env, 60_000, sum).await;
}

#[tokio::test]
async fn sigterm_stops_a_listener_within_its_deadline_and_a_restart_finishes_the_job() {
    let env = env_with_short_visibility().await;
    let (bodies, sum) = bodies(10_000);
    let settings = [("RECEIVE_WAIT_SECS", "2"), ("SHUTDOWN_GRACE_SECS", "10")];
    let mut listener = ListenerProcess::spawn(&env, &settings).await;
    let sending = tokio::spawn({
        let env = env.clone();
        async move { env.send_bodies(&bodies).await }
    });
    eventually(
        Duration::from_secs(300),
        "the listener to be mid-stream",
        || async { env.ledger_rows().await >= 1_000 },
    )
    .await;

    let (status, took) = listener.terminate().await;
    let at_stop = env.ledger_rows().await;

    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    // At most one long poll (2 s) plus the grace (10 s) plus the last deletes.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    sending.await.unwrap();
    assert!(at_stop < 10_000, "stopped mid-stream ({at_stop} rows)");
    let _restarted = ListenerProcess::spawn(&env, &settings).await;
    assert_exactly_in_ledger(&env, 10_000, sum).await;
}
