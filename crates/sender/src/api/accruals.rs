//! `POST /v1/accruals`: validate all items, upsert their members, hand the points to the fan-out
//! (or, with `dry_run=true`, only say what that would do).

use accrual_core::accrual::{self, Accrual};
use accrual_core::chunk;
use accrual_core::message::PointRecord;
use accrual_core::wire::{self, BodyError, MAX_ITEMS_PER_REQUEST};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use crate::jobs::store::{self, JobRow, NewJob, StoreError};
use crate::members;
use crate::state::AppState;
use body::read_limited;
pub use dry_run::{DryRun, PostOk};
pub use params::PostParams;

mod body;
mod dry_run;
mod params;

/// Largest request body accepted: 100 MiB, enforced while reading.
pub const MAX_BODY_BYTES: usize = 100 * 1024 * 1024;
/// Furthest ahead a reserved accrual may be booked.
pub const MAX_RESERVE_DAYS: i64 = 90;

/// The answer: 202 for a new job, 200 when an `Idempotency-Key` names an existing one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub job_id: Uuid,
    /// Points accepted (the number of items).
    pub accepted: u64,
    /// Distinct members among the items, all present in `members` before any point was queued.
    pub members: u64,
    pub status: String,
    pub reserve_at: Option<DateTime<Utc>>,
    pub status_url: String,
}

impl From<JobRow> for Accepted {
    fn from(job: JobRow) -> Self {
        Self {
            job_id: job.job_id,
            accepted: u64::from(job.total),
            members: u64::from(job.members),
            status: job.status,
            reserve_at: job.reserve_at,
            status_url: format!("/v1/jobs/{}", job.job_id),
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/accruals",
    tag = "accruals",
    params(
        ("reserve_at" = Option<String>, Query, format = DateTime, description = "RFC 3339 instant, in the future and at most 90 days ahead: a reserved accrual, released at that time"),
        ("dry_run" = Option<bool>, Query, description = "`true`: check the request exactly as a real one and answer 200 with what it would do (points, members, new members, amounts per point type), storing and sending nothing and taking no points from the rate limit"),
        ("label" = Option<String>, Query, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFFFE\uFFFF]{1,128}$", description = "The client's name for the job (a campaign), shown in its view and filtered on in GET /v1/jobs: 1-128 characters, none of them a control character, whitespace, U+FFFE or U+FFFF; stored exactly"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$", description = "1-128 visible characters; the same key and body again returns the original job"),
    ),
    request_body(content = Vec<crate::api::openapi::AccrualItemSchema>, content_type = "application/json", description = "1 to 500,000 accrual items; all valid or nothing is stored"),
    responses(
        (status = 202, description = "Job stored; its points are being sent", body = Accepted),
        (status = 200, description = "The job this Idempotency-Key already made (an Accepted), or with dry_run=true what the request would do (a DryRun)", body = PostOk),
        (status = 409, description = "Idempotency-Key reused with another body, or the job cannot be cancelled", body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 100 MiB or over 500,000 items", body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content type other than application/json", body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid items (all listed, up to 1,000) or an empty array; nothing stored", body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body arrived too slowly (under SENDER_BODY_MIN_BYTES_PER_SEC on average once SENDER_BODY_RATE_GRACE has passed) or took longer than SENDER_BODY_TIMEOUT; nothing stored, the connection is closed", body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "MySQL unavailable (dependency-unavailable), or the request bodies being received hold the whole SENDER_BODY_BUDGET_BYTES (server-busy, with Retry-After); nothing stored", body = crate::api::error::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait (server-busy)"))),
    ),
    security(("bearer" = []))
)]
pub async fn post(
    State(state): State<AppState>,
    params: Result<Query<PostParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client_id = super::authorize(&state, &headers).await?;
    let Query(params) =
        params.map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))?;
    let dry_run = params::flag("dry_run", params.dry_run.as_deref())?;
    let label = params::label(params.label)?.map(|l| l.as_str().to_owned());
    params::require_json(&headers)?;
    // A dry run checks the key too, but keeps no record of it.
    let idempotency_key = params::idempotency_key(&headers)?;
    // Whole microseconds: what `DATETIME(6)` stores, so the ledger's `accepted_at` is the very
    // instant the message carries.
    let now = Utc::now().trunc_subsecs(6);
    let reserve_at = params
        .reserve_at
        .as_deref()
        .map(|r| params::reserve_at(r, now))
        .transpose()?;
    let (bytes, budget) = read_limited(&headers, body, &state.uploads).await?;
    if dry_run {
        let answer =
            dry_run::answer(&state, &client_id, (bytes, budget), reserve_at, label).await?;
        return Ok(Json(answer).into_response());
    }

    let (body_sha256, parsed) = blocking(move || {
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let parsed = parse_and_validate(&bytes, reserve_at);
        // The body's bytes go back to the budget with the body.
        drop((bytes, budget));
        (digest, parsed)
    })
    .await?;
    if let Some(key) = &idempotency_key
        && let Some(existing) = store::find_by_key(&state.pool, &client_id, key)
            .await
            .map_err(ApiError::database)?
    {
        return replay(existing, &body_sha256).map(IntoResponse::into_response);
    }
    let accruals = parsed.inspect_err(|e| {
        if matches!(e, ApiError::Validation { .. } | ApiError::EmptyRequest) {
            state.metrics.validation_failures.inc();
        }
    })?;
    super::limit_points(&state, &client_id, accruals.len() as u64).await?;
    let members = members::upsert(&state.pool, &accruals)
        .await
        .map_err(ApiError::database)?;

