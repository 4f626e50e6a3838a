//! A job's status and progress: live counters from Redis, final state reconciled against MySQL.

use accrual_core::progress::{Counters, Progress};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;
use uuid::Uuid;

use super::store::{self, JobRow};

/// Statuses after which nothing changes.
pub const FINAL_STATUSES: [&str; 3] = ["completed", "completed_with_errors", "cancelled"];

/// `GET /v1/jobs/{job_id}` and each SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub job_id: Uuid,
    pub status: String,
    pub total: u64,
    pub enqueued: u64,
    pub written: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub created_at: DateTime<Utc>,
    pub reserve_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl JobView {
    pub fn is_final(&self) -> bool {
        FINAL_STATUSES.contains(&self.status.as_str())
    }
}

/// Counts of a job as MySQL has them: the truth, whatever Redis holds.
async fn mysql_counters(pool: &MySqlPool, job_id: Uuid) -> Result<Counters, sqlx::Error> {
    let (enqueued, written, dead_lettered): (i64, i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT CAST(COALESCE(SUM(item_count), 0) AS SIGNED) FROM accrual_chunks WHERE job_id = ? AND dispatched_at IS NOT NULL), \
           (SELECT COUNT(*) FROM point_accruals WHERE job_id = ?), \
           (SELECT COUNT(*) FROM accrual_dead_letters WHERE job_id = ?)",
    )
    .bind(job_id)
    .bind(job_id)
    .bind(job_id)
    .fetch_one(pool)
    .await?;
    Ok(Counters {
        enqueued: enqueued as u64,
        written: written as u64,
        duplicates: 0,
        dead_lettered: dead_lettered as u64,
    })
}

/// The job as its owner sees it (`None` for an unknown job or another client's).
///
/// With `reconcile`, counts come from MySQL and a job whose points are all written or
/// dead-lettered is marked `completed` (or `completed_with_errors`) there. Without it, live
/// counters from Redis are used while they are available and do not claim completion.
pub async fn view(
    pool: &MySqlPool,
    progress: &Progress,
    job_id: Uuid,
    client_id: &str,
    reconcile: bool,
) -> Result<Option<JobView>, sqlx::Error> {
    let Some(mut row) = store::get(pool, job_id).await? else {
        return Ok(None);
    };
    if row.client_id != client_id {
        return Ok(None);
    }
    let live = progress.get(job_id).await;
    let total = u64::from(row.total);
    let live_is_enough = !reconcile
        && live.is_some_and(|c| c.written + c.dead_lettered < total)
        && !FINAL_STATUSES.contains(&row.status.as_str());
    let counters = match live {
        Some(c) if live_is_enough => c,
        _ => {
            let mut c = mysql_counters(pool, job_id).await?;
            c.duplicates = live.map_or(0, |l| l.duplicates);
            finalize(pool, &mut row, &c).await?;
            c
        }
    };
    Ok(Some(JobView {
        job_id,
        status: row.status,
        total,
        enqueued: counters.enqueued.min(total),
        written: counters.written,
        duplicates: counters.duplicates,
        dead_lettered: counters.dead_lettered,
        created_at: row.created_at,
        reserve_at: row.reserve_at,
        completed_at: row.completed_at,
    }))
}

/// Moves a job to `enqueued` / `completed*` when MySQL's counts say so.
async fn finalize(pool: &MySqlPool, row: &mut JobRow, c: &Counters) -> Result<(), sqlx::Error> {
    let total = u64::from(row.total);
    let next = if c.written + c.dead_lettered >= total {
        if c.dead_lettered > 0 {
            "completed_with_errors"
        } else {
            "completed"
        }
    } else if c.enqueued >= total {
        "enqueued"
    } else {
        return Ok(());
    };
    if row.status == next || !matches!(row.status.as_str(), "dispatching" | "enqueued") {
        return Ok(());
    }
    let done = next.starts_with("completed");
    sqlx::query(
        "UPDATE accrual_jobs SET status = ?, completed_at = IF(?, NOW(6), completed_at) \
         WHERE job_id = ? AND status IN ('dispatching', 'enqueued')",
    )
    .bind(next)
    .bind(done)
    .bind(row.job_id)
    .execute(pool)
    .await?;
    if let Some(fresh) = store::get(pool, row.job_id).await? {
        *row = fresh;
    }
    Ok(())
}
