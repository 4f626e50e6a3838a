//! Counters of what this listener has done, for logs, tests and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Messages received from the main queue (a redelivery counts again).
    pub received: AtomicU64,
    /// Points newly written to the ledger.
    pub written: AtomicU64,
    /// Points already in the ledger (redeliveries, re-sends) that wrote nothing.
    pub duplicates: AtomicU64,
    /// Messages moved to the dead-letter queue by this listener.
    pub dead_lettered: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
}

impl ListenerStats {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
