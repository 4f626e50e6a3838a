//! The accrual sender: an HTTP API that validates bulk point accruals all-or-nothing, upserts their
//! members, stores the job durably in MySQL, and has dispatcher tasks fan each point out as one
//! SQS message.
//!
//! # Layout
//! - [`startup`] — `Application::build` (connect, bind) and `run_until_stopped`.
//! - [`server`] — the accept loop: connection cap, header-read and idle timeouts, shutdown grace.
//! - [`settings`] — environment variables / CLI flags.
//! - [`api`] — routes, the `POST /v1/accruals` handler, API keys, request ids, the one `ApiError`.
//! - [`members`] — multi-row member upserts.
//! - [`member_ledger`] — a member's ledger page and balance; a reserved job's amounts.
//! - [`jobs`] — durable jobs (`accrual_jobs` + compressed `accrual_chunks`), status and progress.
//! - [`background`] — the second runtime, at `DISPATCH_NICE`, that dispatch and the other
//!   background tasks run on, with their own MySQL pool.
//! - [`dispatcher`] — tasks that claim due chunks by lease and fan them out.
//! - [`backlog`] — the bound on how far dispatch may run ahead of the listeners.
//! - [`completion`] — the task that settles finished jobs (final status, counts, `completed_at`).
//! - [`reconciler`] — the safety net: compares quiet jobs with the ledger, re-sends what is
//!   missing, gives up on it as lost in transit after its re-sends (one replica, by lease).
//! - [`retention`] — the task that purges expired chunk bodies and idempotency keys (one replica, by lease).
//! - [`webhooks`] — the task that delivers signed webhooks from the outbox (one replica, by lease).
//! - [`fanout`] — `SendMessageBatch` with bounded concurrency and retries.
//! - [`rate_limit`] — per-client GCRA limits in Redis (fail open).
//! - [`metrics`] — Prometheus metrics.

pub mod api;
pub mod background;
pub mod backlog;
pub mod completion;
pub mod dispatcher;
pub mod external_ids;
pub mod fanout;
pub mod jobs;
pub mod member_ledger;
pub mod members;
pub mod metrics;
pub mod rate_limit;
pub mod reconciler;
pub mod retention;
pub mod server;
pub mod settings;
pub mod startup;
pub mod state;
pub mod webhooks;

pub use settings::SenderSettings;
pub use startup::Application;
