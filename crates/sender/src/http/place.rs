//! A waiting job's place in its view (`GET /v1/jobs/{job_id}` and each event): the points ahead
//! of it under fair dispatch ([`crate::store::chunks::place`]) and the estimates from the drain
//! rate this replica's dispatchers measure.

use sqlx::MySqlPool;

use crate::store::chunks::place::{Drain, QueuePlaces};
use crate::store::job_status::JobView;
use crate::workers::dispatch::backlog::Backlog;

/// What a view's place is read with; cheap to clone.
#[derive(Clone, Debug)]
pub struct Placing {
    pub places: QueuePlaces,
    pub backlog: Backlog,
}

impl Placing {
    /// `view` with its place while it has due points not yet dispatched. A place that cannot be
    /// read leaves the view without one: it is an estimate, and the counts are what matter.
    pub async fn place(&self, pool: &MySqlPool, mut view: JobView) -> JobView {
        if view.is_final() || view.enqueued >= view.total {
            return view;
        }
        let queue = self.backlog.state();
        let drain = Drain {
            queued_points: queue.points().unwrap_or(0),
            points_per_second: queue.points_per_second,
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
