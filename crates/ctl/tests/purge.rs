//! `accrualctl purge [--dry-run]`: what has outlived its retention goes (final jobs' chunk bodies,
//! old idempotency keys), and nothing else; the dry run changes nothing.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use accrual_testkit::TestEnv;
use serde_json::Value;
use uuid::Uuid;

/// A job as the test stores it: status, ages in hours (created, completed), key, chunk sizes.
struct Job {
    status: &'static str,
    created_hours_ago: u32,
    completed_hours_ago: Option<u32>,
    key: Option<&'static str>,
    chunk_bytes: &'static [usize],
}

/// The jobs of every test here, by name. With one day for results and 24 hours for keys:
/// `old` and `cancelled` lose their results, `recent` is too young, `reserved` and `enqueued` are
/// not final however old they are; the keys of `old`, `reserved` and `enqueued` go.
const JOBS: [(&str, Job); 5] = [
    (
        "old",
        Job {
            status: "completed",
            created_hours_ago: 72,
            completed_hours_ago: Some(48),
            key: Some("old-key"),
            // More than one delete statement's worth.
            chunk_bytes: &[100; 45],
        },
    ),
    (
        "cancelled",
        Job {
            status: "cancelled",
            created_hours_ago: 72,
            completed_hours_ago: Some(48),
            key: None,
            chunk_bytes: &[],
        },
    ),
    (
        "recent",
        Job {
            status: "completed_with_errors",
            created_hours_ago: 2,
            completed_hours_ago: Some(1),
            key: Some("recent-key"),
            chunk_bytes: &[700],
        },
    ),
    (
        "reserved",
        Job {
            status: "reserved",
            created_hours_ago: 72,
            completed_hours_ago: None,
            key: Some("reserved-key"),
            chunk_bytes: &[300, 300],
        },
    ),
    (
        "enqueued",
        Job {
            status: "enqueued",
            created_hours_ago: 72,
            completed_hours_ago: None,
            key: Some("enqueued-key"),
            chunk_bytes: &[400],
        },
    ),
];

/// Stores the jobs, their chunks and 5 ledger rows per job; returns the job ids in `JOBS` order.
async fn store_jobs(env: &TestEnv) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for (_, job) in &JOBS {
        let job_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO accrual_jobs (job_id, client_id, idempotency_key, body_sha256, total, members, status, reserve_at, created_at, completed_at) \
             VALUES (?, 'client_a', ?, ?, 5, 5, ?, IF(? = 'reserved', NOW(6) + INTERVAL 1 DAY, NULL), \
                     NOW(6) - INTERVAL ? HOUR, NOW(6) - INTERVAL ? HOUR)",
        )
        .bind(job_id)
        .bind(job.key)
        .bind(&[0u8; 32][..])
        .bind(job.status)
        .bind(job.status)
        .bind(job.created_hours_ago)
        .bind(job.completed_hours_ago)
        .execute(&env.pool)
        .await
        .unwrap();
        for (seq, &bytes) in job.chunk_bytes.iter().enumerate() {
            sqlx::query("INSERT INTO accrual_chunks (job_id, seq, items, item_count, due_at) VALUES (?, ?, ?, 1, NOW(6))")
                .bind(job_id)
                .bind(seq as u32)
                .bind(vec![7u8; bytes])
                .execute(&env.pool)
                .await
                .unwrap();
        }
        for i in 0..5 {
            sqlx::query(
                "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
                 VALUES (?, ?, ?, 'WELFARE', 1, NOW(6))",
            )
            .bind(Uuid::now_v7())
            .bind(job_id)
            .bind(format!("m{i}"))
            .execute(&env.pool)
            .await
            .unwrap();
        }
        ids.push(job_id);
    }
    ids
}

/// Per job, in `JOBS` order: (chunks left, idempotency key, results purged).
async fn snapshot(env: &TestEnv, ids: &[Uuid]) -> Vec<(i64, Option<String>, bool)> {
    let mut rows = Vec::new();
    for &job_id in ids {
        let row: (i64, Option<String>, bool) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM accrual_chunks c WHERE c.job_id = j.job_id), \
                    idempotency_key, results_purged_at IS NOT NULL \
             FROM accrual_jobs j WHERE job_id = ?",
        )
        .bind(job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        rows.push(row);
    }
    rows
}

/// `accrualctl purge <args>` against the test's database with a day for results and 24 hours
/// for keys.
fn purge(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accrualctl"))
        .arg("purge")
        .args(args)
        .envs(env.service_env())
        .env("RESULTS_RETENTION_DAYS", "1")
        .env("IDEMPOTENCY_RETENTION_HOURS", "24")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn printed(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn purge_dry_run_shows_what_would_go_and_changes_nothing() {
    let env = TestEnv::new().await;
    let ids = store_jobs(&env).await;
    let before = snapshot(&env, &ids).await;

    let out = purge(&env, &["--dry-run"]);

    let plan = printed(&out);
    assert_eq!(
        plan,
        serde_json::json!({
            "dry_run": true,
            "jobs": 2,
            "chunks": 45,
            "chunk_bytes": 4_500,
            "idempotency_keys": 3,
        })
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing was changed"),
        "{out:?}"
    );
    assert_eq!(
        snapshot(&env, &ids).await,
        before,
        "the dry run changed nothing"
    );
    assert_eq!(env.ledger_rows().await, 25);
}

#[tokio::test]
async fn purge_removes_final_jobs_old_chunks_and_old_keys_and_keeps_the_ledger_and_the_jobs() {
    let env = TestEnv::new().await;
    let ids = store_jobs(&env).await;

    let purged = printed(&purge(&env, &[]));

    assert_eq!(
        purged,
        serde_json::json!({ "dry_run": false, "jobs": 2, "chunks": 45, "idempotency_keys": 3 })
    );
    let key = |k: &str| Some(k.to_owned());
    assert_eq!(
        snapshot(&env, &ids).await,
        [
            (0, None, true),               // old: results and key gone
            (0, None, true),               // cancelled: marked
            (1, key("recent-key"), false), // recent: kept
            (2, None, false),              // reserved: chunks kept, key gone by age
            (1, None, false),              // enqueued: chunks kept, key gone by age
        ]
    );
    assert_eq!(env.ledger_rows().await, 25, "ledger rows stay");
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 5, "job rows stay");

    let again = printed(&purge(&env, &[]));
    assert_eq!(
        again,
        serde_json::json!({ "dry_run": false, "jobs": 0, "chunks": 0, "idempotency_keys": 0 })
    );
}

#[test]
fn purge_refuses_a_zero_retention_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_accrualctl"))
        .args(["purge", "--dry-run"])
        .env("RESULTS_RETENTION_DAYS", "0")
        .env("DATABASE_URL", "mysql://root@127.0.0.1:1/nowhere")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("RESULTS_RETENTION_DAYS"), "{stderr}");
}
