//! One error type for the HTTP API, rendered as `application/problem+json` (RFC 9457).

use accrual_core::accrual::ItemError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::request_id::current_request_id;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Everything a request can fail with. Each variant has a stable problem `type`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("the body is not valid JSON: {message} (line {line}, column {column})")]
    MalformedJson {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("{0}")]
    InvalidParameter(String),
    #[error("no such job")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("the array holds no accrual items")]
    EmptyRequest,
    #[error("{total} invalid field(s); nothing was stored")]
    Validation {
        errors: Vec<ItemError>,
        total: usize,
    },
    #[error("{detail}")]
    RateLimited {
        detail: String,
        retry_after: std::time::Duration,
    },
    #[error("a dependency is unavailable: {dependency}")]
    DependencyUnavailable {
        dependency: &'static str,
        #[source]
        source: anyhow::Error,
    },
    #[error("unexpected internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn database(source: impl Into<anyhow::Error>) -> Self {
        Self::DependencyUnavailable {
            dependency: "database",
            source: source.into(),
        }
    }

    /// Status, problem type slug and title: the stable part of each problem.
    fn kind(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or invalid API key",
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Self::MalformedJson { .. } => {
                (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
            }
            Self::InvalidParameter(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid parameter",
            ),
            Self::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::EmptyRequest => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "empty-request",
                "No accrual items",
            ),
            Self::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "Invalid accrual items",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limit exceeded",
            ),
            Self::DependencyUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "dependency-unavailable",
                "Service temporarily unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.kind();
        let retry_after = match &self {
            Self::RateLimited { retry_after, .. } => {
                // Whole seconds, rounded up, at least 1.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
            _ => None,
        };
        let request_id = current_request_id();
        let mut body = json!({
            "type": format!("/problems/{slug}"),
            "title": title,
            "status": status.as_u16(),
            "request_id": request_id,
        });
        if status.is_server_error() {
            // The cause goes to the log only; the client gets the request id to quote.
            tracing::error!(error = ?anyhow::Error::new(self), %request_id, "Request failed");
            body["detail"] =
                json!("the request could not be completed; quote the request_id when reporting it");
        } else {
            body["detail"] = json!(self.to_string());
            match self {
                Self::Validation { errors, total } => {
                    body["errors"] = json!(errors);
                    body["total_errors"] = json!(total);
                }
                Self::RateLimited { retry_after, .. } => {
                    body["retry_after_seconds"] = json!(retry_after.as_secs_f64().ceil() as u64);
                }
                Self::MalformedJson { line, column, .. } => {
                    body["line"] = json!(line);
                    body["column"] = json!(column);
                }
                _ => {}
            }
        }
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(secs) = retry_after {
            body_retry_after(&mut response, secs);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn body_retry_after(response: &mut Response, secs: u64) {
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}
