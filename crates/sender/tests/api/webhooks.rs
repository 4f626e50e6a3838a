//! Signed webhooks from the durable outbox (issue #15, point 3), against a real HTTP receiver on
//! 127.0.0.1 that fails the first attempts of each event, then checks the signature with the
//! endpoint's secret, as a client would (HMAC-SHA256 over `<t>.<body>`, computed here, not with the
//! sender's code).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accrual_testkit::process::{free_port, metric};
use accrual_testkit::{TestEnv, eventually};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use sqlx::MySqlPool;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::helpers::{KEY_A, TestApp, item, spawn_app_with};
use crate::process::SenderProcess;

pub(crate) const SECRET: &str = "whsec_test_secret_for_the_receiver";

/// What the receiver got in one request.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    raw: Bytes,
    pub(crate) body: Value,
    /// This event's request number at the receiver (1 for its first).
    attempt: u32,
    pub(crate) signature_ok: bool,
    json_content_type: bool,
    /// What the receiver answered.
    pub(crate) answered: u16,
}

#[derive(Default)]
pub(crate) struct Behaviour {
    /// Each event's first this-many requests get a 500.
    pub(crate) fail_first: u32,
    /// Each event's first request is answered 200 only after this long.
    pub(crate) slow_first: Option<Duration>,
    /// Every request is answered only after this long.
    pub(crate) delay: Option<Duration>,
    /// While set, every request gets a 503 (the test switches it).
    pub(crate) down: Arc<AtomicBool>,
}

struct ReceiverState {
    behaviour: Behaviour,
    seen: Mutex<HashMap<String, u32>>,
    deliveries: Mutex<Vec<Delivery>>,
    /// Requests being answered now, and the most there ever were at once.
    at_once: AtomicUsize,
    most_at_once: AtomicUsize,
}

/// A webhook receiver: an axum server on 127.0.0.1, stopped when dropped.
pub(crate) struct Receiver {
    state: Arc<ReceiverState>,
    _stop: DropGuard,
}

/// `v1` of `t=<unix>,v1=<hex>` if it is HMAC-SHA256(secret, "<t>.<body>") and `t` is within five
/// minutes of now.
fn signature_valid(header: Option<&str>, body: &[u8]) -> bool {
    let Some(header) = header else { return false };
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let mut mac = hmac::Hmac::<sha2_hmac::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    raw: Bytes,
) -> StatusCode {
    let signature = headers
        .get("accrual-signature")
        .and_then(|v| v.to_str().ok());
    let signature_ok = signature_valid(signature, &raw);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let event_id = body["event_id"].as_str().unwrap_or_default().to_owned();
    let attempt = {
        let mut seen = state.seen.lock().unwrap();
        let n = seen.entry(event_id).or_default();
        *n += 1;
        *n
    };
    let now = state.at_once.fetch_add(1, Ordering::SeqCst) + 1;
    state.most_at_once.fetch_max(now, Ordering::SeqCst);
    let answer = if state.behaviour.down.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if attempt <= state.behaviour.fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if !signature_ok {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    state.deliveries.lock().unwrap().push(Delivery {
        raw: raw.clone(),
        body,
        attempt,
        signature_ok,
        json_content_type: headers
            .get("content-type")
            .is_some_and(|v| v == "application/json"),
        answered: answer.as_u16(),
    });
    if attempt == 1
        && let Some(slow) = state.behaviour.slow_first
    {
        tokio::time::sleep(slow).await;
    }
    if let Some(delay) = state.behaviour.delay {
        tokio::time::sleep(delay).await;
    }
    state.at_once.fetch_sub(1, Ordering::SeqCst);
    answer
}

impl Receiver {
    pub(crate) async fn start(port: u16, behaviour: Behaviour) -> Self {
        let state = Arc::new(ReceiverState {
            behaviour,
            seen: Mutex::default(),
            deliveries: Mutex::default(),
            at_once: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            state,
            _stop: stop.drop_guard(),
        }
    }

    /// The most requests the receiver was answering at once.
    pub(crate) fn most_at_once(&self) -> usize {
        self.state.most_at_once.load(Ordering::SeqCst)
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().unwrap().clone()
    }

    /// Deliveries answered 200 with a valid signature, by (event, job_id).
    pub(crate) fn verified(&self) -> HashMap<(String, String), Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.answered == 200 && d.signature_ok)
            .map(|d| {
                let key = (
                    d.body["event"].as_str().unwrap().to_owned(),
                    d.body["job"]["job_id"].as_str().unwrap().to_owned(),
                );
                (key, d)
            })
            .collect()
    }
}

