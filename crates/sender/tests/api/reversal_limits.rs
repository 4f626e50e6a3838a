//! What one reversal may hold (issue 25, point 3): the claim and the points allowance come before
//! the ledger is read, the ledger is read and encoded a page at a time, and a replica prepares at
//! most `SENDER_REVERSALS_MAX` reversals at once. The originals' ledger rows are made with SQL
//! (MariaDB's sequence engine) and nothing dispatches the reversals: these tests are about the
//! `POST`.

use std::collections::HashSet;
use std::time::Duration;

use accrual_core::chunk;
use accrual_core::message::PointRecord;
use accrual_testkit::eventually;
use accrual_testkit::seed::seed_completed_job;
use serde_json::Value;
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::helpers::{KEY_A, TestApp, problem, spawn_app_with};
use crate::process::SenderProcess;

async fn reverse_at(app: &TestApp, address: &str, job_id: Uuid) -> reqwest::Response {
    app.http
        .post(format!("{address}/v1/jobs/{job_id}/reversal"))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap()
}

async fn reverse(app: &TestApp, job_id: Uuid) -> reqwest::Response {
    reverse_at(app, &app.address, job_id).await
}

/// The reversal job of `original`, if one is stored.
async fn reversal_of(pool: &MySqlPool, original: Uuid) -> Option<Uuid> {
    sqlx::query_scalar("SELECT job_id FROM accrual_jobs WHERE reverses = ?")
        .bind(original)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replica_prepares_at_most_its_cap_of_reversals_and_refuses_more_with_503() {
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.api.sender_reversals_max = 1;
    })
    .await;
    let pool = &app.env.pool;
    let held = seed_completed_job(pool, "client_a", 100, 10, "emp-").await;
    let other = seed_completed_job(pool, "client_a", 100, 10, "emp-").await;
    // A transaction of the test's holds the first original's row: its reversal waits for the lock
    // with the replica's only permit.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT job_id FROM accrual_jobs WHERE job_id = ? FOR UPDATE")
        .bind(held)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let (http, address) = (app.http.clone(), app.address.clone());
        async move {
            http.post(format!("{address}/v1/jobs/{held}/reversal"))
                .bearer_auth(KEY_A)
                .send()
                .await
                .unwrap()
        }
    });
    eventually(
        Duration::from_secs(10),
        "the first reversal waits for the original's row",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND INFO LIKE 'SELECT client_id, status, reverses FROM accrual_jobs%'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            waiting == 1
        },
    )
    .await;

    let refused = reverse(&app, other).await;
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("5"),
        "a busy replica says when to try again"
    );
    let body = problem(refused, 503).await;
    assert!(
        body["detail"].as_str().unwrap().contains("reversals"),
        "{body}"
    );
    assert_eq!(reversal_of(pool, other).await, None, "nothing was stored");

    blocker.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap().status().as_u16(), 202);
    assert_eq!(
        reverse(&app, other).await.status().as_u16(),
        202,
        "the permit is given back when a reversal is stored"
    );
}

#[tokio::test]
async fn a_reversal_over_the_points_allowance_is_429_and_stores_no_claim() {
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.rate.rate_limit_points_per_minute = 1_000;
    })
    .await;
    let pool = &app.env.pool;
    let original = seed_completed_job(pool, "client_a", 1_500, 10, "emp-").await;

    let body = problem(reverse(&app, original).await, 429).await;

    assert!(
        body["detail"].as_str().unwrap().contains("1500 points"),
        "{body}"
    );
    assert_eq!(
        reversal_of(pool, original).await,
        None,
        "the claim rolled back with the refusal"
    );
    let chunks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_chunks")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(chunks, 0);
}

/// A job larger than a page (10,000 points) is reversed whole: one compensating point per
/// written point, each once, in chunks numbered without a gap.
#[tokio::test]
async fn a_reversal_read_in_pages_takes_back_every_written_point_once() {
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.api.chunk_items = 3_000;
    })
    .await;
    let pool = &app.env.pool;
    let original = seed_completed_job(pool, "client_a", 25_001, 777, "emp-").await;

    let response = reverse(&app, original).await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["accepted"], 25_001, "{accepted}");
    assert_eq!(accepted["members"], 777, "{accepted}");

    let reversal = reversal_of(pool, original).await.expect("a reversal job");
    let (total, members): (u32, u32) =
        sqlx::query_as("SELECT total, members FROM accrual_jobs WHERE job_id = ?")
            .bind(reversal)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((total, members), (25_001, 777));
    let chunks: Vec<(u32, Vec<u8>, u32)> = sqlx::query_as(
        "SELECT seq, items, item_count FROM accrual_chunks WHERE job_id = ? ORDER BY seq",
    )
    .bind(reversal)
    .fetch_all(pool)
    .await
    .unwrap();
    let seqs: Vec<u32> = chunks.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(seqs, (0..9).collect::<Vec<u32>>(), "3,000 points a chunk");
    let mut reversed = Vec::new();
    for (_, items, count) in &chunks {
        let bodies = chunk::decode(items).unwrap();
        assert_eq!(bodies.len() as u32, *count);
        for body in bodies {
            let record = PointRecord::decode(&body).unwrap();
            assert_eq!(record.job_id, reversal);
            reversed.push(record.reverses.expect("a compensating point"));
        }
    }
    let originals: HashSet<Uuid> =
        sqlx::query_scalar("SELECT accrual_id FROM point_accruals WHERE job_id = ?")
            .bind(original)
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(reversed.len(), 25_001);
    assert_eq!(
        reversed.iter().copied().collect::<HashSet<_>>(),
        originals,
        "each written point once"
    );
}

/// Measurement, not evidence (run by hand with `--run-ignored only`): the sender process's peak
/// RSS while it prepares one reversal of a 500,000-point job, then twelve at once (of twelve such
/// jobs, `SENDER_REVERSALS_MAX=12` so none is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn measure_the_peak_rss_of_reversals_of_500000_point_jobs() {
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    let pool = &app.env.pool;
    let mut jobs = Vec::new();
    for _ in 0..13 {
        jobs.push(seed_completed_job(pool, "client_a", 500_000, 10_000, "emp-").await);
    }
    let sender = SenderProcess::spawn_with(
        &app.env,
        &[
            ("DISPATCH_TASKS", "0"),
            ("SENDER_REVERSALS_MAX", "12"),
            // Each reversal holds a connection while it reads: twelve need twelve.
            ("DATABASE_MAX_CONNECTIONS", "16"),
            ("DATABASE_STATEMENT_TIMEOUT", "120s"),
            ("RATE_LIMIT_POINTS_PER_MINUTE", "100000000"),
        ],
    )
    .await;
    let idle = sender.peak_rss_kib();
    let started = tokio::time::Instant::now();
    assert_eq!(
        reverse_at(&app, &sender.address, jobs[0])
            .await
            .status()
            .as_u16(),
        202
    );
    let one = sender.peak_rss_kib();
    println!(
        "one reversal of 500,000 points: {:.1}s, peak RSS {idle} KiB idle, {one} KiB after",
        started.elapsed().as_secs_f64()
    );
    let started = tokio::time::Instant::now();
    let answers = futures_util::future::join_all(
        jobs[1..]
            .iter()
            .map(|job| reverse_at(&app, &sender.address, *job)),
    )
    .await;
    println!(
        "twelve at once: {:.1}s, peak RSS {} KiB",
        started.elapsed().as_secs_f64(),
        sender.peak_rss_kib()
    );
    for answer in answers {
        let status = answer.status().as_u16();
        assert_eq!(status, 202, "{}", answer.text().await.unwrap());
    }
}
