//! One item's result record: what became of it, and how a record is written as NDJSON or CSV.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What became of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// In the ledger.
    Written,
    /// In the dead-letter queue, with its reason.
    DeadLettered,
    /// Neither yet: not sent, on the queue, or in a listener's hands.
    Pending,
    /// Left out (`on_duplicate=skip`): the client had used its `external_id` before.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::DeadLettered => "dead_lettered",
            Self::Pending => "pending",
            Self::Skipped => "skipped",
        }
    }
}

/// Which items a results request wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeFilter {
    Written,
    DeadLettered,
    Pending,
    Skipped,
    #[default]
    All,
}

impl OutcomeFilter {
    pub(super) fn admits(self, outcome: Outcome) -> bool {
        match self {
            Self::All => true,
            Self::Written => outcome == Outcome::Written,
            Self::DeadLettered => outcome == Outcome::DeadLettered,
            Self::Pending => outcome == Outcome::Pending,
            Self::Skipped => outcome == Outcome::Skipped,
        }
    }
}

/// The two forms of the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
    /// RFC 4180: a header row, CRLF line ends, fields quoted when they must be (`text/csv`).
    Csv,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// The CSV header row.
pub const CSV_HEADER: &str = "index,accrual_id,member_id,point_type,amount,outcome,reason,written_at,\
     external_id,existing_accrual_id,existing_job_id\r\n";

/// One item's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemResult {
    /// 0-based position of the item in the request body.
    pub index: u64,
    /// The point's id (`null` for a skipped item, which has none).
    pub accrual_id: Option<Uuid>,
    pub member_id: String,
    pub point_type: String,
    pub amount: i64,
    pub outcome: Outcome,
    /// Why the point was dead-lettered (`null` otherwise).
    pub reason: Option<String>,
    /// When the point was written to the ledger (`null` unless written).
    pub written_at: Option<DateTime<Utc>>,
    /// The client's id for the item, if it gave one.
    pub external_id: Option<String>,
    /// A skipped item: the point that holds its `external_id`.
    pub existing_accrual_id: Option<Uuid>,
    /// A skipped item: the job of that point.
    pub existing_job_id: Option<Uuid>,
}

pub(super) fn write_csv_row(out: &mut String, r: &ItemResult) {
    let written_at = r
        .written_at
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default();
    // `write!` to a String cannot fail.
    let id = |id: Option<Uuid>| id.map(|i| i.to_string()).unwrap_or_default();
    let _ = write!(out, "{},{},", r.index, id(r.accrual_id));
    push_csv_field(out, &r.member_id);
    out.push(',');
    push_csv_field(out, &r.point_type);
    let _ = write!(out, ",{},{},", r.amount, r.outcome.as_str());
    push_csv_field(out, r.reason.as_deref().unwrap_or(""));
    let _ = write!(out, ",{written_at},");
    push_csv_field(out, r.external_id.as_deref().unwrap_or(""));
    let _ = write!(
        out,
        ",{},{}\r\n",
        id(r.existing_accrual_id),
        id(r.existing_job_id)
    );
}

/// A CSV field, quoted (with quotes doubled) when it holds a comma, a quote or a line break.
fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        let mut out = String::new();
        push_csv_field(&mut out, "plain");
        out.push('|');
        push_csv_field(&mut out, r#"MySQL refused the point: "x", y"#);
        assert_eq!(out, r#"plain|"MySQL refused the point: ""x"", y""#);
    }

    #[test]
    fn a_csv_row_has_every_column_of_the_header() {
        let mut out = String::new();
        write_csv_row(
            &mut out,
            &ItemResult {
                index: 7,
                accrual_id: Some(Uuid::nil()),
                member_id: "m-1".into(),
                point_type: "WELFARE".into(),
                amount: 5,
                outcome: Outcome::DeadLettered,
                reason: Some("bad, very".into()),
                written_at: None,
                external_id: Some("txn,1".into()),
                existing_accrual_id: None,
                existing_job_id: None,
            },
        );
        assert_eq!(
            out,
            "7,00000000-0000-0000-0000-000000000000,m-1,WELFARE,5,dead_lettered,\"bad, very\",,\"txn,1\",,\r\n"
        );
        // Two of the commas are inside quoted fields ("bad, very" and "txn,1").
        assert_eq!(
            out.matches(',').count() - 2,
            CSV_HEADER.matches(',').count()
        );
    }
}
