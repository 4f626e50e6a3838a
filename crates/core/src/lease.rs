//! Leases on background work that one sender replica at a time should do (`maintenance_leases`).
//!
//! A lease is a row: its `name`, the `owner` (a replica id) and `lease_until`. A replica takes it
//! when nobody holds it, when it has expired, or renews it when it is its own; each of those is one
//! statement, so two replicas can never both find it free. Then it reads the row back: it holds
//! the lease only if the row names it and has not expired. Every instant is MySQL's `NOW(6)`, so
//! the replicas' clocks do not matter.

use std::time::Duration;

use sqlx::MySqlPool;

/// The lease of the retention task.
pub const RETENTION: &str = "retention";

/// Takes, or renews, the lease `name` for `owner` for `length`; `true` if `owner` holds it now.
pub async fn take(
    pool: &MySqlPool,
    name: &str,
    owner: &str,
    length: Duration,
) -> Result<bool, sqlx::Error> {
    let micros = u64::try_from(length.as_micros()).unwrap_or(u64::MAX);
    // The first replica ever to ask creates the row as its own; for the others it is there.
    sqlx::query(
        "INSERT INTO maintenance_leases (name, owner, lease_until) \
         VALUES (?, ?, NOW(6) + INTERVAL ? MICROSECOND) ON DUPLICATE KEY UPDATE name = name",
    )
    .bind(name)
    .bind(owner)
    .bind(micros)
    .execute(pool)
    .await?;
    // Ours already (renewed) or expired (taken over): one statement under the row's lock.
    sqlx::query(
        "UPDATE maintenance_leases SET owner = ?, lease_until = NOW(6) + INTERVAL ? MICROSECOND \
         WHERE name = ? AND (owner = ? OR lease_until < NOW(6))",
    )
    .bind(owner)
    .bind(micros)
    .bind(name)
    .bind(owner)
    .execute(pool)
    .await?;
    holds(pool, name, owner).await
}

/// Whether `owner` holds the lease `name` now.
pub async fn holds(pool: &MySqlPool, name: &str, owner: &str) -> Result<bool, sqlx::Error> {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT owner FROM maintenance_leases WHERE name = ? AND lease_until >= NOW(6)",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(holder.as_deref() == Some(owner))
}

/// Gives the lease up if `owner` holds it, so another replica may take it at once (at shutdown).
pub async fn release(pool: &MySqlPool, name: &str, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE maintenance_leases SET lease_until = NOW(6) - INTERVAL 1 SECOND \
         WHERE name = ? AND owner = ?",
    )
    .bind(name)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}
