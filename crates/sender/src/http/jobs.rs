//! `GET /v1/jobs` (the client's jobs), `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/events` (SSE) and
//! `DELETE /v1/jobs/{id}`.

pub mod listing;

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt, TryStreamExt};
use uuid::Uuid;

use tokio::sync::watch;

use super::error::ApiError;
use super::watch::{MAX_STREAMS_PER_CLIENT, StreamSlot};
use crate::http::state::AppState;
use crate::store::job_status::{self, JobView};
use crate::store::jobs::{self, CancelError};
use listing::{JobList, ListParams, ListQuery};

/// Jobs of a page whose views are built at once (each may read Redis, or MySQL without it).
const VIEWS_AT_ONCE: usize = 8;

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(
        ("status" = Option<String>, Query, pattern = "^(reserved|dispatching|enqueued|completed|completed_with_errors|cancelled)$", description = "Only jobs with this status"),
        ("label" = Option<String>, Query, min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000\uFFFE\uFFFF]{1,128}$", description = "Only jobs posted with exactly this label"),
        ("created_from" = Option<String>, Query, format = DateTime, description = "Only jobs created at or after this RFC 3339 instant (at most 6 fractional digits, years 1000-9999)"),
        ("created_to" = Option<String>, Query, format = DateTime, description = "Only jobs created before this RFC 3339 instant (at most 6 fractional digits, years 1000-9999)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Jobs per page, 1-500; 50 by default"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page, with the same filters"),
    ),
    responses(
        (status = 200, description = "A page of the client's jobs, newest first", body = JobList),
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<JobList>, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let Query(params) =
        params.map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))?;
    let query = ListQuery::parse(params, &client_id)?;
    // One row more than the page tells whether there is a next page.
    let mut rows = jobs::list(
        &state.pool,
        &client_id,
        &query.filter,
        query.after.as_ref(),
        query.limit + 1,
    )
    .await
    .map_err(ApiError::database)?;
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    let next_cursor = rows
        .last()
        .filter(|_| more)
        .map(|last| query.cursor_after(last, &client_id));
    let jobs = futures_util::stream::iter(rows)
        .map(|row| job_status::view_of(&state.pool, &state.progress, row))
        .buffered(VIEWS_AT_ONCE)
        .try_collect()
        .await
        .map_err(ApiError::database)?;
    Ok(Json(JobList {
        jobs,
        next: next_cursor.as_deref().map(|c| query.next_url(c)),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}",
    tag = "jobs",
    params(("job_id" = uuid::Uuid, Path, description = "The job id from the 202 answer")),
    responses(
        (status = 200, description = "The job and its counters", body = JobView),
        (status = 404, description = "No such job for this client", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let job_id = job_id_from(job_id)?;
    Ok(Json(find_view(&state, job_id, &client_id).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/jobs/{job_id}",
    tag = "jobs",
    params(("job_id" = uuid::Uuid, Path, description = "The job id from the 202 answer")),
    responses(
        (status = 200, description = "The cancelled reserved job", body = JobView),
        (status = 404, description = "No such job for this client", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with another body, or the job cannot be cancelled", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let job_id = job_id_from(job_id)?;
    jobs::cancel(&state.pool, job_id, &client_id)
        .await
        .map_err(|e| match e {
            CancelError::NotFound => ApiError::NotFound,
            CancelError::NotCancellable(status) => ApiError::Conflict(format!(
                "the job is {status}; only a reserved job not yet released can be cancelled"
            )),
            CancelError::Db(e) => ApiError::database(e),
        })?;
    tracing::info!(%job_id, %client_id, "Cancelled reserved job");
    Ok(Json(find_view(&state, job_id, &client_id).await?))
}

/// The client's job, reconciled with MySQL; 404 when it has no such job.
async fn find_view(state: &AppState, job_id: Uuid, client_id: &str) -> Result<JobView, ApiError> {
    let view = job_status::view(&state.pool, &state.progress, job_id, client_id)
        .await
        .map_err(ApiError::database)?
        .ok_or(ApiError::NotFound)?;
    Ok(state.placing.place(&state.pool, view).await)
}

/// The job id of the path, or a problem+json 400 naming what is wrong with it.
pub(crate) fn job_id_from(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/events",
    tag = "jobs",
    params(("job_id" = uuid::Uuid, Path, description = "The job id from the 202 answer")),
    responses(
        (status = 200, description = "Server-Sent Events: `progress` events carrying a JobView on each change, then one `final` event", content_type = "text/event-stream", body = crate::http::schemas::JobEventSchema),
        (status = 404, description = "No such job for this client", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn follow_job_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let job_id = job_id_from(job_id)?;
    let first = find_view(&state, job_id, &client_id).await?;
    let slot = state
        .job_watch
        .open_stream(&client_id)
        .ok_or_else(|| ApiError::RateLimited {
            detail: format!(
                "more than {MAX_STREAMS_PER_CLIENT} event streams open at once; close one first"
            ),
            retry_after: Duration::from_secs(5),
        })?;
    let updates = state.job_watch.follow(
        &state.pool,
        &state.progress,
        &state.placing,
        first,
        &client_id,
    );
    let follow = Follow {
        updates,
        first: true,
        done: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let event = f.next_event().await?;
        Some((Ok(event), f))
    });
    // Streams end when the sender shuts down, so SIGTERM is not held up by followers.
    let stream =
        futures_util::StreamExt::take_until(stream, state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The state of one SSE stream.
struct Follow {
    /// The job's views, published by its one poller.
    updates: watch::Receiver<JobView>,
    /// The current view is sent first, changed or not.
    first: bool,
    /// Set once the final view has been sent: the stream then ends.
    done: bool,
    /// This stream's place in the client's allowance.
    _slot: StreamSlot,
}

impl Follow {
    /// The next event to send, or `None` when the stream ends.
    async fn next_event(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        if !std::mem::take(&mut self.first) {
            // An error means the poller stopped without a final view (the job is gone).
            self.updates.changed().await.ok()?;
        }
        let view = self.updates.borrow_and_update().clone();
        self.done = view.is_final();
        Event::default()
            .event(if self.done { "final" } else { "progress" })
            .json_data(&view)
            .ok()
    }
}
