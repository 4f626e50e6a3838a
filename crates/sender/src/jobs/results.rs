//! A job's per-item results: one record per accepted item, in request order, read chunk by chunk.
//!
//! The stored chunks hold every item's message body in request order (chunk `seq`, then position
//! in the chunk), so an item's request index is the count of items in earlier chunks plus its
//! position. Each chunk's `accrual_id`s are then looked up in the ledger (written, with the time
//! of the write) and among the dead letters (with their reason), following the counting rules of
//! `accrual_core::job_outcome`: a point in the ledger is written, whatever dead letter it also
//! has; a dead letter recorded ahead (`counts_from` in the future) does not count yet.
//!
//! Memory stays flat whatever the job's size: a few chunks (2,000 items each by default) are in
//! hand at a time, and each becomes one piece of the response body.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use accrual_core::chunk;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, MySqlPool};
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
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::DeadLettered => "dead_lettered",
            Self::Pending => "pending",
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
    #[default]
    All,
}

impl OutcomeFilter {
    fn admits(self, outcome: Outcome) -> bool {
        match self {
            Self::All => true,
            Self::Written => outcome == Outcome::Written,
            Self::DeadLettered => outcome == Outcome::DeadLettered,
            Self::Pending => outcome == Outcome::Pending,
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
pub const CSV_HEADER: &str =
    "index,accrual_id,member_id,point_type,amount,outcome,reason,written_at\r\n";

/// One item's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemResult {
    /// 0-based position of the item in the request body.
    pub index: u64,
    pub accrual_id: Uuid,
    pub member_id: String,
    pub point_type: String,
    pub amount: i64,
    pub outcome: Outcome,
    /// Why the point was dead-lettered (`null` otherwise).
    pub reason: Option<String>,
    /// When the point was written to the ledger (`null` unless written).
    pub written_at: Option<DateTime<Utc>>,
}

/// A stored chunk of the job: its place and size, not its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub seq: u32,
    /// Request index of the chunk's first item.
    pub first_index: u64,
}

/// The job's chunks in request order, with the request index each starts at, and the number of
/// items they hold together.
pub async fn chunk_refs(
    pool: &MySqlPool,
    job_id: Uuid,
) -> Result<(Vec<ChunkRef>, u64), sqlx::Error> {
    let rows: Vec<(u32, u32)> =
        sqlx::query_as("SELECT seq, item_count FROM accrual_chunks WHERE job_id = ? ORDER BY seq")
            .bind(job_id)
            .fetch_all(pool)
            .await?;
    Ok(index_chunks(&rows))
}

fn index_chunks(rows: &[(u32, u32)]) -> (Vec<ChunkRef>, u64) {
    let mut first_index = 0u64;
    let chunks = rows
        .iter()
        .map(|&(seq, count)| {
            let chunk = ChunkRef { seq, first_index };
            first_index += u64::from(count);
            chunk
        })
        .collect();
    (chunks, first_index)
}

/// Why a chunk's results could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("chunk {seq} of the job is no longer stored (removed by retention while being read)")]
    ChunkGone { seq: u32 },
    #[error("chunk {seq} of the job cannot be read: {reason}")]
    Unreadable { seq: u32, reason: String },
}

/// The fields of a stored body the results need. Strings borrow unless they hold escapes.
#[derive(Deserialize)]
struct StoredPoint<'a> {
    accrual_id: Uuid,
    #[serde(borrow)]
    member_id: Cow<'a, str>,
    #[serde(borrow)]
    point_type: Cow<'a, str>,
    amount: i64,
}

