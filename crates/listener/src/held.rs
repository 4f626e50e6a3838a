//! Messages this listener has received and not yet deleted or handed back, and the task that keeps
//! them hidden: when a batch takes long (a slow MySQL, an outage) the messages of that batch and of
//! those queued behind it would otherwise reach their visibility timeout and be delivered again,
//! adding to their receive count.
//!
//! - **Last receives.** A message on its last receive has its points recorded ahead as dead
//!   letters that count from when SQS would move it. Before the keeper extends such a message, it
//!   moves those dead letters' `counts_from` past the new timeout; if that fails, the message is
//!   not extended (tried again at the next tick), so a dead letter never counts while this
//!   listener still holds its point, and counts once SQS has moved it.
//! - **Failed extensions** are tried again at the next tick, until the message's visibility has
//!   run out (it is no longer this listener's to extend).
//! - **The hold cap.** A message is held at most [`HOLD_CAP_VISIBILITY_TIMEOUTS`] visibility
//!   timeouts from its receive. Then the keeper stops extending it, and the batch or record-ahead
//!   holding it gives up: its attempt is abandoned and its MySQL connection closed (see
//!   `ledger`), so a write stuck on a lock or a dead server lets go, and SQS delivers the message
//!   again (to this listener or another, or to the dead-letter queue if it was its last receive).
//!   The cap is a plain deadline fixed at receive, rather than a measure of progress: simple to
//!   reason about, and the sender's reconciler waits at least that long before it counts a job
//!   quiet, so it never re-sends a point a listener still holds.
//!
//! [`HOLD_CAP_VISIBILITY_TIMEOUTS`]: accrual_core::sqs::HOLD_CAP_VISIBILITY_TIMEOUTS

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::attributes::CurrentAttributes;
use crate::ledger::Ledger;
use crate::metrics::ListenerMetrics;
use crate::queue::Queue;

/// Visibility is never extended more often than this, however short the queue's timeout.
const MIN_EXTEND_EVERY: Duration = Duration::from_millis(500);
/// Added to a recorded-ahead dead letter's `counts_from` beyond the new visibility timeout: the
/// extension is made after the update, so the message stays hidden a little past `now + timeout`.
const COUNTS_FROM_MARGIN: Duration = Duration::from_secs(1);
/// Longest the keeper waits for MySQL to move `counts_from`: it must not hold up the extension of
/// every other message. With a short visibility timeout it waits at most half of what is left of
/// the window when a message falls due, so the extensions after it still land in time.
const DEFER_TIMEOUT: Duration = Duration::from_secs(5);

/// One held message.
#[derive(Debug)]
struct Hold {
    /// When its visibility timeout runs out, as this listener last set it.
    visible_until: Instant,
    /// The hold cap: it is not extended after this.
    give_up_at: Instant,
    /// The points recorded ahead as dead letters (on its last receive).
    ahead: Vec<Uuid>,
    /// Whether the keeper has already counted it at the cap.
    capped: bool,
}

/// Receipt handles of held messages; their number is the `messages_in_flight` gauge.
#[derive(Clone, Debug, Default)]
pub struct HeldMessages {
    inner: Arc<Mutex<HashMap<String, Hold>>>,
    count: Gauge,
}

/// A held message whose visibility is due to be extended.
#[derive(Debug)]
struct Due {
    handle: String,
    ahead: Vec<Uuid>,
}

