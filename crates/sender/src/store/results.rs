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

use accrual_core::chunk;
use chrono::NaiveDateTime;
use serde::Deserialize;
use sqlx::{AssertSqlSafe, MySqlPool};
use uuid::Uuid;

use record::write_csv_row;
pub use record::{CSV_HEADER, Format, ItemResult, Outcome, OutcomeFilter};

mod record;

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
    #[serde(default, borrow)]
    external_id: Option<Cow<'a, str>>,
}

/// The request indexes of a job's skipped items (`on_duplicate=skip`), in order: the gaps
/// between its stored items. Empty, and free, for a job without any.
#[derive(Debug, Clone, Default)]
pub struct Skips {
    indexes: std::sync::Arc<Vec<u32>>,
}

impl Skips {
    pub async fn load(pool: &MySqlPool, job_id: Uuid, skipped: u32) -> Result<Self, sqlx::Error> {
        if skipped == 0 {
            return Ok(Self::default());
        }
        let indexes: Vec<u32> = sqlx::query_scalar(
            "SELECT item_index FROM accrual_job_skips WHERE job_id = ? ORDER BY item_index",
        )
        .bind(job_id)
        .fetch_all(pool)
        .await?;
        Ok(Self::from_indexes(indexes))
    }

    fn from_indexes(indexes: Vec<u32>) -> Self {
        Self {
            indexes: std::sync::Arc::new(indexes),
        }
    }

    fn contains(&self, index: u64) -> bool {
        u32::try_from(index).is_ok_and(|i| self.indexes.binary_search(&i).is_ok())
    }

    /// How many skipped items come before request index `index`.
    fn before(&self, index: u64) -> u64 {
        self.indexes.partition_point(|&s| u64::from(s) < index) as u64
    }

    /// The request index of the item stored at position `stored` (counting stored items only):
    /// the smallest index with `stored` stored items before it that is not itself skipped.
    fn request_index(&self, stored: u64) -> u64 {
        let mut index = stored;
        loop {
            let next = stored + self.before(index + 1);
            if next == index {
                return index;
            }
            index = next;
        }
    }
}

/// A stored chunk's part of the results: its items, and the skipped items from just after the
/// previous chunk's last item up to its own last (the last chunk takes every skipped item after).
/// A job with no stored chunk (every item skipped) has one part of skipped items only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub chunk: Option<ChunkRef>,
    pub last: bool,
}

/// The parts a job's results are read in, in order.
pub fn pieces(chunks: Vec<ChunkRef>) -> Vec<Piece> {
    if chunks.is_empty() {
        return vec![Piece {
            chunk: None,
            last: true,
        }];
    }
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Piece {
            chunk: Some(chunk),
            last: i + 1 == n,
        })
        .collect()
}

type SkipRow = (u32, String, String, String, i64, Option<Uuid>, Option<Uuid>);

