//! The HTTP API.

pub mod accruals;
pub mod auth;
pub mod error;
pub mod jobs;
pub mod members;
pub mod openapi;
pub mod ops;
pub mod request_id;
pub mod results;
pub mod reversal;
pub mod watch;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use crate::metrics::{RequestLabels, SenderMetrics};
use crate::rate_limit::{Decision, Kind};
use crate::state::AppState;
use error::ApiError;

/// All routes, with the request-id and request-metrics middleware around them.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/v1/accruals", post(accruals::post))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{job_id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{job_id}/events", get(jobs::events))
        .route("/v1/jobs/{job_id}/results", get(results::get))
        .route("/v1/jobs/{job_id}/reversal", post(reversal::post))
        .route("/v1/members/{member_id}/accruals", get(members::ledger))
        .route("/v1/members/{member_id}/balance", get(members::balance))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|uri: axum::http::Uri| async move { ApiError::NoRoute(uri.path().to_owned()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(method.to_string())
        })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(metrics, count_request))
        .layer(axum::middleware::from_fn(request_id::scope))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(request_id::NewRequestId))
        .layer(axum::middleware::map_request(request_id::drop_unusable))
}

/// The methods counted under their own name; any other is counted as `OTHER`, so that made-up
/// methods cannot create a new time series each.
const KNOWN_METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// The `method` label of a request.
fn method_label(method: &Method) -> &str {
    if KNOWN_METHODS.contains(method) {
        method.as_str()
    } else {
        "OTHER"
    }
}

/// Middleware: counts each request by route pattern, method and status.
async fn count_request(
    State(metrics): State<Arc<SenderMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method()).to_owned();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The client the request's key names, once its request rate allows one more request.
pub async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let client_id = state.api_keys.authenticate(headers)?;
    match state
        .rate_limiter
        .check(&client_id, Kind::Requests, 1)
        .await
    {
        Decision::Allowed => Ok(client_id),
        Decision::Limited { retry_after } => Err(ApiError::RateLimited {
            detail: format!(
                "more than {} requests per minute",
                state.rate_limiter.limits(&client_id).requests_per_minute
            ),
            retry_after,
        }),
        Decision::TooLarge { per_minute } => Err(ApiError::RateLimited {
            detail: format!("more than {per_minute} requests per minute"),
            retry_after: std::time::Duration::from_secs(60),
        }),
    }
}

/// Takes `points` from the client's points-per-minute allowance.
pub async fn limit_points(state: &AppState, client_id: &str, points: u64) -> Result<(), ApiError> {
    match state
        .rate_limiter
        .check(client_id, Kind::Points, points)
        .await
    {
        Decision::Allowed => Ok(()),
        Decision::Limited { retry_after } => Err(ApiError::RateLimited {
            detail: format!(
                "more than {} points per minute; nothing was stored",
                state.rate_limiter.limits(client_id).points_per_minute
            ),
            retry_after,
        }),
        Decision::TooLarge { per_minute } => {
            state.metrics.rate_limited.inc();
            Err(ApiError::RateLimited {
                detail: format!(
                    "this request's {points} points exceed the client's allowance of {per_minute} points per minute; split it into smaller requests"
                ),
                retry_after: std::time::Duration::from_secs(60),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_labelled_by_name() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::CONNECT), "CONNECT");
        for made_up in ["PURGE", "get", "X1"] {
            let method = Method::from_bytes(made_up.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "OTHER", "{made_up}");
        }
    }
}
