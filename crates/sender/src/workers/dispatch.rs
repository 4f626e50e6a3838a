//! Dispatcher tasks: claim due chunks by lease, fan them out to SQS, mark them dispatched.
//!
//! Every sender replica runs these tasks against the same tables, through
//! [`crate::store::chunks`]: replicas never wait on each other, and a replica that dies loses its
//! chunk when the lease runs out. Re-sending part of a chunk is harmless: its points keep their
//! `accrual_id`s and the listener stores each once.

pub mod backlog;
pub mod fanout;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use accrual_core::sqs::MAX_BATCH_BYTES;
use accrual_core::{chunk, dead_letter, message};
use sqlx::MySqlPool;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::Wake;
use crate::metrics::SenderMetrics;
use crate::store::chunks::{ChunkLeases, Claimed};
use backlog::Backlog;
use fanout::{Fanout, FanoutError, Refused, Sent};
pub use settings::{DispatchDeps, DispatchSettings, MIN_DISPATCH_LEASE, MIN_DISPATCH_POLL};

/// How long to wait before retrying a chunk whose fan-out failed (SQS down, say).
const FAILED_CHUNK_RETRY: Duration = Duration::from_secs(5);

/// Where the dispatcher puts points SQS refuses for good.
#[derive(Clone, Debug)]
pub struct DeadLetterQueue {
    pub client: aws_sdk_sqs::Client,
    pub url: String,
    /// Name of the main queue, recorded on every dead letter.
    pub source_queue: String,
}

#[derive(Clone, Debug)]
pub struct Dispatcher {
    pool: MySqlPool,
    fanout: Fanout,
    dead_letters: DeadLetterQueue,
    /// Points packed into one message (1: v1 messages).
    points_per_message: usize,
    progress: Progress,
    metrics: Arc<SenderMetrics>,
    /// This replica's leases on chunks (its name is their `lease_owner`).
    chunks: ChunkLeases,
    lease: Duration,
    /// How often idle tasks look for due chunks (reserved jobs become due without a wake-up).
    poll: Duration,
    /// Woken when a request stores a job, so idle tasks start at once.
    wake: Wake,
    /// How far dispatch may run ahead of the listeners.
    backlog: Backlog,
    /// Dispatch tasks to start (`DISPATCH_TASKS`; with 0 this replica only accepts jobs).
    tasks: usize,
}

/// How a dispatch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dispatched {
    /// Sent, handed back at shutdown, or left for a retry after an error.
    Done,
    /// SQS made no progress for a whole lease: the chunk is another replica's now.
    GaveUp,
}

impl Dispatcher {
    /// A replica's dispatchers, as `settings` say (validated), on `deps`.
    pub fn new(settings: &DispatchSettings, deps: DispatchDeps) -> Self {
        let DispatchDeps {
            pool,
            sqs,
            queue_url,
            dead_letters,
            progress,
            metrics,
            owner,
        } = deps;
        let fanout = Fanout::new(
            sqs.clone(),
            queue_url.clone(),
            settings.send_concurrency,
            metrics.send_calls.clone(),
        )
        .with_message_groups(settings.dispatch_message_groups);
        let backlog = Backlog::new(
            sqs,
            queue_url,
            pool.clone(),
            settings.dispatch_queue_horizon,
            settings.points_per_message,
            settings.dispatch_poll,
            metrics.clone(),
        );
        Self {
            chunks: ChunkLeases::new(
                pool.clone(),
                owner,
                settings.dispatch_lease,
                Arc::new(settings.dispatch_client_weights.clone()),
            ),
            pool,
            fanout,
            dead_letters,
            points_per_message: settings.points_per_message as usize,
            progress,
            metrics,
            lease: settings.dispatch_lease,
            poll: settings.dispatch_poll,
            wake: Wake::default(),
            backlog,
            tasks: settings.dispatch_tasks,
        }
    }

    /// How the dispatchers send messages (the reconciler re-sends missing points with it).
    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// The background's pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Where points SQS refuses for good go.
    pub fn dead_letters(&self) -> &DeadLetterQueue {
        &self.dead_letters
    }

    /// Points packed into one message (1: v1 messages).
    pub fn points_per_message(&self) -> usize {
        self.points_per_message
    }

    /// The handle that tells idle tasks a job was stored.
    pub fn wake_handle(&self) -> Wake {
        self.wake.clone()
    }