/// Reads one chunk and renders the results of its items that `filter` admits, in `format`.
pub async fn render_chunk(
    pool: &MySqlPool,
    job_id: Uuid,
    chunk: ChunkRef,
    filter: OutcomeFilter,
    format: Format,
) -> Result<String, ResultsError> {
    let blob: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT items FROM accrual_chunks WHERE job_id = ? AND seq = ?")
            .bind(job_id)
            .bind(chunk.seq)
            .fetch_optional(pool)
            .await?;
    let blob = blob.ok_or(ResultsError::ChunkGone { seq: chunk.seq })?;
    let unreadable = |reason: String| ResultsError::Unreadable {
        seq: chunk.seq,
        reason,
    };
    let bodies = chunk::decode(&blob).map_err(|e| unreadable(e.to_string()))?;
    drop(blob);
    let points = bodies
        .iter()
        .map(|body| serde_json::from_str::<StoredPoint>(body))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    let ids: Vec<Uuid> = points.iter().map(|p| p.accrual_id).collect();
    // Needed for every filter: a dead letter whose point was written does not count.
    let written = written_at(pool, &ids).await?;
    let dead = if filter == OutcomeFilter::Written {
        HashMap::new()
    } else {
        dead_letters(pool, &ids).await?
    };
    let mut out = String::with_capacity(points.len() * 160);
    for (position, point) in points.iter().enumerate() {
        let written_at = written.get(&point.accrual_id).copied();
        let reason = dead.get(&point.accrual_id);
        let outcome = match (written_at, reason) {
            (Some(_), _) => Outcome::Written,
            (None, Some(_)) => Outcome::DeadLettered,
            (None, None) => Outcome::Pending,
        };
        if !filter.admits(outcome) {
            continue;
        }
        let result = ItemResult {
            index: chunk.first_index + position as u64,
            accrual_id: point.accrual_id,
            member_id: point.member_id.clone().into_owned(),
            point_type: point.point_type.clone().into_owned(),
            amount: point.amount,
            outcome,
            reason: if outcome == Outcome::DeadLettered {
                reason.cloned()
            } else {
                None
            },
            written_at: written_at.map(|t| t.and_utc()),
        };
        match format {
            Format::Ndjson => {
                // A struct of strings, numbers and instants always serialises.
                out.push_str(&serde_json::to_string(&result).unwrap_or_default());
                out.push('\n');
            }
            Format::Csv => write_csv_row(&mut out, &result),
        }
    }
    Ok(out)
}

/// When each of `ids` that is in the ledger was written.
async fn written_at(
    pool: &MySqlPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, NaiveDateTime>, sqlx::Error> {
    by_accrual_id(
        pool,
        "SELECT accrual_id, created_at FROM point_accruals WHERE accrual_id IN {ids}",
        ids,
    )
    .await
}

/// The reasons of `ids`' dead letters that count now.
async fn dead_letters(
    pool: &MySqlPool,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    by_accrual_id(
        pool,
        "SELECT accrual_id, reason FROM accrual_dead_letters WHERE accrual_id IN {ids} \
         AND (counts_from IS NULL OR counts_from <= NOW(6))",
        ids,
    )
    .await
}

/// The rows `select` gives (an `accrual_id` and a value; `{ids}` stands for the IN list of
/// `ids`), keyed by `accrual_id`.
async fn by_accrual_id<T>(
    pool: &MySqlPool,
    select: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, T>, sqlx::Error>
where
    T: for<'r> sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql> + Send + Unpin,
{
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = select.replace("{ids}", &in_list(ids.len()));
    let mut query = sqlx::query_as::<_, (Uuid, T)>(AssertSqlSafe(sql));
    for id in ids {
        query = query.bind(*id);
    }
    Ok(query.fetch_all(pool).await?.into_iter().collect())
}

/// `(?, ?, …)` with `n` placeholders.
fn in_list(n: usize) -> String {
    format!("({})", vec!["?"; n].join(","))
}

fn write_csv_row(out: &mut String, r: &ItemResult) {
    let written_at = r
        .written_at
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default();
    // `write!` to a String cannot fail.
    let _ = write!(out, "{},{},", r.index, r.accrual_id);
    push_csv_field(out, &r.member_id);
    out.push(',');
    push_csv_field(out, &r.point_type);
    let _ = write!(out, ",{},{},", r.amount, r.outcome.as_str());
    push_csv_field(out, r.reason.as_deref().unwrap_or(""));
    let _ = write!(out, ",{written_at}\r\n");
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
    fn each_chunk_starts_where_the_previous_ones_end() {
        assert_eq!(
            index_chunks(&[(0, 2000), (1, 2000), (2, 7)]),
            (
                vec![
                    ChunkRef {
                        seq: 0,
                        first_index: 0
                    },
                    ChunkRef {
                        seq: 1,
                        first_index: 2000
                    },
                    ChunkRef {
                        seq: 2,
                        first_index: 4000
                    },
                ],
                4007
            )
        );
    }

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
                accrual_id: Uuid::nil(),
                member_id: "m-1".into(),
                point_type: "WELFARE".into(),
                amount: 5,
                outcome: Outcome::DeadLettered,
                reason: Some("bad, very".into()),
                written_at: None,
            },
        );
        assert_eq!(
            out,
            "7,00000000-0000-0000-0000-000000000000,m-1,WELFARE,5,dead_lettered,\"bad, very\",\r\n"
        );
        assert_eq!(
            out.matches(',').count() - 1,
            CSV_HEADER.matches(',').count()
        );
    }

    #[test]
    fn in_lists_have_one_placeholder_per_id() {
        assert_eq!(in_list(3), "(?,?,?)");
    }
}
