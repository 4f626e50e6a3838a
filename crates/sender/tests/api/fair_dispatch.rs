//! Fair dispatch (issue 27, point 1): due chunks go out client by client in proportion to their
//! weights, then job by job within a client, whatever order they came due in; and the order is
//! one for every replica. The dispatch tasks of the app are off: the tests claim chunks through
//! the store, as a dispatcher does, and read whose chunk each claim took.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use accrual_sender::store::chunks::{ChunkLeases, ClientWeights};
use accrual_testkit::eventually;
use accrual_testkit::process::metric;
use uuid::Uuid;

use crate::helpers::{KEY_A, TestApp, item, spawn_app_with};

const KEY_B: &str = "key_b";

/// Ten points a chunk, so a job of `n` points is `n / 10` chunks.
async fn app() -> TestApp {
    spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.api.chunk_items = 10;
    })
    .await
}

/// A job of `n` one-point items as the client of `key`, with `query` (e.g. a `reserve_at`).
async fn job(app: &TestApp, key: &str, n: usize, query: &str) -> Uuid {
    let items: Vec<String> = (0..n)
        .map(|i| item(&format!("{key}-m{i}"), "CAMPAIGN", 1))
        .collect();
    let id = app
        .post(format!("[{}]", items.join(",")))
        .api_key(key)
        .query(query)
        .job_id()
        .await;
    id.parse().unwrap()
}

fn leases(app: &TestApp, owner: &str, weights: &str) -> ChunkLeases {
    ChunkLeases::new(
        app.env.pool.clone(),
        owner.into(),
        Duration::from_secs(60),
        Arc::new(ClientWeights::parse(weights).unwrap()),
    )
}

/// The jobs of `claims` chunks claimed one after another, alternating between `replicas`.
async fn claim(replicas: &[ChunkLeases], claims: usize) -> Vec<Uuid> {
    let mut jobs = Vec::new();
    for i in 0..claims {
        let claimed = replicas[i % replicas.len()]
            .claim_due()
            .await
            .unwrap()
            .expect("a due chunk");
        jobs.push(claimed.job_id);
    }
    jobs
}

fn count(jobs: &[Uuid], of: Uuid) -> usize {
    jobs.iter().filter(|j| **j == of).count()
}

#[tokio::test]
async fn another_clients_job_goes_out_next_not_after_a_campaign_ahead_of_it() {
    let app = app().await;
    let campaign = job(&app, KEY_A, 300, "").await;
    let small = job(&app, KEY_B, 50, "").await;
    let jobs = claim(&[leases(&app, "replica-1", "")], 10).await;
    // Due order would send the campaign's 30 chunks first. Fair: a chunk of each in turn.
    assert_eq!(jobs[0], campaign, "the older job starts");
    assert_eq!(count(&jobs, small), 5, "{jobs:?}");
    assert_eq!(count(&jobs, campaign), 5, "{jobs:?}");
}

#[tokio::test]
async fn a_reserved_release_is_not_queued_behind_a_running_campaign() {
    let app = app().await;
    let campaign = job(&app, KEY_A, 300, "").await;
    let leases = leases(&app, "replica-1", "");
    // The campaign has been going out for a while ...
    claim(std::slice::from_ref(&leases), 12).await;
    // ... when another client's reserved job comes due (its time set to now, as the clock would).
    let reserve_at = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let reserved = job(
        &app,
        KEY_B,
        20,
        &format!("reserve_at={}", urlencoding(&reserve_at)),
    )
    .await;
    sqlx::query("UPDATE accrual_chunks SET due_at = NOW(6) WHERE job_id = ?")
        .bind(reserved)
        .execute(&app.env.pool)
        .await
        .unwrap();
    let next = claim(std::slice::from_ref(&leases), 2).await;
    assert_eq!(
        next,
        [reserved, campaign],
        "released at once, then in turns"
    );
}

