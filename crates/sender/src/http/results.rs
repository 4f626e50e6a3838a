//! `GET /v1/jobs/{job_id}/results`: one record per item, in request order, streamed.
//!
//! A task reads and renders the job's pieces and hands them to the response through a bounded
//! channel: each piece's MySQL work runs to its end and gives its connection back whatever the
//! client reads, so a download nobody reads holds a few rendered pieces in memory and no
//! connection. A client may have `SENDER_RESULTS_STREAMS_PER_CLIENT` downloads open at once (429
//! beyond); a response the client stops reading is ended by the server's write-stall timeout.

use accrual_core::job_status::JobStatus;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use chrono::Utc;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::error::ApiError;
use super::jobs::job_id_from;
use crate::http::state::AppState;
use crate::store::jobs::{self, JobRow};
use crate::store::results::{self, CSV_HEADER, Format, OutcomeFilter};

/// Pieces rendered ahead of the one being sent: enough to overlap MySQL with the client's
/// reading, few enough that a job of any size holds a few thousand items in memory at a time.
const READ_AHEAD: usize = 3;

/// How long a client that holds all its downloads should wait before trying again.
const STREAMS_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The query parameters the route knows; any other is refused with a 400.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsParams {
    /// Which items to list; all by default.
    #[serde(default)]
    outcome: OutcomeFilter,
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/results",
    tag = "jobs",
    params(
        ("job_id" = uuid::Uuid, Path, description = "The job id from the 202 answer"),
        ("outcome" = Option<OutcomeFilter>, Query, description = "Only items with this outcome (default: all)"),
    ),
    responses(
        (status = 200, description = "One record per item, in request order: NDJSON (`Accept: application/x-ndjson`, the default) or CSV with a header row (`Accept: text/csv`)",
            content(
                (crate::store::results::ItemResult = "application/x-ndjson"),
                (String = "text/csv"),
            )),
        (status = 400, description = "An unknown outcome, an unknown query parameter or a bad job id", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job for this client", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 406, description = "The Accept header names neither application/x-ndjson nor text/csv", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job was cancelled before any of its points was sent: it has no per-item results", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 410, description = "The job's per-item results were removed after RESULTS_RETENTION_DAYS (its counters stay in its view, its ledger rows stay)", body = crate::http::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The client has SENDER_RESULTS_STREAMS_PER_CLIENT results downloads open already; `Retry-After` says when to try again", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_job_results(
    State(state): State<AppState>,
    params: Result<Query<ResultsParams>, QueryRejection>,
    headers: HeaderMap,
    job_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let job_id = job_id_from(job_id)?;
    let Query(params) =
        params.map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))?;
    let format = negotiate(&headers)?;
    let job = jobs::get(&state.pool, job_id)
        .await
        .map_err(ApiError::database)?
        .filter(|job| job.client_id == client_id)
        .ok_or(ApiError::NotFound)?;
    if job.status == JobStatus::Cancelled {
        return Err(ApiError::Conflict(
            "the job was cancelled before any of its points was sent; it has no per-item results"
                .into(),
        ));
    }
    let expired = || {
        ApiError::ResultsExpired(format!(
            "the job's per-item results were kept for {} after it finished and have been removed; its counters and ledger rows remain",
            humanize(state.results_retention)
        ))
    };
    if results_expired(&job, state.results_retention) {
        return Err(expired());
    }
    let (chunks, items) = results::chunk_refs(&state.pool, job_id)
        .await
        .map_err(ApiError::database)?;
    if items != u64::from(job.total) {
        // Retention is removing the chunks right now.
        return Err(expired());
    }

    let slot = state
        .results_streams
        .take(&client_id)
        .ok_or_else(|| ApiError::RateLimited {
            detail: format!(
                "more than {} results downloads open at once; finish one first",
                state.results_streams.max_per_client()
            ),
            retry_after: STREAMS_RETRY_AFTER,
        })?;
    let skips = results::Skips::load(&state.pool, job_id, job.skipped)
        .await
        .map_err(ApiError::database)?;
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(render_all(
        state.pool.clone(),
        job_id,
        results::pieces(chunks),
        (skips, params.outcome, format),
        tx,
    ));
    // The slot goes with the body: given back when the response has been sent or dropped.
    let rows = futures_util::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        rx.recv().await.map(|piece| (piece, (rx, slot)))
    });
    let header = (format == Format::Csv).then_some(Ok(Bytes::from_static(CSV_HEADER.as_bytes())));
    let body = Body::from_stream(futures_util::stream::iter(header).chain(rows));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(response)
}

