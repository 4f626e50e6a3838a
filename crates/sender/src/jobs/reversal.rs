//! Reversal jobs: a job that writes, through the same dispatcher and listeners, one compensating
//! ledger row (negative amount, its own `accrual_id`, `reverses` = the original point) for every
//! point another job wrote. The ledger stays append-only.
//!
//! Two unique keys make a double reversal impossible: `accrual_jobs.reverses` (one reversal job per
//! job, decided by whichever concurrent insert commits first) and `point_accruals.reverses` (one
//! compensating row per point).
//!
//! A reversal is made in one transaction that first locks the original's job row exclusively
//! ([`lock_original`]), then reads its ledger rows and stores the reversal job. A listener's write
//! takes a shared lock on the job rows of its points and refuses the points of a job that has a
//! reversal: a late point of the original is either in the ledger before the reversal reads it
//! (and reversed) or refused as a dead letter, never written and left unreversed.

use std::collections::HashSet;

use accrual_core::accrual::Accrual;
use accrual_core::chunk;
use accrual_core::db::{ER_DUP_ENTRY, error_number};
use accrual_core::domain::{Amount, MemberId, PointType, Reason};
use accrual_core::message::PointRecord;
use chrono::{DateTime, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{MySqlConnection, MySqlPool, Transaction};
use uuid::Uuid;

/// A stored chunk (see `accrual_core::chunk`) and its number of points.
pub type StoredChunk = (Vec<u8>, usize);

/// One point the original job wrote, as its ledger row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPoint {
    pub accrual_id: Uuid,
    pub member_id: String,
    pub point_type: String,
    pub amount: i64,
    pub expires_at: Option<NaiveDateTime>,
}

/// The original job as its locked row shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedJob {
    pub client_id: String,
    pub status: String,
    /// The job it reverses, if it is itself a reversal job.
    pub reverses: Option<Uuid>,
    /// Its reversal job, if it has one already.
    pub reversed_by: Option<Uuid>,
}

/// Opens the reversal's transaction and locks the original job's row exclusively, so no listener
/// writes a point of it until the transaction ends; `None` in second place when there is no such
/// job. Under `REPEATABLE READ` the transaction's snapshot is taken at its first plain read, which
/// comes after the lock: what it reads next (the reversal job, the ledger rows) includes every
/// write committed before the lock was granted.
pub async fn lock_original(
    pool: &MySqlPool,
    original: Uuid,
) -> Result<(Transaction<'static, sqlx::MySql>, Option<LockedJob>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, String, Option<Uuid>)> = sqlx::query_as(
        "SELECT client_id, status, reverses FROM accrual_jobs WHERE job_id = ? FOR UPDATE",
    )
    .bind(original)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((client_id, status, reverses)) = row else {
        return Ok((tx, None));
    };
    let reversed_by: Option<Uuid> =
        sqlx::query_scalar("SELECT job_id FROM accrual_jobs WHERE reverses = ?")
            .bind(original)
            .fetch_optional(&mut *tx)
            .await?;
    let job = LockedJob {
        client_id,
        status,
        reverses,
        reversed_by,
    };
    Ok((tx, Some(job)))
}

/// The points `job_id` wrote to the ledger, in the order they were written, read in the
/// transaction [`lock_original`] opened. Only written points: a dead-lettered point was never
/// credited, so there is nothing to take back.
pub async fn written_points(
    conn: &mut MySqlConnection,
    job_id: Uuid,
) -> Result<Vec<WrittenPoint>, sqlx::Error> {
    let rows: Vec<(Uuid, String, String, i64, Option<NaiveDateTime>)> = sqlx::query_as(
        "SELECT accrual_id, member_id, point_type, amount, expires_at \
         FROM point_accruals WHERE job_id = ? ORDER BY id",
    )
    .bind(job_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(accrual_id, member_id, point_type, amount, expires_at)| WrittenPoint {
                accrual_id,
                member_id,
                point_type,
                amount,
                expires_at,
            },
        )
        .collect())
}

