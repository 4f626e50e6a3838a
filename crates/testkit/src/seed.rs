//! Rows made with SQL where a test needs more of them than the pipeline would write in its time.

use sqlx::MySqlPool;
use uuid::Uuid;

/// Ledger rows per statement: one statement over the pool's statement timeout would be cut off.
const ROWS_PER_STATEMENT: u64 = 50_000;

/// A `completed` job of `client` with `points` ledger rows (amounts 1-1000 of `WELFARE`) over
/// `members` members named `{member_prefix}{n}`, made with SQL from MariaDB's `seq_1_to_N`. The
/// rows' `client_id` is left NULL, as on rows written before the listener filled it (the backfill
/// and the member queries' join find the client through the job). Returns the job's id.
pub async fn seed_completed_job(
    pool: &MySqlPool,
    client: &str,
    points: u64,
    members: u64,
    member_prefix: &str,
) -> Uuid {
    let job_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, completed_at, written, dead_lettered) \
         VALUES (?, ?, REPEAT('x', 32), ?, ?, 'completed', NOW(6), NOW(6), ?, 0)",
    )
    .bind(job_id)
    .bind(client)
    .bind(points)
    .bind(members)
    .bind(points)
    .execute(pool)
    .await
    .unwrap();
    for from in (0..points).step_by(ROWS_PER_STATEMENT as usize) {
        let to = (from + ROWS_PER_STATEMENT).min(points);
        let seeded = format!(
            "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) \
             SELECT UNHEX(REPLACE(UUID(), '-', '')), ?, CONCAT(?, seq % {members}), 'WELFARE', seq % 1000 + 1, NOW(6) \
             FROM seq_{}_to_{to}",
            from + 1
        );
        sqlx::query(sqlx::AssertSqlSafe(seeded))
            .bind(job_id)
            .bind(member_prefix)
            .execute(pool)
            .await
            .unwrap();
    }
    job_id
}