    let job_id = Uuid::now_v7();
    let total = accruals.len();
    let reserved_amounts = if reserve_at.is_some() {
        crate::member_ledger::reserved_amounts(&accruals)
    } else {
        Vec::new()
    };
    let chunk_items = state.chunk_items;
    let chunks = blocking(move || encode_chunks(job_id, now, accruals, chunk_items)).await?;
    let job = NewJob {
        job_id,
        client_id: client_id.clone(),
        idempotency_key: idempotency_key.clone(),
        body_sha256,
        total,
        members,
        reserve_at,
        created_at: now,
        label,
        chunks,
        reserved_amounts,
    };
    match store::insert(&state.pool, &job).await {
        Ok(()) => {}
        Err(StoreError::DuplicateKey) => {
            // Another request with the same key won the race; answer as its retry.
            let key = idempotency_key.unwrap_or_default();
            let existing = store::find_by_key(&state.pool, &client_id, &key)
                .await
                .map_err(ApiError::database)?
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("idempotency key vanished")))?;
            return replay(existing, &body_sha256).map(IntoResponse::into_response);
        }
        Err(StoreError::Db(e)) => return Err(ApiError::database(e)),
    }
    tracing::info!(%job_id, %client_id, points = total, members, reserve_at = ?reserve_at, "Accepted accrual job");
    state.metrics.jobs_accepted.inc();
    state.metrics.points_accepted.inc_by(total as u64);
    state.dispatcher.wake();
    let status = if reserve_at.is_some() {
        "reserved"
    } else {
        "dispatching"
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            job_id,
            accepted: total as u64,
            members: members as u64,
            status: status.to_owned(),
            reserve_at,
            status_url: format!("/v1/jobs/{job_id}"),
        }),
    )
        .into_response())
}

/// A retry of a request already stored: the original job, or 409 if the body differs.
fn replay(
    existing: JobRow,
    body_sha256: &[u8; 32],
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    if existing.body_sha256 != body_sha256 {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used with a different body".into(),
        ));
    }
    Ok((StatusCode::OK, Json(Accepted::from(existing))))
}

/// Runs CPU-heavy work (parsing a 100 MiB body, encoding 500,000 messages) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.into()))
}

fn parse_and_validate(
    body: &[u8],
    reserve_at: Option<DateTime<Utc>>,
) -> Result<Vec<Accrual>, ApiError> {
    let mut validator = accrual::Validator::new(Utc::now(), reserve_at);
    let items = wire::parse_items(body, MAX_ITEMS_PER_REQUEST, |item| validator.push(item));
    let count = items.map_err(|e| match e {
        BodyError::TooManyItems => ApiError::PayloadTooLarge(e.to_string()),
        BodyError::Malformed {
            message,
            line,
            column,
        } => ApiError::MalformedJson {
            message,
            line,
            column,
        },
    })?;
    if count == 0 {
        return Err(ApiError::EmptyRequest);
    }
    validator.finish().map_err(|f| ApiError::Validation {
        errors: f.errors,
        total: f.total,
    })
}

/// Gives every point its `accrual_id` (UUID v7) and stores the points in compressed chunks of
/// `chunk_items`, each with its item count.
fn encode_chunks(
    job_id: Uuid,
    accepted_at: DateTime<Utc>,
    accruals: Vec<Accrual>,
    chunk_items: usize,
) -> Vec<(Vec<u8>, usize)> {
    let mut chunks = Vec::with_capacity(accruals.len().div_ceil(chunk_items.max(1)));
    let mut records = Vec::with_capacity(chunk_items.min(accruals.len()));
    let mut accruals = accruals.into_iter().peekable();
    while let Some(accrual) = accruals.next() {
        records.push(PointRecord {
            accrual_id: Uuid::now_v7(),
            job_id,
            accrual,
            accepted_at,
            reverses: None,
        });
        if records.len() == chunk_items.max(1) || accruals.peek().is_none() {
            chunks.push((chunk::encode(&records), records.len()));
            records.clear();
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_array_is_refused() {
        assert!(matches!(
            parse_and_validate(b"[]", None),
            Err(ApiError::EmptyRequest)
        ));
    }

    #[test]
    fn five_hundred_thousand_items_pass_and_one_more_is_too_large() {
        let item = r#"{"member_id":"m","point_type":"P","amount":1}"#;
        let body = |n: usize| format!("[{}]", vec![item; n].join(","));
        assert_eq!(
            parse_and_validate(body(500_000).as_bytes(), None)
                .map(|v| v.len())
                .ok(),
            Some(500_000)
        );
        assert!(matches!(
            parse_and_validate(body(500_001).as_bytes(), None),
            Err(ApiError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn every_point_gets_its_own_accrual_id_and_chunks_hold_all_points() {
        let one = r#"{"member_id":"m","point_type":"P","amount":1}"#;
        let accruals =
            parse_and_validate(format!("[{}]", vec![one; 25].join(",")).as_bytes(), None)
                .expect("valid");
        let chunks = encode_chunks(Uuid::now_v7(), Utc::now(), accruals, 10);
        assert_eq!(
            chunks.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let ids: std::collections::HashSet<Uuid> = chunks
            .iter()
            .flat_map(|(blob, _)| chunk::decode(blob).expect("decodes"))
            .map(|b| PointRecord::decode(&b).expect("body").accrual_id)
            .collect();
        assert_eq!(ids.len(), 25);
    }
}
