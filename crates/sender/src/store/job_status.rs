//! A job as its client sees it: stored outcome once final, live counters from Redis before.
//!
//! Reading a job never changes it and never counts a finished job's ledger rows: its outcome is
//! stored when it happens (see `accrual_core::job_outcome` and [`crate::workers::completion`]). While the
//! job runs, Redis's live counters are shown; only when Redis is unavailable are the counts read
//! from MySQL.

use accrual_core::job_outcome;
use accrual_core::job_status::JobStatus;
use accrual_core::job_view::{self, JobFields};
use accrual_core::progress::{Counters, Progress};
use sqlx::MySqlPool;
use uuid::Uuid;

use super::jobs::{self, JobRow};

pub use accrual_core::job_status::FINAL_STATUSES;

/// The view's one definition is in core (the listener renders webhook bodies too).
pub use accrual_core::job_view::JobView;

/// Points of a job sent so far, as MySQL has them.
async fn enqueued(pool: &MySqlPool, job_id: Uuid) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(item_count), 0) AS SIGNED) FROM accrual_chunks \
         WHERE job_id = ? AND dispatched_at IS NOT NULL",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// The job as its owner sees it (`None` for an unknown job or another client's).
pub async fn view(
    pool: &MySqlPool,
    progress: &Progress,
    job_id: Uuid,
    client_id: &str,
) -> Result<Option<JobView>, sqlx::Error> {
    let Some(row) = jobs::get(pool, job_id).await? else {
        return Ok(None);
    };
    if row.client_id != client_id {
        return Ok(None);
    }
    view_of(pool, progress, row).await.map(Some)
}

/// The view of a job row already read (the job list reads a page of rows in one query).
pub async fn view_of(
    pool: &MySqlPool,
    progress: &Progress,
    row: JobRow,
) -> Result<JobView, sqlx::Error> {
    let job_id = row.job_id;
    let total = u64::from(row.total);
    let counters = match (row.status, row.written, row.dead_lettered) {
        // A finished or not-yet-started job: nothing live to read.
        (JobStatus::Cancelled | JobStatus::Reserved, _, _) => Counters::default(),
        (
            JobStatus::Completed | JobStatus::CompletedWithErrors,
            Some(written),
            Some(dead_lettered),
        ) => Counters {
            enqueued: total,
            written: u64::from(written),
            dead_lettered: u64::from(dead_lettered),
            duplicates: progress.get(job_id).await.map_or(0, |l| l.duplicates),
        },
        _ => match progress.get(job_id).await {
            Some(live) => clamp(live, total),
            None => {
                let outcome = job_outcome::count(pool, job_id).await?;
                Counters {
                    enqueued: enqueued(pool, job_id).await?,
                    written: outcome.written,
                    duplicates: 0,
                    dead_lettered: outcome.dead_lettered,
                }
            }
        },
    };
    Ok(to_view(row, counters))
}

/// Live counters can run ahead of the truth (two listeners counting one point while they race):
/// never show more than the job holds.
fn clamp(live: Counters, total: u64) -> Counters {
    let written = live.written.min(total);
    Counters {
        enqueued: live.enqueued.min(total),
        written,
        duplicates: live.duplicates,
        dead_lettered: live.dead_lettered.min(total - written),
    }
}

fn to_view(row: JobRow, c: Counters) -> JobView {
    job_view::to_view(
        JobFields {
            job_id: row.job_id,
            status: row.status,
            total: row.total,
            created_at: row.created_at,
            reserve_at: row.reserve_at,
            completed_at: row.completed_at,
            label: row.label,
            skipped: row.skipped,
            reverses: row.reverses,
            reversed_by: row.reversed_by,
            reconciler: row.reconciler,
        },
        c,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_counters_never_show_more_than_the_job_holds() {
        let live = Counters {
            enqueued: 12,
            written: 11,
            duplicates: 3,
            dead_lettered: 2,
        };
        assert_eq!(
            clamp(live, 10),
            Counters {
                enqueued: 10,
                written: 10,
                duplicates: 3,
                dead_lettered: 0
            }
        );
    }
}
