//! Client ids across jobs: an item's `external_id` is unique per client, across all its jobs.
//!
//! Before a job is stored, the request's ids are looked up (read-only, many at a time) and every
//! repeat is found: an id the client used in an earlier job, or one given twice in the request.
//! An id counts as used while its point is written or still pending: one whose point was
//! dead-lettered (and never written) may be claimed again, and its old dead letter is then
//! superseded (the listener refuses it, `accrualctl dlq redrive` drops it).
//! `on_duplicate=reject` refuses the request listing them; `skip` leaves those items out. The job's
//! transaction then claims the ids in `accrual_external_ids`, whose primary key is what keeps two
//! concurrent requests from both taking one id: the loser's transaction fails, and the request
//! looks again (and finds the winner's ids).

use std::collections::HashMap;

use accrual_core::accrual::Accrual;
use accrual_core::db::{ER_DUP_ENTRY, error_number, placeholders, statement_sizes};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, MySqlPool};
use uuid::Uuid;

/// Ids per look-up statement (powers of two up to this, so few statement shapes are prepared).
const LOOKUP_ROWS: usize = 4_096;
/// Look-up statements in flight at once for one request.
const LOOKUPS_AT_ONCE: usize = 4;

/// What to do with an item whose `external_id` the client used before (`?on_duplicate=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDuplicate {
    /// Refuse the whole request with 422, listing every repeated id; nothing is stored.
    #[default]
    Reject,
    /// Leave those items out and accept the rest.
    Skip,
}

impl OnDuplicate {
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("reject") => Some(Self::Reject),
            Some("skip") => Some(Self::Skip),
            Some(_) => None,
        }
    }
}

/// Where an id is held already: a point of an earlier job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub accrual_id: Uuid,
    pub job_id: Uuid,
}

/// An item whose `external_id` was used before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DuplicateExternalId {
    /// Position of the item in the request array, from 0.
    pub index: usize,
    pub external_id: String,
    /// The point that holds the id (`null` when the id's first use is earlier in this request).
    pub existing_accrual_id: Option<Uuid>,
    /// The job of that point (`null` when the id's first use is earlier in this request).
    pub existing_job_id: Option<Uuid>,
    /// The index of the id's first use in this request, when that is where it was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_index: Option<usize>,
}

/// Where each repeated id of a request was used first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    /// By a point of an earlier job.
    Stored(Holder),
    /// By an earlier item of this request.
    InRequest(usize),
}

/// Every item of the request whose `external_id` was used before, in request order.
pub fn repeats(accruals: &[Accrual], stored: &HashMap<String, Holder>) -> Vec<(usize, FirstUse)> {
    let mut first_in_request: HashMap<&str, usize> = HashMap::new();
    let mut repeats = Vec::new();
    for (index, accrual) in accruals.iter().enumerate() {
        let Some(id) = accrual.external_id.as_ref().map(|e| e.as_str()) else {
            continue;
        };
        if let Some(holder) = stored.get(id) {
            repeats.push((index, FirstUse::Stored(*holder)));
        } else if let Some(&first) = first_in_request.get(id) {
            repeats.push((index, FirstUse::InRequest(first)));
        } else {
            first_in_request.insert(id, index);
        }
    }
    repeats
}

/// The 422's list: one entry per repeated item.
pub fn describe(accruals: &[Accrual], repeats: &[(usize, FirstUse)]) -> Vec<DuplicateExternalId> {
    repeats
        .iter()
        .map(|&(index, first)| {
            let external_id = accruals[index]
                .external_id
                .as_ref()
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default();
            let (holder, first_index) = match first {
                FirstUse::Stored(holder) => (Some(holder), None),
                FirstUse::InRequest(first) => (None, Some(first)),
            };
            DuplicateExternalId {
                index,
                external_id,
                existing_accrual_id: holder.map(|h| h.accrual_id),
                existing_job_id: holder.map(|h| h.job_id),
                first_index,
            }
        })
        .collect()
}

/// The ids of `accruals` the client has used in stored jobs, with their holders.
pub async fn lookup(
    pool: &MySqlPool,
    client_id: &str,
    accruals: &[Accrual],
) -> Result<HashMap<String, Holder>, sqlx::Error> {
    let ids: Vec<&str> = accruals
        .iter()
        .filter_map(|a| a.external_id.as_ref().map(|e| e.as_str()))
        .collect();
    // Ranges rather than slices: a stream of closures over borrowed slices trips the compiler's
    // `Send` check of the handler's future.
    let mut ranges = Vec::new();
    let mut start = 0;
    for size in statement_sizes(ids.len(), LOOKUP_ROWS) {
        ranges.push(start..start + size);
        start += size;
    }
    stream::iter(ranges)
        .map(|range| lookup_batch(pool, client_id, &ids[range]))
        .buffer_unordered(LOOKUPS_AT_ONCE)
        .try_fold(HashMap::new(), |mut all, found| async move {
            all.extend(found);
            Ok(all)
        })
        .await
}