/// The `body_sha256` a reversal job is stored with: it names "reversal of `original`", so an
/// `Idempotency-Key` first used for another request (or the reversal of another job) is a 409.
pub fn digest(original: Uuid) -> [u8; 32] {
    Sha256::digest(format!("POST /v1/jobs/{original}/reversal")).into()
}

/// The `reason` every compensating point carries.
pub fn reason(original: Uuid) -> String {
    format!("reversal of job {original}")
}

/// A ledger row that cannot be turned into a compensating point (it would not pass the checks
/// the API and the listener make).
#[derive(Debug, thiserror::Error)]
#[error("ledger row {accrual_id} cannot be reversed: {field} {message}")]
pub struct UnreversibleRow {
    pub accrual_id: Uuid,
    pub field: &'static str,
    pub message: &'static str,
}

/// The reversal job's stored chunks (see `accrual_core::chunk`, `chunk_items` points each) and
/// its number of distinct members. Each compensating point: a new UUID v7 `accrual_id`,
/// `job_id` = the reversal job, the original's member, point type, expiry and amount magnitude
/// (negative on the wire and in the ledger, through `reverses`), `reverses` = the original
/// `accrual_id`, `accepted_at` = `accepted_at`.
pub fn compensating_chunks(
    original: Uuid,
    reversal_job: Uuid,
    accepted_at: DateTime<Utc>,
    points: &[WrittenPoint],
    chunk_items: usize,
) -> Result<(Vec<StoredChunk>, usize), UnreversibleRow> {
    let chunk_items = chunk_items.max(1);
    let reason = Reason::try_from(reason(original)).map_err(|e| UnreversibleRow {
        accrual_id: original,
        field: "reason",
        message: e.0,
    })?;
    let mut members = HashSet::new();
    let mut chunks = Vec::with_capacity(points.len().div_ceil(chunk_items));
    for slice in points.chunks(chunk_items) {
        let mut records = Vec::with_capacity(slice.len());
        for point in slice {
            let bad = |field| {
                move |e: accrual_core::domain::FieldError| UnreversibleRow {
                    accrual_id: point.accrual_id,
                    field,
                    message: e.0,
                }
            };
            members.insert(point.member_id.as_str());
            records.push(PointRecord {
                accrual_id: Uuid::now_v7(),
                job_id: reversal_job,
                accrual: Accrual {
                    member_id: MemberId::try_from(point.member_id.as_str())
                        .map_err(bad("member_id"))?,
                    point_type: PointType::try_from(point.point_type.as_str())
                        .map_err(bad("point_type"))?,
                    // A credit's amount is its magnitude; a row that is itself negative (a
                    // compensating row) is refused here.
                    amount: Amount::try_from(point.amount).map_err(bad("amount"))?,
                    reason: Some(reason.clone()),
                    expires_at: point.expires_at.map(|t| t.and_utc()),
                    external_id: None,
                },
                accepted_at,
                reverses: Some(point.accrual_id),
            });
        }
        chunks.push((chunk::encode(&records), records.len()));
    }
    Ok((chunks, members.len()))
}

