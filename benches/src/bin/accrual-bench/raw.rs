//! The limits the pipeline sits on, measured without any of its logic: an SQS round trip of the
//! same message bodies at the same concurrency, and multi-row inserts of the same rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use accrual_benches::proc_stats;
use accrual_benches::progress::ProgressBar;
use accrual_core::message::PointRecord;
use accrual_core::sqs::{MAX_RECEIVE_MESSAGES, send_batches};
use anyhow::{Context, bail};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use futures_util::{StreamExt, TryStreamExt, stream};
use sqlx::MySqlPool;

/// One raw measurement: how many items, how long, and the CPU this process spent on it.
#[derive(Debug, Clone, Copy)]
pub struct RawOutcome {
    pub items: usize,
    pub elapsed: Duration,
    pub client_cpu_seconds: f64,
    /// Service calls made (SQS: SendMessageBatch, ReceiveMessage, DeleteMessageBatch; MySQL:
    /// INSERT statements).
    pub calls: u64,
}

impl RawOutcome {
    pub fn per_second(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn cpu_us_per_item(&self) -> f64 {
        self.client_cpu_seconds * 1e6 / self.items.max(1) as f64
    }

    pub fn calls_per_item(&self) -> f64 {
        self.calls as f64 / self.items.max(1) as f64
    }
}

/// How the SQS round trip is driven: as the dispatcher sends and the listeners receive.
#[derive(Debug, Clone, Copy)]
pub struct SqsShape {
    /// SendMessageBatch calls in flight (the sender's dispatch tasks × send concurrency).
    pub send_calls: usize,
    /// Receive loops (listeners × receive tasks), each deleting what it received.
    pub receivers: usize,
    pub wait_secs: i32,
}

/// Sends every body with SendMessageBatch (grouped as the dispatcher groups them), and at the same time
/// receives and deletes them with ReceiveMessage/DeleteMessageBatch, until all are deleted.
/// `points` is how many points the bodies carry (more than bodies when they are packed).
pub async fn sqs_round_trip(
    client: &Client,
    queue_url: &str,
    bodies: Vec<String>,
    points: usize,
    shape: SqsShape,
) -> anyhow::Result<RawOutcome> {
    let total = bodies.len();
    let deleted = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let cpu_before = own_cpu();
    let started = Instant::now();

    let mut receivers = Vec::with_capacity(shape.receivers);
    for _ in 0..shape.receivers.max(1) {
        let (client, url, deleted) = (client.clone(), queue_url.to_owned(), deleted.clone());
        let calls = calls.clone();
        receivers.push(tokio::spawn(async move {
            receive_and_delete(
                &client,
                &url,
                &deleted,
                &calls,
                total as u64,
                shape.wait_secs,
            )
            .await
        }));
    }
    let send = stream::iter(send_batches(bodies))
        .map(|batch| send_batch(client, queue_url, batch, &calls))
        .buffer_unordered(shape.send_calls.max(1))
        .try_for_each(|()| async { Ok(()) });
    let watch = watch_progress("raw SQS", deleted.clone(), total);
    let sent = send.await;
    let received = futures_util::future::try_join_all(receivers).await;
    watch.abort();
    let elapsed = started.elapsed();
    sent?;
    for r in received.context("a receive task panicked")? {
        r?;
    }
    ProgressBar::since("raw SQS", started).finish(
        deleted.load(Ordering::Relaxed),
        total as u64,
        "",
    );
    Ok(RawOutcome {
        items: points,
        elapsed,
        client_cpu_seconds: own_cpu() - cpu_before,
        calls: calls.load(Ordering::Relaxed),
    })
}

async fn send_batch(
    client: &Client,
    url: &str,
    batch: Vec<String>,
    calls: &AtomicU64,
) -> anyhow::Result<()> {
    let mut pending: Vec<(usize, String)> = batch.into_iter().enumerate().collect();
    for _attempt in 0..10 {
        calls.fetch_add(1, Ordering::Relaxed);
        let entries = pending
            .iter()
            .map(|(id, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(id.to_string())
                    .message_body(body.clone())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .context("SendMessageBatch failed")?;
        if out.failed().is_empty() {
            return Ok(());
        }
        let failed: Vec<String> = out.failed().iter().map(|f| f.id().to_owned()).collect();
        pending.retain(|(id, _)| failed.contains(&id.to_string()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("SendMessageBatch kept failing entries")
}

async fn receive_and_delete(
    client: &Client,
    url: &str,
    deleted: &AtomicU64,
    calls: &AtomicU64,
    total: u64,
    wait_secs: i32,
) -> anyhow::Result<()> {
    while deleted.load(Ordering::Relaxed) < total {
        calls.fetch_add(1, Ordering::Relaxed);
        let out = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(MAX_RECEIVE_MESSAGES)
            .wait_time_seconds(wait_secs)
            .send()
            .await
            .context("ReceiveMessage failed")?;
        let messages = out.messages();
        if messages.is_empty() {
            continue;
        }
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        calls.fetch_add(1, Ordering::Relaxed);
        let out = client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .context("DeleteMessageBatch failed")?;
        if !out.failed().is_empty() {
            bail!("DeleteMessageBatch failed {} entries", out.failed().len());
        }
        deleted.fetch_add(out.successful().len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Inserts the rows into `table` (a copy of `point_accruals`) in statements of `rows_per_statement`,
/// `connections` statements at once, each committed on its own.
pub async fn mysql_insert(
    pool: &MySqlPool,
    table: &str,
    records: &[PointRecord],
    rows_per_statement: usize,
    connections: usize,
) -> anyhow::Result<RawOutcome> {
    let rows_per_statement = rows_per_statement.max(1);
    let full_sql: Arc<str> = accrual_listener::ledger::insert_sql(table, rows_per_statement).into();
    let inserted = Arc::new(AtomicU64::new(0));
    let watch = watch_progress("raw MySQL", inserted.clone(), records.len());
    let cpu_before = own_cpu();
    let started = Instant::now();
    let result = stream::iter(records.chunks(rows_per_statement))
        .map(|chunk| {
            let sql = if chunk.len() == rows_per_statement {
                full_sql.clone()
            } else {
                accrual_listener::ledger::insert_sql(table, chunk.len()).into()
            };
            let rows: Vec<&PointRecord> = chunk.iter().collect();
            let inserted = inserted.clone();
            async move {
                // No job rows here: client_id is left NULL, as the write costs the same.
                let clients = std::collections::HashMap::new();
                accrual_listener::ledger::insert_query(sql, &rows, &clients)
                    .execute(pool)
                    .await?;
                inserted.fetch_add(rows.len() as u64, Ordering::Relaxed);
                Ok::<_, sqlx::Error>(())
            }
        })
        .buffer_unordered(connections.max(1))
        .try_for_each(|()| async { Ok(()) })
        .await;
    let elapsed = started.elapsed();
    watch.abort();
    result.context("the raw insert failed")?;
    ProgressBar::since("raw MySQL", started).finish(records.len() as u64, records.len() as u64, "");
    Ok(RawOutcome {
        items: records.len(),
        elapsed,
        client_cpu_seconds: own_cpu() - cpu_before,
        calls: records.len().div_ceil(rows_per_statement) as u64,
    })
}

fn own_cpu() -> f64 {
    proc_stats::own().map_or(0.0, |s| s.cpu_seconds)
}

/// Redraws a progress bar for `counter` every half second until aborted.
fn watch_progress(
    phase: &'static str,
    counter: Arc<AtomicU64>,
    total: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut bar = ProgressBar::new(phase);
        loop {
            bar.update(counter.load(Ordering::Relaxed), total as u64, "");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}
