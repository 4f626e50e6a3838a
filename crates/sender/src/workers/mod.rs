//! The workers layer: the work no client waits on, on its own runtime. It reads and writes through
//! [`crate::store`] and `accrual_core`, never through [`crate::http`] (`tests/api/layers.rs`).
//!
//! # Layout
//! - [`Workers`] — every task, started at once by [`Workers::spawn`]; [`Wake`], the one handle of
//!   theirs the HTTP layer holds (it wakes the dispatch tasks when a job is stored).
//! - [`runtime`] — the second runtime, at `DISPATCH_NICE`, with its own MySQL pool.
//! - [`dispatch`] — tasks that claim due chunks by lease and fan them out; `dispatch::fanout`
//!   (`SendMessageBatch` with bounded concurrency and retries) and `dispatch::backlog` (how far
//!   dispatch may run ahead of the listeners).
//! - [`completion`] — the task that settles finished jobs (final status, counts, `completed_at`).
//! - [`reconciler`] — the safety net: compares quiet jobs with the ledger, re-sends what is
//!   missing, gives up on it as lost in transit after its re-sends (one replica, by lease).
//! - [`retention`] — the task that purges expired chunk bodies and idempotency keys (one replica, by lease).
//! - [`webhook_delivery`] — the task that delivers signed webhooks from the outbox (one replica, by lease).

pub mod completion;
pub mod dispatch;
pub mod reconciler;
pub mod retention;
pub mod runtime;
pub mod webhook_delivery;

mod start;
mod wake;

pub use start::{Running, Steps, Workers};
pub use wake::Wake;