async fn lookup_batch(
    pool: &MySqlPool,
    client_id: &str,
    ids: &[&str],
) -> Result<Vec<(String, Holder)>, sqlx::Error> {
    // A holder whose point was dead-lettered (and never written) holds the id no more: a later
    // job may take it over (see `store::jobs::claim`), so it is no repeat.
    let sql = format!(
        "SELECT e.external_id, e.accrual_id, e.job_id FROM accrual_external_ids e \
         WHERE e.client_id = ? AND e.external_id IN ({}) \
           AND (EXISTS (SELECT 1 FROM point_accruals p WHERE p.accrual_id = e.accrual_id) \
                OR NOT EXISTS (SELECT 1 FROM accrual_dead_letters d WHERE d.accrual_id = e.accrual_id \
                               AND (d.counts_from IS NULL OR d.counts_from <= NOW(6))))",
        vec!["?"; ids.len()].join(",")
    );
    let mut query = sqlx::query_as::<_, (String, Uuid, Uuid)>(AssertSqlSafe(sql)).bind(client_id);
    for id in ids {
        query = query.bind(*id);
    }
    Ok(query
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(id, accrual_id, job_id)| (id, Holder { accrual_id, job_id }))
        .collect())
}

/// Rows per statement when a job claims its ids (4 placeholders each).
const CLAIM_ROWS: usize = 4_096;

