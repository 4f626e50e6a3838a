//! `accrualctl backfill ledger-client-ids` (issue 25, point 5): fills the ledger's `client_id` on
//! rows written before the listener did, resumably and idempotently, then leaves the index
//! `(client_id, member_id, id)` that member queries read. And an `#[ignore]`d measurement on a
//! 10,000,000-row ledger, with a writer beside it.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use accrual_core::ledger_clients;
use accrual_testkit::TestEnv;
use accrual_testkit::seed::seed_completed_job;
use serde_json::Value;
use sqlx::MySqlPool;
use uuid::Uuid;

fn backfill(env: &TestEnv, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_accrualctl"))
        .args(["backfill", "ledger-client-ids"])
        .args(args)
        .envs(env.service_env())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Rows whose `client_id` is missing or not their job's; rows with `id < below` only if given.
async fn unfilled(pool: &MySqlPool, below: Option<u64>) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM point_accruals p JOIN accrual_jobs j ON j.job_id = p.job_id \
         WHERE NOT (p.client_id <=> j.client_id) AND p.id < ?",
    )
    .bind(below.unwrap_or(u64::MAX))
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_backfill_fills_old_rows_resumes_from_an_id_is_idempotent_and_leaves_the_index() {
    let env = TestEnv::new().await;
    let pool = &env.pool;
    seed_completed_job(pool, "client_a", 1_000, 50, "m").await;
    seed_completed_job(pool, "client_b", 1_000, 50, "m").await;
    seed_completed_job(pool, "client_a", 1_000, 50, "m").await;
    assert_eq!(unfilled(pool, None).await, 3_000);

    // A run resumed from the middle (as a progress line's --from-id says) fills from there on.
    // (Ids have gaps: the 1,501st row's id is read.)
    let (middle,): (u64,) =
        sqlx::query_as("SELECT id FROM point_accruals ORDER BY id LIMIT 1 OFFSET 1500")
            .fetch_one(pool)
            .await
            .unwrap();
    let half = backfill(
        &env,
        &[
            "--batch-rows",
            "100",
            "--from-id",
            &middle.to_string(),
            "--skip-index",
        ],
    );
    assert_eq!(half["updated"], 1_500, "{half}");
    assert_eq!(half["index_exists"], false, "{half}");
    assert_eq!(unfilled(pool, None).await, 1_500);
    assert_eq!(unfilled(pool, Some(middle)).await, 1_500);
    assert!(!ledger_clients::client_index_exists(pool).await.unwrap());

    // From the start: what is filled is left alone, the rest filled, then the index built.
    let whole = backfill(&env, &["--batch-rows", "100"]);
    assert_eq!(whole["updated"], 1_500, "{whole}");
    assert!(whole["batches"].as_u64().unwrap() >= 30, "{whole}");
    assert_eq!(whole["index_created"], true, "{whole}");
    assert_eq!(unfilled(pool, None).await, 0);
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'point_accruals' AND INDEX_NAME = ? \
         ORDER BY SEQ_IN_INDEX",
    )
    .bind(ledger_clients::CLIENT_INDEX)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(columns, ["client_id", "member_id", "id"]);

    // Again: nothing to do.
    let again = backfill(&env, &[]);
    assert_eq!(again["updated"], 0, "{again}");
    assert_eq!(again["index_created"], false, "{again}");
    assert_eq!(again["index_exists"], true, "{again}");
}

/// Run with `cargo nextest run -p accrual-ctl --test backfill --run-ignored only --no-capture`.
/// Seeds 10,000,000 ledger rows (100 jobs of 100,000 points, two clients, 1,000,000 members
/// shared), then backfills them while a writer inserts one ledger row at a time and records its
/// slowest insert.
#[tokio::test]
#[ignore = "a measurement: seeds 10,000,000 rows (some minutes)"]
async fn measure_the_backfill_on_a_10_000_000_row_ledger() {
    const JOBS: u64 = 100;
    const POINTS: u64 = 100_000;
    let env = TestEnv::new().await;
    let pool = env.pool.clone();
    let seeding = Instant::now();
    let mut jobs = Vec::new();
    for i in 0..JOBS {
        let client = if i % 2 == 0 { "client_a" } else { "client_b" };
        jobs.push(seed_completed_job(&pool, client, POINTS, 1_000_000, "m").await);
    }
    println!("seeded {} rows in {:?}", JOBS * POINTS, seeding.elapsed());

    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let (pool, stop, job) = (pool.clone(), stop.clone(), jobs[0]);
        async move {
            let (mut slowest, mut writes) = (Duration::ZERO, 0u64);
            while !stop.is_cancelled() {
                let at = Instant::now();
                sqlx::query(
                    "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at, client_id) \
                     VALUES (?, ?, 'writer', 'WELFARE', 1, NOW(6), 'client_a')",
                )
                .bind(Uuid::now_v7())
                .bind(job)
                .execute(&pool)
                .await
                .unwrap();
                slowest = slowest.max(at.elapsed());
                writes += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (slowest, writes)
        }
    });

    let started = Instant::now();
    let mut batch_times = Vec::new();
    let done = ledger_clients::backfill(&pool, 0, ledger_clients::DEFAULT_BATCH_ROWS, |b| {
        batch_times.push(b.took)
    })
    .await
    .unwrap();
    let fill = started.elapsed();
    let indexing = Instant::now();
    assert!(ledger_clients::create_index(&pool).await.unwrap());
    let index = indexing.elapsed();
    stop.cancel();
    let (slowest_write, writes) = writer.await.unwrap();
    batch_times.sort();
    let p99 = batch_times[batch_times.len() * 99 / 100];
    println!(
        "backfill: {} rows filled in {} batches of {} ids in {:.1} s = {:.0} rows/s; batch p99 {:?}, longest {} ms",
        done.updated,
        done.batches,
        ledger_clients::DEFAULT_BATCH_ROWS,
        fill.as_secs_f64(),
        done.updated as f64 / fill.as_secs_f64(),
        p99,
        done.longest_batch_ms
    );
    println!("index build (online): {:.1} s", index.as_secs_f64());
    println!("writer beside it: {writes} single-row inserts, slowest {slowest_write:?}");
    assert_eq!(done.updated, JOBS * POINTS);
    assert!(done.longest_batch_ms < 1_000, "{done:?}");
}
