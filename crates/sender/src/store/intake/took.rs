//! Where an accepted request's time went, phase by phase, for its log lines.

use std::time::{Duration, Instant};

/// Where an accepted request's time went, for the log (the phases at debug level).
#[derive(Debug, Default)]
pub struct Took {
    /// Receiving the body.
    pub read: Duration,
    /// Its SHA-256, parsing and validating the items.
    pub parse: Duration,
    /// Finding the distinct members, and those not known to exist.
    pub distinct: Duration,
    /// Looking the external ids up (only after a claim found one taken, or with repeats).
    pub lookup: Duration,
    /// Encoding the chunks, beside making sure of the members and then claiming the ids.
    pub parallel: Duration,
    /// Each of the three.
    pub encode: Duration,
    pub members: Duration,
    pub claim: Duration,
    /// Members that were not in `members` yet.
    pub new_members: usize,
    /// Storing the job and its chunks, and committing.
    pub store: Duration,
}

/// `f`'s output and how long it took, from its first poll.
pub(super) async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}
