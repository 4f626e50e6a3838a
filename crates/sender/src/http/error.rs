//! One error type for the HTTP API, rendered as `application/problem+json` (RFC 9457).

use accrual_core::accrual::ItemError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::request_id::current_request_id;
use crate::store::external_ids::DuplicateExternalId;
use crate::store::reversals::Unreversible;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The body of every error response (RFC 9457 problem details, plus the request id and, where
/// they apply, the item errors, the JSON position or the time to wait).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem, e.g. `/problems/validation-failed`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Also in the `x-request-id` header; quote it when reporting a problem.
    pub request_id: String,
    /// 422: the first 1,000 item errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::http::schemas::ItemErrorSchema>>)]
    pub errors: Option<Vec<ItemError>>,
    /// 422: how many item errors there are in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_errors: Option<usize>,
    /// 400 malformed JSON: where (from 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// 422 duplicate-external-id: every item whose `external_id` was used before, with the point
    /// and job holding it (or, for a repeat within the request, the index of its first use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicates: Option<Vec<DuplicateExternalId>>,
    /// 429 and 503 server-busy: seconds to wait, as in `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

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
    /// None of the media types the `Accept` header names can be given.
    #[error("{0}")]
    NotAcceptable(String),
    /// The job's per-item results were removed by retention.
    #[error("{0}")]
    ResultsExpired(String),
    #[error("no such route: {0}")]
    NoRoute(String),
    #[error("{0} is not allowed on this route")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the array holds no accrual items")]
    EmptyRequest,
    #[error("{total} invalid field(s); nothing was stored")]
    Validation {
        errors: Vec<ItemError>,
        total: usize,
    },
    /// Items whose `external_id` the client used before (`on_duplicate=reject`).
    #[error("{} item(s) carry an external_id used before; nothing was stored", duplicates.len())]
    DuplicateExternalIds {
        duplicates: Vec<DuplicateExternalId>,
    },
    #[error("{detail}")]
    RateLimited {
        detail: String,
        retry_after: std::time::Duration,
    },
    /// The body arrived too slowly or took too long; the connection is closed after the answer.
    #[error("{0}")]
    RequestTimeout(String),
    /// Request bodies in flight hold the whole body budget: a load to shed, not a fault.
    #[error("{detail}")]
    ServerBusy {
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

/// A job that cannot be reversed is a 409 saying why.
impl From<Unreversible> for ApiError {
    fn from(why: Unreversible) -> Self {
        Self::Conflict(why.to_string())
    }
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
            Self::NotFound | Self::NoRoute(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::NotAcceptable(_) => (
                StatusCode::NOT_ACCEPTABLE,
                "not-acceptable",
                "Not acceptable",
            ),
            Self::ResultsExpired(_) => (StatusCode::GONE, "results-expired", "Results expired"),
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
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
            Self::DuplicateExternalIds { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "duplicate-external-id",
                "External ids used before",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limit exceeded",
            ),
            Self::RequestTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
            ),
            Self::ServerBusy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server-busy",
                "Server busy",
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
            Self::RateLimited { retry_after, .. } | Self::ServerBusy { retry_after, .. } => {
                // Whole seconds, rounded up, at least 1.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
            _ => None,
        };
        let request_id = current_request_id();
        let mut body = Problem {
            problem_type: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: String::new(),
            request_id: request_id.clone(),
            errors: None,
            total_errors: None,
            duplicates: None,
            line: None,
            column: None,
            retry_after_seconds: retry_after,
        };
        if matches!(self, Self::ServerBusy { .. }) {
            // Shed load, not a fault: the client may know why. A warning, not an error: one is no
            // matter, many say the replicas need more memory or more company.
            tracing::warn!(%request_id, detail = %self, "Request refused: server busy");
            body.detail = self.to_string();
        } else if status.is_server_error() {
            // The cause goes to the log only; the client gets the request id to quote.
            tracing::error!(error = ?anyhow::Error::new(self), %request_id, "Request failed");
            body.detail =
                "the request could not be completed; quote the request_id when reporting it".into();
        } else {
            body.detail = self.to_string();
            match self {
                Self::Validation { errors, total } => {
                    body.errors = Some(errors);
                    body.total_errors = Some(total);
                }
                Self::DuplicateExternalIds { duplicates } => {
                    body.duplicates = Some(duplicates);
                }
                Self::MalformedJson { line, column, .. } => {
                    body.line = Some(line);
                    body.column = Some(column);
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
