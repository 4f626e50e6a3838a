//! The delivery task: while this replica holds the `webhooks` lease, it keeps up to
//! `WEBHOOK_CONCURRENCY` deliveries in flight, claiming more as each one ends.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use accrual_core::{lease, webhook};
use sqlx::MySqlPool;
use tokio::sync::{Notify, Semaphore};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::breaker::{Admission, Change, Endpoints};
use super::claim::{self, Claimed};
use super::deliver::Deliverer;
use super::settings::WebhookSettings;
use crate::metrics::SenderMetrics;

/// The delivery task of one replica.
#[derive(Clone, Debug)]
pub struct Webhooks {
    pool: MySqlPool,
    settings: WebhookSettings,
    metrics: Arc<SenderMetrics>,
    /// This replica's name in `maintenance_leases.owner`.
    owner: String,
    deliverer: Deliverer,
}

/// What the task keeps between steps.
struct Lane {
    /// One permit per delivery in flight, `WEBHOOK_CONCURRENCY` in all. Only the task's loop
    /// acquires them; a delivery gives its permit back when it has been recorded.
    slots: Arc<Semaphore>,
    /// Per-endpoint caps and circuits. A std mutex: nothing is awaited while it is held.
    endpoints: Arc<Mutex<Endpoints>>,
    /// Woken by each delivery that ends, so its slot is filled at once, not at the next poll.
    ended: Arc<Notify>,
    /// The deliveries in flight, waited for at shutdown.
    deliveries: TaskTracker,
    /// The client given the last slot: the next step starts with the client after it.
    cursor: Option<String>,
    /// When the lease was last taken or renewed, and whether this replica held it then.
    lease_checked: Option<(Instant, bool)>,
}

impl Webhooks {
    pub fn new(
        pool: MySqlPool,
        settings: WebhookSettings,
        metrics: Arc<SenderMetrics>,
        owner: String,
    ) -> anyhow::Result<Self> {
        let deliverer = Deliverer::new(pool.clone(), settings.clone(), metrics.clone())?;
        Ok(Self {
            pool,
            settings,
            metrics,
            owner,
            deliverer,
        })
    }

