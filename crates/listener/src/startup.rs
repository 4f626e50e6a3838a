//! `Listener::build` connects and binds; `run` consumes until the shutdown token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use accrual_core::{db, sqs};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::attributes::{self, CurrentAttributes, QueueAttributes};
use crate::batcher::Batcher;
use crate::gate::DatabaseGate;
use crate::held::HeldMessages;
use crate::ledger::Ledger;
use crate::metrics::ListenerMetrics;
use crate::queue::Queue;
use crate::receiver::{self, DeadLetterLog};
use crate::settings::ListenerSettings;

pub struct Listener {
    settings: ListenerSettings,
    ledger: Ledger,
    queue: Queue,
    progress: Progress,
    metrics: Arc<ListenerMetrics>,
    gate: DatabaseGate,
    /// The main queue's attributes as read at start-up.
    attributes: QueueAttributes,
    /// The attributes in use, read again every `QUEUE_ATTRIBUTES_REFRESH`.
    current: CurrentAttributes,
    http: TcpListener,
}

impl Listener {
    /// Connects to MySQL, finds the queues and binds the HTTP address.
    pub async fn build(settings: ListenerSettings) -> anyhow::Result<Self> {
        settings.validate()?;
        let http = TcpListener::bind(settings.listener_addr)
            .await
            .with_context(|| format!("Failed to bind LISTENER_ADDR {}", settings.listener_addr))?;
        let pool = db::connect(&settings.database)
            .await
            .context("Failed to connect to MySQL")?;
        let client = sqs::client(&settings.sqs).await;
        let main_url = sqs::find_queue(&client, &settings.sqs.accrual_queue).await?;
        let dlq_url = sqs::find_queue(&client, &settings.sqs.accrual_dlq).await?;
        let attributes = attributes::read(&client, &main_url)
            .await
            .context("Failed to read the queue's visibility timeout and redrive policy")?;
        if attributes.max_receive_count.is_none() {
            tracing::warn!(queue = %settings.sqs.accrual_queue, "The queue has no redrive policy; run `accrualctl init`");
        }
        let metrics = Arc::new(ListenerMetrics::new());
        let current = CurrentAttributes::new(
            attributes,
            metrics.max_receive_count.clone(),
            metrics.visibility_timeout_seconds.clone(),
        );
        let queue = Queue {
            client,
            main_url,
            dlq_url,
            main_name: settings.sqs.accrual_queue.clone(),
            delete_calls: metrics.delete_calls.clone(),
        };
        let progress = Progress::connect(&settings.redis).await;
        let gate = DatabaseGate::new(
            metrics.database_up.clone(),
            metrics.database_outages.clone(),
        );
        Ok(Self {
            ledger: Ledger::new(pool, settings.batch_max_rows as usize),
            progress,
            queue,
            metrics,
            gate,
            attributes,
            current,
            http,
            settings,
        })
    }

    /// What this listener has done so far (the same values `/metrics` shows).
    pub fn metrics(&self) -> Arc<ListenerMetrics> {
        self.metrics.clone()
    }

    /// The port `/healthz` and `/metrics` are served on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.http.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Consumes until `shutdown` is cancelled: then stops receiving, writes and deletes what it
    /// holds, and returns. If that takes longer than the shutdown grace (MySQL down), the held
    /// messages are made visible again instead.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let max_rows = self.settings.batch_max_rows as usize;
        // Room for the batches being written and deleted and one more: receivers keep the next
        // batch ready meanwhile. The channel's own bound (messages) is never the tighter one.
        let batches = crate::batcher::BATCHES_IN_PROCESS + 1;
        let room_points = (max_rows * batches) as u32;
        let (to_batcher, inbound) = mpsc::channel(max_rows * batches);
        let dead_letters = DeadLetterLog {
            ledger: self.ledger.clone(),
            progress: self.progress.clone(),
        };
        let held = HeldMessages::new(self.metrics.in_flight.clone());
        let current = self.current;
        // Cancelled at the shutdown deadline: what still waits for MySQL then is given up.
        let abandon = CancellationToken::new();
        let tracker = TaskTracker::new();
        let receiver = receiver::Receiver {
            queue: self.queue.clone(),
            dead_letters: dead_letters.clone(),
            wait_secs: self.settings.receive_wait_secs,
            long_poll: sqs::long_poll_override(&self.settings.sqs, self.settings.receive_wait_secs),
            to_batcher,
            room: Arc::new(tokio::sync::Semaphore::new(room_points as usize)),
            room_points,
            attributes: current.clone(),
            gate: self.gate.clone(),
            abandon: abandon.clone(),
            held: held.clone(),
            metrics: self.metrics.clone(),
        };
        for _ in 0..self.settings.receive_tasks.max(1) {
            tracker.spawn(receiver::run(receiver.clone(), shutdown.clone()));
        }
        drop(receiver);

        let grace = Duration::from_secs(self.settings.shutdown_grace_secs);
        let deadline = tokio::spawn({
            let (shutdown, abandon) = (shutdown.clone(), abandon.clone());
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                abandon.cancel();
            }
        });

        let http_stop = CancellationToken::new();
        let server = tokio::spawn({
            let app = crate::http::router(self.metrics.clone(), self.gate.clone());
            let stop = http_stop.clone();
            let http = self.http;
            async move {
                axum::serve(http, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
        });

        let keeper_stop = CancellationToken::new();
        let keeper = tokio::spawn(crate::held::keep_visible(
            held.clone(),
            self.queue.clone(),
            self.ledger.clone(),
            current.clone(),
            self.metrics.clone(),
            keeper_stop.clone(),
        ));
        let refresher = tokio::spawn(attributes::keep_current(
            current,
            self.queue.client.clone(),
            self.queue.main_url.clone(),
            self.attributes,
            self.settings.queue_attributes_refresh,
            keeper_stop.clone(),
        ));

        let batcher = Batcher {
            ledger: self.ledger,
            queue: self.queue,
            dead_letters,
            metrics: self.metrics.clone(),
            progress: self.progress,
            gate: self.gate,
            held: held.clone(),
            max_rows,
            linger: self.settings.batch_linger,
        };
        tracing::info!(
            receive_tasks = self.settings.receive_tasks,
            max_rows,
            visibility_timeout_secs = self.attributes.visibility_timeout.as_secs(),
            max_receive_count = ?self.attributes.max_receive_count,
            addr = %self.settings.listener_addr,
            "Listener running"
        );
        tracker.spawn(batcher.run(inbound, abandon));
        tracker.close();
        tracker.wait().await;
        deadline.abort();
        keeper_stop.cancel();
        let _ = keeper.await;
        let _ = refresher.await;
        http_stop.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server failed"),
            Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        }
        let m = &self.metrics;
        tracing::info!(
            received = m.received.get(),
            written = m.written.get(),
            duplicates = m.duplicates.get(),
            dead_lettered = m.dead_lettered.get(),
            database_outages = m.database_outages.get(),
            "Listener stopped"
        );
        Ok(())
    }
}
