//! Retention (issue #14): a final job's chunk bodies and old idempotency keys go, the ledger and
//! the job rows stay, jobs not final keep their chunks; one replica at a time purges.

use std::time::Duration;

use accrual_core::lease;
use accrual_testkit::process::metric;
use accrual_testkit::{TestEnv, eventually};
use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{DEV_KEYS, TestApp, item, spawn_app_parsing};

/// Items of `n` points as a JSON array.
fn body(n: usize, prefix: &str) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| item(&format!("{prefix}{i}"), "WELFARE", 1))
        .collect();
    format!("[{}]", items.join(","))
}

fn job_id(accepted: &Value) -> Uuid {
    accepted["job_id"].as_str().unwrap().parse().unwrap()
}

/// (status, chunks left, idempotency key, results purged, older than `secs`) of a stored job.
async fn stored(
    app: &TestApp,
    job_id: Uuid,
    secs: u32,
) -> (String, i64, Option<String>, bool, bool) {
    sqlx::query_as(
        "SELECT status, (SELECT COUNT(*) FROM accrual_chunks c WHERE c.job_id = j.job_id), \
                idempotency_key, results_purged_at IS NOT NULL, created_at < NOW(6) - INTERVAL ? SECOND \
         FROM accrual_jobs j WHERE job_id = ?",
    )
    .bind(secs)
    .bind(job_id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap()
}

/// The value of `accrual_sender_retention_{what}_purged_total` on the sender's `/metrics`.
async fn purged(app: &TestApp, what: &str) -> u64 {
    let name = format!("accrual_sender_retention_{what}_purged_total");
    let metrics = app.metrics().await;
    metric(&metrics, &name).unwrap_or_else(|| panic!("{name} not in /metrics")) as u64
}

#[tokio::test]
async fn expired_chunks_and_keys_go_the_ledger_stays_and_unfinished_jobs_keep_their_chunks() {
    // Retentions in seconds, parsed as an operator would write them. The test drives dispatch and
    // retention itself (`run_background_once`): no dispatch task, and the retention loop's next
    // round is the default interval away.
    let app = spawn_app_parsing(
        &[
            "--results-retention-days",
            "2s",
            "--idempotency-retention-hours",
            "2s",
        ],
        |s| {
            s.keys.accrual_api_keys = DEV_KEYS.into();
            s.dispatch.dispatch_tasks = 0;
        },
    )
    .await;

    // A reserved job: due in an hour, so its chunks wait for the dispatcher.
    let reserve_at = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, reserved) = app
        .post(body(3, "r").to_owned())
        .query(&format!("?reserve_at={reserve_at}"))
        .status_and_json()
        .await;
    assert_eq!(status, 202, "{reserved}");
    let reserved = job_id(&reserved);

    // A running job: sent, but its one message taken off the queue before any listener runs, so
    // it stays `enqueued` (not final) for the whole test.
    let (status, running) = app
        .post(body(1, "b").to_owned())
        .idempotency_key("running-1")
        .status_and_json()
        .await;
    assert_eq!(status, 202, "{running}");
    let running = job_id(&running);
    app.run_background_once().await;
    assert_eq!(
        app.job_view(&running.to_string()).await["status"],
        "enqueued"
    );
    let mut taken = 0;
    while taken == 0 {
        let received = app
            .env
            .client
            .receive_message()
            .queue_url(&app.env.queues.main)
            .visibility_timeout(3_600)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        taken += received.messages().len();
    }

    // A job that completes.
    let campaign = body(300, "m");
    let (status, finished) = app
        .post(campaign.to_owned())
        .idempotency_key("campaign-1")
        .status_and_json()
        .await;
    assert_eq!(status, 202, "{finished}");
    let finished = job_id(&finished);
    app.run_background_once().await;
    let _listener = app.spawn_listener().await;
    eventually(Duration::from_secs(60), "the job completed", || async {
        stored(&app, finished, 0).await.0 == "completed"
    })
    .await;

    // Past both retentions (2 s, on MySQL's clock as the purge compares), then one round.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    app.run_background_once().await;
    let (_, chunks, key, purged_at, _) = stored(&app, finished, 0).await;
    assert_eq!(
        (chunks, key, purged_at),
        (0, None, true),
        "the finished job's chunks purged and its key cleared"
    );

    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals WHERE job_id = ?")
        .bind(finished)
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(written, 300, "the ledger rows stay");
    let view = app.job_view(&finished.to_string()).await;
    assert_eq!(
        (view["status"].as_str(), view["written"].as_u64()),
        (Some("completed"), Some(300)),
        "the job row stays, with its outcome: {view}"
    );
    // Its per-item results went with its chunks; an unfinished job's are still there.
    let results = |job: uuid::Uuid| {
        app.http
            .get(format!("{}/v1/jobs/{job}/results", app.address))
            .bearer_auth(crate::helpers::KEY_A)
            .send()
    };
    let gone = crate::helpers::problem(results(finished).await.unwrap(), 410).await;
    assert_eq!(gone["type"], "/problems/results-expired", "{gone}");
    let kept = results(reserved).await.unwrap();
    assert_eq!(kept.status().as_u16(), 200);
    assert_eq!(kept.text().await.unwrap().lines().count(), 3);
    // Older than both retentions, not final: chunks kept (the running job's key goes by age).
    assert_eq!(
        stored(&app, reserved, 2).await,
        ("reserved".into(), 1, None, false, true)
    );
    assert_eq!(
        stored(&app, running, 2).await,
        ("enqueued".into(), 1, None, false, true)
    );
    assert_eq!(
        (
            purged(&app, "jobs").await,
            purged(&app, "chunks").await,
            purged(&app, "idempotency_keys").await
        ),
        (1, 1, 2),
        "the purge counted"
    );

    // The key is forgotten: the same request with it is a new job.
    let (status, replay) = app
        .post(campaign.to_owned())
        .idempotency_key("campaign-1")
        .status_and_json()
        .await;
    assert_eq!(status, 202, "{replay}");
    assert_ne!(job_id(&replay), finished);
}

