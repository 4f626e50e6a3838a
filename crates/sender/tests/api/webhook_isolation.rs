//! Webhooks shared fairly between clients (issue #25, point 4): one client's dead or slow endpoint
//! holds at most its share of the delivery slots, and a failing endpoint's circuit opens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use accrual_testkit::eventually;
use accrual_testkit::process::{free_port, metric};
use sqlx::MySqlPool;
use tokio::io::AsyncReadExt;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app_with};
use crate::webhooks::{Behaviour, Receiver, quick, set_endpoint};

/// A TCP listener on 127.0.0.1 that accepts connections, reads what they send and never answers;
/// stopped when dropped.
struct BlackHole {
    port: u16,
    accepted: Arc<AtomicUsize>,
    _stop: DropGuard,
}

impl BlackHole {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (counted, stopped) = (accepted.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    loop {
                        tokio::select! {
                            () = stopped.cancelled() => return,
                            read = socket.read(&mut buffer) => if matches!(read, Ok(0) | Err(_)) { return },
                        }
                    }
                });
            }
        });
        Self {
            port,
            accepted,
            _stop: stop.drop_guard(),
        }
    }
}

/// Stores `count` events of `client`, due since `due_secs_ago`, in one transaction; their ids.
async fn due_events(pool: &MySqlPool, client: &str, count: usize, due_secs_ago: u32) -> Vec<Uuid> {
    let mut tx = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..count {
        let event_id = Uuid::now_v7();
        let job_id = Uuid::now_v7();
        let body = serde_json::json!({
            "event": "job.cancelled",
            "event_id": event_id,
            "created_at": chrono::Utc::now(),
            "job": { "job_id": job_id },
        });
        sqlx::query(
            "INSERT INTO webhook_events (event_id, client_id, event, job_id, body, created_at, next_attempt_at) \
             VALUES (?, ?, 'job.cancelled', ?, ?, NOW(6) - INTERVAL ? SECOND, NOW(6) - INTERVAL ? SECOND)",
        )
        .bind(event_id)
        .bind(client)
        .bind(job_id)
        .bind(body.to_string())
        .bind(due_secs_ago)
        .bind(due_secs_ago)
        .execute(&mut *tx)
        .await
        .unwrap();
        ids.push(event_id);
    }
    tx.commit().await.unwrap();
    ids
}

/// Event ids the receiver answered 200, with a valid signature.
fn delivered(receiver: &Receiver) -> Vec<String> {
    receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.answered == 200 && d.signature_ok)
        .map(|d| d.body["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn metric_now(app: &TestApp, name: &str) -> f64 {
    metric(&app.metrics_at(&app.address).await, name).unwrap_or(0.0)
}

/// The acceptance case: client_a's endpoint accepts connections and never answers, and fifty of
/// its events have been due for a minute; client_b's event, due after all of them, is delivered
/// within 5 s (with one lane of 16 events each allowed WEBHOOK_TIMEOUT, it waited for three rounds
/// of client_a's timeouts: 30 s). The settings are the defaults but for the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_event_arrives_within_5s_while_one_clients_endpoint_is_black_holed() {
    let hole = BlackHole::start().await;
    let port = free_port();
    let receiver = Receiver::start(port, Behaviour::default()).await;
    let app = spawn_app_with(|s| s.webhooks.webhook_poll = Duration::from_millis(50)).await;
    let pool = &app.env.pool;
    set_endpoint(pool, "client_a", hole.port).await;
    set_endpoint(pool, "client_b", port).await;
    due_events(pool, "client_a", 50, 60).await;
    let started = Instant::now();
    let b = due_events(pool, "client_b", 1, 0).await;

    eventually(
        Duration::from_secs(5),
        "client_b's event delivered",
        || async { delivered(&receiver).contains(&b[0].to_string()) },
    )
    .await;
    eprintln!(
        "client_b's event delivered {} ms after it was due",
        started.elapsed().as_millis()
    );
    // client_a's deliveries were sent (and are hanging), at most its endpoint's share of them.
    eventually(
        Duration::from_secs(5),
        "client_a's deliveries sent",
        || async { hole.accepted.load(Ordering::SeqCst) >= 4 },
    )
    .await;
    assert_eq!(
        hole.accepted.load(Ordering::SeqCst),
        4,
        "WEBHOOK_ENDPOINT_CONCURRENCY"
    );
}

/// A slow endpoint (every answer after a second) with twelve due events and a cap of three: it is
/// never sent more than three at once, and gets them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_never_has_more_than_its_cap_in_flight() {
    let port = free_port();
    let receiver = answering_after_a_second(port).await;
    let app = spawn_app_with(|s| {
        quick(s, Duration::from_secs(5));
        s.webhooks.webhook_endpoint_concurrency = 3;
    })
    .await;
    set_endpoint(&app.env.pool, "client_a", port).await;
    let events = due_events(&app.env.pool, "client_a", 12, 1).await;

    eventually(Duration::from_secs(30), "every event delivered", || async {
        delivered(&receiver).len() >= events.len()
    })
    .await;
    // The receiver has a request before it answers: the last ones are still in flight.
    eventually(Duration::from_secs(10), "no delivery in flight", || async {
        metric_now(&app, "accrual_sender_webhook_in_flight").await == 0.0
    })
    .await;
    assert_eq!(receiver.most_at_once(), 3);
}

