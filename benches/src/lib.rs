//! Shared parts of the load generator (`accrual-load`), the end-to-end benchmark (`accrual-bench`)
//! and the criterion micro-benchmarks.

pub mod proc_stats;
pub mod progress;
pub mod stats;
pub mod workload;
