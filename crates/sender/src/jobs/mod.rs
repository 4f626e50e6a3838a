//! Durable jobs: storage, status and progress.

pub mod status;
pub mod store;