/// An endpoint answering 503: after three consecutive failures its circuit opens and its other due
/// events are held back, not attempted (no attempt recorded, no back-off); once it answers again,
/// one trial after the cool-off closes the circuit and each held-back event arrives at its first
/// attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoints_circuit_opens_and_its_events_wait_without_burning_attempts() {
    let port = free_port();
    let down = Arc::new(AtomicBool::new(true));
    let receiver = Receiver::start(
        port,
        Behaviour {
            down: down.clone(),
            ..Behaviour::default()
        },
    )
    .await;
    let app = spawn_app_with(|s| {
        quick(s, Duration::from_secs(2));
        // A failed event comes back only after the test.
        s.webhooks.webhook_backoff_first = Duration::from_secs(600);
        s.webhooks.webhook_retry_for = Duration::from_secs(3_600);
        s.webhooks.webhook_endpoint_concurrency = 2;
        s.webhooks.webhook_breaker_failures = 3;
        s.webhooks.webhook_breaker_cool_off = Duration::from_secs(3);
    })
    .await;
    let pool = &app.env.pool;
    set_endpoint(pool, "client_a", port).await;
    let events = due_events(pool, "client_a", 20, 1).await;

    eventually(Duration::from_secs(10), "the circuit open", || async {
        metric_now(&app, "accrual_sender_webhook_circuit_opens_total").await >= 1.0
    })
    .await;
    eventually(Duration::from_secs(5), "events held back", || async {
        metric_now(&app, "accrual_sender_webhook_held_back_total").await >= 1.0
    })
    .await;
    // Three failures, and at most one more that was in flight when the third came back; every
    // request ended and recorded.
    eventually(Duration::from_secs(5), "no delivery in flight", || async {
        metric_now(&app, "accrual_sender_webhook_in_flight").await == 0.0
    })
    .await;
    let failed = receiver.deliveries().len();
    assert!((3..=4).contains(&failed), "{failed} requests");
    assert_eq!(
        metric_now(&app, "accrual_sender_webhook_circuits_open").await,
        1.0
    );
    let untouched: Vec<Uuid> = sqlx::query_scalar(
        "SELECT event_id FROM webhook_events \
         WHERE client_id = 'client_a' AND attempts = 0 AND next_attempt_at > NOW(6)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        untouched.len(),
        events.len() - failed,
        "held back, not attempted"
    );
    down.store(false, Ordering::SeqCst);

    eventually(
        Duration::from_secs(20),
        "every held-back event delivered",
        || async {
            let delivered = delivered(&receiver);
            untouched
                .iter()
                .all(|id| delivered.contains(&id.to_string()))
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the deliveries recorded",
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_events WHERE client_id = 'client_a' \
             AND delivered_at IS NULL AND attempts = 0",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            open == 0
        },
    )
    .await;
    let sql = format!(
        "SELECT CAST(MAX(attempts) AS SIGNED) FROM webhook_events WHERE event_id IN ({})",
        vec!["?"; untouched.len()].join(",")
    );
    let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
    for id in &untouched {
        query = query.bind(id);
    }
    assert_eq!(query.fetch_one(pool).await.unwrap(), 1, "one attempt each");
    assert_eq!(
        metric_now(&app, "accrual_sender_webhook_circuits_open").await,
        0.0
    );
}

/// Four slots in all, and client_a, whose endpoint takes a second to answer, has a hundred events
/// due: client_b's event, due after all of them, takes the next free slot (the clients take
/// turns), instead of waiting for client_a's backlog (25 s at four a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_take_turns_when_one_has_a_backlog_at_a_slow_endpoint() {
    let port = free_port();
    let receiver = answering_after_a_second(port).await;
    let app = spawn_app_with(|s| {
        quick(s, Duration::from_secs(5));
        s.webhooks.webhook_concurrency = 4;
        s.webhooks.webhook_endpoint_concurrency = 4;
    })
    .await;
    let pool = &app.env.pool;
    set_endpoint(pool, "client_a", port).await;
    set_endpoint(pool, "client_b", port).await;
    due_events(pool, "client_a", 100, 60).await;
    let started = Instant::now();
    let b = due_events(pool, "client_b", 1, 0).await;

    // The receiver has a request when it arrives, a second before it answers.
    eventually(Duration::from_secs(3), "client_b's event sent", || async {
        receiver
            .deliveries()
            .iter()
            .any(|d| d.body["event_id"] == b[0].to_string())
    })
    .await;
    eprintln!(
        "client_b's event sent {} ms after it was due",
        started.elapsed().as_millis()
    );
}

/// A receiver that answers every delivery after a second.
async fn answering_after_a_second(port: u16) -> Receiver {
    Receiver::start(
        port,
        Behaviour {
            delay: Some(Duration::from_millis(1_000)),
            ..Behaviour::default()
        },
    )
    .await
}
