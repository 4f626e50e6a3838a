//! `POST /v1/jobs/{job_id}/reversal`: reverse a whole finished job with a reversal job that
//! writes one compensating ledger row per point the job wrote.

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
use crate::jobs::reversal::{self, NewReversal, ReversalStoreError};
use crate::jobs::store::{self, JobRow};
use crate::state::AppState;

/// The statuses a job can be reversed in: its points are all written or dead-lettered.
const REVERSIBLE: [&str; 2] = ["completed", "completed_with_errors"];

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
        (status = 404, description = "No such job for this client", body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is not completed or completed_with_errors, is reversed already (the detail names the reversal job), is itself a reversal job, or wrote no point; or the Idempotency-Key was used for another request", body = crate::api::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    let client_id = super::authorize(&state, &headers).await?;
    let original_id = job_id_from(job_id)?;
    let idempotency_key = params::idempotency_key(&headers)?;
    let digest = reversal::digest(original_id);
    if let Some(key) = &idempotency_key
        && let Some(existing) = store::find_by_key(&state.pool, &client_id, key)
            .await
            .map_err(ApiError::database)?
    {
        return replay(existing, &digest);
    }
    let original = store::get(&state.pool, original_id)
        .await
        .map_err(ApiError::database)?
        .filter(|job| job.client_id == client_id)
        .ok_or(ApiError::NotFound)?;
    check_reversible(
        original_id,
        &original.status,
        original.reverses,
        original.reversed_by,
    )?;

    let started = std::time::Instant::now();
    // Everything from here to the commit holds the original's row, so no listener writes a late
    // point of it meanwhile (see `jobs::reversal`); the checks are made again under the lock.
    let (mut tx, locked) = reversal::lock_original(&state.pool, original_id)
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
        &locked.status,
        locked.reverses,
        locked.reversed_by,
    )?;
    let points = reversal::written_points(&mut tx, original_id)
        .await
        .map_err(ApiError::database)?;
    if points.is_empty() {
        return Err(ApiError::Conflict(format!(
            "job {original_id} wrote no point to the ledger; there is nothing to reverse"
        )));
    }
    // Compensating points load the queue and the listeners as accepted points do.
    super::limit_points(&state, &client_id, points.len() as u64).await?;

    // Whole microseconds: what `DATETIME(6)` stores.
    let now = Utc::now().trunc_subsecs(6);
    let job_id = Uuid::now_v7();
    let total = points.len();
    let chunk_items = state.chunk_items;
    let read = started.elapsed();
    let (chunks, members) = tokio::task::spawn_blocking(move || {
        reversal::compensating_chunks(original_id, job_id, now, &points, chunk_items)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(|e| ApiError::Internal(e.into()))?;
    let encoded = started.elapsed();
    let job = NewReversal {
        job_id,
        reverses: original_id,
        client_id: client_id.clone(),
        idempotency_key: idempotency_key.clone(),
        total,
        members,
        created_at: now,
        chunks,
    };
    match reversal::insert(tx, &job).await {
        Ok(()) => {}
        Err(ReversalStoreError::Duplicate) => {
            return lost_race(&state, &client_id, idempotency_key.as_deref(), original_id).await;
        }
        Err(ReversalStoreError::Db(e)) => return Err(ApiError::database(e)),
    }
    tracing::info!(
        %job_id, reverses = %original_id, %client_id, points = total, members,
        read_ms = read.as_millis() as u64,
        encode_ms = (encoded - read).as_millis() as u64,
        store_ms = (started.elapsed() - encoded).as_millis() as u64,
        "Accepted reversal job"
    );
    state.dispatcher.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            job_id,
            accepted: total as u64,
            members: members as u64,
            skipped: 0,
            status: "dispatching".to_owned(),
            reserve_at: None,
            status_url: format!("/v1/jobs/{job_id}"),
        }),
    )
        .into_response())
}

/// Why job `job_id` (with its `status`, the job it `reverses` and the job it is `reversed_by`)
/// cannot be reversed, if it cannot.
fn check_reversible(
    job_id: Uuid,
    status: &str,
    reverses: Option<Uuid>,
    reversed_by: Option<Uuid>,
) -> Result<(), ApiError> {
    if let Some(original) = reverses {
        return Err(ApiError::Conflict(format!(
            "job {job_id} is itself the reversal of job {original}; a reversal job cannot be reversed"
        )));
    }
    if let Some(reversal) = reversed_by {
        return Err(ApiError::Conflict(format!(
            "job {job_id} is reversed already, by job {reversal}"
        )));
    }
    if !REVERSIBLE.contains(&status) {
        return Err(ApiError::Conflict(format!(
            "job {job_id} is {status}; only a completed or completed_with_errors job can be reversed"
        )));
    }
    Ok(())
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
    if let Some(key) = idempotency_key
        && let Some(existing) = store::find_by_key(&state.pool, client_id, key)
            .await
            .map_err(ApiError::database)?
    {
        return replay(existing, &reversal::digest(original_id));
    }
    let original = store::get(&state.pool, original_id)
        .await
        .map_err(ApiError::database)?
        .ok_or(ApiError::NotFound)?;
    match original.reversed_by {
        Some(reversal) => Err(ApiError::Conflict(format!(
            "job {original_id} is reversed already, by job {reversal}"
        ))),
        None => Err(ApiError::Internal(anyhow::anyhow!(
            "reversal of {original_id} refused as a duplicate, but no reversal job holds it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(status: &str, reverses: Option<Uuid>, reversed_by: Option<Uuid>) -> String {
        match check_reversible(Uuid::now_v7(), status, reverses, reversed_by) {
            Err(ApiError::Conflict(detail)) => detail,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn only_a_final_job_that_is_no_reversal_and_not_reversed_can_be_reversed() {
        for status in REVERSIBLE {
            assert!(check_reversible(Uuid::now_v7(), status, None, None).is_ok());
        }
        for status in ["reserved", "dispatching", "enqueued", "cancelled"] {
            assert!(conflict(status, None, None).contains(&format!("is {status};")));
        }
        let by = Uuid::now_v7();
        assert!(conflict("completed", None, Some(by)).contains(&format!("by job {by}")));
        let of = Uuid::now_v7();
        assert!(conflict("completed", Some(of), None).contains("cannot be reversed"));
    }
}
