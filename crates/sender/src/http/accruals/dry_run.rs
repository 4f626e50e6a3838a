//! `POST /v1/accruals?dry_run=true`: the request is checked exactly as a real one (the same 400,
//! 413, 415 and 422), and the answer says what it would do. Nothing is stored (no member, no job,
//! no idempotency record), nothing is queued, and no points are taken from the rate limit; the
//! request itself is counted like any other.

use std::collections::{BTreeMap, HashMap, HashSet};

use accrual_core::accrual::Accrual;
use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Accepted, blocking, parse_and_validate};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::store::external_ids::{self, OnDuplicate};

/// What a dry run answers: what the request would do.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DryRun {
    /// Always `true`: nothing was stored, queued or charged against the points allowance.
    pub dry_run: bool,
    /// Points the request would accept (the number of items, less the skipped ones).
    pub points: u64,
    /// Items `on_duplicate=skip` would leave out: their `external_id` was used before. (With
    /// `reject`, such a request gets the same 422 as a real one.)
    pub skipped: u64,
    /// Distinct members among the items.
    pub members: u64,
    /// Distinct members this client has not credited yet (no row of its jobs in the ledger),
    /// whatever other clients have credited.
    pub new_members: u64,
    /// The total amount per point type.
    pub amounts: BTreeMap<String, u64>,
    /// When the job would be released (`reserve_at`), if it is a reserved accrual.
    pub reserve_at: Option<DateTime<Utc>>,
    /// The job's label, as it would be stored.
    pub label: Option<String>,
}

/// The `200` of `POST /v1/accruals`: a replayed job, or a dry run's answer.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PostOk {
    Accepted(Accepted),
    DryRun(DryRun),
}

/// The items' totals, computed off the async workers.
struct Summary {
    points: u64,
    /// Distinct, sorted (look-ups then walk the unique index in order).
    members: Vec<String>,
    amounts: BTreeMap<String, u64>,
}

fn summarize(accruals: &[Accrual]) -> Summary {
    let distinct: HashSet<&str> = accruals.iter().map(|a| a.member_id.as_str()).collect();
    let mut members: Vec<String> = distinct.into_iter().map(str::to_owned).collect();
    members.sort_unstable();
    let mut amounts: HashMap<&str, u64> = HashMap::new();
    for a in accruals {
        // Amounts are 1..=1e9 and there are at most 500,000 items: no overflow.
        *amounts.entry(a.point_type.as_str()).or_default() += a.amount.get().unsigned_abs();
    }
    Summary {
        points: accruals.len() as u64,
        members,
        amounts: amounts
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    }
}

/// Validates the body as a real request would, and answers what it would do.
pub(super) async fn answer(
    state: &AppState,
    client_id: &str,
    (bytes, budget): (Bytes, super::body::HeldBytes),
    reserve_at: Option<DateTime<Utc>>,
    label: Option<String>,
    on_duplicate: OnDuplicate,
) -> Result<DryRun, ApiError> {
    let (summary, accruals) = blocking(move || {
        let parsed = parse_and_validate(&bytes, reserve_at);
        // The body's bytes go back to the budget with the body.
        drop((bytes, budget));
        parsed.map(|accruals| {
            let summary = summarize(&accruals);
            // Only a request with external ids needs its items again, to look them up.
            let with_ids = accruals.iter().any(|a| a.external_id.is_some());
            (summary, with_ids.then_some(accruals))
        })
    })
    .await?
    .inspect_err(|e| {
        if matches!(e, ApiError::Validation { .. } | ApiError::EmptyRequest) {
            state.metrics.validation_failures.inc();
        }
    })?;
    let mut summary = summary;
    let mut skipped = 0;
    if let Some(accruals) = accruals {
        let stored = external_ids::lookup(&state.pool, client_id, &accruals)
            .await
            .map_err(ApiError::database)?;
        let repeats = external_ids::repeats(&accruals, &stored);
        if !repeats.is_empty() && on_duplicate == OnDuplicate::Reject {
            return Err(ApiError::DuplicateExternalIds {
                duplicates: external_ids::describe(&accruals, &repeats),
            });
        }
        if !repeats.is_empty() {
            let left_out: HashSet<usize> = repeats.iter().map(|(i, _)| *i).collect();
            let kept: Vec<Accrual> = accruals
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !left_out.contains(i))
                .map(|(_, a)| a)
                .collect();
            skipped = left_out.len() as u64;
            summary = summarize(&kept);
        }
    }
    let by = state.client_index.by_client(&state.pool).await;
    let credited =
        crate::store::members::count_credited(&state.pool, by, client_id, &summary.members)
            .await
            .map_err(ApiError::database)?;
    let members = summary.members.len() as u64;
    let new_members = members.saturating_sub(credited);
    tracing::info!(%client_id, points = summary.points, members, new_members, "Dry run");
    Ok(DryRun {
        dry_run: true,
        points: summary.points,
        skipped,
        members,
        new_members,
        amounts: summary.amounts,
        reserve_at,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_points_distinct_members_and_amounts_per_point_type() {
        let body = br#"[
            {"member_id":"b","point_type":"WELFARE","amount":10},
            {"member_id":"a","point_type":"WELFARE","amount":5},
            {"member_id":"b","point_type":"BONUS","amount":1000000000},
            {"member_id":"b","point_type":"BONUS","amount":1000000000}
        ]"#;
        let accruals = parse_and_validate(body, None).expect("valid");
        let summary = summarize(&accruals);
        assert_eq!(summary.points, 4);
        assert_eq!(summary.members, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            summary.amounts,
            BTreeMap::from([("BONUS".into(), 2_000_000_000), ("WELFARE".into(), 15)])
        );
    }
}
