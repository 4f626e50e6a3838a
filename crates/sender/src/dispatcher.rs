//! Dispatcher tasks: claim due chunks by lease, fan them out to SQS, mark them dispatched.
//!
//! Every sender replica runs these tasks against the same tables. A claim is a row lock taken with
//! `FOR UPDATE SKIP LOCKED` and turned into a lease (`lease_owner`, `lease_until`) before the
//! transaction ends, so replicas never wait on each other and a replica that dies loses its chunk
//! when the lease runs out. Re-sending part of a chunk is harmless: its points keep their
//! `accrual_id`s and the listener stores each once.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use accrual_core::sqs::MAX_BATCH_BYTES;
use accrual_core::{chunk, db, dead_letter, message, webhook};
use sqlx::MySqlPool;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::backlog::Backlog;
use crate::fanout::{Fanout, FanoutError, Refused, Sent};
use crate::metrics::SenderMetrics;

/// How long to wait before retrying a chunk whose fan-out failed (SQS down, say).
const FAILED_CHUNK_RETRY: Duration = Duration::from_secs(5);
/// Retries of marking a chunk dispatched when MySQL reports a deadlock or lock wait timeout.
const MARK_RETRIES: u32 = 5;

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
    /// This replica's name in `lease_owner` and `dispatched_by`.
    owner: String,
    lease: Duration,
    /// How often idle tasks look for due chunks (reserved jobs become due without a wake-up).
    poll: Duration,
    /// Woken when a request stores a job, so idle tasks start at once.
    wake: Arc<Notify>,
    /// How far dispatch may run ahead of the listeners.
    backlog: Backlog,
}

/// How a dispatch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dispatched {
    /// Sent, handed back at shutdown, or left for a retry after an error.
    Done,
    /// SQS made no progress for a whole lease: the chunk is another replica's now.
    GaveUp,
}

