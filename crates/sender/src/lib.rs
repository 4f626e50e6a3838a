//! The accrual sender: an HTTP API that validates bulk point accruals all-or-nothing, upserts their
//! members, stores the job durably in MySQL, and has dispatcher tasks fan each point out as one
//! SQS message.
//!
//! # Layout
//! Three layers, with one rule (checked by `tests/api/layers.rs`): `http → store, workers::Wake`;
//! `workers → store`; `store → accrual_core`.
//! - [`http`] — the router, the state handlers share, the server (accept loop, connection cap,
//!   timeouts), API keys, rate limits, request ids, the one `ApiError`, OpenAPI, the handlers;
//!   `http::ops`, the operations port (`/metrics`, `/readyz` from a cached check, `/healthz`).
//! - [`workers`] — the background runtime and its tasks: dispatch (with fan-out and backlog),
//!   completion, the reconciler, retention, webhook delivery.
//! - [`store`] — jobs and chunks, status, results, reversals, members, the member ledger, the
//!   client index, external ids.
//!
//! Wiring them, at the top:
//! - [`startup`] — `Application::build` (connect, bind the API and operations ports) and
//!   `run_until_stopped`.
//! - [`settings`] — environment variables / CLI flags.
//! - [`metrics`] — Prometheus metrics.

pub mod http;
pub mod metrics;
pub mod settings;
pub mod startup;
pub mod store;
pub mod workers;

pub use settings::SenderSettings;
pub use startup::Application;
