//! `POST /v1/accruals`: validate all items, upsert their members, hand the points to the fan-out
//! (or, with `dry_run=true`, only say what that would do).

use accrual_core::accrual::{self, Accrual};
use accrual_core::job_status::JobStatus;
use accrual_core::wire::{self, BodyError, MAX_ITEMS_PER_REQUEST};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use crate::http::state::AppState;
use crate::store::intake::{Intake, IntakeError, JobRequest, Stored, StoredJob, Took};
use crate::store::jobs::{self, JobRow};
use crate::store::members::{self, RequestMembers};
use body::read_limited;
pub use dry_run::{DryRun, PostOk};
pub use params::PostParams;

pub(crate) mod body;
mod dry_run;
pub(crate) mod params;

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
    /// Items left out because the client had used their `external_id` before
    /// (`on_duplicate=skip`); the job's results list them with the point that holds the id.
    pub skipped: u64,
    #[schema(value_type = String)]
    pub status: JobStatus,
    pub reserve_at: Option<DateTime<Utc>>,
    pub status_url: String,
}

impl From<JobRow> for Accepted {
    fn from(job: JobRow) -> Self {
        Self {
            job_id: job.job_id,
            accepted: u64::from(job.total),
            members: u64::from(job.members),
            skipped: u64::from(job.skipped),
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
        ("on_duplicate" = Option<crate::store::external_ids::OnDuplicate>, Query, description = "What to do with items whose `external_id` the client used before (in an earlier job or earlier in this request): `reject` (default) refuses the request with 422 listing every one; `skip` leaves them out, counts them as `skipped` and lists them in the job's results"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$", description = "1-128 visible characters; the same key and body again returns the original job"),
    ),
    request_body(content = Vec<crate::http::schemas::AccrualItemSchema>, content_type = "application/json", description = "1 to 500,000 accrual items; all valid or nothing is stored"),
    responses(
        (status = 202, description = "Job stored; its points are being sent", body = Accepted),
        (status = 200, description = "The job this Idempotency-Key already made (an Accepted), or with dry_run=true what the request would do (a DryRun)", body = PostOk),
        (status = 409, description = "Idempotency-Key reused with another body, or the job cannot be cancelled", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 100 MiB or over 500,000 items", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content type other than application/json", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid items (all listed, up to 1,000), an empty array, or items whose external_id was used before with on_duplicate=reject (`/problems/duplicate-external-id`, every one listed in `duplicates`); nothing stored", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body arrived too slowly (under SENDER_BODY_MIN_BYTES_PER_SEC on average once SENDER_BODY_RATE_GRACE has passed) or took longer than SENDER_BODY_TIMEOUT; nothing stored, the connection is closed", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "MySQL unavailable (dependency-unavailable), or the request bodies being received hold the whole SENDER_BODY_BUDGET_BYTES (server-busy, with Retry-After); nothing stored", body = crate::http::error::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait (server-busy)"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_accrual_job(
    State(state): State<AppState>,
    params: Result<Query<PostParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let Query(params) =
        params.map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))?;
    let dry_run = params::flag("dry_run", params.dry_run.as_deref())?;
    let label = params::label(params.label)?.map(|l| l.as_str().to_owned());
    let on_duplicate = params::on_duplicate(params.on_duplicate.as_deref())?;
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
    let received = Instant::now();
    let (bytes, budget) = read_limited(&headers, body, &state.uploads, &client_id).await?;
    if dry_run {
        let answer = dry_run::answer(
            &state,
            &client_id,
            (bytes, budget),
            reserve_at,
            label,
            on_duplicate,
        )
        .await?;
        return Ok(Json(answer).into_response());
    }

    let mut took = Took {
        read: received.elapsed(),
        ..Took::default()
    };
    let (body_sha256, parsed) =
        digest_and_parse(&state, (bytes, budget), reserve_at, &mut took).await?;
    if let Some(key) = &idempotency_key
        && let Some(existing) = jobs::find_by_key(&state.pool, &client_id, key)
            .await
            .map_err(ApiError::database)?
    {
        return replay(existing, &body_sha256).map(IntoResponse::into_response);
    }
    let (accruals, all_members) = parsed.inspect_err(|e| {
        if matches!(e, ApiError::Validation { .. } | ApiError::EmptyRequest) {
            state.metrics.validation_failures.inc();
        }
    })?;
    let request = JobRequest {
        client_id: client_id.clone(),
        idempotency_key,
        body_sha256,
        reserve_at,
        accepted_at: now,
        label,
        on_duplicate,
    };
    let mut intake = Intake::new(
        state.pool.clone(),
        state.known_members.clone(),
        state.chunk_items,
        request,
        took,
    );
    let admission = intake
        .admit(accruals, all_members)
        .await
        .map_err(|e| intake_error(&state, e))?;
    super::access::limit_points(&state, &client_id, admission.kept.len() as u64).await?;
    let (stored, took) = intake
        .store(admission)
        .await
        .map_err(|e| intake_error(&state, e))?;
    let job = match stored {
        Stored::New(job) => job,
        // Another request with the same key won the race; answer as its retry.
        Stored::Existing(existing) => {
            return replay(existing, &body_sha256).map(IntoResponse::into_response);
        }
    };
    log_accepted(&job, &client_id, reserve_at, &took, received.elapsed());
    state.metrics.jobs_accepted.inc();
    state.metrics.points_accepted.inc_by(job.total as u64);
    state.wake.wake();
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            job_id: job.job_id,
            accepted: job.total as u64,
            members: job.members as u64,
            skipped: job.skipped as u64,
            status: job.status,
            reserve_at,
            status_url: format!("/v1/jobs/{}", job.job_id),
        }),
    )
        .into_response())
}

