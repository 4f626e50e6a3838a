//! Whether member queries may read the ledger by client: the index `(client_id, member_id, id)`
//! exists only once `accrualctl backfill ledger-client-ids` has filled every row's `client_id`
//! (see [`accrual_core::ledger_clients`]). Until then the queries find a row's client by a join
//! on `accrual_jobs`, as before the column existed.
//!
//! The check is made when a member query needs it, at most once per `SENDER_CLIENT_INDEX_RECHECK`
//! while the index is missing; once it has been seen it is used for good (it is never dropped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use accrual_core::ledger_clients::client_index_exists;
use sqlx::MySqlPool;

/// How member queries find a row's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByClient {
    /// The ledger's own `client_id`, through its index: only the client's rows are read.
    Index,
    /// A join on `accrual_jobs`: every client's rows of the member are read.
    Join,
}

/// The cached answer to "does the client index exist?", shared by a replica's handlers.
#[derive(Clone, Debug)]
pub struct ClientIndex {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    found: AtomicBool,
    /// When the index was last looked for (and not found). A std Mutex: nothing is awaited
    /// while it is held.
    checked_at: Mutex<Option<Instant>>,
    recheck: Duration,
}

impl ClientIndex {
    /// Looks for the index at most once per `recheck` while it is missing.
    pub fn new(recheck: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                found: AtomicBool::new(false),
                checked_at: Mutex::new(None),
                recheck,
            }),
        }
    }

    /// How a member query should find rows of a client now. A failed look-up answers
    /// [`ByClient::Join`], which is right in any case, only slower.
    pub async fn by_client(&self, pool: &MySqlPool) -> ByClient {
        if self.inner.found.load(Ordering::Acquire) {
            return ByClient::Index;
        }
        {
            let mut at = self
                .inner
                .checked_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if at.is_some_and(|t| t.elapsed() < self.inner.recheck) {
                return ByClient::Join;
            }
            *at = Some(Instant::now());
        }
        match client_index_exists(pool).await {
            Ok(true) => {
                self.inner.found.store(true, Ordering::Release);
                tracing::info!("The ledger's client index exists; member queries use it");
                ByClient::Index
            }
            Ok(false) => ByClient::Join,
            Err(e) => {
                tracing::warn!(error = %e, "Looking for the ledger's client index failed");
                ByClient::Join
            }
        }
    }
}