/// Reads and renders every piece in order into `tx`, until the last or until the response is
/// dropped. Each piece's queries end before the send waits for room, so a reader that stalls holds
/// no MySQL connection.
async fn render_all(
    pool: sqlx::MySqlPool,
    job_id: Uuid,
    pieces: Vec<results::Piece>,
    (skips, filter, format): (results::Skips, OutcomeFilter, Format),
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) {
    for piece in pieces {
        let rendered =
            match results::render_piece(&pool, job_id, piece, &skips, filter, format).await {
                Ok(rendered) if rendered.is_empty() => continue,
                Ok(rendered) => Ok(Bytes::from(rendered)),
                Err(e) => {
                    // The status line is sent already: abort the body, so the client sees an error
                    // and not a short list.
                    tracing::warn!(%job_id, error = %e, "Streaming a job's results failed");
                    Err(std::io::Error::other(e))
                }
            };
        let failed = rendered.is_err();
        if tx.send(rendered).await.is_err() || failed {
            return;
        }
    }
}

/// Whether retention has removed (or may be removing) the job's stored chunks.
fn results_expired(job: &JobRow, retention: Duration) -> bool {
    if job.results_purged_at.is_some() {
        return true;
    }
    let finished = job.status.is_final();
    let cutoff = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|r| Utc::now().checked_sub_signed(r));
    finished && matches!((job.completed_at, cutoff), (Some(done), Some(cutoff)) if done < cutoff)
}

/// The form the `Accept` header asks for: the first media type it names that we have (NDJSON for
/// `*/*`, `application/*` or no header; CSV for `text/*`), or 406.
fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(Format::Ndjson);
    };
    let accept = accept.to_str().unwrap_or_default();
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        match media.as_str() {
            "application/x-ndjson" | "application/*" | "*/*" | "" => return Ok(Format::Ndjson),
            "text/csv" | "text/*" => return Ok(Format::Csv),
            _ => {}
        }
    }
    Err(ApiError::NotAcceptable(format!(
        "results come as application/x-ndjson or text/csv, not {accept}"
    )))
}

/// `30 days`, `2 hours`, `90 seconds`: a retention as people say it.
fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs >= 86_400 && secs.is_multiple_of(86_400) {
        (secs / 86_400, "day")
    } else if secs >= 3_600 && secs.is_multiple_of(3_600) {
        (secs / 3_600, "hour")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Result<Format, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("a header value"),
        );
        negotiate(&headers)
    }

    #[test]
    fn the_accept_header_chooses_ndjson_or_csv() {
        assert_eq!(negotiate(&HeaderMap::new()).ok(), Some(Format::Ndjson));
        assert_eq!(accept("*/*").ok(), Some(Format::Ndjson));
        assert_eq!(accept("application/x-ndjson").ok(), Some(Format::Ndjson));
        assert_eq!(accept("Text/CSV").ok(), Some(Format::Csv));
        assert_eq!(
            accept("text/html, text/csv;q=0.9, */*;q=0.1").ok(),
            Some(Format::Csv)
        );
        assert_eq!(accept("text/csv;q=0, */*").ok(), Some(Format::Ndjson));
        assert!(matches!(
            accept("application/xml"),
            Err(ApiError::NotAcceptable(_))
        ));
    }

    #[test]
    fn retention_is_said_in_its_largest_whole_unit() {
        assert_eq!(humanize(Duration::from_secs(30 * 86_400)), "30 days");
        assert_eq!(humanize(Duration::from_secs(3_600)), "1 hour");
        assert_eq!(humanize(Duration::from_secs(90)), "90 seconds");
    }
}
