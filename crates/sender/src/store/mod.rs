//! The store layer: the MySQL queries (and the live counters in Redis) that the HTTP layer and
//! the workers share. It depends on `accrual_core` only, never on [`crate::http`] or
//! [`crate::workers`] (`tests/api/layers.rs`).
//!
//! # Layout
//! - [`jobs`] — `accrual_jobs` with its `accrual_chunks`: insert, find by idempotency key,
//!   cancel, list.
//! - [`intake`] — an accepted request stored as a job, with the rules of a race for its ids or key.
//! - [`admission`] — which items of a request a job stores, by their `external_id`s.
//! - [`chunks`] — the dispatchers' leases on due chunks, and marking them dispatched.
//! - [`job_status`] — a job as its client sees it: stored outcome or live counters.
//! - [`results`] — a job's per-item results, read from its chunks and the ledger.
//! - [`reversals`] — a reversal job's original, its written points and compensating chunks.
//! - [`members`] — multi-row member upserts.
//! - [`member_ledger`] — a member's ledger page and balance; a reserved job's amounts.
//! - [`client_index`] — whether member queries may read the ledger's client index yet.
//! - [`external_ids`] — the first use of each `external_id`, and its claim in a job's transaction.

pub mod admission;
pub mod chunks;
pub mod client_index;
pub mod external_ids;
pub mod intake;
pub mod job_status;
pub mod jobs;
pub mod member_ledger;
pub mod members;
pub mod results;
pub mod reversals;
