//! `POST /v1/accruals`: validate all items, upsert their members, hand the points to the fan-out.

use accrual_core::accrual::{self, Accrual};
use accrual_core::message::PointRecord;
use accrual_core::wire::{self, BodyError, MAX_ITEMS_PER_REQUEST};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use uuid::Uuid;

use super::error::ApiError;
use crate::members;
use crate::state::AppState;

/// Largest request body accepted: 100 MiB, enforced while reading.
pub const MAX_BODY_BYTES: usize = 100 * 1024 * 1024;

/// The 202 answer.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub job_id: Uuid,
    /// Points accepted (the number of items).
    pub accepted: usize,
    /// Distinct members among the items, all present in `members` before any point was queued.
    pub members: usize,
    pub status: &'static str,
    pub reserve_at: Option<DateTime<Utc>>,
}

pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let client_id = state.api_keys.authenticate(&headers)?;
    require_json(&headers)?;
    let bytes = read_limited(&headers, body).await?;
    let accruals = blocking(move || parse_and_validate(&bytes)).await??;
    let members = members::upsert(&state.pool, &accruals)
        .await
        .map_err(ApiError::database)?;

    let job_id = Uuid::now_v7();
    let accepted = accruals.len();
    let accepted_at = Utc::now();
    let bodies = blocking(move || encode(job_id, accepted_at, accruals)).await?;
    tracing::info!(%job_id, %client_id, points = accepted, members, "Accepted accrual job");
    state.dispatcher.dispatch(job_id, bodies);

    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            job_id,
            accepted,
            members,
            status: "dispatching",
            reserve_at: None,
        }),
    ))
}

/// Runs CPU-heavy work (parsing a 100 MiB body, encoding 500,000 messages) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.into()))
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!("the body exceeds {MAX_BODY_BYTES} bytes (100 MiB)"))
}

/// Reads the body, refusing it as soon as it passes the limit (by `Content-Length` up front, or
/// while streaming a chunked body).
async fn read_limited(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::MalformedJson {
            message: format!("the body could not be read: {e}"),
            line: 0,
            column: 0,
        }),
    }
}

fn parse_and_validate(body: &[u8]) -> Result<Vec<Accrual>, ApiError> {
    let items = wire::parse_body(body, MAX_ITEMS_PER_REQUEST).map_err(|e| match e {
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
    if items.is_empty() {
        return Err(ApiError::EmptyRequest);
    }
    accrual::validate(items, Utc::now()).map_err(|f| ApiError::Validation {
        errors: f.errors,
        total: f.total,
    })
}

/// Gives every point its `accrual_id` (UUID v7) and renders its SQS message body.
fn encode(job_id: Uuid, accepted_at: DateTime<Utc>, accruals: Vec<Accrual>) -> Vec<String> {
    accruals
        .into_iter()
        .map(|accrual| {
            PointRecord {
                accrual_id: Uuid::now_v7(),
                job_id,
                accrual,
                accepted_at,
            }
            .encode()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types_are_recognised_with_parameters() {
        let mut h = HeaderMap::new();
        assert!(require_json(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(require_json(&h).is_ok());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            require_json(&h),
            Err(ApiError::UnsupportedMediaType)
        ));
    }

    #[test]
    fn an_empty_array_is_refused() {
        assert!(matches!(
            parse_and_validate(b"[]"),
            Err(ApiError::EmptyRequest)
        ));
    }

    #[test]
    fn five_hundred_thousand_items_pass_and_one_more_is_too_large() {
        let item = r#"{"member_id":"m","point_type":"P","amount":1}"#;
        let body = |n: usize| format!("[{}]", vec![item; n].join(","));
        assert_eq!(
            parse_and_validate(body(500_000).as_bytes())
                .map(|v| v.len())
                .ok(),
            Some(500_000)
        );
        assert!(matches!(
            parse_and_validate(body(500_001).as_bytes()),
            Err(ApiError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn every_encoded_point_has_its_own_accrual_id() {
        let accruals = parse_and_validate(br#"[{"member_id":"m","point_type":"P","amount":1},{"member_id":"m","point_type":"P","amount":1}]"#)
            .expect("valid");
        let bodies = encode(Uuid::now_v7(), Utc::now(), accruals);
        let ids: Vec<Uuid> = bodies
            .iter()
            .map(|b| PointRecord::decode(b).expect("decodes").accrual_id)
            .collect();
        assert_ne!(ids[0], ids[1]);
    }
}
