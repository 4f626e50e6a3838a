//! `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/events` (SSE) and `DELETE /v1/jobs/{id}`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use uuid::Uuid;

use super::error::ApiError;
use crate::jobs::status::{self, JobView};
use crate::jobs::store::{self, CancelError};
use crate::state::AppState;

/// How often an SSE stream looks for changes.
const EVENT_POLL: Duration = Duration::from_millis(500);

#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}",
    tag = "jobs",
    params(("job_id" = uuid::Uuid, Path, description = "The job id from the 202 answer")),
    responses(
        (status = 200, description = "The job and its counters", body = JobView),
        (status = 404, description = "No such job for this client", body = crate::api::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let client_id = super::authorize(&state, &headers).await?;
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
        (status = 404, description = "No such job for this client", body = crate::api::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency-Key reused with another body, or the job cannot be cancelled", body = crate::api::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let client_id = super::authorize(&state, &headers).await?;
    let job_id = job_id_from(job_id)?;
    store::cancel(&state.pool, job_id, &client_id)
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
    status::view(&state.pool, &state.progress, job_id, client_id)
        .await
        .map_err(ApiError::database)?
        .ok_or(ApiError::NotFound)
}

/// The job id of the path, or a problem+json 400 naming what is wrong with it.
fn job_id_from(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/events",
    tag = "jobs",
    params(("job_id" = uuid::Uuid, Path, description = "The job id from the 202 answer")),
    responses(
        (status = 200, description = "Server-Sent Events: `progress` events carrying a JobView on each change, then one `final` event", content_type = "text/event-stream", body = crate::api::openapi::JobEventSchema),
        (status = 404, description = "No such job for this client", body = crate::api::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let client_id = super::authorize(&state, &headers).await?;
    let job_id = job_id_from(job_id)?;
    let first = find_view(&state, job_id, &client_id).await?;

    let follow = Follow {
        state,
        client_id,
        job_id,
        pending: Some(first),
        last: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let event = f.next_event().await?;
        Some((Ok(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The state of one SSE stream.
struct Follow {
    state: AppState,
    client_id: String,
    job_id: Uuid,
    /// A view read but not yet compared with the last one sent.
    pending: Option<JobView>,
    last: Option<JobView>,
    /// Set once the final view has been sent: the stream then ends.
    done: bool,
}

impl Follow {
    /// The next event to send, or `None` when the stream ends.
    async fn next_event(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            if let Some(view) = self.pending.take()
                && self.last.as_ref() != Some(&view)
            {
                self.done = view.is_final();
                let event = Event::default()
                    .event(if self.done { "final" } else { "progress" })
                    .json_data(&view)
                    .ok()?;
                self.last = Some(view);
                return Some(event);
            }
            tokio::time::sleep(EVENT_POLL).await;
            let s = &self.state;
            match status::view(&s.pool, &s.progress, self.job_id, &self.client_id).await {
                Ok(Some(view)) => self.pending = Some(view),
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(job_id = %self.job_id, error = %e, "Reading job progress failed")
                }
            }
        }
    }
}
