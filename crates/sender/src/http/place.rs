//! A waiting job's place in its view (`GET /v1/jobs/{job_id}` and each event): the points ahead
//! of it under fair dispatch ([`crate::store::chunks::place`]) and the estimates from the drain
//! rate this replica's dispatchers measure, read from their gauges
//! (`accrual_sender_dispatch_queue_depth`, `accrual_sender_drain_rate_points_per_second`).

use std::sync::Arc;

use sqlx::MySqlPool;

use crate::metrics::SenderMetrics;
use crate::store::chunks::place::{Drain, QueuePlaces};
use crate::store::job_status::JobView;

/// What a view's place is read with; cheap to clone.
#[derive(Clone, Debug)]
pub struct Placing {
    pub places: QueuePlaces,
    /// `ACCRUAL_POINTS_PER_MESSAGE`: the queue's messages hold up to this many points.
    pub points_per_message: u64,
    pub metrics: Arc<SenderMetrics>,
}

impl Placing {
    /// `view` with its place while it has due points not yet dispatched. A place that cannot be
    /// read leaves the view without one: it is an estimate, and the counts are what matter.
    pub async fn place(&self, pool: &MySqlPool, mut view: JobView) -> JobView {
        // A reserved job before its time has no due points: it would only make every view of it
        // read the due jobs again (a job missing from a reading is read again after 100 ms).
        let not_due = view.reserve_at.is_some_and(|at| at > chrono::Utc::now());
        if view.is_final() || view.enqueued >= view.total || not_due {
            return view;
        }
        let depth = self.metrics.dispatch_queue_depth.get().max(0) as u64;
        let rate = self.metrics.drain_rate.get();
        let drain = Drain {
            queued_points: depth * self.points_per_message,
            // 0 until the dispatchers have measured a rate (or while nothing drains).
            points_per_second: (rate > 0.0).then_some(rate),
        };
        match self.places.place(pool, view.job_id, drain).await {
            Ok(place) => view.queue = place,
            Err(e) => {
                tracing::warn!(job_id = %view.job_id, error = %e, "Reading a job's place failed");
            }
        }
        view
    }
}
