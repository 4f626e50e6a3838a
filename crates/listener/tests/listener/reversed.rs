//! A reversed job stays reversed (issue 24, point 4): a point of a job that has a reversal is
//! refused, and the refusal is exact under concurrency. The reversal is made under an exclusive
//! lock on the original's job row; the listener's write takes a shared one on the job rows of its
//! batch, so a point arriving while a reversal is being made waits for it, then is refused.

use std::time::Duration;

use accrual_listener::ledger::{Ledger, REVERSED_REASON};
use accrual_testkit::{TestEnv, eventually};
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::helpers::point;

/// Stores a completed job row (no chunks: the test writes its points itself).
async fn store_job<'e>(conn: impl sqlx::MySqlExecutor<'e>, job_id: Uuid, reverses: Option<Uuid>) {
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, reverses) \
         VALUES (?, 'client_a', ?, 1, 1, 'completed', NOW(6), ?)",
    )
    .bind(job_id)
    .bind(&[0u8; 32][..])
    .bind(reverses)
    .execute(conn)
    .await
    .unwrap();
}

/// Transactions on this test's database waiting for a lock.
async fn lock_waits(pool: &MySqlPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX t \
         JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
         WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_point_written_while_its_job_is_being_reversed_waits_for_the_reversal_and_is_refused() {
    let env = TestEnv::new().await;
    let pool = &env.pool;
    let mut record = point("member-late", 7);
    let original = record.job_id;
    store_job(pool, original, None).await;
    let ledger = Ledger::new(pool.clone(), 64);

    // A reversal being made: the original's row locked, as `jobs::reversal::lock_original` does.
    let mut reversal = pool.begin().await.unwrap();
    sqlx::query("SELECT job_id FROM accrual_jobs WHERE job_id = ? FOR UPDATE")
        .bind(original)
        .execute(&mut *reversal)
        .await
        .unwrap();
    let write = tokio::spawn({
        let (ledger, record) = (ledger.clone(), record.clone());
        async move { ledger.write(&[record], far()).await }
    });
    eventually(
        Duration::from_secs(10),
        "the write waits for the reversal's lock",
        || async { lock_waits(pool).await == 1 },
    )
    .await;
    store_job(&mut *reversal, Uuid::now_v7(), Some(original)).await;
    reversal.commit().await.unwrap();

    let outcome = write
        .await
        .unwrap()
        .unwrap()
        .expect("written before the deadline");
    assert_eq!((outcome.written, outcome.duplicates), (0, 0));
    assert_eq!(outcome.refused, vec![(record.accrual_id, REVERSED_REASON)]);
    assert!(outcome.resettle.contains(&original));
    let (rows, reason): (i64, Option<String>) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM point_accruals), \
                (SELECT reason FROM accrual_dead_letters WHERE accrual_id = ?)",
    )
    .bind(record.accrual_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((rows, reason.as_deref()), (0, Some(REVERSED_REASON)));

    // Any later point of it too; a point of another job is written as ever.
    record.accrual_id = Uuid::now_v7();
    let other = point("member-other", 3);
    store_job(pool, other.job_id, None).await;
    let outcome = ledger
        .write(&[record.clone(), other], far())
        .await
        .unwrap()
        .expect("written before the deadline");
    assert_eq!(outcome.written, 1);
    assert_eq!(outcome.refused, vec![(record.accrual_id, REVERSED_REASON)]);
}

/// A write deadline no test reaches.
fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3_600)
}
