//! The one handle of the workers that the HTTP layer holds: it wakes the idle dispatch tasks when a
//! job is stored, so they start on it at once instead of at their next poll (`DISPATCH_POLL`).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Cheap to clone. A wake-up with no task waiting is lost, which is harmless: a task registers
/// ([`Wake::notified`]) before it looks for due chunks, and waits only when it found none.
#[derive(Clone, Debug, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    /// Tells idle dispatch tasks that a job was stored.
    pub fn wake(&self) {
        self.0.notify_waiters();
    }

    /// Completes at the first wake-up after it was made.
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.0.notified()
    }
}
