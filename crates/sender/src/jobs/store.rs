//! Durable jobs: the `accrual_jobs` row and its `accrual_chunks`, written in one transaction.

use accrual_core::db::{ER_DUP_ENTRY, error_number};
use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use uuid::Uuid;

/// A job to store.
#[derive(Debug)]
pub struct NewJob {
    pub job_id: Uuid,
    pub client_id: String,
    pub idempotency_key: Option<String>,
    pub body_sha256: [u8; 32],
    pub total: usize,
    pub members: usize,
    pub reserve_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// The client's name for the job (a campaign), shown in its view and filtered on in the list.
    pub label: Option<String>,
    /// Stored chunks (see `accrual_core::chunk`) with their item counts.
    pub chunks: Vec<(Vec<u8>, usize)>,
}

/// A stored job as the API shows it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub job_id: Uuid,
    pub client_id: String,
    pub body_sha256: Vec<u8>,
    pub total: u32,
    pub members: u32,
    pub status: String,
    pub reserve_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Counts stored when the job was settled (see `accrual_core::job_outcome`).
    pub written: Option<u32>,
    pub dead_lettered: Option<u32>,
    pub label: Option<String>,
    /// When retention removed the job's stored chunks (its per-item results went with them).
    pub results_purged_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "job_id, client_id, body_sha256, total, members, status, reserve_at, \
     created_at, completed_at, written, dead_lettered, label, results_purged_at";

type JobTuple = (
    Uuid,
    String,
    Vec<u8>,
    u32,
    u32,
    String,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<u32>,
    Option<u32>,
    Option<String>,
    Option<DateTime<Utc>>,
);

impl From<JobTuple> for JobRow {
    fn from(t: JobTuple) -> Self {
        Self {
            job_id: t.0,
            client_id: t.1,
            body_sha256: t.2,
            total: t.3,
            members: t.4,
            status: t.5,
            reserve_at: t.6,
            created_at: t.7,
            completed_at: t.8,
            written: t.9,
            dead_lettered: t.10,
            label: t.11,
            results_purged_at: t.12,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a job with this client and Idempotency-Key exists already")]
    DuplicateKey,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Stores the job and all its chunks, or nothing.
pub async fn insert(pool: &MySqlPool, job: &NewJob) -> Result<(), StoreError> {
    let status = if job.reserve_at.is_some() {
        "reserved"
    } else {
        "dispatching"
    };
    let due_at = job.reserve_at.unwrap_or(job.created_at);
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, idempotency_key, body_sha256, total, members, status, reserve_at, created_at, label) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(job.job_id)
    .bind(&job.client_id)
    .bind(&job.idempotency_key)
    .bind(&job.body_sha256[..])
    .bind(job.total as u32)
    .bind(job.members as u32)
    .bind(status)
    .bind(job.reserve_at.map(|t| t.naive_utc()))
    .bind(job.created_at.naive_utc())
    .bind(&job.label)
    .execute(&mut *tx)
    .await;
    match inserted {
        // The same client and Idempotency-Key at once: the other request's job stands.
        Err(e) if error_number(&e) == Some(ER_DUP_ENTRY) => {
            return Err(StoreError::DuplicateKey);
        }
        other => {
            other?;
        }
    }
    for (seq, (items, count)) in job.chunks.iter().enumerate() {
        sqlx::query("INSERT INTO accrual_chunks (job_id, seq, items, item_count, due_at) VALUES (?, ?, ?, ?, ?)")
            .bind(job.job_id)
            .bind(seq as u32)
            .bind(items)
            .bind(*count as u32)
            .bind(due_at.naive_utc())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The job a client created with an `Idempotency-Key`.
pub async fn find_by_key(
    pool: &MySqlPool,
    client_id: &str,
    key: &str,
) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM accrual_jobs WHERE client_id = ? AND idempotency_key = ?"
    );
    let row: Option<JobTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(client_id)
        .bind(key)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(JobRow::from))
}

/// A job by id.
pub async fn get(pool: &MySqlPool, job_id: Uuid) -> Result<Option<JobRow>, sqlx::Error> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM accrual_jobs WHERE job_id = ?");
    let row: Option<JobTuple> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(job_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(JobRow::from))
}

/// Why a job could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such job")]
    NotFound,
    #[error("the job is {0} and can no longer be cancelled")]
    NotCancellable(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Cancels a reserved job none of whose chunks has been claimed; removes its chunks.
///
/// Locks the chunks first, then the job: the dispatcher's claim takes them in the same order.
pub async fn cancel(pool: &MySqlPool, job_id: Uuid, client_id: &str) -> Result<(), CancelError> {
    let mut tx = pool.begin().await?;
    let chunk_claimed: Vec<bool> = sqlx::query_scalar(
        "SELECT lease_owner IS NOT NULL OR dispatched_at IS NOT NULL FROM accrual_chunks WHERE job_id = ? FOR UPDATE",
    )
    .bind(job_id)
    .fetch_all(&mut *tx)
    .await?;
    let claimed = chunk_claimed.iter().any(|c| *c);
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT client_id, status FROM accrual_jobs WHERE job_id = ? FOR UPDATE")
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await?;
    let status = match row {
        Some((owner, status)) if owner == client_id => status,
        _ => return Err(CancelError::NotFound),
    };
    if status != "reserved" || claimed {
        let shown = if status == "reserved" {
            "dispatching".to_owned()
        } else {
            status
        };
        return Err(CancelError::NotCancellable(shown));
    }
    sqlx::query("DELETE FROM accrual_chunks WHERE job_id = ?")
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE accrual_jobs SET status = 'cancelled', completed_at = NOW(6) WHERE job_id = ?",
    )
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
