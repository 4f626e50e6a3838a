//! `accrualctl init` on a live queue: it may raise `maxReceiveCount`, but lowers it only when told
//! to (`--allow-lower-max-receive-count`), since messages already received that often would leave
//! for the dead-letter queue uncounted.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use accrual_core::sqs::{self, QueueOptions};
use accrual_testkit::TestEnv;

/// `accrualctl init <args>` against the test's database and queues.
fn init(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accrualctl"))
        .arg("init")
        .args(args)
        .envs(env.service_env())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

async fn max_receive_count(env: &TestEnv) -> Option<u32> {
    sqs::max_receive_count(&env.client, &env.queues.main)
        .await
        .unwrap()
}

#[tokio::test]
async fn init_refuses_to_lower_max_receive_count_on_a_live_queue_unless_told_to() {
    let env = TestEnv::with_queue_options(QueueOptions {
        max_receive_count: 5,
        visibility_timeout_secs: 30,
    })
    .await;

    let refused = init(&env, &["--max-receive-count", "3"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "lowering must fail: {refused:?}");
    assert!(
        stderr.contains("--allow-lower-max-receive-count")
            && stderr.contains("maxReceiveCount 5")
            && stderr.contains("to 3"),
        "the error names the flag and both counts: {stderr}"
    );
    assert_eq!(
        max_receive_count(&env).await,
        Some(5),
        "the queue is unchanged"
    );

    let raised = init(&env, &["--max-receive-count", "7"]);
    assert!(raised.status.success(), "raising is allowed: {raised:?}");
    assert_eq!(max_receive_count(&env).await, Some(7));

    let same = init(&env, &["--max-receive-count", "7"]);
    assert!(same.status.success(), "the same count again: {same:?}");

    let lowered = init(
        &env,
        &[
            "--max-receive-count",
            "3",
            "--allow-lower-max-receive-count",
        ],
    );
    assert!(lowered.status.success(), "lowering when told: {lowered:?}");
    assert_eq!(max_receive_count(&env).await, Some(3));
}
