//! What request handlers share.

use std::sync::Arc;

use accrual_core::progress::Progress;
use sqlx::MySqlPool;

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
    pub metrics: Arc<SenderMetrics>,
    pub rate_limiter: RateLimiter,
    /// The jobs followed by event streams, one poller each.
    pub job_watch: crate::api::watch::JobWatch,
    /// For the readiness check.
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
}
