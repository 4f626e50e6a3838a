//! The API contract, generated from the handlers' annotations and the response types, served at
//! `GET /openapi.json`.

use axum::Json;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::error::Problem;
use super::ops::{CheckStatus, Checks, Readiness, ReadinessStatus};
use crate::api::accruals::Accepted;
use crate::jobs::status::JobView;

/// One accrual item of a `POST /v1/accruals` body. (The body is parsed leniently so that every
/// item error can be reported; this schema states what a valid item is.)
#[derive(ToSchema)]
#[schema(as = AccrualItem)]
#[allow(dead_code)]
pub struct AccrualItemSchema {
    /// 1-64 characters of `[A-Za-z0-9_.-]`.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.-]{1,64}$",
        example = "emp-00042"
    )]
    member_id: String,
    /// 1-32 characters of `[A-Z0-9_]`.
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[A-Z0-9_]{1,32}$",
        example = "WELFARE"
    )]
    point_type: String,
    /// A plain integer (digits only: `1e3` and `5.0` are refused).
    #[schema(minimum = 1, maximum = 1_000_000_000, example = 500)]
    amount: i64,
    /// At most 255 characters, none of them a C0 control (U+0000-U+001F) or U+FFFE/U+FFFF, which
    /// SQS cannot carry in a message.
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\uFFFE\uFFFF]*$")]
    reason: Option<String>,
    /// RFC 3339, in the future (after `reserve_at` for a reserved accrual), in the years
    /// 1000-9999 once converted to UTC, with at most 6 fractional digits and no leap second:
    /// exactly what the ledger's `DATETIME(6)` stores.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The client's own id for the item (its transaction id): 1-128 visible ASCII characters,
    /// unique per client across all its jobs (see `on_duplicate`).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[!-~]{1,128}$",
        example = "crm-txn-2026-000042"
    )]
    external_id: Option<String>,
}

/// What is wrong with one field of one item.
#[derive(ToSchema)]
#[schema(as = ItemError)]
#[allow(dead_code)]
pub struct ItemErrorSchema {
    /// Position of the item in the request array, from 0.
    index: u64,
    /// The field at fault, or `item` when the item itself is not an object.
    field: String,
    message: String,
}

/// One Server-Sent Event of `GET /v1/jobs/{job_id}/events`.
#[derive(ToSchema)]
#[schema(as = JobEvent)]
#[allow(dead_code)]
pub struct JobEventSchema {
    /// `progress` on each change, then one `final`.
    #[schema(pattern = "^(progress|final)$")]
    event: String,
    /// The job as JSON (a `JobView`).
    data: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Adds the errors every keyed route can answer (bad parameter, no key, rate limit, MySQL down) to
/// each operation that needs a key, so the handlers' annotations list only their own.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let problem = |description: &str| {
            ResponseBuilder::new().description(description).content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
        };
        let retry_after = HeaderBuilder::new()
            .schema(<u64 as PartialSchema>::schema())
            .description(Some("Seconds to wait"))
            .build();
        let common = [
            (
                "400",
                problem("Malformed JSON, or a bad or unknown query parameter, header or job id")
                    .build(),
            ),
            ("401", problem("Missing or unknown API key").build()),
            (
                "429",
                problem(
                    "Over the client's rate limit, or too many event streams open; nothing stored",
                )
                .header("Retry-After", retry_after)
                .build(),
            ),
            ("503", problem("MySQL unavailable").build()),
        ];
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.as_ref().is_none_or(Vec::is_empty) {
                    continue;
                }
                for (status, response) in &common {
                    operation
                        .responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| response.clone().into());
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulk point-accrual API",
        description = "Accepts bulk point accruals all-or-nothing and reports each job's progress. Every error is application/problem+json."
    ),
    paths(
        super::accruals::post,
        super::jobs::list,
        super::jobs::get,
        super::jobs::cancel,
        super::jobs::events,
        super::results::get,
        super::reversal::post,
        super::members::ledger,
        super::members::balance,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        openapi_json,
    ),
    components(schemas(AccrualItemSchema, ItemErrorSchema, JobEventSchema, Accepted, JobView, Problem, crate::external_ids::DuplicateExternalId, crate::external_ids::OnDuplicate, crate::jobs::results::ItemResult, crate::jobs::results::Outcome, crate::jobs::results::OutcomeFilter, Readiness, ReadinessStatus, Checks, CheckStatus, super::members::MemberLedger, super::members::LedgerEntry, super::members::MemberBalance, crate::member_ledger::PointTypeBalance)),
    modifiers(&BearerAuth, &CommonErrors),
    tags(
        (name = "accruals", description = "Submit point accruals"),
        (name = "jobs", description = "List, follow, cancel or reverse jobs"),
        (name = "members", description = "A member's ledger and balance in the client's jobs"),
        (name = "operations", description = "Health, readiness, metrics and this contract; no key needed"),
    )
)]
pub struct ApiDoc;

/// The contract itself.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_router_is_in_the_contract() {
        let doc = ApiDoc::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
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
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(
                paths.iter().any(|p| *p == path),
                "{path} missing from {paths:?}"
            );
        }
    }
}
