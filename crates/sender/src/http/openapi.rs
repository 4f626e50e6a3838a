//! The API contract's frame: its title, security scheme, tags, shared schemas and the errors every
//! keyed route answers. The paths come from the handlers' annotations, added by the one route list
//! in [`super::router`], which serves the whole document at `GET /openapi.json`.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema};

use super::error::Problem;
use super::schemas::{AccrualItemSchema, ItemErrorSchema, JobEventSchema};
use crate::http::accruals::Accepted;
use crate::store::job_status::JobView;

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
/// each operation that needs a key, so the handlers' annotations list only their own. Applied to
/// the whole document, once the router has added every path.
pub fn add_common_errors(openapi: &mut utoipa::openapi::OpenApi) {
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
            problem("Over the client's rate limit, or too many event streams open; nothing stored")
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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulk point-accrual API",
        description = "Accepts bulk point accruals all-or-nothing and reports each job's progress. Every error is application/problem+json."
    ),
    components(schemas(AccrualItemSchema, ItemErrorSchema, JobEventSchema, Accepted, JobView, Problem, crate::store::external_ids::DuplicateExternalId, crate::store::external_ids::OnDuplicate, crate::store::results::ItemResult, crate::store::results::Outcome, crate::store::results::OutcomeFilter, super::members::MemberLedger, super::members::LedgerEntry, super::members::MemberBalance, crate::store::member_ledger::PointTypeBalance)),
    modifiers(&BearerAuth),
    tags(
        (name = "accruals", description = "Submit point accruals"),
        (name = "jobs", description = "List, follow, cancel or reverse jobs"),
        (name = "members", description = "A member's ledger and balance in the client's jobs"),
        (name = "operations", description = "Liveness and this contract; no key needed (metrics and readiness are on the operations port, outside this contract)"),
    )
)]
pub struct ApiDoc;
