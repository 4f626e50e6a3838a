//! A cap on what one client may hold open at once (results downloads): a count per client,
//! taken when a response starts and given back when it ends, however it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Each client's open responses of one kind; cheap to clone.
#[derive(Clone, Debug)]
pub struct ClientSlots {
    max_per_client: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open response: its client's slot, given back when dropped.
#[derive(Debug)]
pub struct ClientSlot {
    slots: ClientSlots,
    client_id: String,
}

impl ClientSlots {
    pub fn new(max_per_client: usize) -> Self {
        Self {
            max_per_client,
            open: Arc::default(),
        }
    }

    /// The most one client may hold.
    pub fn max_per_client(&self) -> usize {
        self.max_per_client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Every operation is one step on the map, consistent even if a holder panicked.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One of the client's slots, or `None` when it holds all of them.
    pub fn take(&self, client_id: &str) -> Option<ClientSlot> {
        let mut open = self.lock();
        let held = open.entry(client_id.to_owned()).or_default();
        if *held >= self.max_per_client {
            return None;
        }
        *held += 1;
        Some(ClientSlot {
            slots: self.clone(),
            client_id: client_id.to_owned(),
        })
    }

    /// How many slots the client holds.
    pub fn held(&self, client_id: &str) -> usize {
        self.lock().get(client_id).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(held) = open.get_mut(&self.client_id) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.client_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_slots_and_others_are_not_charged() {
        let slots = ClientSlots::new(2);
        let a1 = slots.take("a").expect("first");
        let _a2 = slots.take("a").expect("second");
        assert!(slots.take("a").is_none());
        assert!(slots.take("b").is_some(), "another client has its own");
        drop(a1);
        assert_eq!(slots.held("a"), 1);
        assert!(slots.take("a").is_some());
    }
}
