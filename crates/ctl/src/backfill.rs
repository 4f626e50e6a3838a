//! `accrualctl backfill ledger-client-ids`: fills the ledger's `client_id` on rows written before
//! the listener did (migration 0010), then builds the index member queries read. Outside `init`,
//! which must stay quick: this walks the whole ledger. Safe beside running listeners and senders,
//! and safe to run again or to cut short (see [`accrual_core::ledger_clients`]).

use std::time::{Duration, Instant};

use accrual_core::ledger_clients;
use anyhow::Context;
use sqlx::MySqlPool;

/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub async fn ledger_client_ids(
    pool: &MySqlPool,
    from_id: u64,
    batch_rows: u64,
    skip_index: bool,
) -> anyhow::Result<serde_json::Value> {
    let (max_id,): (Option<u64>,) = sqlx::query_as("SELECT MAX(id) FROM point_accruals")
        .fetch_one(pool)
        .await?;
    let max_id = max_id.unwrap_or(0);
    let mut last_print = Instant::now();
    let started = Instant::now();
    let done = ledger_clients::backfill(pool, from_id, batch_rows, |batch| {
        if last_print.elapsed() >= PROGRESS_EVERY {
            last_print = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "Backfilled up to id {} of {max_id} ({:.1}%), {:.0} ids/s; resume with --from-id {}",
                batch.last_id,
                batch.last_id as f64 * 100.0 / max_id.max(1) as f64,
                (batch.last_id.saturating_sub(from_id)) as f64 / secs,
                batch.last_id + 1
            );
        }
    })
    .await
    .context("Failed to backfill the ledger's client_id (run it again; it resumes)")?;
    eprintln!(
        "Walked {} ids in {} batches, filled {} rows; slowest batch {} ms.",
        done.ids_walked, done.batches, done.updated, done.longest_batch_ms
    );
    let mut out = serde_json::to_value(done)?;
    let index_created = if skip_index {
        false
    } else {
        eprintln!("Building {} online…", ledger_clients::CLIENT_INDEX);
        let at = Instant::now();
        let created = ledger_clients::create_index(pool)
            .await
            .context("Failed to build the ledger's client index (run it again)")?;
        out["index_ms"] = u64::try_from(at.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .into();
        created
    };
    out["index_created"] = index_created.into();
    out["index_exists"] = ledger_clients::client_index_exists(pool).await?.into();
    Ok(out)
}
