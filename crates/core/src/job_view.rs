//! A job as its client sees it (`GET /v1/jobs/{job_id}`, each SSE event, each webhook body): the
//! one definition of the view's shape, shared by the sender's API and every process that settles
//! jobs (the listener renders webhook bodies too).
//!
//! The sender reads live counters from Redis for a running job; [`stored`] renders a job from
//! MySQL alone, with the counts settled on its row (what a webhook body shows).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlConnection;
use uuid::Uuid;

use crate::job_outcome::FINAL_STATUSES;
use crate::progress::Counters;

/// `GET /v1/jobs/{job_id}` and each SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
}

impl JobView {
    pub fn is_final(&self) -> bool {
        FINAL_STATUSES.contains(&self.status.as_str())
    }
}

/// What a view shows of a job's row, besides its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFields {
    pub job_id: Uuid,
    pub status: String,
    pub total: u32,
    pub created_at: DateTime<Utc>,
    pub reserve_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub label: Option<String>,
    pub skipped: u32,
    pub reverses: Option<Uuid>,
    pub reversed_by: Option<Uuid>,
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
    }
}

/// The counters MySQL alone knows for a job: a settled job's stored counts (every point was sent:
/// `enqueued` is its total), nothing for any other. `duplicates` lives only in Redis: 0.
pub fn stored_counters(
    status: &str,
    total: u32,
    written: Option<u32>,
    dead_lettered: Option<u32>,
) -> Counters {
    match (status, written, dead_lettered) {
        ("completed" | "completed_with_errors", Some(written), Some(dead_lettered)) => Counters {
            enqueued: u64::from(total),
            written: u64::from(written),
            duplicates: 0,
            dead_lettered: u64::from(dead_lettered),
        },
        _ => Counters::default(),
    }
}

type StoredRow = (
    String,
    Uuid,
    String,
    u32,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    u32,
    Option<Uuid>,
    Option<Uuid>,
    Option<u32>,
    Option<u32>,
);

/// A job's owner and its view from MySQL alone (see [`stored_counters`]), as `conn` sees it: in a
/// transaction, with that transaction's own changes.
pub async fn stored(
    conn: &mut MySqlConnection,
    job_id: Uuid,
) -> Result<Option<(String, JobView)>, sqlx::Error> {
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT client_id, job_id, status, total, created_at, reserve_at, completed_at, label, \
           skipped, reverses, \
           (SELECT r.job_id FROM accrual_jobs r WHERE r.reverses = accrual_jobs.job_id), \
           written, dead_lettered \
         FROM accrual_jobs WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| {
        let counters = stored_counters(&r.2, r.3, r.11, r.12);
        let fields = JobFields {
            job_id: r.1,
            status: r.2,
            total: r.3,
            created_at: r.4,
            reserve_at: r.5,
            completed_at: r.6,
            label: r.7,
            skipped: r.8,
            reverses: r.9,
            reversed_by: r.10,
        };
        (r.0, to_view(fields, counters))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_settled_job_shows_stored_counts_and_all_of_it_enqueued() {
        assert_eq!(
            stored_counters("completed_with_errors", 10, Some(8), Some(2)),
            Counters {
                enqueued: 10,
                written: 8,
                duplicates: 0,
                dead_lettered: 2
            }
        );
        assert_eq!(
            stored_counters("dispatching", 10, None, None),
            Counters::default()
        );
        assert_eq!(
            stored_counters("cancelled", 10, None, None),
            Counters::default()
        );
    }
}
