//! `GET /v1/jobs`: the query parameters, checked into a [`JobFilter`], and the opaque cursor.
//!
//! The cursor is the position of a page's last job (its `created_at` in microseconds and its
//! `job_id`) with a tag: the first 8 bytes of a SHA-256 over the position, the client and the
//! filters, all in hex. A cursor that was changed, or that belongs to another client or to a
//! query with other filters, fails the tag and gets a 400 rather than a page of the wrong list.
//! (The tag is not a secret: a client that forges one still sees only its own jobs.)

use accrual_core::domain::{Label, check_datetime6};
use accrual_core::job_status::JobStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::cursor::{self, percent_encode};
use crate::http::error::ApiError;
use crate::store::job_status::JobView;
use crate::store::jobs::{JobFilter, JobRow, ListPosition};

/// Jobs on a page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 50;
/// Most jobs on one page: each non-final job costs a Redis read for its live counters.
pub const MAX_LIMIT: u32 = 500;

/// Bytes of a cursor: a version, the microseconds, the job id and the tag.
/// A position: the job's `created_at` in microseconds, then its id.
const POSITION_BYTES: usize = 8 + 16;

/// The query parameters `GET /v1/jobs` knows; any other is refused (a typo such as `state=`
/// would otherwise list every job as if unfiltered). All are read as text and checked here, so
/// each refusal names the parameter and its rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    label: Option<String>,
    created_from: Option<String>,
    created_to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /v1/jobs`: a page of the client's jobs, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// Each job as `GET /v1/jobs/{job_id}` shows it.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` (with the same filters) for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// The next page's path and query (the same filters and limit, and `next_cursor`); `null` on
    /// the last page.
    pub next: Option<String>,
}

/// A checked list request.
#[derive(Debug)]
pub struct ListQuery {
    pub filter: JobFilter,
    pub limit: u32,
    pub after: Option<ListPosition>,
}

impl ListQuery {
    /// Checks every parameter; a bad one is a 400 `invalid-parameter` naming it.
    pub fn parse(params: ListParams, client_id: &str) -> Result<Self, ApiError> {
        let status = params.status.as_deref().map(status).transpose()?;
        let label = params
            .label
            .map(|l| {
                Label::try_from(l).map_err(|e| ApiError::InvalidParameter(format!("label {e}")))
            })
            .transpose()?;
        let filter = JobFilter {
            status,
            label: label.map(|l| l.as_str().to_owned()),
            created_from: params
                .created_from
                .as_deref()
                .map(|v| instant("created_from", v))
                .transpose()?,
            created_to: params
                .created_to
                .as_deref()
                .map(|v| instant("created_to", v))
                .transpose()?,
        };
        let limit = params.limit.as_deref().map_or(Ok(DEFAULT_LIMIT), limit)?;
        let after = params
            .cursor
            .as_deref()
            .map(|c| decode_cursor(c, client_id, &filter))
            .transpose()?;
        Ok(Self {
            filter,
            limit,
            after,
        })
    }

    /// The cursor of the page that starts after `last`.
    pub fn cursor_after(&self, last: &JobRow, client_id: &str) -> String {
        let position = ListPosition {
            created_at: last.created_at,
            job_id: last.job_id,
        };
        encode_cursor(&position, client_id, &self.filter)
    }

    /// `/v1/jobs?…`: this query with `cursor`.
    pub fn next_url(&self, cursor: &str) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(status) = self.filter.status {
            pairs.push(("status", status.as_str().to_owned()));
        }
        if let Some(label) = &self.filter.label {
            pairs.push(("label", label.clone()));
        }
        if let Some(from) = self.filter.created_from {
            pairs.push(("created_from", rfc3339(from)));
        }
        if let Some(to) = self.filter.created_to {
            pairs.push(("created_to", rfc3339(to)));
        }
        pairs.push(("limit", self.limit.to_string()));
        pairs.push(("cursor", cursor.to_owned()));
        let query: Vec<String> = pairs
            .iter()
            .map(|(name, value)| format!("{name}={}", percent_encode(value)))
            .collect();
        format!("/v1/jobs?{}", query.join("&"))
    }
}

