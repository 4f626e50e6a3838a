//! Time from one clock (issue 24, point 5): a listener whose own clock is ten minutes fast (run
//! under libfaketime) records a last-receive message's points ahead counting from MySQL's `NOW(6)`
//! plus the visibility timeout, the clock settlement compares `counts_from` with. From its own
//! clock they counted ten minutes late, and their job waited as long to settle.

use accrual_core::message::PointRecord;
use accrual_core::sqs::QueueOptions;
use accrual_testkit::process::clock_shifted;
use accrual_testkit::{TestEnv, eventually};
use std::time::Duration;

use crate::helpers::point;
use crate::process::ListenerProcess;

const VISIBILITY_SECS: u32 = 30;

#[tokio::test]
async fn a_listener_ten_minutes_fast_records_points_ahead_on_mysqls_clock() {
    // One receive allowed: every receive is the last, so every point is recorded ahead.
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 1,
        visibility_timeout_secs: VISIBILITY_SECS,
    })
    .await;
    let points: Vec<PointRecord> = (0..3).map(|i| point(&format!("m{i}"), 1)).collect();
    env.send_bodies(&points.iter().map(PointRecord::encode).collect::<Vec<_>>())
        .await;
    let shifted = clock_shifted("+10m");
    let extra: Vec<(&str, &str)> = shifted.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _listener = ListenerProcess::spawn(&env, &extra).await;

    let ahead = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT TIMESTAMPDIFF(SECOND, NOW(6), counts_from) FROM accrual_dead_letters \
             WHERE counts_from IS NOT NULL",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap()
    };
    eventually(
        Duration::from_secs(30),
        "the points recorded ahead",
        || async { ahead().await.len() == points.len() },
    )
    .await;
    for seconds in ahead().await {
        assert!(
            seconds <= i64::from(VISIBILITY_SECS),
            "counts_from is {seconds} s after MySQL's NOW(6), more than the visibility timeout"
        );
    }
}
