//! The points this process's writes hold, so that a message delivered twice is not counted as
//! written twice.

use std::collections::HashSet;
use std::sync::Arc;

use accrual_core::message::PointRecord;
use tokio::time::Instant;
use uuid::Uuid;

/// The points the writes of this process are writing, and a signal sent each time a write lets
/// its points go.
#[derive(Debug)]
pub(super) struct InFlight {
    points: std::sync::Mutex<HashSet<Uuid>>,
    released: tokio::sync::watch::Sender<u64>,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            points: std::sync::Mutex::default(),
            released: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl InFlight {
    /// Claims every point of `records` once no other write of this process holds any of them;
    /// `None` if `give_up_at` passes first.
    pub(super) async fn claim(
        self: &Arc<Self>,
        records: &[PointRecord],
        give_up_at: Instant,
    ) -> Option<Claimed> {
        let ids: Vec<Uuid> = records
            .iter()
            .map(|r| r.accrual_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        loop {
            let mut released = {
                let mut points = self.points();
                if !ids.iter().any(|id| points.contains(id)) {
                    points.extend(ids.iter().copied());
                    return Some(Claimed {
                        in_flight: self.clone(),
                        ids,
                    });
                }
                // Subscribed under the lock: a release after it is seen as a change.
                self.released.subscribe()
            };
            match tokio::time::timeout_at(give_up_at, released.changed()).await {
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    fn points(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.points
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The points of one write attempt, held until the attempt ends (committed, failed or
/// abandoned). Up to three batches are written at once, and a message delivered twice (its
/// visibility ran out while a write held it) can be in two of them: both would find its points
/// absent from the ledger (the look-up runs before the insert) and count them as written. So an
/// attempt waits until no other write of this process holds any of its points, then claims them
/// all at once (never holding some while waiting for others, so two attempts never wait for each
/// other). The second attempt then finds what the first committed, and counts it as duplicate;
/// or, if the first failed, writes the points itself: the message it deletes may be the only copy.
pub(super) struct Claimed {
    in_flight: Arc<InFlight>,
    ids: Vec<Uuid>,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let mut points = self.in_flight.points();
        for id in &self.ids {
            points.remove(id);
        }
        drop(points);
        self.in_flight.released.send_modify(|n| *n += 1);
    }
}