/// A chunk this replica holds the lease on.
struct Claimed {
    job_id: Uuid,
    seq: u32,
    items: Vec<u8>,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: MySqlPool,
        fanout: Fanout,
        dead_letters: DeadLetterQueue,
        points_per_message: u32,
        progress: Progress,
        metrics: Arc<SenderMetrics>,
        lease: Duration,
        poll: Duration,
        owner: String,
        backlog: Backlog,
    ) -> Self {
        Self {
            pool,
            fanout,
            dead_letters,
            points_per_message: points_per_message as usize,
            progress,
            metrics,
            owner,
            lease,
            poll,
            wake: Arc::new(Notify::new()),
            backlog,
        }
    }

    /// Tells idle tasks that a job was stored.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Starts `tasks` dispatcher loops on `tracker`, on the runtime `on` (the background one);
    /// they stop when `shutdown` is cancelled. With 0 tasks this replica only accepts jobs; others
    /// dispatch them.
    pub fn spawn(
        &self,
        tasks: usize,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        on: &tokio::runtime::Handle,
    ) {
        tracing::info!(owner = %self.owner, tasks, "Dispatcher starting");
        for _ in 0..tasks {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn_on(async move { this.run(shutdown).await }, on);
        }
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            // No chunk is claimed while the queue is at DISPATCH_MAX_QUEUE_DEPTH, so none is held
            // (and none kept from another replica) while waiting.
            self.backlog.wait_for_room(&shutdown).await;
            if shutdown.is_cancelled() {
                break;
            }
            // Register interest before looking, so a wake-up between the look and the wait is kept.
            let notified = self.wake.notified();
            match self.claim().await {
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

    /// Takes the lease on the oldest due chunk nobody holds.
    async fn claim(&self) -> Result<Option<Claimed>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(Uuid, u32)> = sqlx::query_as(
            "SELECT job_id, seq FROM accrual_chunks \
             WHERE dispatched_at IS NULL AND due_at <= NOW(6) AND (lease_until IS NULL OR lease_until < NOW(6)) \
             ORDER BY due_at, job_id, seq LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some((job_id, seq)) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        sqlx::query(
            "UPDATE accrual_chunks SET lease_owner = ?, lease_until = NOW(6) + INTERVAL ? MICROSECOND \
             WHERE job_id = ? AND seq = ?",
        )
        .bind(&self.owner)
        .bind(self.lease.as_micros() as u64)
        .bind(job_id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        let items: Vec<u8> =
            sqlx::query_scalar("SELECT items FROM accrual_chunks WHERE job_id = ? AND seq = ?")
                .bind(job_id)
                .bind(seq)
                .fetch_one(&mut *tx)
                .await?;
        let released = sqlx::query("UPDATE accrual_jobs SET status = 'dispatching' WHERE job_id = ? AND status = 'reserved'")
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        // A reserved job starting: its webhook event commits with the release, or neither does.
        if released.rows_affected() > 0 {
            webhook::record(&mut tx, job_id, webhook::Event::Released).await?;
        }
        tx.commit().await?;
        Ok(Some(Claimed { job_id, seq, items }))
    }

    /// Sends a claimed chunk, renewing the lease while it goes; on shutdown, hands it back.
    async fn dispatch(&self, chunk: Claimed, shutdown: &CancellationToken) -> Dispatched {
        let (job_id, seq) = (chunk.job_id, chunk.seq);
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
        let send = self.send_chunk(bodies, &progress);
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
                        match self.set_lease(job_id, seq, Some(self.lease)).await {
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
                    match self.set_lease(job_id, seq, None).await {
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
                    let _ = self.set_lease(job_id, seq, Some(FAILED_CHUNK_RETRY)).await;
                    return Dispatched::Done;
                }
                if let Err(e) = self.mark_dispatched(job_id, seq).await {
                    // The chunk will be sent again after its lease ends; harmless, only slower.
                    tracing::warn!(%job_id, seq, error = %e, "Marking a chunk dispatched failed");
                    return Dispatched::Done;
                }
                self.metrics
                    .points_dispatched
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
                let _ = self.set_lease(job_id, seq, Some(FAILED_CHUNK_RETRY)).await;
            }
        }
        Dispatched::Done
    }

    /// Sends a chunk's bodies. A packed body SQS refuses for good is sent again as its points, one
    /// v1 message each, so only the points at fault are refused.
    async fn send_chunk(
        &self,
        bodies: Vec<String>,
        progress: &AtomicU64,
    ) -> Result<Sent, FanoutError> {
        let mut sent = self.fanout.send_all(bodies, progress).await?;
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
            let again = self.fanout.send_all(points, progress).await?;
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

    /// Extends (`Some`) or releases (`None`) this replica's lease on a chunk.
    async fn set_lease(
        &self,
        job_id: Uuid,
        seq: u32,
        lease: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        let query = match lease {
            Some(lease) => sqlx::query(
                "UPDATE accrual_chunks SET lease_until = NOW(6) + INTERVAL ? MICROSECOND \
                 WHERE job_id = ? AND seq = ? AND lease_owner = ?",
            )
            .bind(lease.as_micros() as u64),
            None => sqlx::query(
                "UPDATE accrual_chunks SET lease_owner = NULL, lease_until = NULL \
                 WHERE job_id = ? AND seq = ? AND lease_owner = ?",
            ),
        };
        query
            .bind(job_id)
            .bind(seq)
            .bind(&self.owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a sent chunk dispatched, retrying a deadlock with another dispatcher's claim (seen
    /// about once per 300,000 points with two dispatch tasks): a chunk left unmarked would be sent
    /// again when its lease ends, which the listener absorbs as duplicates but which costs SQS calls.
    async fn mark_dispatched(&self, job_id: Uuid, seq: u32) -> Result<(), sqlx::Error> {
        let mut attempt = 0;
        loop {
            match self.try_mark_dispatched(job_id, seq).await {
                Err(e) if db::is_lock_conflict(&e) && attempt < MARK_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20) * attempt).await;
                }
                other => return other,
            }
        }
    }

    async fn try_mark_dispatched(&self, job_id: Uuid, seq: u32) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE accrual_chunks SET dispatched_at = NOW(6), dispatched_by = ?, lease_owner = NULL, lease_until = NULL \
             WHERE job_id = ? AND seq = ? AND dispatched_at IS NULL",
        )
        .bind(&self.owner)
        .bind(job_id)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE accrual_jobs SET status = 'enqueued' WHERE job_id = ? AND status = 'dispatching' \
             AND NOT EXISTS (SELECT 1 FROM accrual_chunks WHERE job_id = ? AND dispatched_at IS NULL)",
        )
        .bind(job_id)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}