/// The body's SHA-256 beside its items, parsed, validated and their members sorted out, each on a
/// blocking thread; the body's bytes go back to the budget once both are done.
async fn digest_and_parse(
    state: &AppState,
    (bytes, budget): (Bytes, body::HeldBytes),
    reserve_at: Option<DateTime<Utc>>,
    took: &mut Took,
) -> Result<([u8; 32], Result<(Vec<Accrual>, RequestMembers), ApiError>), ApiError> {
    let for_digest = bytes.clone();
    let digest = blocking(move || -> [u8; 32] { Sha256::digest(&for_digest).into() });
    let known = state.known_members.clone();
    let parse = blocking(move || {
        let started = Instant::now();
        let parsed = parse_and_validate(&bytes, reserve_at);
        drop(bytes);
        let parsed_at = started.elapsed();
        // The members are sorted out here, off the async workers, while the items are at hand.
        let parsed = parsed.map(|accruals| {
            let members = members::sort_out(&accruals, &known);
            (accruals, members)
        });
        (parsed, (parsed_at, started.elapsed() - parsed_at))
    });
    let (body_sha256, parsed) = tokio::join!(digest, parse);
    let (body_sha256, (parsed, parse_took)) = (body_sha256?, parsed?);
    drop(budget);
    (took.parse, took.distinct) = parse_took;
    Ok((body_sha256, parsed))
}

/// The accepted job's log lines: one at info, its phases at debug.
fn log_accepted(
    job: &StoredJob,
    client_id: &str,
    reserve_at: Option<DateTime<Utc>>,
    took: &Took,
    handler: std::time::Duration,
) {
    let (job_id, points, members) = (job.job_id, job.total, job.members);
    tracing::info!(
        %job_id, %client_id, points, members, skipped = job.skipped, reserve_at = ?reserve_at,
        lookup_ms = took.lookup.as_millis() as u64,
        upsert_encode_claim_ms = took.parallel.as_millis() as u64,
        store_ms = took.store.as_millis() as u64,
        "Accepted accrual job"
    );
    tracing::debug!(
        %job_id, points, members, new_members = took.new_members,
        read_ms = took.read.as_millis() as u64,
        parse_ms = took.parse.as_millis() as u64,
        distinct_ms = took.distinct.as_millis() as u64,
        encode_ms = took.encode.as_millis() as u64,
        members_ms = took.members.as_millis() as u64,
        claim_ms = took.claim.as_millis() as u64,
        store_ms = took.store.as_millis() as u64,
        handler_ms = handler.as_millis() as u64,
        "Accept phases"
    );
}

/// The answer to a request the store did not take.
fn intake_error(state: &AppState, e: IntakeError) -> ApiError {
    match e {
        IntakeError::Duplicates(duplicates) => {
            state.metrics.validation_failures.inc();
            ApiError::DuplicateExternalIds { duplicates }
        }
        IntakeError::Contended => ApiError::Conflict(
            "concurrent requests kept taking this request's external ids; retry it".into(),
        ),
        IntakeError::Db(e) => ApiError::database(e),
        e @ (IntakeError::KeyVanished | IntakeError::Task(_)) => ApiError::Internal(e.into()),
    }
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
}