/// Takes the job's `external_id`s for its client; a duplicate-key error means one is taken.
pub(super) async fn claim(
    tx: &mut sqlx::MySqlConnection,
    client_id: &str,
    job_id: Uuid,
    external_ids: &[&(String, Uuid)],
) -> Result<(), sqlx::Error> {
    let mut rest = external_ids;
    for size in statement_sizes(rest.len(), CLAIM_ROWS) {
        let (batch, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO accrual_external_ids (client_id, external_id, accrual_id, job_id) VALUES {}",
            placeholders(size, 4)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (external_id, accrual_id) in batch {
            query = query
                .bind(client_id)
                .bind(external_id)
                .bind(*accrual_id)
                .bind(job_id);
        }
        match query.execute(&mut *tx).await {
            // Only the statement is undone: the transaction goes on, and the ids held by
            // dead-lettered points are taken over, or the duplicate stands.
            Err(e) if error_number(&e) == Some(ER_DUP_ENTRY) => {
                if !take_over(tx, client_id, job_id, batch).await? {
                    return Err(e);
                }
            }
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// Claims `batch` when some of its ids are held already: each holder is locked, and taken over if
/// its point was dead-lettered and is not in the ledger (read under locks, so a listener writing
/// that point at the same time either commits first, and the id stays taken, or sees the new
/// holder and refuses the point); then the free ids are inserted. False when an id is held by a
/// point written or still pending: the duplicate stands.
async fn take_over(
    tx: &mut sqlx::MySqlConnection,
    client_id: &str,
    job_id: Uuid,
    batch: &[&(String, Uuid)],
) -> Result<bool, sqlx::Error> {
    let marks = |n: usize| vec!["?"; n].join(",");
    let sql = format!(
        "SELECT external_id, accrual_id FROM accrual_external_ids \
         WHERE client_id = ? AND external_id IN ({}) ORDER BY external_id FOR UPDATE",
        marks(batch.len())
    );
    let mut query = sqlx::query_as::<_, (String, Uuid)>(AssertSqlSafe(sql)).bind(client_id);
    for (external_id, _) in batch {
        query = query.bind(external_id);
    }
    let held: std::collections::HashMap<String, Uuid> =
        query.fetch_all(&mut *tx).await?.into_iter().collect();
    if !held.is_empty() {
        let holders: Vec<Uuid> = held.values().copied().collect();
        // Locking reads: the newest committed rows, whatever snapshot this transaction has.
        let written = format!(
            "SELECT accrual_id FROM point_accruals WHERE accrual_id IN ({}) LOCK IN SHARE MODE",
            marks(holders.len())
        );
        let dead = format!(
            "SELECT accrual_id FROM accrual_dead_letters WHERE accrual_id IN ({}) \
               AND (counts_from IS NULL OR counts_from <= NOW(6)) LOCK IN SHARE MODE",
            marks(holders.len())
        );
        let mut found = [
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        ];
        for (sql, into) in [written, dead].into_iter().zip(&mut found) {
            let mut query = sqlx::query_scalar::<_, Uuid>(AssertSqlSafe(sql));
            for holder in &holders {
                query = query.bind(*holder);
            }
            into.extend(query.fetch_all(&mut *tx).await?);
        }
        let [written, dead] = found;
        let dead: std::collections::HashSet<Uuid> = dead.difference(&written).copied().collect();
        if holders.iter().any(|h| !dead.contains(h)) {
            return Ok(false);
        }
    }
    for (external_id, accrual_id) in batch {
        let statement = if held.contains_key(external_id) {
            "UPDATE accrual_external_ids SET accrual_id = ?, job_id = ? \
             WHERE client_id = ? AND external_id = ?"
        } else {
            "INSERT INTO accrual_external_ids (accrual_id, job_id, client_id, external_id) \
             VALUES (?, ?, ?, ?)"
        };
        sqlx::query(statement)
            .bind(*accrual_id)
            .bind(job_id)
            .bind(client_id)
            .bind(external_id)
            .execute(&mut *tx)
            .await?;
        if let Some(old) = held.get(external_id) {
            tracing::info!(%client_id, %external_id, old_accrual_id = %old, new_accrual_id = %accrual_id, %job_id, "An external_id whose point was dead-lettered is claimed again; its dead letter is superseded");
        }
    }
    Ok(true)
}

/// Rows per statement when a cancelled job frees its ids.
const FREE_ROWS: usize = 1_024;

/// Deletes the `external_id` claims of a job about to be cancelled, by key: the ids are read from
/// its stored chunks (the claims table has no index on `job_id`, which would slow every claim).
pub(super) async fn free(
    tx: &mut sqlx::MySqlConnection,
    client_id: &str,
    job_id: Uuid,
) -> Result<(), sqlx::Error> {
    #[derive(serde::Deserialize)]
    struct WithId {
        #[serde(default)]
        external_id: Option<String>,
    }
    let blobs: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT items FROM accrual_chunks WHERE job_id = ? ORDER BY seq")
            .bind(job_id)
            .fetch_all(&mut *tx)
            .await?;
    let mut ids = Vec::new();
    for blob in &blobs {
        let bodies = accrual_core::chunk::decode(blob)
            .map_err(|e| sqlx::Error::Decode(format!("chunk of job {job_id}: {e}").into()))?;
        ids.extend(
            bodies
                .iter()
                .filter_map(|b| serde_json::from_str::<WithId>(b).ok()?.external_id),
        );
    }
    for batch in ids.chunks(FREE_ROWS) {
        let sql = format!(
            "DELETE FROM accrual_external_ids WHERE client_id = ? AND job_id = ? AND external_id IN ({})",
            vec!["?"; batch.len()].join(",")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(client_id).bind(job_id);
        for id in batch {
            query = query.bind(id);
        }
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use accrual_core::domain::{Amount, ExternalId, MemberId, PointType};

    fn item(external_id: Option<&str>) -> Accrual {
        Accrual {
            member_id: MemberId::try_from("m").expect("valid"),
            point_type: PointType::try_from("P").expect("valid"),
            amount: Amount::try_from(1).expect("valid"),
            reason: None,
            expires_at: None,
            external_id: external_id.map(|e| ExternalId::try_from(e).expect("valid")),
        }
    }

    #[test]
    fn repeats_are_ids_stored_before_or_given_earlier_in_the_request() {
        let held = Holder {
            accrual_id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
        };
        let stored = HashMap::from([("old".to_owned(), held)]);
        let accruals = [
            item(Some("a")),
            item(None),
            item(Some("old")),
            item(Some("a")),
            item(None),
            item(Some("b")),
            item(Some("a")),
        ];
        assert_eq!(
            repeats(&accruals, &stored),
            vec![
                (2, FirstUse::Stored(held)),
                (3, FirstUse::InRequest(0)),
                (6, FirstUse::InRequest(0)),
            ]
        );
        let listed = describe(&accruals, &repeats(&accruals, &stored));
        assert_eq!(listed[0].existing_job_id, Some(held.job_id));
        assert_eq!(listed[1].first_index, Some(0));
        assert_eq!(listed[1].existing_accrual_id, None);
    }

    #[test]
    fn on_duplicate_is_reject_by_default_or_skip() {
        assert_eq!(OnDuplicate::parse(None), Some(OnDuplicate::Reject));
        assert_eq!(OnDuplicate::parse(Some("skip")), Some(OnDuplicate::Skip));
        assert_eq!(OnDuplicate::parse(Some("ignore")), None);
    }
}