/// A reversal job to store.
#[derive(Debug)]
pub struct NewReversal {
    pub job_id: Uuid,
    /// The job it reverses.
    pub reverses: Uuid,
    pub client_id: String,
    pub idempotency_key: Option<String>,
    pub total: usize,
    pub members: usize,
    pub created_at: DateTime<Utc>,
    pub chunks: Vec<StoredChunk>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReversalStoreError {
    /// Another reversal of the same job, or a job with the same client and `Idempotency-Key`,
    /// exists already (a concurrent call committed first).
    #[error("the job is reversed already, or the Idempotency-Key is taken")]
    Duplicate,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Stores the reversal job (`dispatching`, due at MySQL's `NOW(6)`) and all its chunks in the transaction
/// [`lock_original`] opened, and commits (which releases the original's row). The unique key on
/// `accrual_jobs.reverses` lets one reversal of a job commit; any other gets
/// [`ReversalStoreError::Duplicate`].
pub async fn insert(
    mut tx: Transaction<'static, sqlx::MySql>,
    job: &NewReversal,
) -> Result<(), ReversalStoreError> {
    let inserted = sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, idempotency_key, body_sha256, total, members, status, created_at, reverses) \
         VALUES (?, ?, ?, ?, ?, ?, 'dispatching', ?, ?)",
    )
    .bind(job.job_id)
    .bind(&job.client_id)
    .bind(&job.idempotency_key)
    .bind(&digest(job.reverses)[..])
    .bind(job.total as u32)
    .bind(job.members as u32)
    .bind(job.created_at.naive_utc())
    .bind(job.reverses)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(e) if error_number(&e) == Some(ER_DUP_ENTRY) => {
            return Err(ReversalStoreError::Duplicate);
        }
        other => {
            other?;
        }
    }
    for (seq, (items, count)) in job.chunks.iter().enumerate() {
        sqlx::query(
            "INSERT INTO accrual_chunks (job_id, seq, items, item_count, due_at) VALUES (?, ?, ?, ?, NOW(6))",
        )
        .bind(job.job_id)
        .bind(seq as u32)
        .bind(items)
        .bind(*count as u32)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(i: i64) -> WrittenPoint {
        WrittenPoint {
            accrual_id: Uuid::now_v7(),
            member_id: format!("m{}", i % 3),
            point_type: "WELFARE".into(),
            amount: i + 1,
            expires_at: (i == 0).then(|| {
                chrono::NaiveDate::from_ymd_opt(2030, 1, 2)
                    .and_then(|d| d.and_hms_micro_opt(3, 4, 5, 6))
                    .expect("a valid instant")
            }),
        }
    }

    #[test]
    fn each_written_point_gets_one_compensating_point_with_a_negative_amount() {
        let original = Uuid::now_v7();
        let reversal = Uuid::now_v7();
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let points: Vec<WrittenPoint> = (0..25).map(written).collect();
        let (chunks, members) =
            compensating_chunks(original, reversal, now, &points, 10).expect("reversible");
        assert_eq!(members, 3);
        assert_eq!(
            chunks.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let records: Vec<PointRecord> = chunks
            .iter()
            .flat_map(|(blob, _)| chunk::decode(blob).expect("decodes"))
            .map(|body| PointRecord::decode(&body).expect("a valid message"))
            .collect();
        assert_eq!(records.len(), 25);
        let ids: HashSet<Uuid> = records.iter().map(|r| r.accrual_id).collect();
        assert_eq!(
            ids.len(),
            25,
            "each compensating point has its own accrual_id"
        );
        for (record, point) in records.iter().zip(&points) {
            assert_ne!(record.accrual_id, point.accrual_id);
            assert_eq!(record.reverses, Some(point.accrual_id));
            assert_eq!(record.job_id, reversal);
            assert_eq!(record.ledger_amount(), -point.amount);
            assert_eq!(record.accrual.member_id.as_str(), point.member_id);
            assert_eq!(record.accrual.point_type.as_str(), point.point_type);
            assert_eq!(
                record.accrual.expires_at.map(|t| t.naive_utc()),
                point.expires_at
            );
            assert_eq!(record.accepted_at, now);
            assert_eq!(
                record.accrual.reason.as_ref().map(Reason::as_str),
                Some(format!("reversal of job {original}").as_str())
            );
        }
    }

    #[test]
    fn a_compensating_row_cannot_be_reversed_again() {
        let mut point = written(1);
        point.amount = -2;
        let err = compensating_chunks(Uuid::now_v7(), Uuid::now_v7(), Utc::now(), &[point], 10)
            .expect_err("negative");
        assert_eq!(err.field, "amount");
    }

    #[test]
    fn the_digest_names_the_reversed_job() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(digest(a), digest(a));
        assert_ne!(digest(a), digest(b));
    }
}
