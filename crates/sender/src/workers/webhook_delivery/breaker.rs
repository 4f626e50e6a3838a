//! What each endpoint may be sent now: at most `WEBHOOK_ENDPOINT_CONCURRENCY` deliveries in
//! flight, and a circuit breaker.
//!
//! The circuit of an endpoint is *closed* while it answers. After `WEBHOOK_BREAKER_FAILURES`
//! consecutive failures (a timeout, no connection, a 5xx answer) it *opens* for
//! `WEBHOOK_BREAKER_COOL_OFF`: its due events are held back (moved to the end of the cool-off, not
//! attempted, their attempts and back-off untouched). Then it is *half-open*: one trial delivery;
//! an answer closes it, a failure opens it again. Any answer other than a 5xx (a 2xx, a 4xx, a
//! redirect) counts as the endpoint being alive: it answered quickly, so it holds nobody's slots.
//!
//! The state lives in the memory of the lease holder only: a replica taking the lease over starts
//! with every circuit closed, which costs at most another `WEBHOOK_BREAKER_FAILURES` attempts.
//! An endpoint is its client and URL, so a URL changed by `accrualctl webhooks set` starts closed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// An endpoint: the client and its URL as claimed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct EndpointKey {
    pub(super) client_id: String,
    /// Empty when the client's endpoint was removed (its events are given up without a request).
    pub(super) url: String,
}

/// What a delivery told about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// An HTTP answer other than a 5xx.
    Answered,
    /// A timeout, no connection or a 5xx answer.
    Failed,
    /// No request was made (the endpoint removed, its URL refused).
    NotSent,
}

/// What the claim may do for an endpoint's due events now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Claim up to this many.
    Claim(usize),
    /// Its circuit is open: move them this much later.
    HoldBack(Duration),
    /// At its cap, or its trial is in flight: leave them due.
    Full,
}

/// A circuit's change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Opened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed,
    Open {
        until: Instant,
    },
    /// Its one trial delivery is in flight.
    HalfOpen,
}

#[derive(Debug)]
struct Endpoint {
    in_flight: usize,
    /// Consecutive failures (reset by an answer).
    failures: u32,
    circuit: Circuit,
}

/// Every endpoint the lease holder is delivering to or keeps a circuit for.
#[derive(Debug)]
pub(super) struct Endpoints {
    cap: usize,
    failures_to_open: u32,
    cool_off: Duration,
    by_key: HashMap<EndpointKey, Endpoint>,
}

impl Endpoints {
    pub(super) fn new(cap: usize, failures_to_open: u32, cool_off: Duration) -> Self {
        Self {
            cap,
            failures_to_open,
            cool_off,
            by_key: HashMap::new(),
        }
    }

    pub(super) fn admission(&self, key: &EndpointKey, now: Instant) -> Admission {
        let Some(endpoint) = self.by_key.get(key) else {
            return Admission::Claim(self.cap);
        };
        match endpoint.circuit {
            Circuit::Closed if endpoint.in_flight < self.cap => {
                Admission::Claim(self.cap - endpoint.in_flight)
            }
            Circuit::Open { until } if now < until => Admission::HoldBack(until - now),
            // Cooled off: one trial, once the deliveries sent before it opened have ended.
            Circuit::Open { .. } if endpoint.in_flight == 0 => Admission::Claim(1),
            Circuit::Closed | Circuit::Open { .. } | Circuit::HalfOpen => Admission::Full,
        }
    }

    /// A delivery to `key` starts (as admitted).
    pub(super) fn started(&mut self, key: &EndpointKey, now: Instant) {
        let endpoint = self.by_key.entry(key.clone()).or_insert(Endpoint {
            in_flight: 0,
            failures: 0,
            circuit: Circuit::Closed,
        });
        endpoint.in_flight += 1;
        if let Circuit::Open { until } = endpoint.circuit
            && until <= now
        {
            endpoint.circuit = Circuit::HalfOpen;
        }
    }

