//! The workers as one: start-up builds each task, hands the HTTP layer their [`Wake`] and starts
//! them all with [`Workers::spawn`]; [`Running::stopped`] gives them their shutdown grace.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::completion::Completion;
use super::dispatch::Dispatcher;
use super::reconciler::Reconciler;
use super::retention::Retention;
use super::runtime::BackgroundRuntime;
use super::wake::Wake;
use super::webhook_delivery::Webhooks;

/// Every background task of a replica, built but not started.
#[derive(Debug)]
pub struct Workers {
    /// Where the tasks run, at `DISPATCH_NICE`.
    pub runtime: BackgroundRuntime,
    pub dispatcher: Dispatcher,
    pub completion: Completion,
    pub retention: Retention,
    pub webhooks: Webhooks,
    /// One replica at a time works, by lease.
    pub reconciler: Reconciler,
}

/// One step of each background task, to run now: for tests that drive the background work
/// instead of waiting for the loops (which keep running beside it). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Steps {
    dispatcher: Dispatcher,
    completion: Completion,
    retention: Retention,
    webhooks: Webhooks,
    reconciler: Reconciler,
}

impl Steps {
    /// Sends every due chunk, settles what can be settled, purges what is past its retention,
    /// delivers the due webhook events (those of the settlements just made included) and runs a
    /// reconciler round, in that order, each once; the first error ends it.
    pub async fn run_once(&self) -> anyhow::Result<()> {
        self.dispatcher.run_once().await?;
        self.completion.run_once().await?;
        self.retention.run_once().await;
        self.webhooks.run_once().await?;
        self.reconciler.run_once().await
    }
}

impl Workers {
    /// A step of each task, to run on demand ([`Steps::run_once`]).
    pub fn steps(&self) -> Steps {
        Steps {
            dispatcher: self.dispatcher.clone(),
            completion: self.completion.clone(),
            retention: self.retention.clone(),
            webhooks: self.webhooks.clone(),
            reconciler: self.reconciler.clone(),
        }
    }

    /// The handle that wakes the dispatch tasks when a job is stored.
    pub fn wake(&self) -> Wake {
        self.dispatcher.wake_handle()
    }

    /// Starts every task on the background runtime; each stops when `shutdown` is cancelled.
    pub fn spawn(self, shutdown: &CancellationToken) -> Running {
        let tracker = TaskTracker::new();
        let on = self.runtime.handle().clone();
        self.dispatcher.spawn(&tracker, shutdown, &on);
        tracker.spawn_on(self.completion.run(shutdown.clone()), &on);
        tracker.spawn_on(self.retention.run(shutdown.clone()), &on);
        tracker.spawn_on(self.webhooks.run(shutdown.clone()), &on);
        tracker.spawn_on(self.reconciler.run(shutdown.clone()), &on);
        tracker.close();
        Running {
            tracker,
            _runtime: self.runtime,
        }
    }
}

/// The started workers. Dropping this (after [`Running::stopped`]) drops the background runtime, and with it whatever task is
/// still running (its leases expire and another replica takes over).
#[derive(Debug)]
pub struct Running {
    tracker: TaskTracker,
    /// Held, never read: dropped with this, after the server has stopped too.
    _runtime: BackgroundRuntime,
}

impl Running {
    /// Waits for `shutdown`, then at most `grace` for every task to end.
    pub async fn stopped(&self, shutdown: &CancellationToken, grace: Duration) {
        shutdown.cancelled().await;
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "Background tasks (dispatchers, completion, retention, webhooks) still busy at shutdown; their leases expire and another replica takes over"
            );
        }
    }
}
