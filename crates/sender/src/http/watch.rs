//! Shared followers of jobs for `GET /v1/jobs/{job_id}/events`.
//!
//! However many SSE streams follow one job, one task polls it ([`POLL`]) and publishes each
//! changed view on a `watch` channel; it stops after the final view, or when its last stream is
//! gone. A client may keep at most [`MAX_STREAMS_PER_CLIENT`] streams open, so a client cannot make
//! the sender hold unbounded connections and pollers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use accrual_core::progress::Progress;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::MySqlPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::http::place::Placing;
use crate::store::job_status::{self, JobView};

/// How often a followed job is read.
pub const POLL: Duration = Duration::from_millis(500);
/// Most event streams one client may have open at once.
pub const MAX_STREAMS_PER_CLIENT: usize = 16;

/// The followed jobs and each client's open streams; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct JobWatch {
    inner: Arc<Mutex<Inner>>,
    /// Jobs being polled (one task each).
    pollers: Gauge,
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<Uuid, watch::Sender<JobView>>,
    streams: HashMap<String, usize>,
}

/// One open stream: its share of the client's allowance, given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    watch: JobWatch,
    client_id: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut inner = self.watch.lock();
        if let Some(n) = inner.streams.get_mut(&self.client_id) {
            *n -= 1;
            if *n == 0 {
                inner.streams.remove(&self.client_id);
            }
        }
    }
}

impl JobWatch {
    /// `pollers` counts the jobs being polled.
    pub fn new(pollers: Gauge) -> Self {
        Self {
            inner: Arc::default(),
            pollers,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every operation leaves the maps consistent, even if a holder panicked.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one of the client's stream slots, or `None` when it has all of them open.
    pub fn open_stream(&self, client_id: &str) -> Option<StreamSlot> {
        let mut inner = self.lock();
        let open = inner.streams.entry(client_id.to_owned()).or_default();
        if *open >= MAX_STREAMS_PER_CLIENT {
            return None;
        }
        *open += 1;
        Some(StreamSlot {
            watch: self.clone(),
            client_id: client_id.to_owned(),
        })
    }

    /// A receiver of the job's views, starting from `first` (read by the caller, who owns the
    /// job); starts the job's poller if none runs.
    pub fn follow(
        &self,
        pool: &MySqlPool,
        progress: &Progress,
        placing: &Placing,
        first: JobView,
        client_id: &str,
    ) -> watch::Receiver<JobView> {
        let job_id = first.job_id;
        let mut inner = self.lock();
        if let Some(tx) = inner.jobs.get(&job_id) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(first);
        inner.jobs.insert(job_id, tx.clone());
        drop(inner);
        self.pollers.inc();
        let this = self.clone();
        let (pool, progress, placing) = (pool.clone(), progress.clone(), placing.clone());
        let client_id = client_id.to_owned();
        tokio::spawn(async move {
            this.poll(&pool, &progress, &placing, &tx, &client_id).await;
            this.pollers.dec();
        });
        rx
    }

    /// Whether the poller of `tx` should stop (the final view is out, or nobody follows); if so,
    /// it is taken out of the map in the same step, so a stream joining now starts a new poller
    /// instead of waiting on one that is about to end.
    fn should_stop(&self, tx: &watch::Sender<JobView>) -> bool {
        let mut inner = self.lock();
        let stop = tx.borrow().is_final() || tx.receiver_count() == 0;
        if stop {
            let job_id = tx.borrow().job_id;
            if inner.jobs.get(&job_id).is_some_and(|t| t.same_channel(tx)) {
                inner.jobs.remove(&job_id);
            }
        }
        stop
    }

    /// Publishes the job's changed views until the final one, or until nobody follows.
    async fn poll(
        &self,
        pool: &MySqlPool,
        progress: &Progress,
        placing: &Placing,
        tx: &watch::Sender<JobView>,
        client_id: &str,
    ) {
        loop {
            if self.should_stop(tx) {
                return;
            }
            tokio::time::sleep(POLL).await;
            if self.should_stop(tx) {
                return;
            }
            let job_id = tx.borrow().job_id;
            match job_status::view(pool, progress, job_id, client_id).await {
                Ok(Some(view)) => {
                    let view = placing.place(pool, view).await;
                    tx.send_if_modified(|last| {
                        let changed = *last != view;
                        *last = view;
                        changed
                    });
                }
                Ok(None) => {
                    self.lock().jobs.remove(&job_id);
                    return;
                }
                Err(e) => tracing::warn!(%job_id, error = %e, "Reading job progress failed"),
            }
        }
    }
}
