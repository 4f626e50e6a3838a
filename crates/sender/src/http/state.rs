//! What request handlers share.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use accrual_core::settings::{Problems, parse_duration};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::http::accruals::body::{UploadSettings, Uploads};
use crate::http::auth::ApiKeys;
use crate::http::rate_limit::RateLimiter;
use crate::http::server::require_http_timeout;
use crate::metrics::SenderMetrics;

/// What requests may hold: chunk size, results downloads and reversals at once, and the member queries' index check.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiSettings {
    /// Points per stored chunk: the unit a dispatcher claims and re-sends after a crash.
    #[arg(long, env = "CHUNK_ITEMS", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub chunk_items: u32,

    /// Most results downloads (`GET /v1/jobs/{job_id}/results`) one client may have open at once
    /// (at least 1); more are answered 429.
    #[arg(long, env = "SENDER_RESULTS_STREAMS_PER_CLIENT", default_value_t = 4)]
    pub sender_results_streams_per_client: usize,

    /// Most reversals (`POST /v1/jobs/{job_id}/reversal`) this replica prepares at once, all
    /// clients together (at least 1); more are answered 503 with `Retry-After`. Each holds one
    /// page of ledger rows in memory and one pool connection while it reads.
    #[arg(long, env = "SENDER_REVERSALS_MAX", default_value_t = 2)]
    pub sender_reversals_max: usize,

    /// How often, while the ledger's `(client_id, member_id, id)` index is missing (the backfill
    /// has not finished), member queries check again whether it exists (e.g. 60s); until then they
    /// find a row's client by a join on `accrual_jobs`. Once found, it is used for good.
    #[arg(long, env = "SENDER_CLIENT_INDEX_RECHECK", default_value = "60s", value_parser = parse_duration)]
    pub sender_client_index_recheck: Duration,
}

impl ApiSettings {
    /// Refuses sizes and counts that would refuse every request, or hold without bound.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        problems.require(
            (1..=50_000).contains(&self.chunk_items),
            "CHUNK_ITEMS must be 1-50000",
        );
        require_http_timeout(
            &mut problems,
            self.sender_client_index_recheck,
            "SENDER_CLIENT_INDEX_RECHECK",
        );
        problems.require(
            (1..=1024).contains(&self.sender_results_streams_per_client),
            "SENDER_RESULTS_STREAMS_PER_CLIENT must be 1-1024",
        );
        problems.require(
            (1..=64).contains(&self.sender_reversals_max),
            "SENDER_REVERSALS_MAX must be 1-64",
        );
        problems.into_group_result()
    }
}

/// What the HTTP layer works with, besides its settings.
#[derive(Debug)]
pub struct ApiDeps {
    pub pool: MySqlPool,
    pub api_keys: ApiKeys,
    /// Wakes the dispatch tasks when a job is stored.
    pub wake: crate::workers::Wake,
    pub progress: Progress,
    pub metrics: Arc<SenderMetrics>,
    pub rate_limiter: RateLimiter,
    /// For the readiness check.
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    /// `RESULTS_RETENTION_DAYS`.
    pub results_retention: Duration,
    /// A waiting job's place (the fair order's reading of the waiting jobs, the dispatchers'
    /// gauges).
    pub placing: crate::http::place::Placing,
}

impl AppState {
    /// The handlers' state as `api` and `uploads` say (validated), on `deps`.
    pub fn new(api: &ApiSettings, uploads: &UploadSettings, deps: ApiDeps) -> Self {
        let job_watch = crate::http::watch::JobWatch::new(deps.metrics.sse_pollers.clone());
        Self {
            pool: deps.pool,
            api_keys: Arc::new(deps.api_keys),
            wake: deps.wake,
            progress: deps.progress,
            chunk_items: api.chunk_items as usize,
            known_members: crate::store::members::KnownMembers::default(),
            client_index: crate::store::client_index::ClientIndex::new(
                api.sender_client_index_recheck,
            ),
            metrics: deps.metrics,
            rate_limiter: deps.rate_limiter,
            job_watch,
            results_streams: crate::http::client_slots::ClientSlots::new(
                api.sender_results_streams_per_client,
            ),
            reversals: Arc::new(tokio::sync::Semaphore::new(api.sender_reversals_max)),
            sqs: deps.sqs,
            queue_url: deps.queue_url,
            uploads: Uploads::new(uploads),
            results_retention: deps.results_retention,
            placing: deps.placing,
            // Replaced by a child of the token `run_until_stopped` is given.
            shutdown: CancellationToken::new(),
        }
    }
}

/// Cloned into every handler; all fields are cheap handles.
#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: MySqlPool,
    pub api_keys: Arc<ApiKeys>,
    /// Wakes the dispatch tasks when a job is stored.
    pub wake: crate::workers::Wake,
    pub progress: Progress,
    /// Points per stored chunk.
    pub chunk_items: usize,
    /// Member ids known to be in `members` (never deleted), so requests skip their look-up.
    pub known_members: crate::store::members::KnownMembers,
    /// Whether member queries read the ledger's `client_id` index or join `accrual_jobs`.
    pub client_index: crate::store::client_index::ClientIndex,
    pub metrics: Arc<SenderMetrics>,
    pub rate_limiter: RateLimiter,
    /// The jobs followed by event streams, one poller each.
    pub job_watch: crate::http::watch::JobWatch,
    /// Each client's open results downloads (`SENDER_RESULTS_STREAMS_PER_CLIENT`).
    pub results_streams: crate::http::client_slots::ClientSlots,
    /// Reversals being prepared on this replica (`SENDER_REVERSALS_MAX` permits).
    pub reversals: Arc<tokio::sync::Semaphore>,
    /// For the readiness check.
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    /// How request bodies are read: rate, time and memory limits.
    pub uploads: Uploads,
    /// How long a final job's stored chunk bodies are kept (`RESULTS_RETENTION_DAYS`): its results
    /// answer 410 once `results_purged_at` is set or it completed longer ago than this (the
    /// retention task may not have come round yet).
    pub results_retention: Duration,
    /// A waiting job's place: the fair order's reading of the due jobs, and the queue's depth and
    /// the listeners' drain rate as this replica's dispatchers last read them (their points per
    /// message also turn due points into messages for the pipeline backlog).
    pub placing: crate::http::place::Placing,
    /// Cancelled when the sender starts shutting down (a child of the token given to
    /// `run_until_stopped`). Responses that would otherwise never end, such as event streams, end
    /// on it, so that their connections close within the shutdown grace.
    pub shutdown: CancellationToken,
}