    /// Starts `tasks` dispatcher loops on `tracker`, on the runtime `on` (the background one);
    /// they stop when `shutdown` is cancelled. With 0 tasks this replica only accepts jobs; others
    /// dispatch them.
    pub fn spawn(
        &self,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        on: &tokio::runtime::Handle,
    ) {
        let tasks = self.tasks;
        tracing::info!(owner = %self.chunks.owner(), tasks, "Dispatcher starting");
        for _ in 0..tasks {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn_on(async move { this.run(shutdown).await }, on);
        }
    }

    /// Claims and sends every due chunk now, one after another, as one dispatch task would;
    /// returns how many it sent (or handed back). A claim that fails ends it with the error.
    pub async fn run_once(&self) -> Result<usize, sqlx::Error> {
        let shutdown = CancellationToken::new();
        let mut chunks = 0;
        while let Some(chunk) = self.chunks.claim_due().await? {
            self.dispatch(chunk, &shutdown).await;
            chunks += 1;
        }
        Ok(chunks)
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            // No chunk is claimed while the queue holds DISPATCH_QUEUE_HORIZON of work, so none is
            // held (and none kept from another replica) while waiting.
            self.backlog.wait_for_room(&shutdown).await;
            if shutdown.is_cancelled() {
                break;
            }
            // Register interest before looking, so a wake-up between the look and the wait is kept.
            let notified = self.wake.notified();
            match self.chunks.claim_due().await {
                Ok(Some(chunk)) => {
                    backoff = Duration::from_millis(200);
                    if self.dispatch(chunk, &shutdown).await == Dispatched::GaveUp {
                        // This replica's SQS makes no progress: leave due chunks to replicas
                        // whose SQS works for a lease before claiming again.
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(self.lease) => {}
                        }
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = notified => {}
                        () = tokio::time::sleep(self.poll) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "Claiming a chunk failed");
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Sends a claimed chunk, renewing the lease while it goes; on shutdown, hands it back.
    async fn dispatch(&self, chunk: Claimed, shutdown: &CancellationToken) -> Dispatched {
        let (job_id, seq, client_id) = (chunk.job_id, chunk.seq, chunk.client_id);
        let per_message = self.points_per_message;
        let unpack = move || -> Result<(usize, Vec<String>), anyhow::Error> {
            let bodies = chunk::decode(&chunk.items)?;
            let points = bodies.len();
            Ok((points, message::pack(bodies, per_message, MAX_BATCH_BYTES)?))
        };
        let (points, bodies) = match tokio::task::spawn_blocking(unpack).await {
            Ok(Ok(unpacked)) => unpacked,
            Ok(Err(e)) => {
                tracing::error!(%job_id, seq, error = %e, "Stored chunk is unreadable; leaving it leased for an operator");
                return Dispatched::Done;
            }
            Err(e) => {
                tracing::error!(%job_id, seq, error = %e, "Decoding a chunk panicked");
                return Dispatched::Done;
            }
        };
        let progress = AtomicU64::new(0);
        let send = self.send_chunk(bodies, &client_id, &progress);
        tokio::pin!(send);
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.tick().await;
        // The lease is renewed only while SQS answers: a replica whose sends hang (a network that
        // drops its packets, a stuck connection pool) lets its lease run out, so another replica
        // takes the chunk over, and gives the chunk up itself once the lease has lapsed.
        let mut answered = 0;
        let mut renewed_at = Instant::now();
        let result = loop {
            tokio::select! {
                r = &mut send => break r,
                _ = renew.tick() => {
                    let now = progress.load(Ordering::Relaxed);
                    if now > answered {
                        answered = now;
                        match self.chunks.extend(job_id, seq, self.lease).await {
                            Ok(()) => renewed_at = Instant::now(),
                            Err(e) => tracing::warn!(%job_id, seq, error = %e, "Renewing a lease failed"),
                        }
                    } else if renewed_at.elapsed() >= self.lease {
                        self.metrics.chunks_abandoned.inc();
                        tracing::warn!(%job_id, seq, lease_ms = self.lease.as_millis() as u64, "SQS made no progress for a whole lease; leaving the chunk to another replica");
                        return Dispatched::GaveUp;
                    } else {
                        tracing::warn!(%job_id, seq, "SQS made no progress since the last renewal; not renewing the lease");
                    }
                }
                () = shutdown.cancelled() => {
                    // Hand the chunk back so another replica takes it over at once.
                    match self.chunks.hand_back(job_id, seq).await {
                        Ok(()) => tracing::info!(%job_id, seq, "Released a chunk at shutdown"),
                        Err(e) => tracing::warn!(%job_id, seq, error = %e, "Releasing a chunk failed; it is taken over when its lease ends"),
                    }
                    return Dispatched::Done;
                }
            }
        };
        match result {
            Ok(Sent { sent, refused }) => {
                if let Err(e) = self.dead_letter(job_id, &refused).await {
                    tracing::warn!(%job_id, seq, error = %e, "Dead-lettering refused points failed; retrying the chunk later");
                    let _ = self.chunks.extend(job_id, seq, FAILED_CHUNK_RETRY).await;
                    return Dispatched::Done;
                }
                if let Err(e) = self.chunks.mark_dispatched(job_id, seq).await {
                    // The chunk will be sent again after its lease ends; harmless, only slower.
                    tracing::warn!(%job_id, seq, error = %e, "Marking a chunk dispatched failed");
                    return Dispatched::Done;
                }
                self.metrics
                    .points_dispatched
                    .inc_by((points - refused.len()) as u64);
                self.metrics
                    .client_points_dispatched
                    .get_or_create(&self.metrics.client_label(&client_id))
                    .inc_by((points - refused.len()) as u64);
                self.metrics.points_refused.inc_by(refused.len() as u64);
                self.metrics.messages_dispatched.inc_by(sent as u64);
                self.backlog.sent(sent as u64);
                self.metrics.chunks_dispatched.inc();
                self.progress
                    .add(
                        job_id,
                        &[
                            ("enqueued", points as u64),
                            ("dead_lettered", refused.len() as u64),
                        ],
                    )
                    .await;
                tracing::debug!(%job_id, seq, points, messages = sent, "Chunk dispatched");
            }
            Err(e) => {
                tracing::error!(%job_id, seq, error = ?anyhow::Error::new(e), "Chunk fan-out failed; retrying it later");
                let _ = self.chunks.extend(job_id, seq, FAILED_CHUNK_RETRY).await;
            }
        }
        Dispatched::Done
    }

    /// Sends a chunk's bodies. A packed body SQS refuses for good is sent again as its points, one
    /// v1 message each, so only the points at fault are refused.
    async fn send_chunk(
        &self,
        bodies: Vec<String>,
        client_id: &str,
        progress: &AtomicU64,
    ) -> Result<Sent, FanoutError> {
        let mut sent = self.fanout.send_all(bodies, client_id, progress).await?;
        if self.points_per_message > 1 && !sent.refused.is_empty() {
            // Every packed body, even one holding a single point (the last message of a chunk
            // whose size is not a multiple of the packing): only a v1 body names the point a dead
            // letter is recorded for, and a packed one left here would fail the chunk for good.
            let (packed, single): (Vec<Refused>, Vec<Refused>) = std::mem::take(&mut sent.refused)
                .into_iter()
                .partition(|r| message::unpack(&r.body).is_some_and(|p| !p.is_empty()));
            sent.refused = single;
            let points: Vec<String> = packed
                .iter()
                .filter_map(|r| message::unpack(&r.body))
                .flatten()
                .collect();
            tracing::warn!(
                points = points.len(),
                "SQS refused packed messages; sending their points one by one"
            );
            let again = self.fanout.send_all(points, client_id, progress).await?;
            sent.sent += again.sent;
            sent.refused.extend(again.refused);
        }
        Ok(sent)
    }

    /// Records each refused point as a dead letter of its job and puts it on the dead-letter
    /// queue with SQS's reason. Either step failing fails the whole (the chunk is tried again;
    /// its other points are then duplicates, which the listener absorbs).
    async fn dead_letter(&self, job_id: Uuid, refused: &[Refused]) -> anyhow::Result<()> {
        let dlq = &self.dead_letters;
        for point in refused {
            let Some(ids) = dead_letter::PointIds::of(&point.body) else {
                anyhow::bail!("a stored body of job {job_id} names no accrual_id");
            };
            tracing::error!(%job_id, accrual_id = %ids.accrual_id, reason = %point.reason, "SQS refused a point for good; dead-lettering it");
            dead_letter::record(&self.pool, ids, &point.reason).await?;
            dead_letter::send(
                &dlq.client,
                &dlq.url,
                &dlq.source_queue,
                &point.body,
                &point.reason,
            )
            .await?;
        }
        Ok(())
    }
}
