//! Claiming due events, client by client in turns.
//!
//! A step lists the clients with a due event (a loose scan of `(client_id, next_attempt_at)`: one
//! index step per client), asks the breaker how many each may have now, shares the free slots out
//! one per client per turn, starting after the client served last, and takes each client's share
//! of its oldest due events. A claimed event's `next_attempt_at` is moved a whole lease ahead in
//! the claim's transaction, so an event whose deliverer dies is tried again once that has passed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use uuid::Uuid;

use super::breaker::EndpointKey;

/// A client with due events, and its endpoint as it is now.
pub(super) struct DueClient {
    pub(super) client_id: String,
    /// `(url, secret)`; `None` once the client's endpoint is removed.
    pub(super) endpoint: Option<(String, String)>,
}

impl DueClient {
    pub(super) fn key(&self) -> EndpointKey {
        EndpointKey {
            client_id: self.client_id.clone(),
            url: self
                .endpoint
                .as_ref()
                .map(|(url, _)| url.clone())
                .unwrap_or_default(),
        }
    }
}

/// An event claimed for an attempt, with its endpoint as it was at the claim.
pub(super) struct Claimed {
    pub(super) event_id: Uuid,
    pub(super) event: String,
    pub(super) body: String,
    /// Time since the event happened, when claimed.
    pub(super) age: Duration,
    pub(super) claimed: Instant,
    /// MySQL's `NOW(6)` when claimed: the signature's time is this plus the time since, so every
    /// replica signs on MySQL's clock whatever its own says (receivers refuse a skewed `t`).
    pub(super) claimed_db: DateTime<Utc>,
    /// `(url, secret)`; `None` once the client's endpoint is removed.
    pub(super) endpoint: Option<(String, String)>,
    pub(super) key: EndpointKey,
}

/// The clients with due events, in `client_id` order, rotated to start after `after` (the client
/// served last), with their endpoints.
pub(super) async fn due_clients(
    pool: &MySqlPool,
    after: Option<&str>,
) -> Result<Vec<DueClient>, sqlx::Error> {
    let mut clients: Vec<String> = sqlx::query_scalar(
        "SELECT client_id FROM webhook_events WHERE next_attempt_at <= NOW(6) \
         GROUP BY client_id ORDER BY client_id",
    )
    .fetch_all(pool)
    .await?;
    if clients.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(after) = after {
        let first = clients.partition_point(|c| c.as_str() <= after);
        clients.rotate_left(first);
    }
    // A plain (non-locking) read: the endpoints as committed, whoever holds their rows (a state
    // change's transaction share-locks its client's row while it records an event).
    let sql = format!(
        "SELECT client_id, url, secret FROM webhook_endpoints WHERE client_id IN {}",
        accrual_core::db::placeholders(1, clients.len())
    );
    let mut query = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql));
    for client in &clients {
        query = query.bind(client);
    }
    let mut endpoints: HashMap<String, (String, String)> = query
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(client, url, secret)| (client, (url, secret)))
        .collect();
    Ok(clients
        .into_iter()
        .map(|client_id| DueClient {
            endpoint: endpoints.remove(&client_id),
            client_id,
        })
        .collect())
}

/// Shares `free` slots out one per client per turn, in order, each client at most its `wants`;
/// returns each one's share and the index of the client given the last slot.
pub(super) fn turns(wants: &[usize], free: usize) -> (Vec<usize>, Option<usize>) {
    let mut shares = vec![0; wants.len()];
    let mut left = free;
    let mut last = None;
    while left > 0 {
        let mut gave = false;
        for (i, share) in shares.iter_mut().enumerate() {
            if left > 0 && *share < wants[i] {
                *share += 1;
                left -= 1;
                last = Some(i);
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    (shares, last)
}

/// Takes up to `limit` of `client`'s due events, oldest due first, and moves them `lease` ahead.
pub(super) async fn claim(
    pool: &MySqlPool,
    client: &DueClient,
    limit: usize,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    type Row = (Uuid, String, String, i64, DateTime<Utc>);
    let mut tx = pool.begin().await?;
    // Only the events are locked (see `due_clients` on the endpoint's row).
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT event_id, event, body, TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)), NOW(6) \
         FROM webhook_events WHERE client_id = ? AND next_attempt_at <= NOW(6) \
         ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(&client.client_id)
    .bind(limit as u32)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    let ids = accrual_core::db::placeholders(1, rows.len());
    let sql = format!(
        "UPDATE webhook_events SET next_attempt_at = NOW(6) + INTERVAL ? MICROSECOND \
         WHERE event_id IN {ids}"
    );
    let mut update = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(lease.as_micros() as u64);
    for row in &rows {
        update = update.bind(row.0);
    }
    update.execute(&mut *tx).await?;
    tx.commit().await?;
    let claimed = Instant::now();
    let key = client.key();
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            event_id: r.0,
            event: r.1,
            body: r.2,
            age: Duration::from_micros(r.3.max(0) as u64),
            claimed,
            claimed_db: r.4,
            endpoint: client.endpoint.clone(),
            key: key.clone(),
        })
        .collect())
}

/// What holding a client's due events back came to.
pub(super) struct HeldBack {
    /// Moved to the end of the cool-off.
    pub(super) held: u64,
    /// Given up: their next attempt would have come after `WEBHOOK_RETRY_FOR`.
    pub(super) gave_up: u64,
}

/// Moves `client_id`'s due events `wait` ahead without attempting them: no attempt is recorded or
/// counted, so their back-off does not grow. Those whose next attempt would then come more than
/// `retry_for` after they happened are given up, as a failed attempt would give them up.
pub(super) async fn hold_back(
    pool: &MySqlPool,
    client_id: &str,
    wait: Duration,
    retry_for: Duration,
) -> Result<HeldBack, sqlx::Error> {
    let wait = wait.as_micros() as u64;
    let mut tx = pool.begin().await?;
    let gave_up = sqlx::query(
        "UPDATE webhook_events SET gave_up_at = NOW(6), next_attempt_at = NULL, \
         last_error = 'given up while its endpoint''s circuit was open' \
         WHERE client_id = ? AND next_attempt_at <= NOW(6) \
         AND created_at + INTERVAL ? MICROSECOND < NOW(6) + INTERVAL ? MICROSECOND",
    )
    .bind(client_id)
    .bind(retry_for.as_micros() as u64)
    .bind(wait)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let held = sqlx::query(
        "UPDATE webhook_events SET next_attempt_at = NOW(6) + INTERVAL ? MICROSECOND \
         WHERE client_id = ? AND next_attempt_at <= NOW(6)",
    )
    .bind(wait)
    .bind(client_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(HeldBack { held, gave_up })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_go_one_per_client_per_turn() {
        assert_eq!(turns(&[4, 4, 4], 5), (vec![2, 2, 1], Some(1)));
        assert_eq!(turns(&[4, 0, 1], 16), (vec![4, 0, 1], Some(0)));
        assert_eq!(turns(&[16, 1, 16], 4), (vec![2, 1, 1], Some(0)));
        assert_eq!(turns(&[0, 0], 3), (vec![0, 0], None));
        assert_eq!(turns(&[], 3), (vec![], None));
        assert_eq!(turns(&[3], 0), (vec![0], None));
    }
}
