//! The API port's routes: the public contract. One list of handlers makes both the router and the
//! OpenAPI document, so a route cannot be served undocumented, nor documented and not served.

use std::sync::LazyLock;

use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::middleware::finish;
use super::openapi::{self, ApiDoc};
use super::state::AppState;
use super::{accruals, jobs, members, ops, results, reversal};

/// Every route of the API port with its annotation; handlers of one path go in one `routes!`.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accruals::create_accrual_job))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job, jobs::cancel_job))
        .routes(routes!(jobs::follow_job_events))
        .routes(routes!(results::get_job_results))
        .routes(routes!(reversal::reverse_job))
        .routes(routes!(members::list_member_accruals))
        .routes(routes!(members::get_member_balance))
        .routes(routes!(ops::check_health))
        .routes(routes!(get_openapi))
}

/// The API port's routes (the public contract), with the request-id and request-metrics
/// middleware around them. Metrics and readiness are on the operations port ([`ops::router`]).
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let (router, _) = routes().split_for_parts();
    finish(router.with_state(state), metrics)
}

/// The OpenAPI document of [`router`]'s routes, built once.
pub fn contract() -> &'static utoipa::openapi::OpenApi {
    static CONTRACT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(|| {
        let (_, mut doc) = routes().split_for_parts();
        openapi::add_common_errors(&mut doc);
        doc
    });
    &CONTRACT
}

/// The contract itself.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn get_openapi() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(contract())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_operation_has_a_unique_id_that_reads_as_a_method_name() {
        let doc = contract();
        let mut ids = Vec::new();
        for (path, item) in &doc.paths.paths {
            let operations = [&item.get, &item.post, &item.put, &item.delete, &item.patch];
            for operation in operations.into_iter().flatten() {
                let id = operation.operation_id.clone();
                ids.push(id.unwrap_or_else(|| panic!("an operation of {path} has no id")));
            }
        }
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        ids.sort();
        assert_eq!(
            ids,
            [
                "cancel_job",
                "check_health",
                "create_accrual_job",
                "follow_job_events",
                "get_job",
                "get_job_results",
                "get_member_balance",
                "get_openapi",
                "list_jobs",
                "list_member_accruals",
                "reverse_job",
            ]
        );
    }

    #[test]
    fn the_contract_holds_the_public_routes_and_not_the_operations_port() {
        let paths: Vec<&String> = contract().paths.paths.keys().collect();
        for path in [
            "/v1/accruals",
            "/v1/jobs",
            "/v1/jobs/{job_id}",
            "/v1/jobs/{job_id}/events",
            "/v1/jobs/{job_id}/results",
            "/v1/jobs/{job_id}/reversal",
            "/v1/members/{member_id}/accruals",
            "/v1/members/{member_id}/balance",
            "/healthz",
            "/openapi.json",
        ] {
            assert!(
                paths.contains(&&path.to_owned()),
                "{path} missing from {paths:?}"
            );
        }
        for path in ["/readyz", "/metrics"] {
            assert!(!paths.contains(&&path.to_owned()), "{path} in {paths:?}");
        }
    }
}
