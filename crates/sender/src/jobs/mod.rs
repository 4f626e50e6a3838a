//! Durable jobs: storage, status and progress.

pub mod results;
pub mod reversal;
pub mod status;
pub mod store;
