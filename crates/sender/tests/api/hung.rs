//! Nothing waits forever on a dependency: a sender whose SQS traffic is black-holed (connections
//! open, no answer, no error) stops renewing its lease, so another replica finishes the job.

use std::time::Duration;

use accrual_testkit::eventually;
use accrual_testkit::proxy::TcpProxy;
use serde_json::Value;

use crate::helpers::{item, spawn_app_with};

#[tokio::test]
async fn a_sender_whose_sqs_is_black_holed_gives_its_chunk_up_and_another_finishes_the_job() {
    // The app's own sender only accepts; sender A dispatches through a proxy to LocalStack.
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    let proxy = TcpProxy::start(app.env.sqs_addr()).await;
    let port = proxy.port;
    let a = app
        .spawn_sender(|s| {
            s.sqs.aws_endpoint_url = format!("http://127.0.0.1:{port}");
            s.dispatch.dispatch_tasks = 1;
            s.dispatch.dispatch_lease = Duration::from_secs(3);
        })
        .await;
    proxy.stall();

    let body = format!(
        "[{}]",
        (0..3_000)
            .map(|i| item(&format!("m{i}"), "WELFARE", 1))
            .collect::<Vec<_>>()
            .join(",")
    );
    let accepted = app.post(body).await;
    assert_eq!(accepted.status().as_u16(), 202);
    let job_id = accepted.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A claims the first chunk and hangs on it.
    eventually(Duration::from_secs(10), "A holding a chunk", || async {
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accrual_chunks WHERE lease_owner IS NOT NULL AND dispatched_at IS NULL",
        )
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
        held == 1
    })
    .await;

    // B, with a working network, and a listener.
    let _b = app.spawn_sender(|s| s.dispatch.dispatch_tasks = 2).await;
    let listener = app.spawn_listener().await;

    eventually(Duration::from_secs(60), "the job completed", || async {
        app.job_view(&job_id).await["status"] == "completed"
    })
    .await;
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT accrual_id) FROM point_accruals")
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (3_000, 3_000));
    // The listener counts its rows just after they commit; the job may be settled before that.
    eventually(Duration::from_secs(10), "every row counted", || async {
        listener.written.get() >= 3_000
    })
    .await;
    assert_eq!(listener.written.get(), 3_000);
    // A gave the chunk up by itself (its task is free again), without any error from SQS.
    let abandoned = || async {
        let metrics = app.metrics_at(&a).await;
        accrual_testkit::process::metric(&metrics, "accrual_sender_chunks_abandoned_total")
    };
    eventually(Duration::from_secs(10), "A gave its chunk up", || async {
        abandoned().await.is_some_and(|n| n >= 1.0)
    })
    .await;
}