#[tokio::test]
async fn two_replicas_share_dispatch_by_the_clients_weights() {
    let app = app().await;
    let a = job(&app, KEY_A, 600, "").await;
    let b = job(&app, KEY_B, 600, "").await;
    let weights = "client_a=2,client_b=1";
    let replicas = [
        leases(&app, "replica-1", weights),
        leases(&app, "replica-2", weights),
    ];
    let jobs = claim(&replicas, 30).await;
    // Chunks of ten points: 2 to 1 in points is 20 and 10 chunks, give or take the first turn.
    let (of_a, of_b) = (count(&jobs, a), count(&jobs, b));
    assert!((19..=21).contains(&of_a), "a {of_a}, b {of_b}: {jobs:?}");
    assert_eq!(of_a + of_b, 30);
}

#[tokio::test]
async fn a_clients_jobs_take_turns_and_a_new_one_does_not_wait_for_the_old() {
    let app = app().await;
    let old = job(&app, KEY_A, 300, "").await;
    let leases = leases(&app, "replica-1", "");
    claim(std::slice::from_ref(&leases), 10).await;
    let new = job(&app, KEY_A, 300, "").await;
    let jobs = claim(std::slice::from_ref(&leases), 10).await;
    let by_job: HashMap<Uuid, usize> = [(old, count(&jobs, old)), (new, count(&jobs, new))].into();
    // The new job starts level with the old one (not 10 chunks behind it, nor 10 ahead).
    assert_eq!(by_job[&new], 5, "{jobs:?}");
    assert_eq!(by_job[&old], 5, "{jobs:?}");
}

/// What waits in MySQL is counted per client (issue 27, point 5), the backlog the queue's depth
/// does not show (point 3): due points only, a reserved job counting from its time.
#[tokio::test]
async fn each_clients_due_backlog_is_counted_where_the_queue_does_not_hold_it() {
    let app = app().await;
    job(&app, KEY_A, 300, "").await;
    job(&app, KEY_B, 50, "").await;
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    job(
        &app,
        KEY_B,
        20,
        &format!("reserve_at={}", urlencoding(&tomorrow)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let metrics = app.metrics().await;
    let backlog = |client: &str| {
        metric(
            &metrics,
            &format!("accrual_sender_client_backlog_points{{client_id=\"{client}\"}}"),
        )
    };
    assert_eq!(
        (backlog("client_a"), backlog("client_b")),
        (Some(300.0), Some(50.0))
    );
    let lag = metric(
        &metrics,
        r#"accrual_sender_client_dispatch_lag_seconds{client_id="client_a"}"#,
    )
    .unwrap();
    assert!(lag > 0.0, "{lag}");
    // The totals are the clients' sums: 30 and 5 chunks of ten points, the oldest client_a's.
    assert_eq!(
        metric(&metrics, "accrual_sender_chunks_pending"),
        Some(35.0)
    );
    let total_lag = metric(&metrics, "accrual_sender_dispatch_lag_seconds").unwrap();
    assert!(total_lag >= lag, "{total_lag} < {lag}");
    assert_eq!(
        app.env.depth(&app.env.queues.main).await,
        0,
        "none of it in SQS"
    );
}

/// Each client's points sent are counted: its dispatch share; its backlog goes back to 0.
#[tokio::test]
async fn each_clients_dispatched_points_are_counted() {
    let app = spawn_app_with(|s| s.api.chunk_items = 10).await;
    job(&app, KEY_A, 30, "").await;
    job(&app, KEY_B, 20, "").await;
    let sent = |metrics: &str, client: &str| {
        metric(
            metrics,
            &format!("accrual_sender_client_points_dispatched_total{{client_id=\"{client}\"}}"),
        )
    };
    eventually(
        Duration::from_secs(30),
        "both clients' points sent",
        || async {
            let metrics = app.metrics().await;
            sent(&metrics, "client_a") == Some(30.0) && sent(&metrics, "client_b") == Some(20.0)
        },
    )
    .await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"accrual_sender_client_backlog_points{client_id="client_a"}"#
        ),
        Some(0.0)
    );
}

/// `+` and `:` of an RFC 3339 instant, escaped for a query string.
fn urlencoding(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
