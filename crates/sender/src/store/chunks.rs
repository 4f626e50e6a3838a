//! The dispatchers' side of `accrual_chunks`: a due chunk claimed by lease, the lease renewed or
//! handed back, and the chunk marked dispatched (which moves its job to `enqueued` once none is
//! left).
//!
//! Due chunks are claimed in a fair order ([`fair`]): by client, then by job within a client.
//! A claim is a row lock taken with `FOR UPDATE SKIP LOCKED` and turned into a lease
//! (`lease_owner`, `lease_until`) before the transaction ends, so replicas never wait on each other
//! and a replica that dies loses its chunk when the lease runs out. Instants are MySQL's
//! (`NOW(6)`), so replicas with skewed clocks agree.

use accrual_core::job_status::JobStatus;
use std::time::Duration;

use std::sync::Arc;

use accrual_core::{db, webhook};
use sqlx::MySqlPool;
use uuid::Uuid;

pub use fair::ClientWeights;

pub mod fair;
pub mod place;

/// Jobs a claim tries, in the fair order, before it waits for the next poll: each try is one
/// primary-key range, and a job is passed over only when all its due chunks are leased, which
/// the dispatchers of every replica together (two each by default) or a dead replica's leases
/// can do to a few jobs at a time, not to hundreds.
const TURNS_PER_CLAIM: usize = 256;

/// Retries of marking a chunk dispatched when MySQL reports a deadlock or lock wait timeout.
const MARK_RETRIES: u32 = 5;

/// A chunk this replica holds the lease on.
#[derive(Debug)]
pub struct Claimed {
    pub job_id: Uuid,
    /// The job's client: each of its messages' `MessageGroupId`.
    pub client_id: String,
    pub seq: u32,
    /// The chunk's encoded points ([`accrual_core::chunk`]).
    pub items: Vec<u8>,
}

/// One replica's leases on chunks.
#[derive(Clone, Debug)]
pub struct ChunkLeases {
    pool: MySqlPool,
    /// Each client's share of dispatch.
    weights: Arc<ClientWeights>,
    /// This replica's name in `lease_owner` and `dispatched_by`.
    owner: String,
    lease: Duration,
}

impl ChunkLeases {
    pub fn new(
        pool: MySqlPool,
        owner: String,
        lease: Duration,
        weights: Arc<ClientWeights>,
    ) -> Self {
        Self {
            pool,
            weights,
            owner,
            lease,
        }
    }

    /// This replica's name in `lease_owner` and `dispatched_by`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Takes the lease on the next due chunk nobody holds, in the fair order ([`fair`]): the
    /// client furthest behind its share first, then its job furthest behind. A reserved job whose
    /// first chunk this is becomes `dispatching`, and its `released` event commits with the claim.
    pub async fn claim_due(&self) -> Result<Option<Claimed>, sqlx::Error> {
        let turns = fair::due_jobs(&self.pool).await?;
        if turns.is_empty() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        // The first job whose next chunk is free: the others' are leased or being claimed.
        let mut chosen = None;
        for turn in turns.into_iter().take(TURNS_PER_CLAIM) {
            let row: Option<(u32, u32)> = sqlx::query_as(
                "SELECT seq, item_count FROM accrual_chunks \
                 WHERE job_id = ? AND dispatched_at IS NULL AND due_at <= NOW(6) \
                 AND (lease_until IS NULL OR lease_until < NOW(6)) \
                 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .bind(turn.job_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((seq, points)) = row {
                chosen = Some((turn, seq, points));
                break;
            }
        }
        let Some((turn, seq, points)) = chosen else {
            tx.commit().await?;
            return Ok(None);
        };
        let (job_id, client_id) = (turn.job_id, turn.client_id.clone());
        sqlx::query(
            "UPDATE accrual_chunks SET lease_owner = ?, lease_until = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE job_id = ? AND seq = ?",
        )
        .bind(&self.owner)
        .bind(self.lease.as_micros() as u64)
        .bind(job_id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        let items: Vec<u8> =
            sqlx::query_scalar("SELECT items FROM accrual_chunks WHERE job_id = ? AND seq = ?")
                .bind(job_id)
                .bind(seq)
                .fetch_one(&mut *tx)
                .await?;
        let released =
            sqlx::query("UPDATE accrual_jobs SET status = ? WHERE job_id = ? AND status = ?")
                .bind(JobStatus::Dispatching)
                .bind(job_id)
                .bind(JobStatus::Reserved)
                .execute(&mut *tx)
                .await?;
        // A reserved job starting: its webhook event commits with the release, or neither does.
        if released.rows_affected() > 0 {
            webhook::record(&mut tx, job_id, webhook::Event::Released).await?;
        }
        // Last, so the clients' clock row (one for all) is held only to the commit.
        fair::charge(&mut tx, &turn, points, &self.weights).await?;
        tx.commit().await?;
        Ok(Some(Claimed {
            job_id,
            client_id,
            seq,
            items,
        }))
    }

    /// How long a claim holds a chunk without renewal.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Sets this replica's lease on a chunk to end `from_now` from now: a renewal (a whole lease),
    /// or a short one after a failed fan-out, so the chunk is tried again soon.
    pub async fn extend(
        &self,
        job_id: Uuid,
        seq: u32,
        from_now: Duration,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE accrual_chunks SET lease_until = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE job_id = ? AND seq = ? AND lease_owner = ?",
        )
        .bind(from_now.as_micros() as u64)
        .bind(job_id)
        .bind(seq)
        .bind(&self.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives this replica's lease on a chunk up: any replica may claim it at once.
    pub async fn hand_back(&self, job_id: Uuid, seq: u32) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE accrual_chunks SET lease_owner = NULL, lease_until = NULL \
             WHERE job_id = ? AND seq = ? AND lease_owner = ?",
        )
        .bind(job_id)
        .bind(seq)
        .bind(&self.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a sent chunk dispatched, retrying a deadlock with another dispatcher's claim (seen
    /// about once per 300,000 points with two dispatch tasks): a chunk left unmarked would be sent
    /// again when its lease ends, which the listener absorbs as duplicates but which costs SQS calls.
    pub async fn mark_dispatched(&self, job_id: Uuid, seq: u32) -> Result<(), sqlx::Error> {
        let mut attempt = 0;
        loop {
            match self.try_mark_dispatched(job_id, seq).await {
                Err(e) if db::is_lock_conflict(&e) && attempt < MARK_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20) * attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn try_mark_dispatched(&self, job_id: Uuid, seq: u32) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE accrual_chunks SET dispatched_at = NOW(6), dispatched_by = ?, lease_owner = NULL, lease_until = NULL \
             WHERE job_id = ? AND seq = ? AND dispatched_at IS NULL",
        )
        .bind(&self.owner)
        .bind(job_id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE accrual_jobs SET status = ? WHERE job_id = ? AND status = ? \
             AND NOT EXISTS (SELECT 1 FROM accrual_chunks WHERE job_id = ? AND dispatched_at IS NULL)",
        )
        .bind(JobStatus::Enqueued)
        .bind(job_id)
        .bind(JobStatus::Dispatching)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}
