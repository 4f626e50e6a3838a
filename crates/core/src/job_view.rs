//! A job as its client sees it (`GET /v1/jobs/{job_id}`, each SSE event, each webhook body): the
//! one definition of the view's shape, shared by the sender's API and every process that settles
//! jobs (the listener renders webhook bodies too).
//!
//! The sender reads live counters from Redis for a running job; [`stored`] renders a job from
//! MySQL alone, with the counts settled on its row (what a webhook body shows).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::mysql::MySqlRow;
use sqlx::{AssertSqlSafe, MySqlConnection, Row};
use uuid::Uuid;

use crate::job_status::JobStatus;
use crate::progress::Counters;

/// `GET /v1/jobs/{job_id}` and each SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    pub job_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub status: JobStatus,
    pub total: u64,
    pub enqueued: u64,
    pub written: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub created_at: DateTime<Utc>,
    pub reserve_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The client's label for the job (`?label=` when it was posted).
    pub label: Option<String>,
    /// Where the job's per-item results are: `GET` it for one record per item, in request order.
    pub results_url: String,
    /// Items left out of the job because the client had used their `external_id` before
    /// (`on_duplicate=skip`); not part of `total`.
    pub skipped: u64,
    /// The job this reversal job reverses.
    pub reverses: Option<Uuid>,
    /// The reversal job that reverses this job.
    pub reversed_by: Option<Uuid>,
    /// What the reconciler did to the job: `null` until it found the job quiet (every chunk sent,
    /// no progress for its quiet period) and compared it with the ledger.
    pub reconciler: Option<Reconciliation>,
    /// Where the job stands among the points waiting for dispatch, while it has due points not
    /// yet dispatched (left out otherwise, and in webhook bodies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueuePlace>,
}

/// A waiting job's place under fair dispatch, estimated from the listeners' measured rate
/// assuming nothing new arrives; read again, it moves as the job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueuePlace {
    /// Points that go to the listeners before this job's next point: those already in the queue
    /// and those of other jobs (of any client) dispatched before it under the fair order.
    pub points_ahead: u64,
    /// The same through this job's last point, its own remaining points included.
    pub points_to_finish: u64,
    /// When its next point should be written, to the second; `null` until a drain rate has been
    /// measured.
    pub estimated_start: Option<DateTime<Utc>>,
    /// When its last point should be written; `null` like `estimated_start`.
    pub estimated_finish: Option<DateTime<Utc>>,
}

/// What the reconciler did to a job that went quiet before all of its points were accounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reconciliation {
    /// Times it found points neither written nor dead-lettered and sent them again (same
    /// `accrual_id`s, so a late original is a duplicate).
    pub attempts: u32,
    /// Points it sent again, over all attempts.
    pub points_resent: u64,
    /// Points it gave up on after its last attempt: dead-lettered with the reason `lost in transit
    /// after N attempts` (each counts as written if it is written after all).
    pub points_given_up: u64,
    /// When it last compared the job with the ledger.
    pub last_compared_at: DateTime<Utc>,
}

impl JobView {
    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }
}

/// What a view shows of a job's row, besides its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFields {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub total: u32,
    pub created_at: DateTime<Utc>,
    pub reserve_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub label: Option<String>,
    pub skipped: u32,
    pub reverses: Option<Uuid>,
    pub reversed_by: Option<Uuid>,
    pub reconciler: Option<Reconciliation>,
}

/// The view of a job with these counters.
pub fn to_view(job: JobFields, c: Counters) -> JobView {
    JobView {
        results_url: format!("/v1/jobs/{}/results", job.job_id),
        job_id: job.job_id,
        status: job.status,
        total: u64::from(job.total),
        enqueued: c.enqueued,
        written: c.written,
        duplicates: c.duplicates,
        dead_lettered: c.dead_lettered,
        created_at: job.created_at,
        reserve_at: job.reserve_at,
        completed_at: job.completed_at,
        label: job.label,
        skipped: u64::from(job.skipped),
        reverses: job.reverses,
        reversed_by: job.reversed_by,
        reconciler: job.reconciler,
        queue: None,
    }
}

/// The counters MySQL alone knows for a job: a settled job's stored counts (every point was sent:
/// `enqueued` is its total), nothing for any other. `duplicates` lives only in Redis: 0.
pub fn stored_counters(
    status: JobStatus,
    total: u32,
    written: Option<u32>,
    dead_lettered: Option<u32>,
) -> Counters {
    match (status, written, dead_lettered) {
        (
            JobStatus::Completed | JobStatus::CompletedWithErrors,
            Some(written),
            Some(dead_lettered),
        ) => Counters {
            enqueued: u64::from(total),
            written: u64::from(written),
            duplicates: 0,
            dead_lettered: u64::from(dead_lettered),
        },
        _ => Counters::default(),
    }
}

/// The reconciler's columns of `accrual_jobs`, in the order [`reconciliation`] reads them.
pub const RECONCILER_COLUMNS: &str =
    "reconcile_attempts, points_resent, points_given_up, reconciled_at";

/// What the reconciler did, from its columns ([`RECONCILER_COLUMNS`]) at `first` in `row`.
pub fn reconciliation(row: &MySqlRow, first: usize) -> Result<Option<Reconciliation>, sqlx::Error> {
    let last: Option<DateTime<Utc>> = row.try_get(first + 3)?;
    Ok(match last {
        None => None,
        Some(last_compared_at) => Some(Reconciliation {
            attempts: row.try_get(first)?,
            points_resent: u64::from(row.try_get::<u32, _>(first + 1)?),
            points_given_up: u64::from(row.try_get::<u32, _>(first + 2)?),
            last_compared_at,
        }),
    })
}

/// A job's owner and its view from MySQL alone (see [`stored_counters`]), as `conn` sees it: in a
/// transaction, with that transaction's own changes.
pub async fn stored(
    conn: &mut MySqlConnection,
    job_id: Uuid,
) -> Result<Option<(String, JobView)>, sqlx::Error> {
    let sql = format!(
        "SELECT client_id, job_id, status, total, created_at, reserve_at, completed_at, label, \
           skipped, reverses, \
           (SELECT r.job_id FROM accrual_jobs r WHERE r.reverses = accrual_jobs.job_id), \
           written, dead_lettered, {RECONCILER_COLUMNS} \
         FROM accrual_jobs WHERE job_id = ?"
    );
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(job_id)
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    let status: JobStatus = row.try_get(2)?;
    let total: u32 = row.try_get(3)?;
    let counters = stored_counters(status, total, row.try_get(11)?, row.try_get(12)?);
    let fields = JobFields {
        job_id: row.try_get(1)?,
        status,
        total,
        created_at: row.try_get(4)?,
        reserve_at: row.try_get(5)?,
        completed_at: row.try_get(6)?,
        label: row.try_get(7)?,
        skipped: row.try_get(8)?,
        reverses: row.try_get(9)?,
        reversed_by: row.try_get(10)?,
        reconciler: reconciliation(&row, 13)?,
    };
    Ok(Some((row.try_get(0)?, to_view(fields, counters))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_settled_job_shows_stored_counts_and_all_of_it_enqueued() {
        assert_eq!(
            stored_counters(JobStatus::CompletedWithErrors, 10, Some(8), Some(2)),
            Counters {
                enqueued: 10,
                written: 8,
                duplicates: 0,
                dead_lettered: 2
            }
        );
        assert_eq!(
            stored_counters(JobStatus::Dispatching, 10, None, None),
            Counters::default()
        );
        assert_eq!(
            stored_counters(JobStatus::Cancelled, 10, None, None),
            Counters::default()
        );
    }
}
