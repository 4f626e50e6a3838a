//! Members are in `members` before any of their points is queued.
//!
//! A request's distinct members are found by hashing (off the async workers), then those not known
//! to exist are copied, sorted and looked up (`SELECT … IN`, read-only, no locks) and only the ones missing are
//! upserted, in sorted multi-row statements. Members are never deleted, so a member seen in
//! `members` once is there for good: [`KnownMembers`] remembers such ids in the process, and a
//! campaign that credits the same members again costs no member statement at all. An id enters it
//! only after MySQL has shown it (the look-up found it, or the upsert committed), so a point never
//! references a member that is not in the table.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use accrual_core::accrual::Accrual;
use accrual_core::db::{ER_LOCK_DEADLOCK, error_number, placeholders, statement_sizes};
use accrual_core::ledger_clients::CLIENT_INDEX;
use chrono::Utc;
use futures_util::{StreamExt, TryStreamExt, stream};
use sqlx::{AssertSqlSafe, MySqlPool};

use crate::store::client_index::ByClient;

/// Rows per upsert statement (2 placeholders each, far below MySQL's 65,535).
const UPSERT_ROWS: usize = 1_024;
const DEADLOCK_RETRIES: u32 = 3;
/// Members looked up per statement (one placeholder each): a 300,000-member request takes about
/// 75 statements.
const LOOKUP_ROWS: usize = 4_096;
/// Look-up statements in flight at once: enough to overlap round trips, few enough to leave the
/// pool to other requests.
const LOOKUPS_AT_ONCE: usize = 4;
/// Member ids [`KnownMembers`] keeps per generation; it holds at most two generations (1,000,000
/// ids, some tens of MiB), the older dropped when the newer fills up.
pub const KNOWN_MEMBERS_PER_GENERATION: usize = 500_000;

/// Upserts the distinct members of `accruals`; returns how many distinct members there were.
pub async fn upsert(pool: &MySqlPool, accruals: &[Accrual]) -> Result<usize, sqlx::Error> {
    upsert_distinct(pool, &distinct(accruals)).await
}

/// The distinct members of `accruals`, sorted. CPU-bound (a 500,000-item request takes tens of
/// milliseconds): call it off the async workers.
pub fn distinct(accruals: &[Accrual]) -> Vec<String> {
    let distinct: HashSet<&str> = accruals.iter().map(|a| a.member_id.as_str()).collect();
    let mut members: Vec<&str> = distinct.into_iter().collect();
    members.sort_unstable();
    members.into_iter().map(str::to_owned).collect()
}

/// Member ids known to be in `members`, bounded: two generations of at most
/// [`KNOWN_MEMBERS_PER_GENERATION`] ids; when the newer one is full the older is dropped, so ids
/// in use stay (a hit in the older generation moves the id to the newer one).
#[derive(Clone, Debug)]
pub struct KnownMembers {
    inner: Arc<Mutex<Generations>>,
    per_generation: usize,
}

#[derive(Debug, Default)]
struct Generations {
    newer: HashSet<Box<str>>,
    older: HashSet<Box<str>>,
}

impl Default for KnownMembers {
    fn default() -> Self {
        Self::with_capacity(KNOWN_MEMBERS_PER_GENERATION)
    }
}

impl KnownMembers {
    /// At most `per_generation` ids per generation (two generations).
    pub fn with_capacity(per_generation: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Generations::default())),
            per_generation: per_generation.max(1),
        }
    }

    /// The members of `members` not known to exist, in their order, copied. CPU-bound for large
    /// requests.
    pub fn unknown_of<'a>(&self, members: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut unknown = Vec::new();
        for member in members {
            if g.newer.contains(member) {
                continue;
            }
            if let Some(id) = g.older.take(member) {
                g.insert(id, self.per_generation);
                continue;
            }
            unknown.push(member.to_owned());
        }
        unknown
    }

    /// The members of `sorted` not known to exist, in their order.
    pub fn unknown(&self, sorted: &[String]) -> Vec<String> {
        self.unknown_of(sorted.iter().map(String::as_str))
    }

    /// Remembers `members`, which MySQL has just shown to exist.
    pub fn remember(&self, members: &[String]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for member in members {
            g.insert(member.as_str().into(), self.per_generation);
        }
    }

    /// Ids held (both generations).
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.newer.len() + g.older.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Generations {
    fn insert(&mut self, id: Box<str>, per_generation: usize) {
        if self.newer.len() >= per_generation {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(id);
    }
}

/// A request's distinct members, as far as the sender knows them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestMembers {
    /// How many distinct members the items name.
    pub total: usize,
    /// Those [`KnownMembers`] cannot vouch for, sorted.
    pub unknown: Vec<String>,
}

