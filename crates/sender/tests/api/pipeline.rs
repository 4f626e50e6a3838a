//! The whole path on real services: POST → SQS → listener → MySQL.

use std::collections::BTreeMap;
use std::time::Duration;

use accrual_testkit::eventually;
use rand::Rng;

use crate::helpers::spawn_app;

#[tokio::test]
async fn twenty_thousand_points_for_seven_thousand_members_reach_the_ledger_exactly_once() {
    let app = spawn_app().await;
    let stats = app.spawn_listener().await;
    // Members repeat across items: 0..6000 get three point types, 6000..7000 two, as in an
    // employees' welfare run where one person is credited several kinds of points.
    let point_types = ["WELFARE", "BONUS", "CASHBACK"];
    let mut rng = rand::rng();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let items: Vec<serde_json::Value> = (0..20_000)
        .map(|i| {
            let member = format!("emp-{:05}", i % 7_000);
            let amount: i64 = rng.random_range(1..=10_000);
            *expected.entry(member.clone()).or_default() += amount;
            serde_json::json!({"member_id": member, "point_type": point_types[i / 7_000], "amount": amount})
        })
        .collect();

    let response = app.post(serde_json::to_vec(&items).unwrap()).await;
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (body["accepted"].as_u64(), body["members"].as_u64()),
        (Some(20_000), Some(7_000))
    );
    let job_id: uuid::Uuid = body["job_id"].as_str().unwrap().parse().unwrap();

    eventually(Duration::from_secs(600), "20,000 ledger rows", || async {
        app.env.ledger_rows().await >= 20_000
    })
    .await;
    let main = app.env.queues.main.clone();
    eventually(Duration::from_secs(30), "an empty queue", || async {
        app.env.depth(&main).await == 0
    })
    .await;

    assert_eq!(app.env.ledger_rows().await, 20_000);
    assert_eq!(app.env.member_rows().await, 7_000);
    let sums: Vec<(String, i64)> = sqlx::query_as(
        "SELECT member_id, CAST(SUM(amount) AS SIGNED) FROM point_accruals WHERE job_id = ? GROUP BY member_id ORDER BY member_id",
    )
    .bind(job_id)
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(sums, expected.into_iter().collect::<Vec<_>>());
    let types_of_first: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT point_type) FROM point_accruals WHERE member_id = 'emp-00000'",
    )
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(types_of_first, 3);
    eventually(
        Duration::from_secs(10),
        "every received point counted",
        || async {
            stats.written.get() + stats.duplicates.get() + stats.dead_lettered.get()
                == stats.points_received.get()
        },
    )
    .await;
    assert_eq!(stats.written.get(), 20_000);
    assert_eq!(app.env.depth(&app.env.queues.dlq).await, 0);
}
