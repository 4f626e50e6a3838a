//! `GET /v1/members/{member_id}/accruals` (a member's ledger rows in the client's jobs, newest
//! first, by cursor) and `GET /v1/members/{member_id}/balance` (per point type: credited, reversed,
//! expired, active, reserved). The queries are in [`crate::store::member_ledger`].
//!
//! The cursor is the last row's ledger id with a tag, as in `GET /v1/jobs`: a version byte, the
//! id (8 bytes) and the first 8 bytes of a SHA-256 over the id, the client, the member and the
//! point type filter, all in hex. A changed cursor, or one from another client, member or filter,
//! is a 400.

use accrual_core::domain::{MemberId, PointType};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::cursor::{self, percent_encode};
use super::error::ApiError;
use crate::http::state::AppState;
use crate::store::member_ledger::{self, LedgerRow, PointTypeBalance};

/// Rows on a page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 50;
/// Most rows on one page.
pub const MAX_LIMIT: u32 = 500;

/// The query parameters of the ledger; any other is refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerParams {
    point_type: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/members/{member_id}/balance` takes no query parameter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceParams {}

/// One ledger row.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub accrual_id: Uuid,
    pub job_id: Uuid,
    pub point_type: String,
    /// Positive for a credit, negative for a reversal row.
    pub amount: i64,
    pub reason: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The client's own id of the item, if it gave one.
    pub external_id: Option<String>,
    /// For a reversal row: the `accrual_id` it reverses.
    pub reverses: Option<Uuid>,
    /// When the sender accepted the point.
    pub accepted_at: DateTime<Utc>,
    /// When the listener wrote it to the ledger.
    pub written_at: DateTime<Utc>,
}

impl From<LedgerRow> for LedgerEntry {
    fn from(r: LedgerRow) -> Self {
        Self {
            accrual_id: r.accrual_id,
            job_id: r.job_id,
            point_type: r.point_type,
            amount: r.amount,
            reason: r.reason,
            expires_at: r.expires_at,
            external_id: r.external_id,
            reverses: r.reverses,
            accepted_at: r.accepted_at,
            written_at: r.written_at,
        }
    }
}

/// A page of a member's ledger.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberLedger {
    pub member_id: String,
    /// The member's rows in the client's jobs, most recently written first.
    pub accruals: Vec<LedgerEntry>,
    /// Pass as `cursor` (with the same `point_type`) for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// The next page's path and query; `null` on the last page.
    pub next: Option<String>,
}

/// A member's balance in the client's jobs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberBalance {
    pub member_id: String,
    /// The instant `expired` was computed at.
    pub as_of: DateTime<Utc>,
    /// One entry per point type the member has in the ledger or in a reserved job, sorted; empty
    /// for a member with nothing.
    pub point_types: Vec<PointTypeBalance>,
}

fn member_from(path: Result<Path<String>, PathRejection>) -> Result<MemberId, ApiError> {
    let Path(member) =
        path.map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))?;
    MemberId::try_from(member).map_err(|e| ApiError::InvalidParameter(format!("member_id {e}")))
}

fn limit(value: &str) -> Result<u32, ApiError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::InvalidParameter(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
        })
}

/// The name a ledger cursor is sealed with.
const LIST: &str = "accrual member ledger cursor";

/// A missing filter is "-", which no point type is.
fn scope(client_id: &str, member_id: &str, point_type: Option<&str>) -> Vec<u8> {
    cursor::scope_of(&[client_id, member_id, point_type.unwrap_or("-")])
}

fn encode_cursor(id: u64, client_id: &str, member_id: &str, point_type: Option<&str>) -> String {
    cursor::seal(
        LIST,
        &id.to_be_bytes(),
        &scope(client_id, member_id, point_type),
    )
}

fn decode_cursor(
    cursor: &str,
    client_id: &str,
    member_id: &str,
    point_type: Option<&str>,
) -> Result<u64, ApiError> {
    let refused = || {
        ApiError::InvalidParameter(
            "cursor is not one this ledger gave for this member and point_type; start again without it"
                .into(),
        )
    };
    let position = cursor::open(LIST, cursor, 8, &scope(client_id, member_id, point_type))
        .ok_or_else(refused)?;
    Ok(u64::from_be_bytes(
        position.try_into().map_err(|_| refused())?,
    ))
}

/// A checked ledger request.
#[derive(Debug, PartialEq, Eq)]
struct LedgerQuery {
    point_type: Option<PointType>,
    limit: u32,
    before_id: Option<u64>,
}

impl LedgerQuery {
    fn parse(params: LedgerParams, client_id: &str, member: &MemberId) -> Result<Self, ApiError> {
        let point_type = params
            .point_type
            .map(|t| {
                PointType::try_from(t)
                    .map_err(|e| ApiError::InvalidParameter(format!("point_type {e}")))
            })
            .transpose()?;
        let limit = params.limit.as_deref().map_or(Ok(DEFAULT_LIMIT), limit)?;
        let before_id = params
            .cursor
            .as_deref()
            .map(|c| {
                decode_cursor(
                    c,
                    client_id,
                    member.as_str(),
                    point_type.as_ref().map(PointType::as_str),
                )
            })
            .transpose()?;
        Ok(Self {
            point_type,
            limit,
            before_id,
        })
    }

    fn next_url(&self, member: &MemberId, cursor: &str) -> String {
        let mut query = Vec::new();
        if let Some(t) = &self.point_type {
            query.push(format!("point_type={}", percent_encode(t.as_str())));
        }
        query.push(format!("limit={}", self.limit));
        query.push(format!("cursor={cursor}"));
        format!(
            "/v1/members/{}/accruals?{}",
            percent_encode(member.as_str()),
            query.join("&")
        )
    }
}

#[utoipa::path(
    get,
    path = "/v1/members/{member_id}/accruals",
    tag = "members",
    params(
        ("member_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$", description = "The member, as in the accrual items"),
        ("point_type" = Option<String>, Query, min_length = 1, max_length = 32, pattern = "^[A-Z0-9_]{1,32}$", description = "Only rows of this point type"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Rows per page, 1-500; 50 by default"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page, with the same point_type"),
    ),
    responses(
        (status = 200, description = "A page of the member's ledger rows in this client's jobs, most recently written first (an unknown member: an empty page)", body = MemberLedger),
    ),
    security(("bearer" = []))
)]
pub async fn list_member_accruals(
    State(state): State<AppState>,
    headers: HeaderMap,
    member: Result<Path<String>, PathRejection>,
    params: Result<Query<LedgerParams>, QueryRejection>,
) -> Result<Json<MemberLedger>, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let member = member_from(member)?;
    let Query(params) =
        params.map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))?;
    let query = LedgerQuery::parse(params, &client_id, &member)?;
    let point_type = query.point_type.as_ref().map(PointType::as_str);
    // One row more than the page tells whether there is a next page.
    let by = state.client_index.by_client(&state.pool).await;
    let mut rows = member_ledger::page(
        &state.pool,
        by,
        &client_id,
        member.as_str(),
        point_type,
        query.before_id,
        query.limit + 1,
    )
    .await
    .map_err(ApiError::database)?;
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    let next_cursor = rows
        .last()
        .filter(|_| more)
        .map(|last| encode_cursor(last.id, &client_id, member.as_str(), point_type));
    Ok(Json(MemberLedger {
        member_id: member.as_str().to_owned(),
        accruals: rows.into_iter().map(LedgerEntry::from).collect(),
        next: next_cursor.as_deref().map(|c| query.next_url(&member, c)),
        next_cursor,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/members/{member_id}/balance",
    tag = "members",
    params(
        ("member_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$", description = "The member, as in the accrual items"),
    ),
    responses(
        (status = 200, description = "The member's balance in this client's jobs, per point type (an unknown member: an empty list)", body = MemberBalance),
    ),
    security(("bearer" = []))
)]
pub async fn get_member_balance(
    State(state): State<AppState>,
    headers: HeaderMap,
    member: Result<Path<String>, PathRejection>,
    params: Result<Query<BalanceParams>, QueryRejection>,
) -> Result<Json<MemberBalance>, ApiError> {
    let client_id = super::access::authorize(&state, &headers).await?;
    let member = member_from(member)?;
    params.map_err(|rejection| ApiError::InvalidParameter(rejection.body_text()))?;
    // Whole microseconds: what `expires_at` (DATETIME(6)) is compared with.
    let as_of = Utc::now().trunc_subsecs(6);
    let by = state.client_index.by_client(&state.pool).await;
    let point_types = member_ledger::balance(&state.pool, by, &client_id, member.as_str(), as_of)
        .await
        .map_err(ApiError::database)?;
    Ok(Json(MemberBalance {
        member_id: member.as_str().to_owned(),
        as_of,
        point_types,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(m: &str) -> MemberId {
        MemberId::try_from(m).expect("member")
    }

    fn params(point_type: Option<&str>, limit: Option<&str>, cursor: Option<&str>) -> LedgerParams {
        LedgerParams {
            point_type: point_type.map(str::to_owned),
            limit: limit.map(str::to_owned),
            cursor: cursor.map(str::to_owned),
        }
    }

    #[test]
    fn a_cursor_reads_back_for_its_client_member_and_point_type_only() {
        let cursor = encode_cursor(12_345, "a", "m1", Some("P"));
        assert_eq!(
            decode_cursor(&cursor, "a", "m1", Some("P")).ok(),
            Some(12_345)
        );
        assert!(decode_cursor(&cursor, "b", "m1", Some("P")).is_err());
        assert!(decode_cursor(&cursor, "a", "m2", Some("P")).is_err());
        assert!(decode_cursor(&cursor, "a", "m1", None).is_err());
        assert!(decode_cursor(&cursor, "a", "m1", Some("Q")).is_err());
        for i in 0..cursor.len() {
            let mut bytes = cursor.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(bytes).expect("ascii");
            assert!(
                decode_cursor(&changed, "a", "m1", Some("P")).is_err(),
                "{i}"
            );
        }
        for bad in [
            "",
            "zz",
            &cursor[..cursor.len() - 2],
            &cursor.to_uppercase(),
        ] {
            assert!(decode_cursor(bad, "a", "m1", Some("P")).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limit_is_1_to_500_and_50_by_default_and_point_type_is_checked() {
        let m = member("m1");
        let parsed =
            |l: &str| LedgerQuery::parse(params(None, Some(l), None), "a", &m).map(|q| q.limit);
        assert_eq!(parsed("1").ok(), Some(1));
        assert_eq!(parsed("500").ok(), Some(500));
        for bad in ["0", "501", "-1", "x", ""] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
        let default = LedgerQuery::parse(params(None, None, None), "a", &m).map(|q| q.limit);
        assert_eq!(default.ok(), Some(DEFAULT_LIMIT));
        for bad in ["", "welfare", "A-B", &"A".repeat(33)] {
            assert!(
                LedgerQuery::parse(params(Some(bad), None, None), "a", &m).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_next_url_keeps_the_point_type_and_limit() {
        let m = member("m.1");
        let q =
            LedgerQuery::parse(params(Some("WELFARE"), Some("7"), None), "a", &m).expect("valid");
        assert_eq!(
            q.next_url(&m, "00ff"),
            "/v1/members/m.1/accruals?point_type=WELFARE&limit=7&cursor=00ff"
        );
    }
}
