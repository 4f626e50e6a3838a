//! Members per client (issue 25, point 5): every ledger row the listener writes carries its
//! job's `client_id`, so member queries can read one client's rows by index.

use std::time::Duration;

use accrual_listener::ledger::Ledger;
use accrual_testkit::TestEnv;
use uuid::Uuid;

use crate::helpers::point;

async fn store_job(env: &TestEnv, job_id: Uuid, client_id: &str) {
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at) \
         VALUES (?, ?, ?, 1, 1, 'running', NOW(6))",
    )
    .bind(job_id)
    .bind(client_id)
    .bind(&[0u8; 32][..])
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn the_listener_fills_client_id_on_every_row_it_writes() {
    let env = TestEnv::new().await;
    let ledger = Ledger::new(env.pool.clone(), 64);
    // Two clients' jobs in one batch, several points each, the same member in both; more points
    // than one statement takes, so several insert shapes are used.
    let (job_a, job_b) = (Uuid::now_v7(), Uuid::now_v7());
    store_job(&env, job_a, "client_a").await;
    store_job(&env, job_b, "client_b").await;
    let records: Vec<_> = (0..150)
        .map(|i| {
            let mut r = point(&format!("m-{}", i % 7), 1 + i);
            r.job_id = if i % 3 == 0 { job_b } else { job_a };
            r
        })
        .collect();
    let far = tokio::time::Instant::now() + Duration::from_secs(3_600);

    let outcome = ledger.write(&records, far).await.unwrap().unwrap();

    assert_eq!(outcome.written, 150);
    let rows: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT job_id, client_id FROM point_accruals")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 150);
    for (job_id, client_id) in rows {
        let expected = if job_id == job_b {
            "client_b"
        } else {
            "client_a"
        };
        assert_eq!(
            client_id.as_deref(),
            Some(expected),
            "a row of job {job_id}"
        );
    }
}
