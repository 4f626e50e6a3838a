//! The accrual listener: consumes one SQS message per point, writes points to MySQL in multi-row
//! batches with `accrual_id` as the idempotency key, and dead-letters what cannot be written.
//!
//! # Layout
//! - [`startup`] — `Listener::build` (connect) and `run` (until cancelled).
//! - [`settings`] — environment variables / CLI flags.
//! - [`receiver`] — long-poll receive tasks; decode; poison to the DLQ.
//! - [`batcher`] — batches by size or linger; write, then delete.
//! - [`ledger`] — the multi-row insert with fixed statement shapes and the duplicate count.
//! - [`attributes`] — the queue's `maxReceiveCount` and visibility timeout, read every minute.
//! - [`gate`] — MySQL up or down; receivers pause while it is down.
//! - [`held`] — messages held, the task that extends their visibility, and the hold cap.
//! - [`queue`] — DeleteMessageBatch, visibility changes and dead-lettering.
//! - [`metrics`] — Prometheus metrics, also read by tests.
//! - [`http`] — `/healthz` and `/metrics`.

pub mod attributes;
pub mod batcher;
pub mod gate;
pub mod held;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod queue;
pub mod receiver;
pub mod settings;
pub mod startup;

pub use settings::ListenerSettings;
pub use startup::Listener;
