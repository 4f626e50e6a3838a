//! `POST /v1/jobs/{job_id}/reversal`: reverse a whole finished job with a reversal job that
//! writes one compensating ledger row per point the job wrote.

use accrual_core::job_status::JobStatus;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{SubsecRound, Utc};
use uuid::Uuid;

use super::accruals::Accepted;
use super::accruals::params;
use super::error::ApiError;
use super::jobs::job_id_from;
use crate::http::state::AppState;
use crate::store::jobs::{self, JobRow};
use crate::store::reversals::{
    self, NewReversal, RaceWinner, ReversalStoreError, check_reversible,
};

/// How long a caller refused because the replica prepares its most reversals should wait.
const REVERSALS_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

#[utoipa::path(
    post,
    path = "/v1/jobs/{job_id}/reversal",
    tag = "jobs",
    params(
        ("job_id" = uuid::Uuid, Path, description = "The job to reverse: completed or completed_with_errors, not itself a reversal job"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$", description = "1-128 visible characters; the same key again returns the reversal job it made (200)"),
    ),
    responses(
        (status = 202, description = "Reversal job stored: one compensating point (negative amount, `reverses` = the original accrual_id) per written point of the job; status_url is the reversal job's", body = Accepted),
        (status = 200, description = "The reversal job this Idempotency-Key already made", body = Accepted),
        (status = 404, description = "No such job for this client", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not completed or completed_with_errors, is reversed already (the detail names the reversal job), is itself a reversal job, or wrote no point; or the Idempotency-Key was used for another request", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The job's written points exceed what the client's points allowance (RATE_LIMIT_POINTS_PER_MINUTE) has left; nothing was stored", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "This replica prepares SENDER_REVERSALS_MAX reversals already; `Retry-After` says when to try again; nothing was stored", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn reverse_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let original_id = job_id_from(job_id)?;
    let idempotency_key = params::idempotency_key(&headers)?;
    let digest = reversals::digest(original_id);
    if let Some(key) = &idempotency_key
        && let Some(existing) = jobs::find_by_key(&state.pool, &client_id, key)
            .await
            .map_err(ApiError::database)?
    {
        return replay(existing, &digest);
    }
    let original = jobs::get(&state.pool, original_id)
        .await
        .map_err(ApiError::database)?
        .filter(|job| job.client_id == client_id)
        .ok_or(ApiError::NotFound)?;
    check_reversible(
        original_id,
        original.status,
        original.reverses,
        original.reversed_by,
    )?;

    // A replica prepares a few reversals at a time: each holds a page of ledger rows and a pool
    // connection while it reads, and a client retrying on its own timeout must not multiply them.
    let _permit =
        state
            .reversals
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::ServerBusy {
            detail:
                "this replica is preparing as many reversals as it may at once; try again shortly"
                    .into(),
            retry_after: REVERSALS_RETRY_AFTER,
        }
            })?;
    let started = std::time::Instant::now();
    // Everything from here to the commit holds the original's row, so no listener writes a late
    // point of it meanwhile (see `store::reversals`); the checks are made again under the lock.
    let (mut tx, locked) = reversals::lock_original(&state.pool, original_id)
        .await
        .map_err(ApiError::database)?;
    let locked = locked
        .filter(|job| job.client_id == client_id)
        .ok_or(ApiError::NotFound)?;
    if locked.reversed_by.is_some() {
        // A concurrent call reversed it while this one waited for the lock: its job under this
        // key (a replay), or a 409 naming it.
        drop(tx);
        return lost_race(&state, &client_id, idempotency_key.as_deref(), original_id).await;
    }
    check_reversible(
        original_id,
        locked.status,
        locked.reverses,
        locked.reversed_by,
    )?;

    // The claim first: the unique key on `reverses` decides a race before anything is read.
    // Whole microseconds: what `DATETIME(6)` stores.
    let now = Utc::now().trunc_subsecs(6);
    let job_id = Uuid::now_v7();
    let claim = NewReversal {
        job_id,
        reverses: original_id,
        client_id: client_id.clone(),
        idempotency_key: idempotency_key.clone(),
        created_at: now,
    };
    match reversals::claim(&mut tx, &claim).await {
        Ok(()) => {}
        Err(ReversalStoreError::Duplicate) => {
            drop(tx);
            return lost_race(&state, &client_id, idempotency_key.as_deref(), original_id).await;
        }
        Err(ReversalStoreError::Db(e)) => return Err(ApiError::database(e)),
    }
    // Then the allowance, charged from a count before a row is read; refused, the transaction
    // rolls back with the claim.
    let (total, members) = reversals::written_count(&mut tx, original_id)
        .await
        .map_err(ApiError::database)?;
    if total == 0 {
        return Err(ApiError::Conflict(format!(
            "job {original_id} wrote no point to the ledger; there is nothing to reverse"
        )));
    }
    // Compensating points load the queue and the listeners as accepted points do.
    super::access::limit_points(&state, &client_id, total).await?;
    let counted = started.elapsed();

    // Then the ledger, a page at a time: each page's compensating chunks are stored before the
    // next page is read.
    let chunk_items = state.chunk_items.max(1);
    let page_points = reversals::PAGE_POINTS.div_ceil(chunk_items) * chunk_items;
    let (mut after, mut seq, mut copied) = (0u64, 0usize, 0u64);
    loop {
        let page = reversals::written_page(&mut tx, original_id, after, page_points)
            .await
            .map_err(ApiError::database)?;
        let Some(&(last, _)) = page.last() else { break };
        let points: Vec<_> = page.into_iter().map(|(_, point)| point).collect();
        copied += points.len() as u64;
        let chunks = tokio::task::spawn_blocking(move || {
            reversals::compensating_chunks(original_id, job_id, now, &points, chunk_items)
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(e.into()))?;
        reversals::insert_chunks(&mut tx, job_id, seq, &chunks)
            .await
            .map_err(ApiError::database)?;
        seq += chunks.len();
        after = last;
    }
    if copied != total {
        // Under the original's lock no point of it is written or removed: a difference is a bug.
        return Err(ApiError::Internal(anyhow::anyhow!(
            "job {original_id}: counted {total} written points, read {copied}"
        )));
    }
    let copied_at = started.elapsed();
    reversals::finish(tx, job_id, total, members)
        .await
        .map_err(ApiError::database)?;
    tracing::info!(
        %job_id, reverses = %original_id, %client_id, points = total, members,
        count_ms = counted.as_millis() as u64,
        copy_ms = (copied_at - counted).as_millis() as u64,
        commit_ms = (started.elapsed() - copied_at).as_millis() as u64,
        "Accepted reversal job"
    );
    state.wake.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            job_id,
            accepted: total,
            members,
            skipped: 0,
            status: JobStatus::Dispatching,
            reserve_at: None,
            status_url: format!("/v1/jobs/{job_id}"),
        }),
    )
        .into_response())
}

/// A retry of a reversal already stored under this key: the reversal job, or 409 if the key was
/// used for another request.
fn replay(existing: JobRow, digest: &[u8; 32]) -> Result<Response, ApiError> {
    if existing.body_sha256 != digest {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used for another request".into(),
        ));
    }
    Ok((StatusCode::OK, Json(Accepted::from(existing))).into_response())
}

/// Another call stored first: its reversal job under this key (a replay), or a 409 naming the
/// reversal job that won.
async fn lost_race(
    state: &AppState,
    client_id: &str,
    idempotency_key: Option<&str>,
    original_id: Uuid,
) -> Result<Response, ApiError> {
    match reversals::race_winner(&state.pool, client_id, idempotency_key, original_id)
        .await
        .map_err(ApiError::database)?
    {
        RaceWinner::SameKey(existing) => replay(*existing, &reversals::digest(original_id)),
        RaceWinner::Other(why) => Err(why.into()),
        RaceWinner::NoOriginal => Err(ApiError::NotFound),
        RaceWinner::Nobody => Err(ApiError::Internal(anyhow::anyhow!(
            "reversal of {original_id} refused as a duplicate, but no reversal job holds it"
        ))),
    }
}