/// The distinct members of `accruals` and which of them `known` cannot vouch for. CPU-bound (tens of
/// milliseconds for 500,000 items): call it off the async workers. Only the unknown ones are
/// copied and sorted, so a campaign over known members costs one hash look-up per member.
pub fn sort_out(accruals: &[Accrual], known: &KnownMembers) -> RequestMembers {
    let distinct: HashSet<&str> = accruals.iter().map(|a| a.member_id.as_str()).collect();
    let mut unknown = known.unknown_of(distinct.iter().copied());
    unknown.sort_unstable();
    RequestMembers {
        total: distinct.len(),
        unknown,
    }
}

/// Makes sure every member of `members.unknown` (distinct, sorted) is in `members`: they are looked
/// up, the missing ones upserted; then all of them are remembered. Returns how many members there
/// were and how many were inserted.
pub async fn ensure(
    pool: &MySqlPool,
    known: &KnownMembers,
    members: RequestMembers,
) -> Result<Ensured, MembersError> {
    let RequestMembers { total, unknown } = members;
    if unknown.is_empty() {
        return Ok(Ensured { total, inserted: 0 });
    }
    let found = existing(pool, &unknown).await?;
    let missing: Vec<String> = unknown
        .iter()
        .filter(|m| !found.contains(m.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        upsert_distinct(pool, &missing).await?;
    }
    let cache = known.clone();
    // Every one of them is in the table now: found there, or upserted and committed.
    tokio::task::spawn_blocking(move || cache.remember(&unknown)).await?;
    Ok(Ensured {
        total,
        inserted: missing.len(),
    })
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ensured {
    /// Distinct members of the request.
    pub total: usize,
    /// Of those, how many were not in `members` and were upserted.
    pub inserted: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The look-up in [`KnownMembers`], run off the async workers, panicked.
    #[error("the known-members look-up failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Which of `members` (distinct, sorted) are in `members`: read-only look-ups of up to
/// [`LOOKUP_ROWS`] ids each, a few at a time.
async fn existing(pool: &MySqlPool, members: &[String]) -> Result<HashSet<String>, sqlx::Error> {
    stream::iter(lookup_ranges(members.len()))
        .map(|range| existing_batch(pool, &members[range]))
        .buffer_unordered(LOOKUPS_AT_ONCE)
        .try_fold(HashSet::new(), |mut all, found| async move {
            all.extend(found);
            Ok(all)
        })
        .await
}

/// How many of `members` (distinct) `client_id` has credited: those with a ledger row of the
/// client (a dry run's answer). Not `members`, which every client shares: counting there would
/// tell a client which member ids other clients have credited. Each member in `members` (every
/// credited one is) is checked for one row of the client: with [`ByClient::Index`] the first
/// entry of its range of the client index, with [`ByClient::Join`] its rows through
/// `(member_id, id)` until one of the client's jobs.
pub async fn count_credited(
    pool: &MySqlPool,
    by: ByClient,
    client_id: &str,
    members: &[String],
) -> Result<u64, sqlx::Error> {
    stream::iter(lookup_ranges(members.len()))
        .map(|range| count_batch(pool, by, client_id, &members[range]))
        .buffer_unordered(LOOKUPS_AT_ONCE)
        .try_fold(0_u64, |sum, n| async move { Ok(sum + n) })
        .await
}

/// The index ranges of `len` members, one per look-up statement. Ranges rather than slices: a
/// stream of closures over borrowed slices trips the compiler's `Send` check of the handler's
/// future (a higher-ranked lifetime it cannot prove general).
fn lookup_ranges(len: usize) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    statement_sizes(len, LOOKUP_ROWS)
        .into_iter()
        .map(|size| {
            start += size;
            start - size..start
        })
        .collect()
}

async fn count_batch(
    pool: &MySqlPool,
    by: ByClient,
    client_id: &str,
    batch: &[String],
) -> Result<u64, sqlx::Error> {
    let credited = match by {
        ByClient::Index => format!(
            "SELECT 1 FROM point_accruals p FORCE INDEX ({CLIENT_INDEX}) \
             WHERE p.client_id = ? AND p.member_id = m.member_id"
        ),
        ByClient::Join => {
            "SELECT 1 FROM point_accruals p FORCE INDEX (ix_point_accruals_member_id) \
             JOIN accrual_jobs j ON j.job_id = p.job_id \
             WHERE p.member_id = m.member_id AND j.client_id = ?"
                .to_owned()
        }
    };
    let sql = format!(
        "SELECT COUNT(*) FROM members m WHERE EXISTS ({credited}) AND m.member_id IN ({})",
        vec!["?"; batch.len()].join(",")
    );
    let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql)).bind(client_id);
    for member in batch {
        query = query.bind(member.as_str());
    }
    Ok(query.fetch_one(pool).await?.unsigned_abs())
}

