//! Settlement that cannot be starved or raced: every running job is looked at, a job whose row is
//! locked holds back nobody, finished jobs are settled again when their dead letters are written,
//! and a transaction left idle on a live connection ends by itself.

use std::time::Duration;

use accrual_core::db;
use accrual_testkit::{TestEnv, eventually};
use sqlx::{Connection, Executor, MySqlPool};
use uuid::Uuid;

use crate::helpers::{DEV_KEYS, item, spawn_app_in};

/// Stores a job of `total` points, all sent (`enqueued`), created `age_secs` ago, with no rows.
async fn store_stuck_job(pool: &MySqlPool, total: u32, age_secs: u32) -> Uuid {
    let job_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at) \
         VALUES (?, 'client_z', ?, ?, 1, 'enqueued', NOW(6) - INTERVAL ? SECOND)",
    )
    .bind(job_id)
    .bind(vec![0u8; 32])
    .bind(total)
    .bind(age_secs)
    .execute(pool)
    .await
    .unwrap();
    job_id
}

async fn write_row(pool: &MySqlPool, job_id: Uuid, accrual_id: Uuid) {
    sqlx::query(
        "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
         VALUES (?, ?, 'm', 'P', 1, NOW(6))",
    )
    .bind(accrual_id)
    .bind(job_id)
    .execute(pool)
    .await
    .unwrap();
}

async fn status(pool: &MySqlPool, job_id: Uuid) -> (String, Option<u32>, Option<u32>) {
    sqlx::query_as("SELECT status, written, dead_lettered FROM accrual_jobs WHERE job_id = ?")
        .bind(job_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// 520 old jobs that can never finish, and one whose row a transaction holds: on today's code the
/// completion task looked only at the 500 oldest (and stopped its round at the locked one), so a
/// new job never settled. Now every running job is looked at, least recently checked first.
#[tokio::test]
async fn a_new_job_settles_behind_hundreds_of_stuck_jobs_and_a_locked_one() {
    let env = TestEnv::new().await;
    let locked = store_stuck_job(&env.pool, 1, 7_200).await;
    let accrual_id = Uuid::now_v7();
    // Its one point is written: a settler would want to store it.
    write_row(&env.pool, locked, accrual_id).await;
    for _ in 0..520 {
        store_stuck_job(&env.pool, 1, 3_600).await;
    }
    // A transaction holding the locked job's row, as a client that died mid-transaction would.
    let mut holder = sqlx::MySqlConnection::connect(&env.database.database_url)
        .await
        .unwrap();
    holder.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT job_id FROM accrual_jobs WHERE job_id = ? FOR UPDATE")
        .bind(locked)
        .fetch_one(&mut holder)
        .await
        .unwrap();

    let app = spawn_app_in(env, &[], |s| s.keys.accrual_api_keys = DEV_KEYS.into()).await;
    app.spawn_listener().await;
    let items: Vec<String> = (0..10).map(|i| item(&format!("m{i}"), "P", 1)).collect();
    let job_id = app.post(format!("[{}]", items.join(","))).job_id().await;
    eventually(Duration::from_secs(45), "the new job to settle", || async {
        app.job_view(&job_id).await["status"] == "completed"
    })
    .await;
    assert_eq!(app.env.ledger_rows().await, 11);
    assert_eq!(status(&app.env.pool, locked).await.0, "enqueued");

    // Once the lock goes, the locked job settles too.
    holder.execute("ROLLBACK").await.unwrap();
    // Backed off at most 10 s since its last try.
    eventually(
        Duration::from_secs(60),
        "the formerly locked job to settle",
        || async { status(&app.env.pool, locked).await.0 == "completed" },
    )
    .await;
}

/// A `completed_with_errors` job whose dead letter is then written, with the listener's own
/// re-settlement lost (here: the row is written behind its back), becomes `completed`: the
/// completion task's sweep settles finished jobs again.
#[tokio::test]
async fn a_finished_job_whose_dead_letter_was_written_is_settled_again_by_the_sweep() {
    let env = TestEnv::new().await;
    let job_id = store_stuck_job(&env.pool, 2, 60).await;
    let (written, dead) = (Uuid::now_v7(), Uuid::now_v7());
    write_row(&env.pool, job_id, written).await;
    sqlx::query(
        "INSERT INTO accrual_dead_letters (accrual_id, job_id, reason) VALUES (?, ?, 'test')",
    )
    .bind(dead)
    .bind(job_id)
    .execute(&env.pool)
    .await
    .unwrap();
    accrual_core::job_outcome::settle(&env.pool, job_id)
        .await
        .unwrap();
    assert_eq!(
        status(&env.pool, job_id).await,
        ("completed_with_errors".into(), Some(1), Some(1))
    );
    // Redriven and written; nobody told the job.
    write_row(&env.pool, job_id, dead).await;

    let app = spawn_app_in(env, &[], |s| s.keys.accrual_api_keys = DEV_KEYS.into()).await;
    app.run_background_once().await;
    assert_eq!(
        status(&app.env.pool, job_id).await,
        ("completed".into(), Some(2), Some(0))
    );
}

/// A transaction left idle (a client that died between statements with its connection still
/// open) is rolled back after `DATABASE_IDLE_TRANSACTION_TIMEOUT`, and its row locks go with it:
/// before, MariaDB kept them for `wait_timeout`, 8 hours by default.
#[tokio::test]
async fn an_idle_transaction_is_ended_and_its_locks_released() {
    let env = TestEnv::new().await;
    let job_id = store_stuck_job(&env.pool, 1, 60).await;
    let mut settings = env.database.clone();
    settings.database_idle_transaction_timeout = Duration::from_secs(2);
    settings.database_max_connections = 1;
    let idle_pool = db::connect(&settings).await.unwrap();
    let mut tx = idle_pool.begin().await.unwrap();
    sqlx::query("SELECT job_id FROM accrual_jobs WHERE job_id = ? FOR UPDATE")
        .bind(job_id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // Another session waits for the row longer than the idle timeout, and gets it.
    let mut other = env.pool.begin().await.unwrap();
    sqlx::query("SELECT job_id FROM accrual_jobs WHERE job_id = ? FOR UPDATE")
        .bind(job_id)
        .fetch_one(&mut *other)
        .await
        .expect("the idle transaction's lock was released");
    other.rollback().await.unwrap();
    // The idle session is gone: its transaction cannot go on.
    assert!(
        sqlx::query("SELECT 1").execute(&mut *tx).await.is_err(),
        "the idle transaction's session was ended"
    );
}
