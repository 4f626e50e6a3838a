//! What both ports wrap their routes in: problem+json for unknown routes and methods, request
//! counts by route, request ids.

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use super::error::ApiError;
use super::request_id;
use crate::metrics::{RequestLabels, SenderMetrics};

/// What both ports wrap their routes in: problem+json for unknown routes and methods, request
/// counts by route, request ids.
pub fn finish(router: Router, metrics: Arc<SenderMetrics>) -> Router {
    router
        .fallback(|uri: axum::http::Uri| async move { ApiError::NoRoute(uri.path().to_owned()) })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(method.to_string())
        })
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