pub(crate) async fn set_endpoint(pool: &MySqlPool, client: &str, port: u16) {
    sqlx::query("INSERT INTO webhook_endpoints (client_id, url, secret) VALUES (?, ?, ?)")
        .bind(client)
        .bind(format!("http://127.0.0.1:{port}/hook"))
        .bind(SECRET)
        .execute(pool)
        .await
        .unwrap();
}

/// Webhook settings for a test: quick polls, back-off and cool-off.
pub(crate) fn quick(s: &mut accrual_sender::SenderSettings, timeout: Duration) {
    s.webhooks.webhook_poll = Duration::from_millis(50);
    s.webhooks.webhook_backoff_first = Duration::from_millis(50);
    s.webhooks.webhook_timeout = timeout;
    s.webhooks.webhook_retry_for = Duration::from_secs(300);
    // Receivers here fail on purpose: an open circuit holds their events back only briefly.
    s.webhooks.webhook_breaker_cool_off = Duration::from_millis(100);
}

/// Posts a reserved job (one point, due in `secs`) at `address` as client_a.
pub(crate) async fn post_reserved(http: &reqwest::Client, address: &str, secs: i64) -> String {
    let reserve_at = Utc::now() + chrono::Duration::seconds(secs);
    let response = http
        .post(format!(
            "{address}/v1/accruals?reserve_at={}",
            reserve_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
        .bearer_auth(KEY_A)
        .header("Content-Type", "application/json")
        .body(format!("[{}]", item("m-reserved", "WELFARE", 5)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    accepted["job_id"].as_str().unwrap().to_owned()
}

pub(crate) async fn cancel(http: &reqwest::Client, address: &str, job_id: &str) {
    let response = http
        .delete(format!("{address}/v1/jobs/{job_id}"))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// The outbox's events: (event_id, event, job_id).
async fn outbox(pool: &MySqlPool, client: &str) -> Vec<(Uuid, String, Uuid)> {
    sqlx::query_as(
        "SELECT event_id, event, job_id FROM webhook_events WHERE client_id = ? ORDER BY created_at",
    )
    .bind(client)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Each attempt of an event: (attempt, http_status, error).
async fn attempts(pool: &MySqlPool, event_id: Uuid) -> Vec<(u32, Option<u16>, Option<String>)> {
    sqlx::query_as(
        "SELECT attempt, http_status, error FROM webhook_attempts WHERE event_id = ? ORDER BY attempt",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The acceptance case: every event kind arrives, each after three refused attempts, signed so the
/// receiver can verify it, its body the job view as at the change plus `event`, `event_id` and
/// `created_at`, the view nested under `job`.
/// `job.reversed` is made by a reversal job row inserted with SQL (the reversal API
/// is not on this branch): its first settlement reverses the job it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_kind_arrives_signed_after_three_failed_attempts() {
    let port = free_port();
    let receiver = Receiver::start(
        port,
        Behaviour {
            fail_first: 3,
            ..Behaviour::default()
        },
    )
    .await;
    let app = spawn_app_with(|s| quick(s, Duration::from_secs(2))).await;
    let pool = &app.env.pool;
    set_endpoint(pool, "client_a", port).await;
    sqlx::query(
        "ALTER TABLE point_accruals ADD CONSTRAINT no_poison CHECK (member_id NOT LIKE 'poison-%')",
    )
    .execute(pool)
    .await
    .unwrap();
    let _listener = app.spawn_listener().await;

    let completed = app
        .post(format!(
            "[{},{}]",
            item("m-1", "WELFARE", 10),
            item("m-2", "BONUS", 20)
        ))
        .query("?label=welfare")
        .job_id()
        .await;
    let with_errors = app
        .post(format!(
            "[{},{}]",
            item("m-3", "WELFARE", 10),
            item("poison-1", "WELFARE", 1)
        ))
        .job_id()
        .await;
    let released = post_reserved(&app.http, &app.address, 2).await;
    let cancelled = post_reserved(&app.http, &app.address, 3_600).await;
    cancel(&app.http, &app.address, &cancelled).await;
    // client_b has no endpoint: its jobs make no events.
    let other_client = app
        .post(format!("[{}]", item("m-9", "WELFARE", 1)))
        .api_key("key_b")
        .job_id()
        .await;

    eventually(
        Duration::from_secs(60),
        "the completed job is final",
        || async { app.job_view(&completed).await["status"] == "completed" },
    )
    .await;
    let reversal = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, reverses) \
         VALUES (?, 'client_a', UNHEX(REPEAT('00', 32)), 0, 0, 'enqueued', NOW(6), ?)",
    )
    .bind(reversal)
    .bind(completed.parse::<Uuid>().unwrap())
    .execute(pool)
    .await
    .unwrap();
    let reversal = reversal.to_string();

    let expected: HashSet<(String, String)> = [
        ("job.completed", &completed),
        ("job.completed_with_errors", &with_errors),
        ("job.released", &released),
        ("job.completed", &released),
        ("job.cancelled", &cancelled),
        ("job.completed", &reversal),
        ("job.reversed", &completed),
    ]
    .into_iter()
    .map(|(event, job)| (event.to_owned(), job.clone()))
    .collect();
    eventually(Duration::from_secs(90), "every event verified", || async {
        let verified: HashSet<_> = receiver.verified().into_keys().collect();
        expected.is_subset(&verified)
    })
    .await;

    let verified = receiver.verified();
    for (key, delivery) in &verified {
        assert_eq!(delivery.attempt, 4, "{key:?}: three 500s, then this one");
        assert!(delivery.json_content_type, "{key:?}");
        assert!(
            delivery.body["event_id"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .is_ok()
        );
        assert!(delivery.body["created_at"].as_str().is_some(), "{key:?}");
        assert!(
            delivery.body["job"]["created_at"].as_str().is_some(),
            "{key:?}"
        );
        assert_eq!(
            delivery.body.as_object().unwrap().len(),
            4,
            "{key:?}: event, event_id, created_at and job"
        );
    }
    // Every request of an event carried the same event id and the same body.
    for d in receiver.deliveries() {
        let key = (
            d.body["event"].as_str().unwrap().to_owned(),
            d.body["job"]["job_id"].as_str().unwrap().to_owned(),
        );
        assert_eq!(d.raw, verified[&key].raw, "{key:?}");
        assert!(d.signature_ok, "{key:?} attempt {}", d.attempt);
    }
    // The bodies of final jobs are their API view (duplicates live only in Redis: 0 here).
    for (event, job) in [
        ("job.completed_with_errors", &with_errors),
        ("job.cancelled", &cancelled),
        ("job.completed", &released),
    ] {
        let mut body = verified[&(event.to_owned(), job.clone())].body["job"].clone();
        let mut view = app.job_view(job).await;
        body["duplicates"] = 0.into();
        view["duplicates"] = 0.into();
        assert_eq!(body, view, "{event}");
    }
    let body =
        |event: &str, job: &String| verified[&(event.to_owned(), job.clone())].body["job"].clone();
    assert_eq!(body("job.completed", &completed)["label"], "welfare");
    assert_eq!(body("job.completed", &completed)["written"], 2);
    assert_eq!(
        body("job.completed_with_errors", &with_errors)["dead_lettered"],
        1
    );
    assert_eq!(body("job.released", &released)["status"], "dispatching");
    assert_eq!(body("job.reversed", &completed)["reversed_by"], reversal);
    assert_eq!(body("job.reversed", &completed)["status"], "completed");
    assert_eq!(body("job.completed", &reversal)["reverses"], completed);

    // One event per state change, each attempt recorded (the sender records an attempt after
    // the receiver's answer: the receiver has the delivery first); nothing for client_b.
    let events = outbox(pool, "client_a").await;
    assert_eq!(events.len(), expected.len(), "{events:?}");
    for (event_id, event, _) in &events {
        eventually(Duration::from_secs(10), "the delivery recorded", || async {
            attempts(pool, *event_id).await.len() >= 4
        })
        .await;
        let tried = attempts(pool, *event_id).await;
        let statuses: Vec<_> = tried.iter().map(|a| a.1).collect();
        assert_eq!(
            statuses,
            [Some(500), Some(500), Some(500), Some(200)],
            "{event}"
        );
    }
    assert!(outbox(pool, "client_b").await.is_empty());
    eventually(
        Duration::from_secs(30),
        "client_b's job is final",
        || async {
            let view = app
                .http
                .get(format!("{}/v1/jobs/{other_client}", app.address))
                .bearer_auth("key_b")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap();
            view["status"] == "completed"
        },
    )
    .await;
    assert!(outbox(pool, "client_b").await.is_empty());
    let delivered = r#"accrual_sender_webhook_attempts_total{result="delivered"}"#;
    eventually(
        Duration::from_secs(10),
        "every delivery counted",
        || async {
            metric(&app.metrics_at(&app.address).await, delivered) >= Some(expected.len() as f64)
        },
    )
    .await;
    let metrics = app.metrics_at(&app.address).await;
    assert_eq!(metric(&metrics, delivered), Some(expected.len() as f64));
}

/// The state change commits while the receiver is down; the sender that would deliver it is
/// SIGKILLed after a failed attempt; the receiver comes up and a new sender delivers the event, with
/// the event id the outbox gave it at the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_recorded_before_the_sender_is_sigkilled_arrives_after_a_restart() {
    let env = TestEnv::new().await;
    let port = free_port();
    set_endpoint(&env.pool, "client_a", port).await;
    let webhook_env = [
        ("WEBHOOK_POLL", "100ms"),
        ("WEBHOOK_BACKOFF_FIRST", "100ms"),
        ("WEBHOOK_TIMEOUT", "1s"),
    ];
    let http = reqwest::Client::new();
    let mut sender = SenderProcess::spawn_with(&env, &webhook_env).await;
    let job = post_reserved(&http, &sender.address, 3_600).await;
    cancel(&http, &sender.address, &job).await;
    let events = outbox(&env.pool, "client_a").await;
    assert_eq!(events.len(), 1, "recorded with the cancel: {events:?}");
    let (event_id, ref event, _) = events[0];
    assert_eq!(event, "job.cancelled");
    eventually(Duration::from_secs(20), "a failed attempt", || async {
        !attempts(&env.pool, event_id).await.is_empty()
    })
    .await;
    sender.kill();
    let tried = attempts(&env.pool, event_id).await;
    let delivered: Option<chrono::NaiveDateTime> =
        sqlx::query_scalar("SELECT delivered_at FROM webhook_events WHERE event_id = ?")
            .bind(event_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(delivered.is_none() && tried.iter().all(|a| a.1.is_none()));

    let receiver = Receiver::start(port, Behaviour::default()).await;
    let _restarted = SenderProcess::spawn_with(&env, &webhook_env).await;
    eventually(
        Duration::from_secs(30),
        "the event after the restart",
        || async { !receiver.verified().is_empty() },
    )
    .await;
    let verified = receiver.verified();
    let delivery = &verified[&("job.cancelled".to_owned(), job.clone())];
    assert_eq!(delivery.body["event_id"], event_id.to_string());
    assert_eq!(delivery.body["job"]["status"], "cancelled");
    eventually(Duration::from_secs(10), "delivered_at recorded", || async {
        let delivered: Option<chrono::NaiveDateTime> =
            sqlx::query_scalar("SELECT delivered_at FROM webhook_events WHERE event_id = ?")
                .bind(event_id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        delivered.is_some()
    })
    .await;
}

/// The receiver answers the first request 200 only after the sender's timeout: the sender counts
/// it failed and sends again; both requests carry the same event id and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_carries_the_same_event_id() {
    let port = free_port();
    let receiver = Receiver::start(
        port,
        Behaviour {
            slow_first: Some(Duration::from_millis(1_500)),
            ..Behaviour::default()
        },
    )
    .await;
    let app = spawn_app_with(|s| quick(s, Duration::from_millis(500))).await;
    set_endpoint(&app.env.pool, "client_a", port).await;
    let job = post_reserved(&app.http, &app.address, 3_600).await;
    cancel(&app.http, &app.address, &job).await;

    eventually(Duration::from_secs(30), "a second request", || async {
        receiver.deliveries().len() >= 2
    })
    .await;
    let deliveries = receiver.deliveries();
    let events = outbox(&app.env.pool, "client_a").await;
    assert_eq!(events.len(), 1);
    for d in &deliveries {
        assert_eq!(d.body["event_id"], events[0].0.to_string());
        assert_eq!(d.raw, deliveries[0].raw);
    }
    eventually(Duration::from_secs(10), "the resend recorded", || async {
        attempts(&app.env.pool, events[0].0).await.len() >= 2
    })
    .await;
    let tried = attempts(&app.env.pool, events[0].0).await;
    assert_eq!(tried[0].1, None);
    assert!(
        tried[0].2.as_deref().unwrap().contains("timed out"),
        "{tried:?}"
    );
    assert_eq!(tried[1].1, Some(200));
    let metrics = app.metrics_at(&app.address).await;
    assert_eq!(
        metric(
            &metrics,
            r#"accrual_sender_webhook_attempts_total{result="timeout"}"#
        ),
        Some(1.0)
    );
}

/// Recording an event share-locks the client's endpoint row until its transaction commits (INSERT …
/// SELECT). A delivery claiming events meanwhile must still see the endpoint: joined into the
/// claim's `FOR UPDATE SKIP LOCKED`, the locked row was skipped and the event given up as one whose
/// endpoint was removed (seen in a full suite run on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_delivered_while_its_endpoint_row_is_share_locked() {
    let port = free_port();
    let receiver = Receiver::start(port, Behaviour::default()).await;
    let app = spawn_app_with(|s| quick(s, Duration::from_secs(2))).await;
    let pool = &app.env.pool;
    set_endpoint(pool, "client_a", port).await;
    let job = post_reserved(&app.http, &app.address, 3_600).await;
    // What a state change's transaction holds while it records an event of this client.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT client_id FROM webhook_endpoints WHERE client_id = 'client_a' LOCK IN SHARE MODE",
    )
    .fetch_all(&mut *holder)
    .await
    .unwrap();
    cancel(&app.http, &app.address, &job).await;

    eventually(
        Duration::from_secs(15),
        "the cancel event delivered while the endpoint row is locked",
        || async {
            receiver
                .verified()
                .contains_key(&("job.cancelled".to_owned(), job.clone()))
        },
    )
    .await;
    holder.rollback().await.unwrap();
    let events = outbox(pool, "client_a").await;
    assert_eq!(events.len(), 1);
    // The sender records the attempt after the receiver's answer: the receiver has it first.
    eventually(Duration::from_secs(10), "the delivery recorded", || async {
        !attempts(pool, events[0].0).await.is_empty()
    })
    .await;
    let tried = attempts(pool, events[0].0).await;
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert_eq!(tried[0].1, Some(200), "{tried:?}");
}

/// An endpoint that never answers 2xx: the event is given up once the next attempt would come
/// after WEBHOOK_RETRY_FOR, recorded and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_given_up_after_the_retry_period() {
    let port = free_port();
    let receiver = Receiver::start(
        port,
        Behaviour {
            fail_first: u32::MAX,
            ..Behaviour::default()
        },
    )
    .await;
    let app: TestApp = spawn_app_with(|s| {
        quick(s, Duration::from_secs(1));
        // Room for a retry after a first attempt that comes late on a loaded machine (with 1 s, a
        // CI run gave up after the first).
        s.webhooks.webhook_retry_for = Duration::from_secs(3);
        s.webhooks.webhook_backoff_first = Duration::from_millis(200);
    })
    .await;
    set_endpoint(&app.env.pool, "client_a", port).await;
    let job = post_reserved(&app.http, &app.address, 3_600).await;
    cancel(&app.http, &app.address, &job).await;
    let events = outbox(&app.env.pool, "client_a").await;
    let event_id = events[0].0;
    eventually(Duration::from_secs(20), "the event given up", || async {
        let row: (Option<chrono::NaiveDateTime>, Option<chrono::NaiveDateTime>) = sqlx::query_as(
            "SELECT gave_up_at, next_attempt_at FROM webhook_events WHERE event_id = ?",
        )
        .bind(event_id)
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
        row.0.is_some() && row.1.is_none()
    })
    .await;
    let tried = attempts(&app.env.pool, event_id).await;
    assert!(tried.len() >= 2, "{tried:?}");
    assert!(tried.iter().all(|a| a.1 == Some(500)));
    assert_eq!(receiver.deliveries().len(), tried.len());
    // Counted after the give-up commits.
    let gave_up = "accrual_sender_webhook_gave_up_total";
    eventually(Duration::from_secs(10), "the give-up counted", || async {
        metric(&app.metrics_at(&app.address).await, gave_up).is_some()
    })
    .await;
    let metrics = app.metrics_at(&app.address).await;
    assert_eq!(metric(&metrics, gave_up), Some(1.0));
}

/// A `completed_with_errors` job whose dead letter is redriven and written is settled again by the
/// listener: the status changes, so `job.completed` follows, written in the listener's settlement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recount_that_changes_the_status_sends_the_new_status() {
    let port = free_port();
    let receiver = Receiver::start(port, Behaviour::default()).await;
    let app = spawn_app_with(|s| quick(s, Duration::from_secs(2))).await;
    let pool = &app.env.pool;
    set_endpoint(pool, "client_a", port).await;
    sqlx::query(
        "ALTER TABLE point_accruals ADD CONSTRAINT no_poison CHECK (member_id NOT LIKE 'poison-%')",
    )
    .execute(pool)
    .await
    .unwrap();
    let _listener = app.spawn_listener().await;
    let job = app
        .post(format!(
            "[{},{}]",
            item("m-1", "WELFARE", 10),
            item("poison-1", "WELFARE", 1)
        ))
        .job_id()
        .await;
    let with_errors = ("job.completed_with_errors".to_owned(), job.clone());
    eventually(
        Duration::from_secs(60),
        "job.completed_with_errors",
        || async { receiver.verified().contains_key(&with_errors) },
    )
    .await;

    // The job settles on the dead letter's row, committed with the write; the listener sends the
    // point to the dead-letter queue only after that commit, so the event can come first (a CI
    // run redrove an empty queue).
    eventually(
        Duration::from_secs(30),
        "the refused point in the dead-letter queue",
        || async { app.env.depth(&app.env.queues.dlq).await == 1 },
    )
    .await;
    sqlx::query("ALTER TABLE point_accruals DROP CONSTRAINT no_poison")
        .execute(pool)
        .await
        .unwrap();
    let moved = accrual_core::dlq::redrive(
        &app.env.client,
        &app.env.queues.dlq,
        &app.env.queues.main,
        10,
    )
    .await
    .unwrap();
    assert_eq!(moved.points, 1);
    let completed = ("job.completed".to_owned(), job.clone());
    eventually(Duration::from_secs(60), "job.completed", || async {
        receiver.verified().contains_key(&completed)
    })
    .await;
    let verified = receiver.verified();
    assert_eq!(verified[&with_errors].body["job"]["dead_lettered"], 1);
    assert_eq!(verified[&completed].body["job"]["written"], 2);
    assert_eq!(verified[&completed].body["job"]["dead_lettered"], 0);
    let events: Vec<String> = outbox(pool, "client_a")
        .await
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(events, ["job.completed_with_errors", "job.completed"]);
}