    /// A delivery to `key` ended with `outcome`.
    pub(super) fn finished(
        &mut self,
        key: &EndpointKey,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Change> {
        let endpoint = self.by_key.get_mut(key)?;
        endpoint.in_flight = endpoint.in_flight.saturating_sub(1);
        let change = match (outcome, endpoint.circuit) {
            (Outcome::Answered, Circuit::Closed) => {
                endpoint.failures = 0;
                None
            }
            (Outcome::Answered, _) => {
                endpoint.failures = 0;
                endpoint.circuit = Circuit::Closed;
                Some(Change::Closed)
            }
            (Outcome::Failed, Circuit::Closed) => {
                endpoint.failures += 1;
                (endpoint.failures >= self.failures_to_open).then(|| {
                    endpoint.circuit = Circuit::Open {
                        until: now + self.cool_off,
                    };
                    Change::Opened
                })
            }
            (Outcome::Failed, Circuit::HalfOpen) => {
                endpoint.failures += 1;
                endpoint.circuit = Circuit::Open {
                    until: now + self.cool_off,
                };
                Some(Change::Opened)
            }
            // A delivery sent before the circuit opened: the cool-off is not lengthened.
            (Outcome::Failed, Circuit::Open { .. }) => {
                endpoint.failures += 1;
                None
            }
            // The trial made no request: another may go.
            (Outcome::NotSent, Circuit::HalfOpen) => {
                endpoint.circuit = Circuit::Open { until: now };
                None
            }
            (Outcome::NotSent, _) => None,
        };
        if endpoint.in_flight == 0 && endpoint.failures == 0 && endpoint.circuit == Circuit::Closed
        {
            self.by_key.remove(key);
        }
        change
    }

    /// Endpoints whose circuit is open or half-open.
    pub(super) fn open(&self) -> usize {
        self.by_key
            .values()
            .filter(|e| e.circuit != Circuit::Closed)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: &str) -> EndpointKey {
        EndpointKey {
            client_id: client.into(),
            url: format!("http://{client}.example/hook"),
        }
    }

    const COOL_OFF: Duration = Duration::from_secs(30);

    #[test]
    fn an_endpoint_has_at_most_its_cap_in_flight() {
        let mut endpoints = Endpoints::new(3, 5, COOL_OFF);
        let now = Instant::now();
        let a = key("a");
        assert_eq!(endpoints.admission(&a, now), Admission::Claim(3));
        endpoints.started(&a, now);
        endpoints.started(&a, now);
        assert_eq!(endpoints.admission(&a, now), Admission::Claim(1));
        endpoints.started(&a, now);
        assert_eq!(endpoints.admission(&a, now), Admission::Full);
        assert_eq!(endpoints.admission(&key("b"), now), Admission::Claim(3));
        endpoints.finished(&a, Outcome::Answered, now);
        assert_eq!(endpoints.admission(&a, now), Admission::Claim(1));
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_an_answer_resets_the_count() {
        let mut endpoints = Endpoints::new(1, 3, COOL_OFF);
        let now = Instant::now();
        let a = key("a");
        for outcome in [Outcome::Failed, Outcome::Failed, Outcome::Answered] {
            endpoints.started(&a, now);
            assert_eq!(endpoints.finished(&a, outcome, now), None);
        }
        for _ in 0..2 {
            endpoints.started(&a, now);
            assert_eq!(endpoints.finished(&a, Outcome::Failed, now), None);
        }
        endpoints.started(&a, now);
        assert_eq!(
            endpoints.finished(&a, Outcome::Failed, now),
            Some(Change::Opened)
        );
        assert_eq!(endpoints.open(), 1);
        let later = now + Duration::from_secs(10);
        assert_eq!(
            endpoints.admission(&a, later),
            Admission::HoldBack(Duration::from_secs(20))
        );
    }

    #[test]
    fn after_the_cool_off_one_trial_closes_or_opens_it_again() {
        let mut endpoints = Endpoints::new(4, 1, COOL_OFF);
        let now = Instant::now();
        let a = key("a");
        endpoints.started(&a, now);
        endpoints.finished(&a, Outcome::Failed, now);
        let cooled = now + COOL_OFF;
        assert_eq!(endpoints.admission(&a, cooled), Admission::Claim(1));
        endpoints.started(&a, cooled);
        assert_eq!(endpoints.admission(&a, cooled), Admission::Full);
        assert_eq!(
            endpoints.finished(&a, Outcome::Failed, cooled),
            Some(Change::Opened)
        );
        assert!(matches!(
            endpoints.admission(&a, cooled),
            Admission::HoldBack(_)
        ));
        let cooled_again = cooled + COOL_OFF;
        endpoints.started(&a, cooled_again);
        assert_eq!(
            endpoints.finished(&a, Outcome::Answered, cooled_again),
            Some(Change::Closed)
        );
        assert_eq!(endpoints.admission(&a, cooled_again), Admission::Claim(4));
        assert_eq!(endpoints.open(), 0);
    }

    #[test]
    fn the_trial_waits_for_deliveries_sent_before_the_circuit_opened() {
        let mut endpoints = Endpoints::new(2, 1, COOL_OFF);
        let now = Instant::now();
        let a = key("a");
        endpoints.started(&a, now);
        endpoints.started(&a, now);
        endpoints.finished(&a, Outcome::Failed, now);
        let cooled = now + COOL_OFF;
        assert_eq!(endpoints.admission(&a, cooled), Admission::Full);
        // The straggler fails too: still open, the cool-off not lengthened.
        assert_eq!(endpoints.finished(&a, Outcome::Failed, cooled), None);
        assert_eq!(endpoints.admission(&a, cooled), Admission::Claim(1));
    }

    #[test]
    fn a_new_url_starts_closed() {
        let mut endpoints = Endpoints::new(2, 1, COOL_OFF);
        let now = Instant::now();
        let old = key("a");
        endpoints.started(&old, now);
        endpoints.finished(&old, Outcome::Failed, now);
        let new = EndpointKey {
            url: "http://new.example/hook".into(),
            ..old.clone()
        };
        assert_eq!(endpoints.admission(&new, now), Admission::Claim(2));
        assert!(matches!(
            endpoints.admission(&old, now),
            Admission::HoldBack(_)
        ));
    }
}
