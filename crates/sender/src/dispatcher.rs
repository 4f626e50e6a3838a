//! Runs accepted jobs' fan-outs in the background, tracked so shutdown can wait for them.
//!
//! Jobs live only in this process's memory until sent; the durable job store (MySQL chunks claimed
//! by lease) replaces this in-memory hand-off.

use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::fanout::Fanout;

#[derive(Clone, Debug)]
pub struct Dispatcher {
    fanout: Fanout,
    /// Every running fan-out; `close` + `wait` on shutdown lets them finish.
    tracker: TaskTracker,
}

impl Dispatcher {
    pub fn new(fanout: Fanout, tracker: TaskTracker) -> Self {
        Self { fanout, tracker }
    }

    /// Starts sending a job's message bodies.
    pub fn dispatch(&self, job_id: Uuid, bodies: Vec<String>) {
        let fanout = self.fanout.clone();
        self.tracker.spawn(async move {
            let total = bodies.len();
            let started = std::time::Instant::now();
            match fanout.send_all(bodies).await {
                Ok(sent) => tracing::info!(%job_id, sent, elapsed_ms = started.elapsed().as_millis() as u64, "Job enqueued"),
                Err(error) => tracing::error!(%job_id, total, error = ?anyhow::Error::new(error), "Job fan-out failed; points not sent are lost"),
            }
        });
    }
}