impl HeldMessages {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hold>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held messages counted in `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        Self {
            inner: Arc::default(),
            count: gauge,
        }
    }

    /// Records a message hidden until `visible_until`, to be let go at `give_up_at`.
    pub fn hold(&self, receipt_handle: &str, visible_until: Instant, give_up_at: Instant) {
        let hold = Hold {
            visible_until,
            give_up_at,
            ahead: Vec::new(),
            capped: false,
        };
        if self
            .lock()
            .insert(receipt_handle.to_owned(), hold)
            .is_none()
        {
            self.count.inc();
        }
    }

    /// Notes the points of a held message recorded ahead as dead letters.
    pub fn recorded_ahead(&self, receipt_handle: &str, accrual_ids: Vec<Uuid>) {
        if let Some(hold) = self.lock().get_mut(receipt_handle) {
            hold.ahead = accrual_ids;
        }
    }

    /// Forgets messages that were deleted or handed back.
    pub fn release(&self, receipt_handles: &[String]) {
        let mut held = self.lock();
        for h in receipt_handles {
            if held.remove(h).is_some() {
                self.count.dec();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Held messages still hidden at `now` whose visibility runs out by `before`, and not at
    /// their cap; and how many reached their cap since the last call.
    fn due(&self, now: Instant, before: Instant) -> (Vec<Due>, usize) {
        let mut newly_capped = 0;
        let mut due = Vec::new();
        for (handle, hold) in self.lock().iter_mut() {
            if hold.give_up_at <= now {
                if !hold.capped {
                    hold.capped = true;
                    newly_capped += 1;
                }
            } else if hold.visible_until > now && hold.visible_until <= before {
                due.push(Due {
                    handle: handle.clone(),
                    ahead: hold.ahead.clone(),
                });
            }
        }
        (due, newly_capped)
    }

    /// Notes that `handles`, if still held, are now hidden until `visible_until`.
    fn extended(&self, handles: &[String], visible_until: Instant) {
        let mut held = self.lock();
        for h in handles {
            if let Some(hold) = held.get_mut(h) {
                hold.visible_until = visible_until;
            }
        }
    }
}

/// Extends the visibility of every held message once half of its visibility timeout has passed,
/// until `stop` is cancelled.
pub async fn keep_visible(
    held: HeldMessages,
    queue: Queue,
    ledger: Ledger,
    attributes: CurrentAttributes,
    metrics: Arc<ListenerMetrics>,
    stop: CancellationToken,
) {
    let mut tick_every = tick(attributes.get().visibility_timeout);
    let mut interval = tokio::time::interval(tick_every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let visibility = attributes.get().visibility_timeout;
        extend_due(&held, &queue, &ledger, visibility, &metrics).await;
        if tick(visibility) != tick_every {
            tick_every = tick(visibility);
            interval = tokio::time::interval(tick_every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
    }
}

/// How often the keeper looks at the held messages for a queue's visibility timeout.
fn tick(visibility: Duration) -> Duration {
    let every = (visibility / 2).max(MIN_EXTEND_EVERY);
    (every / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// One round of the keeper: extends the messages whose visibility is half gone.
async fn extend_due(
    held: &HeldMessages,
    queue: &Queue,
    ledger: &Ledger,
    visibility: Duration,
    metrics: &ListenerMetrics,
) {
    let every = (visibility / 2).max(MIN_EXTEND_EVERY);
    let secs = i32::try_from(visibility.as_secs().max(1)).unwrap_or(i32::MAX);
    let now = Instant::now();
    let (due, capped) = held.due(now, now + visibility.saturating_sub(every));
    if capped > 0 {
        // Counted in `hold_cap_reached` where the batch or record-ahead holding them gives up.
        tracing::warn!(
            messages = capped,
            "Messages held for the hold cap; no longer extended, SQS delivers them again"
        );
    }
    if due.is_empty() {
        return;
    }
    let ahead: Vec<Uuid> = due.iter().flat_map(|d| d.ahead.iter().copied()).collect();
    let deferred = ahead.is_empty()
        || {
            match tokio::time::timeout(
                DEFER_TIMEOUT.min(every / 2),
                ledger.defer_dead_letters_ahead(&ahead, visibility + COUNTS_FROM_MARGIN),
            )
            .await
            {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(points = ahead.len(), error = %e, "Moving recorded-ahead dead letters' counts_from failed; their messages are not extended this time");
                    false
                }
                Err(_) => {
                    tracing::warn!(
                        points = ahead.len(),
                        "Moving recorded-ahead dead letters' counts_from timed out; their messages are not extended this time"
                    );
                    false
                }
            }
        };
    let to_extend: Vec<String> = due
        .into_iter()
        .filter(|d| deferred || d.ahead.is_empty())
        .map(|d| d.handle)
        .collect();
    let failed = queue.change_visibility_failing(&to_extend, secs).await;
    let extended: Vec<String> = to_extend
        .into_iter()
        .filter(|h| !failed.contains(h))
        .collect();
    held.extended(&extended, now + visibility);
    metrics.visibility_extensions.inc_by(extended.len() as u64);
    tracing::info!(
        messages = extended.len(),
        failed = failed.len(),
        visibility_secs = secs,
        "Messages held longer than half their visibility timeout; extended it"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_due_until_their_timeout_runs_out_and_never_after_their_cap() {
        let held = HeldMessages::default();
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        held.hold("old", t0 + secs(10), t0 + secs(100));
        held.hold("new", t0 + secs(20), t0 + secs(100));
        held.hold("capped", t0 + secs(10), t0 + secs(5));
        let handles = |due: Vec<Due>| due.into_iter().map(|d| d.handle).collect::<Vec<_>>();

        let (due, capped) = held.due(t0 + secs(6), t0 + secs(15));
        assert_eq!(handles(due), ["old"]);
        assert_eq!(capped, 1);
        // Not extended (a failed ChangeMessageVisibility): still due at the next tick.
        let (due, capped) = held.due(t0 + secs(7), t0 + secs(16));
        assert_eq!(handles(due), ["old"]);
        assert_eq!(capped, 0, "a message is counted at its cap once");
        held.extended(&["old".to_owned()], t0 + secs(30));
        assert!(held.due(t0 + secs(7), t0 + secs(16)).0.is_empty());
        // Run out: no longer this listener's to extend.
        assert!(held.due(t0 + secs(31), t0 + secs(40)).0.is_empty());

        assert_eq!(held.count.get(), 3);
        held.release(&["old".to_owned(), "new".to_owned(), "capped".to_owned()]);
        assert!(held.is_empty());
        assert_eq!(held.count.get(), 0);
    }
}
