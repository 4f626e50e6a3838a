//! Comparing one quiet job with the ledger and the dead letters, chunk by chunk, and acting on
//! the points found in neither: sent again, or (on the last attempt) dead-lettered as lost.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;

use accrual_core::db::placeholders;
use accrual_core::dead_letter::{self, PointIds};
use accrual_core::{chunk, job_outcome};
use sqlx::{AssertSqlSafe, MySqlPool};
use uuid::Uuid;

use super::Reconciler;

/// Accrual ids looked up per statement (each is bound twice, well under MySQL's 65,535).
const IDS_PER_STATEMENT: usize = 5_000;
/// Dead-letter sends in flight at once when giving up on many points.
const DEAD_LETTERS_IN_FLIGHT: usize = 8;

/// What one comparison found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compared {
    /// Points in the job's chunks.
    pub points: u64,
    /// Points in neither the ledger nor the dead letters.
    pub missing: u64,
    /// Of those, sent again.
    pub resent: u64,
    /// Of those, dead-lettered as lost in transit (the last attempt).
    pub given_up: u64,
    /// Sent again but refused by SQS for good (dead-lettered with SQS's reason).
    pub refused: u64,
    /// Stored bodies that name no point (written by hand into a chunk): left alone.
    pub unreadable: u64,
}

impl Compared {
    pub(super) fn log(&self, job_id: Uuid, attempts_before: u32) {
        if self.missing == 0 {
            tracing::info!(%job_id, points = self.points, "Quiet job compared with the ledger: every point is accounted for");
        } else if self.given_up > 0 {
            tracing::error!(%job_id, missing = self.missing, given_up = self.given_up, attempts = attempts_before, "Points still missing after every re-send; dead-lettered them as lost in transit");
        } else {
            tracing::warn!(%job_id, missing = self.missing, resent = self.resent, attempt = attempts_before + 1, "Quiet job had points neither written nor dead-lettered; sent them again");
        }
    }
}

/// Compares a quiet job's chunks with the ledger and the dead letters. Points in neither are sent
/// again, or, when `give_up` (the job had every re-send it gets), dead-lettered with the reason
/// `lost in transit after N attempts`. Records what it did on the job row and settles the job.
pub async fn compare(r: &Reconciler, job_id: Uuid, give_up: bool) -> anyhow::Result<Compared> {
    r.metrics.reconciler_jobs_compared.inc();
    let seqs: Vec<u32> =
        sqlx::query_scalar("SELECT seq FROM accrual_chunks WHERE job_id = ? ORDER BY seq")
            .bind(job_id)
            .fetch_all(&r.pool)
            .await?;
    let reason = format!(
        "lost in transit after {} attempts",
        r.settings.reconcile_attempts
    );
    let mut done = Compared::default();
    // One chunk at a time: a 2,000,000-point job never holds more than one chunk's bodies.
    for seq in seqs {
        let items: Vec<u8> =
            sqlx::query_scalar("SELECT items FROM accrual_chunks WHERE job_id = ? AND seq = ?")
                .bind(job_id)
                .bind(seq)
                .fetch_one(&r.pool)
                .await?;
        let bodies = chunk::decode(&items)?;
        let mut named = Vec::with_capacity(bodies.len());
        for body in bodies {
            match PointIds::of(&body) {
                Some(ids) => named.push((ids, body)),
                None => done.unreadable += 1,
            }
        }
        done.points += named.len() as u64;
        let ids: Vec<Uuid> = named.iter().map(|(ids, _)| ids.accrual_id).collect();
        let present = accounted_for(&r.pool, &ids).await?;
        let missing: Vec<(PointIds, String)> = named
            .into_iter()
            .filter(|(ids, _)| !present.contains(&ids.accrual_id))
            .collect();
        done.missing += missing.len() as u64;
        if missing.is_empty() {
            continue;
        }
        if give_up {
            dead_letter_all(r, &missing, &reason).await?;
            done.given_up += missing.len() as u64;
        } else {
            let bodies = missing.into_iter().map(|(_, body)| body).collect();
            let client_id = client_of(&r.pool, job_id).await?;
            let sent = r
                .fanout
                .send_all(bodies, &client_id, &AtomicU64::new(0))
                .await?;
            for refused in &sent.refused {
                if let Some(ids) = PointIds::of(&refused.body) {
                    dead_letter_one(r, ids, &refused.body, &refused.reason).await?;
                }
            }
            done.resent += sent.sent as u64;
            done.refused += sent.refused.len() as u64;
        }
    }
    sqlx::query(
        "UPDATE accrual_jobs SET reconciled_at = NOW(6), \
           reconcile_attempts = reconcile_attempts + ?, \
           points_resent = points_resent + ?, points_given_up = points_given_up + ? \
         WHERE job_id = ?",
    )
    .bind(u32::from(done.resent + done.refused > 0))
    .bind(u32::try_from(done.resent).unwrap_or(u32::MAX))
    .bind(u32::try_from(done.given_up).unwrap_or(u32::MAX))
    .bind(job_id)
    .execute(&r.pool)
    .await?;
    r.metrics.reconciler_points_resent.inc_by(done.resent);
    r.metrics.reconciler_points_given_up.inc_by(done.given_up);
    if done.given_up + done.refused > 0 {
        // Every point is accounted for now: settle at once rather than at the next count.
        job_outcome::settle(&r.pool, job_id).await?;
    }
    Ok(done)
}

/// The job's client: its re-sent messages' `MessageGroupId`, as at dispatch.
async fn client_of(pool: &MySqlPool, job_id: Uuid) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT client_id FROM accrual_jobs WHERE job_id = ?")
        .bind(job_id)
        .fetch_one(pool)
        .await
}

/// Which of `ids` are in the ledger or the dead letters: primary-key look-ups, one statement per
/// [`IDS_PER_STATEMENT`] ids (a chunk of the default 2,000 points is one statement).
async fn accounted_for(pool: &MySqlPool, ids: &[Uuid]) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut found = HashSet::with_capacity(ids.len());
    for group in ids.chunks(IDS_PER_STATEMENT) {
        let list = placeholders(group.len(), 1);
        let sql = format!(
            "SELECT accrual_id FROM point_accruals WHERE accrual_id IN ({list}) \
             UNION SELECT accrual_id FROM accrual_dead_letters WHERE accrual_id IN ({list})"
        );
        let mut query = sqlx::query_scalar::<_, Uuid>(AssertSqlSafe(sql));
        for id in group.iter().chain(group) {
            query = query.bind(*id);
        }
        found.extend(query.fetch_all(pool).await?);
    }
    Ok(found)
}

/// Records each point as a dead letter of its job and puts it on the dead-letter queue.
async fn dead_letter_all(
    r: &Reconciler,
    points: &[(PointIds, String)],
    reason: &str,
) -> anyhow::Result<()> {
    for group in points.chunks(DEAD_LETTERS_IN_FLIGHT) {
        let sends: Vec<_> = group
            .iter()
            .map(|(ids, body)| dead_letter_one(r, *ids, body, reason))
            .collect();
        for sent in futures_util::future::join_all(sends).await {
            sent?;
        }
    }
    Ok(())
}

async fn dead_letter_one(
    r: &Reconciler,
    ids: PointIds,
    body: &str,
    reason: &str,
) -> anyhow::Result<()> {
    // Recorded first: a point on the queue but not in the table could never be counted.
    dead_letter::record(&r.pool, ids, reason).await?;
    let dlq = &r.dead_letters;
    dead_letter::send(&dlq.client, &dlq.url, &dlq.source_queue, body, reason).await?;
    Ok(())
}
