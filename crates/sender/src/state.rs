//! What request handlers share.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use sqlx::MySqlPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::auth::ApiKeys;
use crate::dispatcher::Dispatcher;
use crate::metrics::SenderMetrics;
use crate::rate_limit::RateLimiter;

/// Cloned into every handler; all fields are cheap handles.
#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: MySqlPool,
    pub api_keys: Arc<ApiKeys>,
    /// Woken when a job is stored.
    pub dispatcher: Dispatcher,
    pub progress: Progress,
    /// Points per stored chunk.
    pub chunk_items: usize,
    /// Member ids known to be in `members` (never deleted), so requests skip their look-up.
    pub known_members: crate::members::KnownMembers,
    pub metrics: Arc<SenderMetrics>,
    pub rate_limiter: RateLimiter,
    /// The jobs followed by event streams, one poller each.
    pub job_watch: crate::api::watch::JobWatch,
    /// For the readiness check.
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    /// How request bodies are read: rate, time and memory limits.
    pub uploads: Uploads,
    /// How long a final job's stored chunk bodies are kept (`RESULTS_RETENTION_DAYS`): its results
    /// answer 410 once `results_purged_at` is set or it completed longer ago than this (the
    /// retention task may not have come round yet).
    pub results_retention: Duration,
    /// Cancelled when the sender starts shutting down (a child of the token given to
    /// `run_until_stopped`). Responses that would otherwise never end, such as event streams, end
    /// on it, so that their connections close within the shutdown grace.
    pub shutdown: CancellationToken,
}

/// The limits on reading a request body, so that slow or many uploads cannot hold connections
/// and memory without end.
#[derive(Clone, Debug)]
pub struct Uploads {
    /// Bytes of request bodies held at once, shared by every upload in flight: a permit per byte,
    /// taken for the declared `Content-Length` up front (or as a chunked body arrives) and given
    /// back when the body has been parsed.
    pub budget: Arc<Semaphore>,
    /// Slowest average rate, once `rate_grace` has passed.
    pub min_bytes_per_sec: u64,
    pub rate_grace: Duration,
    /// Longest a body may take, whatever its rate.
    pub timeout: Duration,
}