/// Reads one piece and renders the results of its items that `filter` admits, in `format`.
pub async fn render_piece(
    pool: &MySqlPool,
    job_id: Uuid,
    piece: Piece,
    skips: &Skips,
    filter: OutcomeFilter,
    format: Format,
) -> Result<String, ResultsError> {
    let points = match piece.chunk {
        Some(chunk) => read_chunk(pool, job_id, chunk).await?,
        None => Vec::new(),
    };
    let first_stored = piece.chunk.map_or(0, |c| c.first_index);
    // The request indexes this piece covers: [start, end).
    let start = match first_stored {
        0 => 0,
        n => skips.request_index(n - 1) + 1,
    };
    let end = match points.len() as u64 {
        _ if piece.last => u64::MAX,
        0 => start,
        n => skips.request_index(first_stored + n - 1) + 1,
    };
    let skipped = if skips.before(end) > skips.before(start) && filter.admits(Outcome::Skipped) {
        skipped_rows(pool, job_id, start, end).await?
    } else {
        Vec::new()
    };
    let ids: Vec<Uuid> = points.iter().map(|p| p.accrual_id).collect();
    // Needed for every filter: a dead letter whose point was written does not count.
    let written = written_at(pool, &ids).await?;
    let dead = if matches!(filter, OutcomeFilter::Written | OutcomeFilter::Skipped) {
        HashMap::new()
    } else {
        dead_letters(pool, &ids).await?
    };
    let mut out = String::with_capacity((points.len() + skipped.len()) * 160);
    let mut emit = |result: &ItemResult| match format {
        Format::Ndjson => {
            // A struct of strings, numbers and instants always serialises.
            out.push_str(&serde_json::to_string(result).unwrap_or_default());
            out.push('\n');
        }
        Format::Csv => write_csv_row(&mut out, result),
    };
    let mut skipped = skipped.into_iter().peekable();
    let mut index = start;
    for point in points {
        // Step over the gaps the skipped items leave, showing them where they are.
        while skips.contains(index) {
            index += 1;
        }
        while let Some(row) = skipped.next_if(|row| u64::from(row.0) < index) {
            emit(&skipped_result(row));
        }
        let written_at = written.get(&point.accrual_id).copied();
        let reason = dead.get(&point.accrual_id);
        let outcome = match (written_at, reason) {
            (Some(_), _) => Outcome::Written,
            (None, Some(_)) => Outcome::DeadLettered,
            (None, None) => Outcome::Pending,
        };
        if filter.admits(outcome) {
            emit(&ItemResult {
                index,
                accrual_id: Some(point.accrual_id),
                member_id: point.member_id,
                point_type: point.point_type,
                amount: point.amount,
                outcome,
                reason: if outcome == Outcome::DeadLettered {
                    reason.cloned()
                } else {
                    None
                },
                written_at: written_at.map(|t| t.and_utc()),
                external_id: point.external_id,
                existing_accrual_id: None,
                existing_job_id: None,
            });
        }
        index += 1;
    }
    for row in skipped {
        emit(&skipped_result(row));
    }
    Ok(out)
}

fn skipped_result(row: SkipRow) -> ItemResult {
    let (index, external_id, member_id, point_type, amount, existing_accrual_id, existing_job_id) =
        row;
    ItemResult {
        index: u64::from(index),
        accrual_id: None,
        member_id,
        point_type,
        amount,
        outcome: Outcome::Skipped,
        reason: Some("external_id used before".into()),
        written_at: None,
        external_id: Some(external_id),
        existing_accrual_id,
        existing_job_id,
    }
}

async fn skipped_rows(
    pool: &MySqlPool,
    job_id: Uuid,
    start: u64,
    end: u64,
) -> Result<Vec<SkipRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT item_index, external_id, member_id, point_type, amount, existing_accrual_id, \
         existing_job_id FROM accrual_job_skips \
         WHERE job_id = ? AND item_index >= ? AND item_index < ? ORDER BY item_index",
    )
    .bind(job_id)
    .bind(start)
    .bind(end.min(u64::from(u32::MAX) + 1))
    .fetch_all(pool)
    .await
}

/// The stored points of one chunk.
async fn read_chunk(
    pool: &MySqlPool,
    job_id: Uuid,
    chunk: ChunkRef,
) -> Result<Vec<OwnedPoint>, ResultsError> {
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
    bodies
        .iter()
        .map(|body| serde_json::from_str::<StoredPoint>(body).map(OwnedPoint::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(e.to_string()))
}

/// A stored point's fields the results show.
struct OwnedPoint {
    accrual_id: Uuid,
    member_id: String,
    point_type: String,
    amount: i64,
    external_id: Option<String>,
}

impl From<StoredPoint<'_>> for OwnedPoint {
    fn from(p: StoredPoint<'_>) -> Self {
        Self {
            accrual_id: p.accrual_id,
            member_id: p.member_id.into_owned(),
            point_type: p.point_type.into_owned(),
            amount: p.amount,
            external_id: p.external_id.map(Cow::into_owned),
        }
    }
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
    fn stored_items_take_the_request_indexes_the_skipped_items_leave() {
        let skips = Skips::from_indexes(vec![0, 1, 4, 7, 8]);
        // Request: S S 0 1 S 2 3 S S 4 5 …
        let indexes: Vec<u64> = (0..6).map(|s| skips.request_index(s)).collect();
        assert_eq!(indexes, vec![2, 3, 5, 6, 9, 10]);
        let none = Skips::default();
        assert_eq!(none.request_index(41), 41);
        assert!(skips.contains(7) && !skips.contains(9));
    }

    #[test]
    fn in_lists_have_one_placeholder_per_id() {
        assert_eq!(in_list(3), "(?,?,?)");
    }
}
