//! `accrualctl job <job_id>`: where a job stands, and what the reconciler did to it, without SQL.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use accrual_testkit::TestEnv;
use uuid::Uuid;

fn accrualctl(env: &TestEnv, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_accrualctl"))
        .args(args)
        .envs(env.service_env())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn job_shows_the_stored_view_what_the_reconciler_did_and_the_points_now() {
    let env = TestEnv::new().await;
    let job_id = Uuid::now_v7();
    // A job of 3 points the reconciler compared twice: it re-sent 2 points once, then gave 1 up.
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, \
           reconcile_attempts, points_resent, points_given_up, reconciled_at) \
         VALUES (?, 'client_a', ?, 3, 3, 'enqueued', NOW(6), 1, 2, 1, NOW(6))",
    )
    .bind(job_id)
    .bind(vec![0u8; 32])
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
         VALUES (?, ?, 'm1', 'P', 1, NOW(6))",
    )
    .bind(Uuid::now_v7())
    .bind(job_id)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO accrual_dead_letters (accrual_id, job_id, reason) \
         VALUES (?, ?, 'lost in transit after 1 attempts')",
    )
    .bind(Uuid::now_v7())
    .bind(job_id)
    .execute(&env.pool)
    .await
    .unwrap();

    let out = accrualctl(&env, &["job", &job_id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["job_id"], job_id.to_string());
    assert_eq!(shown["client_id"], "client_a");
    assert_eq!(shown["status"], "enqueued");
    assert_eq!(shown["total"], 3);
    assert_eq!(shown["reconciler"]["attempts"], 1, "{shown}");
    assert_eq!(shown["reconciler"]["points_resent"], 2, "{shown}");
    assert_eq!(shown["reconciler"]["points_given_up"], 1, "{shown}");
    assert_eq!(
        shown["now"],
        serde_json::json!({"written": 1, "dead_lettered": 1, "missing": 1})
    );

    let unknown = accrualctl(&env, &["job", &Uuid::now_v7().to_string()]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("No job"));
}
