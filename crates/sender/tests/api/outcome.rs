//! A job's final state is written when it happens, by the system, not by whoever reads it first.

use std::time::Duration;

use accrual_testkit::eventually;
use accrual_testkit::process::metric;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use crate::helpers::{KEY_A, item, spawn_app};

#[tokio::test]
async fn a_job_completes_with_nobody_reading_it_and_completed_at_is_its_last_write() {
    let app = spawn_app().await;
    let _listener = app.spawn_listener().await;
    let body = format!(
        "[{}]",
        (0..300)
            .map(|i| item(&format!("m{i}"), "WELFARE", 1))
            .collect::<Vec<_>>()
            .join(",")
    );
    let post = || {
        app.http
            .post(format!("{}/v1/accruals", app.address))
            .bearer_auth(KEY_A)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "campaign-7")
            .body(body.clone())
            .send()
    };
    let accepted: Value = post().await.unwrap().json().await.unwrap();
    let job_id: uuid::Uuid = accepted["job_id"].as_str().unwrap().parse().unwrap();

    // No GET: the stored row itself must reach its final status.
    let stored = || async {
        sqlx::query_as::<_, (String, Option<NaiveDateTime>, Option<u32>, Option<u32>)>(
            "SELECT status, completed_at, written, dead_lettered FROM accrual_jobs WHERE job_id = ?",
        )
        .bind(job_id)
        .fetch_one(&app.env.pool)
        .await
        .unwrap()
    };
    eventually(
        Duration::from_secs(60),
        "the stored job completed",
        || async { stored().await.0 == "completed" },
    )
    .await;
    let (_, completed_at, written, dead_lettered) = stored().await;
    assert_eq!((written, dead_lettered), (Some(300), Some(0)));
    let last_write: NaiveDateTime = sqlx::query_scalar(
        "SELECT created_at FROM point_accruals WHERE job_id = ? ORDER BY id DESC LIMIT 1",
    )
    .bind(job_id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(completed_at, Some(last_write));

    // A replay of the request shows the stored, final status.
    let replay = post().await.unwrap();
    assert_eq!(replay.status().as_u16(), 200);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["status"], "completed");

    // A finished job is read from its stored outcome, not counted again: the view shows what is
    // stored (here changed behind its back) and the time of the last write.
    sqlx::query("UPDATE accrual_jobs SET written = 299, dead_lettered = 1 WHERE job_id = ?")
        .bind(job_id)
        .execute(&app.env.pool)
        .await
        .unwrap();
    let view = app.job_view(&job_id.to_string()).await;
    assert_eq!(
        (view["written"].as_u64(), view["dead_lettered"].as_u64()),
        (Some(299), Some(1)),
        "{view}"
    );
    let shown: DateTime<Utc> = view["completed_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(shown.naive_utc(), last_write);
}

/// Each finished job is counted once in `jobs_completed_total` and `job_completion_seconds`,
/// however many replicas run the completion task.
#[tokio::test]
async fn a_finished_job_is_counted_once_across_replicas_with_its_completion_time() {
    let app = spawn_app().await;
    let second = app.spawn_sender(|_| {}).await;
    let _listener = app.spawn_listener().await;
    let body = format!(
        "[{}]",
        (0..200)
            .map(|i| item(&format!("m{i}"), "WELFARE", 1))
            .collect::<Vec<_>>()
            .join(",")
    );
    let accepted: Value = app.post(body).await.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(60), "the job completed", || async {
        app.job_view(&job_id).await["status"] == "completed"
    })
    .await;
    // Both completion tasks have had a round since.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A replica that counted nothing has no `status` series at all.
    let sample = |text: &str, name: &str| metric(text, name).unwrap_or(0.0);
    let mut completed = 0.0;
    let mut observed = 0.0;
    let mut seconds = 0.0;
    for address in [app.address.clone(), second] {
        let text = app.metrics_at(&address).await;
        completed += sample(
            &text,
            r#"accrual_sender_jobs_completed_total{status="completed"}"#,
        );
        observed += sample(&text, "accrual_sender_job_completion_seconds_count");
        seconds += sample(&text, "accrual_sender_job_completion_seconds_sum");
    }
    assert_eq!((completed, observed), (1.0, 1.0));
    assert!(seconds > 0.0 && seconds < 60.0, "{seconds}");
}