fn status(value: &str) -> Result<JobStatus, ApiError> {
    value.parse().map_err(|_| {
        let all: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::InvalidParameter(format!("status must be one of {}", all.join(", ")))
    })
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

/// An RFC 3339 instant that `DATETIME(6)` can be compared with exactly (no sub-microsecond part
/// that would be cut off, no year outside 1000–9999).
fn instant(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let at = DateTime::parse_from_rfc3339(value)
        .map_err(|_| ApiError::InvalidParameter(format!("{name} must be an RFC 3339 instant")))?
        .with_timezone(&Utc);
    check_datetime6(at).map_err(|e| ApiError::InvalidParameter(format!("{name} {e}")))?;
    Ok(at)
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The name a job list cursor is sealed with.
const LIST: &str = "accrual job list cursor";

/// The client and the filters a cursor is bound to: an instant as its microseconds, a missing one
/// as "-".
fn scope(client_id: &str, filter: &JobFilter) -> Vec<u8> {
    let mut scope = cursor::scope_of(&[
        client_id,
        filter.status.map_or("", JobStatus::as_str),
        filter.label.as_deref().unwrap_or(""),
    ]);
    for at in [filter.created_from, filter.created_to] {
        match at {
            Some(at) => scope.extend_from_slice(&at.timestamp_micros().to_be_bytes()),
            None => scope.extend_from_slice(b"-"),
        }
    }
    scope
}

fn encode_cursor(position: &ListPosition, client_id: &str, filter: &JobFilter) -> String {
    let mut bytes = Vec::with_capacity(POSITION_BYTES);
    bytes.extend_from_slice(&position.created_at.timestamp_micros().to_be_bytes());
    bytes.extend_from_slice(position.job_id.as_bytes());
    cursor::seal(LIST, &bytes, &scope(client_id, filter))
}

fn decode_cursor(
    cursor: &str,
    client_id: &str,
    filter: &JobFilter,
) -> Result<ListPosition, ApiError> {
    let refused = || {
        ApiError::InvalidParameter(
            "cursor is not one this list gave for these filters; start again without it".into(),
        )
    };
    let position = cursor::open(LIST, cursor, POSITION_BYTES, &scope(client_id, filter))
        .ok_or_else(refused)?;
    let micros = i64::from_be_bytes(position[..8].try_into().map_err(|_| refused())?);
    let job_id = Uuid::from_slice(&position[8..]).map_err(|_| refused())?;
    let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(refused)?;
    // The tag is not a secret: a forged cursor may carry an instant DATETIME cannot hold.
    check_datetime6(created_at).map_err(|_| refused())?;
    Ok(ListPosition { created_at, job_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> ListParams {
        let mut p = ListParams::default();
        for (name, value) in pairs {
            let value = Some((*value).to_owned());
            match *name {
                "status" => p.status = value,
                "label" => p.label = value,
                "created_from" => p.created_from = value,
                "created_to" => p.created_to = value,
                "limit" => p.limit = value,
                "cursor" => p.cursor = value,
                other => panic!("{other}"),
            }
        }
        p
    }

    fn position() -> ListPosition {
        ListPosition {
            created_at: DateTime::from_timestamp_micros(1_780_000_000_123_456).expect("instant"),
            job_id: Uuid::now_v7(),
        }
    }

    #[test]
    fn a_cursor_reads_back_as_its_position_for_the_same_client_and_filters() {
        let filter = ListQuery::parse(params(&[("status", "reserved"), ("label", "x")]), "a")
            .expect("valid")
            .filter;
        let at = position();
        let cursor = encode_cursor(&at, "a", &filter);
        assert_eq!(decode_cursor(&cursor, "a", &filter).ok(), Some(at));
    }

    #[test]
    fn a_changed_or_foreign_cursor_is_refused() {
        let filter = JobFilter::default();
        let cursor = encode_cursor(&position(), "a", &filter);
        // Every single-character change.
        for i in 0..cursor.len() {
            let mut bytes = cursor.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(bytes).expect("ascii");
            assert!(decode_cursor(&changed, "a", &filter).is_err(), "{i}");
        }
        assert!(decode_cursor(&cursor, "b", &filter).is_err());
        let other = JobFilter {
            status: Some(JobStatus::Cancelled),
            ..JobFilter::default()
        };
        assert!(decode_cursor(&cursor, "a", &other).is_err());
        let upper = cursor.to_uppercase();
        let plus = format!("+{}", &cursor[1..]);
        for bad in [
            "",
            "zz",
            "abc",
            &cursor[..cursor.len() - 2],
            "é",
            &upper,
            &plus,
        ] {
            assert!(decode_cursor(bad, "a", &filter).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_forged_cursor_with_an_instant_datetime_cannot_hold_is_refused() {
        let filter = JobFilter::default();
        // Year 20000: a well-formed, correctly tagged cursor (the tag is no secret).
        let position = ListPosition {
            created_at: DateTime::from_timestamp(568_971_820_800, 0).expect("an instant"),
            job_id: Uuid::nil(),
        };
        let cursor = encode_cursor(&position, "a", &filter);
        assert!(matches!(
            decode_cursor(&cursor, "a", &filter),
            Err(ApiError::InvalidParameter(_))
        ));
    }

    #[test]
    fn limit_is_1_to_500_and_50_by_default() {
        let parsed = |l: &str| ListQuery::parse(params(&[("limit", l)]), "a").map(|q| q.limit);
        assert_eq!(parsed("1").ok(), Some(1));
        assert_eq!(parsed("500").ok(), Some(500));
        for bad in ["0", "501", "-1", "ten", "", "1.0"] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
        let default = ListQuery::parse(ListParams::default(), "a").map(|q| q.limit);
        assert_eq!(default.ok(), Some(DEFAULT_LIMIT));
    }

    #[test]
    fn status_label_and_instants_are_checked() {
        for bad in [
            ("status", "done"),
            ("status", "Reserved"),
            ("label", ""),
            ("label", "two words"),
            ("created_from", "yesterday"),
            ("created_to", "2026-01-01T00:00:00.0000001Z"),
            ("created_to", "0999-01-01T00:00:00Z"),
        ] {
            assert!(ListQuery::parse(params(&[bad]), "a").is_err(), "{bad:?}");
        }
        let q = ListQuery::parse(
            params(&[
                ("status", "completed_with_errors"),
                ("created_from", "2026-01-01T09:00:00+09:00"),
            ]),
            "a",
        )
        .expect("valid");
        assert_eq!(q.filter.status, Some(JobStatus::CompletedWithErrors));
        assert_eq!(
            q.filter.created_from.map(rfc3339).as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn the_next_url_repeats_the_filters_percent_encoded() {
        let q = ListQuery::parse(
            params(&[
                ("label", "春/a&b=c+d"),
                ("created_to", "2026-01-01T00:00:00.5+01:00"),
                ("limit", "7"),
            ]),
            "a",
        )
        .expect("valid");
        assert_eq!(
            q.next_url("00ff"),
            "/v1/jobs?label=%E6%98%A5%2Fa%26b%3Dc%2Bd&created_to=2025-12-31T23%3A00%3A00.500Z&limit=7&cursor=00ff"
        );
    }
}