#[tokio::test]
async fn one_owner_at_a_time_holds_a_lease_until_it_expires_or_is_given_up() {
    let env = TestEnv::new().await;
    let take = |owner: String, secs: u64| {
        let pool = env.pool.clone();
        async move {
            lease::take(&pool, lease::RETENTION, &owner, Duration::from_secs(secs))
                .await
                .unwrap()
        }
    };

    // Eight replicas at once, the lease never taken before: exactly one gets it.
    let racers: Vec<_> = (0..8)
        .map(|i| tokio::spawn(take(format!("replica-{i}"), 60)))
        .collect();
    let mut holders = Vec::new();
    for (i, racer) in racers.into_iter().enumerate() {
        if racer.await.unwrap() {
            holders.push(format!("replica-{i}"));
        }
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
    let holder = holders.pop().unwrap();
    let other = if holder == "replica-0" {
        "replica-1"
    } else {
        "replica-0"
    };

    // The holder renews it; the others cannot take it while it runs.
    assert!(take(holder.clone(), 1).await, "renewed by its holder");
    assert!(!take(other.into(), 60).await);
    // Expired (a holder that died): the next one takes it, and the old holder has lost it.
    eventually(
        Duration::from_secs(5),
        "the expired lease taken over",
        || take(other.into(), 60),
    )
    .await;
    assert!(!take(holder.clone(), 60).await);
    assert!(
        !lease::holds(&env.pool, lease::RETENTION, &holder)
            .await
            .unwrap()
    );
    // Given up (a holder shutting down): another takes it at once.
    lease::release(&env.pool, lease::RETENTION, other)
        .await
        .unwrap();
    assert!(take(holder, 60).await);
}

#[tokio::test]
async fn two_sender_replicas_keep_one_retention_lease_holder() {
    let app = spawn_app_parsing(&["--retention-interval", "1s"], |s| {
        s.keys.accrual_api_keys = DEV_KEYS.into();
    })
    .await;
    app.spawn_sender(|s| s.retention.retention_interval = Duration::from_secs(1))
        .await;
    let holder = || async {
        sqlx::query_as::<_, (String, bool)>(
            "SELECT owner, lease_until >= NOW(6) FROM maintenance_leases WHERE name = 'retention'",
        )
        .fetch_optional(&app.env.pool)
        .await
        .unwrap()
    };
    eventually(Duration::from_secs(10), "a lease holder", || async {
        holder().await.is_some()
    })
    .await;
    let first = holder().await.unwrap();
    // Four rounds of both replicas: the holder renews, the other never takes over.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_eq!(holder().await, Some((first.0.clone(), true)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