    /// Fills free slots now, then each time a delivery ends or `WEBHOOK_POLL` passes, until
    /// `shutdown` is cancelled; then waits for the deliveries in flight (each bounded by
    /// `WEBHOOK_TIMEOUT`) and gives the lease up.
    pub async fn run(self, shutdown: CancellationToken) {
        let s = &self.settings;
        tracing::info!(
            owner = %self.owner,
            retry_for_secs = s.webhook_retry_for.as_secs(),
            timeout_ms = s.webhook_timeout.as_millis() as u64,
            backoff_first_ms = s.webhook_backoff_first.as_millis() as u64,
            concurrency = s.webhook_concurrency,
            endpoint_concurrency = s.webhook_endpoint_concurrency,
            breaker_failures = s.webhook_breaker_failures,
            breaker_cool_off_ms = s.webhook_breaker_cool_off.as_millis() as u64,
            "Webhook delivery task starting"
        );
        let mut lane = self.lane();
        let mut ticks = tokio::time::interval(s.webhook_poll);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
                () = lane.ended.notified() => {}
            }
            if let Err(e) = self.step(&mut lane).await {
                tracing::warn!(error = %e, "Webhook claim failed; trying again next poll");
            }
        }
        lane.deliveries.close();
        lane.deliveries.wait().await;
        if let Err(e) = lease::release(&self.pool, webhook::LEASE, &self.owner).await {
            tracing::debug!(error = %e, "Could not give the webhook lease up; it expires by itself");
        }
    }

    /// One step now, as the loop makes each time a slot frees or `WEBHOOK_POLL` passes: takes or
    /// renews the lease and, if held, claims due events into the free slots and delivers them;
    /// returns once those deliveries are recorded.
    pub async fn run_once(&self) -> Result<(), sqlx::Error> {
        let mut lane = self.lane();
        let stepped = self.step(&mut lane).await;
        lane.deliveries.close();
        lane.deliveries.wait().await;
        stepped
    }

    /// A lane with every slot free and every endpoint's circuit closed.
    fn lane(&self) -> Lane {
        let s = &self.settings;
        Lane {
            slots: Arc::new(Semaphore::new(s.webhook_concurrency)),
            endpoints: Arc::new(Mutex::new(Endpoints::new(
                s.webhook_endpoint_concurrency,
                s.webhook_breaker_failures,
                s.webhook_breaker_cool_off,
            ))),
            ended: Arc::new(Notify::new()),
            deliveries: TaskTracker::new(),
            cursor: None,
            lease_checked: None,
        }
    }

    /// Renews the lease at most once per `WEBHOOK_POLL`; while it is held, claims due events into
    /// the free slots, in turns by client, and starts their deliveries.
    async fn step(&self, lane: &mut Lane) -> Result<(), sqlx::Error> {
        let holds = match lane.lease_checked {
            Some((at, holds)) if at.elapsed() < self.settings.webhook_poll => holds,
            _ => {
                let holds = lease::take(
                    &self.pool,
                    webhook::LEASE,
                    &self.owner,
                    self.settings.lease_length(),
                )
                .await?;
                lane.lease_checked = Some((Instant::now(), holds));
                if holds {
                    self.observe_due().await?;
                } else {
                    self.metrics.webhook_due.set(0);
                    self.metrics.webhook_oldest_due_seconds.set(0.0);
                }
                holds
            }
        };
        if !holds {
            return Ok(());
        }
        // Again while a pass claims less than it shared out (a client had fewer due than its
        // share) and slots are left; each pass claims at least one event or stops.
        loop {
            let free = lane.slots.available_permits();
            if free == 0 {
                return Ok(());
            }
            let due = claim::due_clients(&self.pool, lane.cursor.as_deref()).await?;
            let now = Instant::now();
            let admissions: Vec<Admission> = {
                let endpoints = lane
                    .endpoints
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                due.iter()
                    .map(|c| endpoints.admission(&c.key(), now))
                    .collect()
            };
            let wants: Vec<usize> = admissions
                .iter()
                .map(|a| match a {
                    Admission::Claim(n) => *n,
                    Admission::HoldBack(_) | Admission::Full => 0,
                })
                .collect();
            for (client, admission) in due.iter().zip(&admissions) {
                if let Admission::HoldBack(wait) = admission {
                    self.hold_back(&client.client_id, *wait).await?;
                }
            }
            let (shares, last) = claim::turns(&wants, free);
            if let Some(last) = last {
                lane.cursor = Some(due[last].client_id.clone());
            }
            let mut claimed = 0;
            for (client, share) in due.iter().zip(&shares) {
                if *share == 0 {
                    continue;
                }
                let lease = self.settings.lease_length();
                for event in claim::claim(&self.pool, client, *share, lease).await? {
                    claimed += 1;
                    self.start(lane, event).await;
                }
            }
            if claimed == 0 || claimed == shares.iter().sum::<usize>() {
                return Ok(());
            }
        }
    }

    /// Starts one claimed event's delivery in a free slot.
    async fn start(&self, lane: &Lane, event: Claimed) {
        // Only this loop acquires, and it claimed no more than were free: this does not wait.
        let Ok(permit) = lane.slots.clone().acquire_owned().await else {
            return;
        };
        lane.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .started(&event.key, Instant::now());
        self.metrics.webhook_in_flight.inc();
        let deliverer = self.deliverer.clone();
        let endpoints = lane.endpoints.clone();
        let ended = lane.ended.clone();
        let metrics = self.metrics.clone();
        lane.deliveries.spawn(async move {
            let attempt = deliverer.attempt(&event).await;
            let (change, open) = {
                let mut endpoints = endpoints.lock().unwrap_or_else(PoisonError::into_inner);
                let change = endpoints.finished(&event.key, attempt.outcome, Instant::now());
                (change, endpoints.open())
            };
            metrics.webhook_circuits_open.set(open as i64);
            match change {
                Some(Change::Opened) => {
                    metrics.webhook_circuit_opens.inc();
                    tracing::warn!(
                        client_id = event.key.client_id,
                        "Webhook endpoint failing: its circuit is open, its events are held back for WEBHOOK_BREAKER_COOL_OFF"
                    );
                }
                Some(Change::Closed) => {
                    tracing::info!(client_id = event.key.client_id, "Webhook endpoint answering again: its circuit is closed");
                }
                None => {}
            }
            if let Err(e) = deliverer.record(&event, &attempt).await {
                tracing::warn!(error = %e, event_id = %event.event_id, "Recording a webhook attempt failed; the event is tried again");
            }
            metrics.webhook_in_flight.dec();
            drop(permit);
            ended.notify_one();
        });
    }

    /// Moves the due events of a client whose endpoint's circuit is open to the end of its
    /// cool-off.
    async fn hold_back(
        &self,
        client_id: &str,
        wait: std::time::Duration,
    ) -> Result<(), sqlx::Error> {
        let held =
            claim::hold_back(&self.pool, client_id, wait, self.settings.webhook_retry_for).await?;
        self.metrics.webhook_held_back.inc_by(held.held);
        if held.gave_up > 0 {
            self.metrics.webhook_gave_up.inc_by(held.gave_up);
            tracing::warn!(
                client_id,
                events = held.gave_up,
                "Webhooks given up while their endpoint's circuit was open: their next attempt would come after WEBHOOK_RETRY_FOR"
            );
        }
        Ok(())
    }

    /// Sets the due gauges from the outbox.
    async fn observe_due(&self) -> Result<(), sqlx::Error> {
        let (due, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), TIMESTAMPDIFF(MICROSECOND, MIN(next_attempt_at), NOW(6)) \
             FROM webhook_events WHERE next_attempt_at <= NOW(6)",
        )
        .fetch_one(&self.pool)
        .await?;
        self.metrics.webhook_due.set(due);
        self.metrics
            .webhook_oldest_due_seconds
            .set(oldest.unwrap_or(0).max(0) as f64 / 1e6);
        Ok(())
    }
}
