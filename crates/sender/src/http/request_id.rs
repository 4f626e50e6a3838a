//! A request id on every response and log line: taken from `x-request-id` when the client sends a
//! usable one, generated (UUID v7) otherwise. tower-http's request-id layers set and echo the
//! header; this module decides what is usable, makes the ids, and scopes each request's id to its
//! task (for error bodies) and its log span.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::{MakeRequestId, RequestId};
use tracing::Instrument;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The id of the request this task serves; read when an error body is rendered.
    static REQUEST_ID: String;
}

/// The current request's id, or an empty string outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// Makes a UUID v7 for a request that came without a usable id.
#[derive(Clone, Copy, Debug, Default)]
pub struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// A client's id is kept when it is 1 to 128 visible ASCII characters; any other is dropped (and
/// replaced by a new one), so log lines never carry a client's control characters or kilobytes.
fn usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic)
}

/// Request mapper, before tower-http's `SetRequestId`: drops an unusable client id.
pub async fn drop_unusable(mut request: Request) -> Request {
    if request
        .headers()
        .get(REQUEST_ID_HEADER)
        .is_some_and(|v| !usable(v))
    {
        request.headers_mut().remove(REQUEST_ID_HEADER);
    }
    request
}

/// Middleware, inside tower-http's layers: runs the request in a span and a task-local scope that
/// carry its id.
pub async fn scope(request: Request, next: Next) -> Response {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    REQUEST_ID
        .scope(id, next.run(request).instrument(span))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_kept() {
        assert!(usable(&HeaderValue::from_static("req-42")));
        assert!(usable(
            &HeaderValue::from_str(&"a".repeat(128)).expect("header")
        ));
        assert!(!usable(
            &HeaderValue::from_str(&"a".repeat(129)).expect("header")
        ));
        assert!(!usable(&HeaderValue::from_static("has space")));
        assert!(!usable(&HeaderValue::from_static("")));
    }
}
