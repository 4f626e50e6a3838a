//! What a keyed request passes before its handler runs: its API key, then its client's request
//! and point allowances.

use axum::http::HeaderMap;

use super::error::ApiError;
use super::rate_limit::{Decision, Kind};
use super::state::AppState;

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
