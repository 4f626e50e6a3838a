//! The HTTP layer: the router, the state handlers share, the server and its connection limits,
//! API keys, rate limits, request ids, the one `ApiError`, the OpenAPI document and the handlers.
//! It calls [`crate::store`] and wakes the workers through [`crate::workers::Wake`], nothing else
//! of theirs (`tests/api/layers.rs`).

pub mod access;
pub mod accruals;
pub mod auth;
pub mod client_slots;
pub(crate) mod cursor;
pub mod error;
pub mod jobs;
pub mod members;
pub mod middleware;
pub mod openapi;
pub mod ops;
pub mod place;
pub mod rate_limit;
pub mod readiness;
pub mod request_id;
pub mod results;
pub mod reversal;
pub mod router;
pub mod schemas;
pub mod server;
pub mod state;
pub mod watch;

pub use router::router;