async fn existing_batch(pool: &MySqlPool, batch: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!(
        "SELECT member_id FROM members WHERE member_id IN ({})",
        vec!["?"; batch.len()].join(",")
    );
    let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
    for member in batch {
        query = query.bind(member.as_str());
    }
    query.fetch_all(pool).await
}

/// Upserts `members` (distinct, sorted); returns how many there were.
///
/// Members are written in sorted order so that concurrent requests with overlapping members take
/// their row locks in the same order, which keeps deadlocks rare; one that happens anyway is retried.
pub async fn upsert_distinct(pool: &MySqlPool, members: &[String]) -> Result<usize, sqlx::Error> {
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match upsert_once(pool, &members).await {
            Err(e) if error_number(&e) == Some(ER_LOCK_DEADLOCK) && attempt < DEADLOCK_RETRIES => {
                tracing::warn!(attempt, "Deadlock while upserting members; retrying");
            }
            other => return other.map(|()| members.len()),
        }
    }
}

async fn upsert_once(pool: &MySqlPool, members: &[&str]) -> Result<(), sqlx::Error> {
    let now = Utc::now().naive_utc();
    let mut tx = pool.begin().await?;
    let mut rest = members;
    for size in statement_sizes(members.len(), UPSERT_ROWS) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = format!(
            "INSERT INTO members (member_id, created_at) VALUES {} ON DUPLICATE KEY UPDATE member_id = member_id",
            placeholders(size, 2)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for member in chunk {
            query = query.bind(*member);
            query = query.bind(now);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_members_shown_to_exist_are_known() {
        let known = KnownMembers::with_capacity(10);
        assert_eq!(known.unknown(&ids(&["a", "b"])), ids(&["a", "b"]));
        known.remember(&ids(&["a"]));
        assert_eq!(known.unknown(&ids(&["a", "b", "c"])), ids(&["b", "c"]));
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_what_is_in_use() {
        let known = KnownMembers::with_capacity(2);
        known.remember(&ids(&["a", "b"]));
        // "a" is used again: it moves to the newer generation when "c" starts one.
        known.remember(&ids(&["c"]));
        assert!(known.unknown(&ids(&["a"])).is_empty());
        known.remember(&ids(&["d"]));
        known.remember(&ids(&["e"]));
        assert!(known.len() <= 4, "{}", known.len());
        // "b" was never used again and has been dropped; asking for it goes to MySQL.
        assert_eq!(known.unknown(&ids(&["b"])), ids(&["b"]));
    }

    #[test]
    fn distinct_members_are_sorted_and_unique_and_only_unknown_ones_are_kept() {
        let one = |m: &str| format!(r#"{{"member_id":"{m}","point_type":"P","amount":1}}"#);
        let body = format!(
            "[{},{},{},{},{}]",
            one("d"),
            one("b"),
            one("a"),
            one("b"),
            one("c")
        );
        let items = accrual_core::wire::parse_body(body.as_bytes(), 10).expect("parses");
        let accruals = accrual_core::accrual::validate(items, Utc::now()).expect("valid");
        assert_eq!(distinct(&accruals), ids(&["a", "b", "c", "d"]));
        let known = KnownMembers::default();
        known.remember(&ids(&["c"]));
        assert_eq!(
            sort_out(&accruals, &known),
            RequestMembers {
                total: 4,
                unknown: ids(&["a", "b", "d"])
            }
        );
    }
}
