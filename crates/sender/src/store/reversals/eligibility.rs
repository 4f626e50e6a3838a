//! Which jobs may be reversed, and who won when reversals of one job raced: the rules behind
//! `POST /v1/jobs/{job_id}/reversal`, which the handler only maps to answers.

use accrual_core::job_status::JobStatus;
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::store::jobs::{self, JobRow};

/// The statuses a job can be reversed in: its points are all written or dead-lettered.
pub const REVERSIBLE: [JobStatus; 2] = [JobStatus::Completed, JobStatus::CompletedWithErrors];

/// Why a job cannot be reversed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreversible {
    #[error(
        "job {job_id} is itself the reversal of job {original}; a reversal job cannot be reversed"
    )]
    IsAReversal { job_id: Uuid, original: Uuid },
    #[error("job {job_id} is reversed already, by job {reversal}")]
    ReversedAlready { job_id: Uuid, reversal: Uuid },
    #[error(
        "job {job_id} is {status}; only a completed or completed_with_errors job can be reversed"
    )]
    NotFinished { job_id: Uuid, status: JobStatus },
}

/// Whether job `job_id` (with its `status`, the job it `reverses` and the job it is `reversed_by`)
/// can be reversed.
pub fn check_reversible(
    job_id: Uuid,
    status: JobStatus,
    reverses: Option<Uuid>,
    reversed_by: Option<Uuid>,
) -> Result<(), Unreversible> {
    if let Some(original) = reverses {
        return Err(Unreversible::IsAReversal { job_id, original });
    }
    if let Some(reversal) = reversed_by {
        return Err(Unreversible::ReversedAlready { job_id, reversal });
    }
    if !REVERSIBLE.contains(&status) {
        return Err(Unreversible::NotFinished { job_id, status });
    }
    Ok(())
}

/// Who stored the reversal of a job first, as a call that lost the race for it finds out.
#[derive(Debug)]
pub enum RaceWinner {
    /// A job under the loser's own `Idempotency-Key`: its earlier call (a replay, if it was the
    /// same request).
    SameKey(Box<JobRow>),
    /// Another call's reversal job.
    Other(Unreversible),
    /// The original is gone.
    NoOriginal,
    /// Refused as a duplicate, yet no reversal job holds the original: a bug.
    Nobody,
}

/// Who won the race for the reversal of `original` that `client_id` lost.
pub async fn race_winner(
    pool: &MySqlPool,
    client_id: &str,
    idempotency_key: Option<&str>,
    original: Uuid,
) -> Result<RaceWinner, sqlx::Error> {
    if let Some(key) = idempotency_key
        && let Some(existing) = jobs::find_by_key(pool, client_id, key).await?
    {
        return Ok(RaceWinner::SameKey(Box::new(existing)));
    }
    let Some(row) = jobs::get(pool, original).await? else {
        return Ok(RaceWinner::NoOriginal);
    };
    Ok(match row.reversed_by {
        Some(reversal) => RaceWinner::Other(Unreversible::ReversedAlready {
            job_id: original,
            reversal,
        }),
        None => RaceWinner::Nobody,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: JobStatus, reverses: Option<Uuid>, reversed_by: Option<Uuid>) -> String {
        check_reversible(Uuid::now_v7(), status, reverses, reversed_by)
            .expect_err("not reversible")
            .to_string()
    }

    #[test]
    fn only_a_final_job_that_is_no_reversal_and_not_reversed_can_be_reversed() {
        for status in REVERSIBLE {
            assert!(check_reversible(Uuid::now_v7(), status, None, None).is_ok());
        }
        for status in [
            JobStatus::Reserved,
            JobStatus::Dispatching,
            JobStatus::Enqueued,
            JobStatus::Cancelled,
        ] {
            assert!(refusal(status, None, None).contains(&format!("is {status};")));
        }
        let by = Uuid::now_v7();
        assert!(refusal(JobStatus::Completed, None, Some(by)).contains(&format!("by job {by}")));
        let of = Uuid::now_v7();
        assert!(refusal(JobStatus::Completed, Some(of), None).contains("cannot be reversed"));
    }
}
