//! `Listener::build` connects; `run` consumes until the shutdown token is cancelled.

use std::sync::Arc;

use accrual_core::progress::Progress;
use accrual_core::{db, sqs};
use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::Batcher;
use crate::ledger::Ledger;
use crate::queue::Queue;
use crate::receiver::{self, DeadLetterLog};
use crate::settings::ListenerSettings;
use crate::stats::ListenerStats;

pub struct Listener {
    settings: ListenerSettings,
    ledger: Ledger,
    queue: Queue,
    progress: Progress,
    stats: Arc<ListenerStats>,
}

impl Listener {
    /// Connects to MySQL and finds the queues.
    pub async fn build(settings: ListenerSettings) -> anyhow::Result<Self> {
        let pool = db::connect(&settings.database)
            .await
            .context("Failed to connect to MySQL")?;
        let client = sqs::client(&settings.sqs).await;
        let main_url = sqs::find_queue(&client, &settings.sqs.accrual_queue).await?;
        let dlq_url = sqs::find_queue(&client, &settings.sqs.accrual_dlq).await?;
        let queue = Queue {
            client,
            main_url,
            dlq_url,
            main_name: settings.sqs.accrual_queue.clone(),
        };
        let progress = Progress::connect(&settings.redis).await;
        Ok(Self {
            ledger: Ledger::new(pool, settings.batch_max_rows as usize),
            progress,
            queue,
            stats: Arc::new(ListenerStats::default()),
            settings,
        })
    }

    /// What this listener has done so far.
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown` is cancelled: then stops receiving, writes and deletes what it
    /// holds, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let max_rows = self.settings.batch_max_rows as usize;
        // Room for two batches: receivers keep the next batch ready while one is written.
        let (to_batcher, inbound) = mpsc::channel(max_rows * 2);
        let tracker = TaskTracker::new();
        for _ in 0..self.settings.receive_tasks.max(1) {
            tracker.spawn(receiver::run(
                self.queue.clone(),
                DeadLetterLog {
                    ledger: self.ledger.clone(),
                    progress: self.progress.clone(),
                },
                self.settings.receive_wait_secs,
                to_batcher.clone(),
                self.stats.clone(),
                shutdown.clone(),
            ));
        }
        drop(to_batcher);
        let batcher = Batcher {
            ledger: self.ledger,
            queue: self.queue,
            stats: self.stats.clone(),
            progress: self.progress,
            max_rows,
            linger: self.settings.batch_linger,
        };
        tracing::info!(
            receive_tasks = self.settings.receive_tasks,
            max_rows,
            "Listener running"
        );
        tracker.spawn(batcher.run(inbound));
        tracker.close();
        tracker.wait().await;
        let s = &self.stats;
        tracing::info!(
            received = ListenerStats::get(&s.received),
            written = ListenerStats::get(&s.written),
            duplicates = ListenerStats::get(&s.duplicates),
            dead_lettered = ListenerStats::get(&s.dead_lettered),
            "Listener stopped"
        );
        Ok(())
    }
}
