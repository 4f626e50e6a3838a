//! Members per client (issue 25, point 5): what a client learns of a member id, and what its
//! member queries read, are its own rows only. The ledger's `client_id` is filled by the listener
//! and, for older rows, by `accrualctl backfill ledger-client-ids`; until its index exists the
//! sender finds a row's client by a join on `accrual_jobs`, then by the index.

use std::time::Duration;

use accrual_core::ledger_clients;
use accrual_sender::store::member_ledger::{self, ByClient};
use accrual_testkit::eventually;
use serde_json::Value;

use crate::helpers::{KEY_A, TestApp, item, seed_credits, spawn_app_with};

const KEY_B: &str = "key_b";

async fn dry_run_as(app: &TestApp, key: &str, members: &[String]) -> Value {
    let items: Vec<String> = members.iter().map(|m| item(m, "WELFARE", 1)).collect();
    let response = app
        .http
        .post(format!("{}/v1/accruals?dry_run=true", app.address))
        .bearer_auth(key)
        .header("Content-Type", "application/json")
        .body(format!("[{}]", items.join(",")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

async fn get_as(app: &TestApp, key: &str, path: &str) -> Value {
    let response = app
        .http
        .get(format!("{}{path}", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    response.json().await.unwrap()
}

/// (credited, ledger rows on the first page) of `member` as the client of `key` sees them.
async fn seen(app: &TestApp, key: &str, member: &str) -> (i64, usize) {
    let balance = get_as(app, key, &format!("/v1/members/{member}/balance")).await;
    let credited = balance["point_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["credited"].as_i64().unwrap())
        .sum();
    let ledger = get_as(
        app,
        key,
        &format!("/v1/members/{member}/accruals?limit=500"),
    )
    .await;
    (credited, ledger["accruals"].as_array().unwrap().len())
}

/// The `key` column of each line of `EXPLAIN sql` with `binds`.
async fn explained_keys(app: &TestApp, sql: &str, binds: &[&str]) -> Vec<Option<String>> {
    let mut explain = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")));
    for b in binds {
        explain = explain.bind(*b);
    }
    let rows = explain.fetch_all(&app.env.pool).await.unwrap();
    rows.iter()
        .map(|r| sqlx::Row::try_get::<Option<String>, _>(r, "key").unwrap())
        .collect()
}

#[tokio::test]
async fn a_dry_run_counts_as_new_the_members_only_another_client_has_credited() {
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.api.sender_client_index_recheck = Duration::from_millis(1);
    })
    .await;
    let pool = &app.env.pool;
    let by_b: Vec<String> = (0..20).map(|i| format!("only-b-{i}")).collect();
    seed_credits(pool, "client_b", &by_b, 1, 10).await;
    let by_a: Vec<String> = (0..5).map(|i| format!("a-{i}")).collect();
    seed_credits(pool, "client_a", &by_a, 2, 10).await;

    let a = dry_run_as(&app, KEY_A, &by_b).await;
    assert_eq!(a["members"], 20, "{a}");
    assert_eq!(
        a["new_members"], 20,
        "client A learns nothing of what client B credited: {a}"
    );
    let b = dry_run_as(&app, KEY_B, &by_b).await;
    assert_eq!(b["new_members"], 0, "client B has credited them all: {b}");
    let both: Vec<String> = by_a.iter().chain(&by_b).cloned().collect();
    let a = dry_run_as(&app, KEY_A, &both).await;
    assert_eq!(
        (a["members"].clone(), a["new_members"].clone()),
        (25.into(), 20.into()),
        "{a}"
    );

    // The same answers once the ledger's client_id is backfilled and indexed.
    ledger_clients::backfill(pool, 0, 7, |_| {}).await.unwrap();
    assert!(ledger_clients::create_index(pool).await.unwrap());
    let a = dry_run_as(&app, KEY_A, &both).await;
    assert_eq!(
        (a["members"].clone(), a["new_members"].clone()),
        (25.into(), 20.into()),
        "{a}"
    );
    let b = dry_run_as(&app, KEY_B, &both).await;
    assert_eq!(b["new_members"], 5, "{b}");
}

#[tokio::test]
async fn a_members_balance_and_ledger_never_include_another_clients_rows_and_read_the_client_index_once_backfilled()
 {
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.api.sender_client_index_recheck = Duration::from_millis(1);
    })
    .await;
    let pool = &app.env.pool;
    let shared = vec!["shared-1".to_owned()];
    seed_credits(pool, "client_a", &shared, 3, 5).await;
    let job_b = seed_credits(pool, "client_b", &shared, 4, 100).await;

    // Before the backfill: the join on accrual_jobs.
    assert_eq!(seen(&app, KEY_A, "shared-1").await, (15, 3));
    assert_eq!(seen(&app, KEY_B, "shared-1").await, (400, 4));

    let done = ledger_clients::backfill(pool, 0, 2, |_| {}).await.unwrap();
    assert_eq!(done.updated, 7);
    assert!(ledger_clients::create_index(pool).await.unwrap());
    assert_eq!(seen(&app, KEY_A, "shared-1").await, (15, 3));
    assert_eq!(seen(&app, KEY_B, "shared-1").await, (400, 4));

    // Each member query reads the client index, and only it, for the ledger.
    let as_of = "2026-01-01 00:00:00";
    for (sql, binds) in [
        (
            member_ledger::ledger_sql(ByClient::Index, false, false),
            vec!["shared-1", "client_a", "51"],
        ),
        (
            member_ledger::ledger_sql(ByClient::Index, true, true),
            vec!["shared-1", "client_a", "WELFARE", "99999", "51"],
        ),
        (
            member_ledger::balance_sql(ByClient::Index),
            vec![as_of, "shared-1", "client_a"],
        ),
    ] {
        let keys = explained_keys(&app, &sql, &binds).await;
        assert_eq!(
            keys,
            vec![Some(ledger_clients::CLIENT_INDEX.to_owned())],
            "{sql}"
        );
    }

    // The sender reads the rows' own client_id now, not their job's: a row of client B's job
    // marked as client A's (which nothing but this test does) shows in client A's answers.
    sqlx::query("UPDATE point_accruals SET client_id = 'client_a' WHERE job_id = ? LIMIT 1")
        .bind(job_b)
        .execute(pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "client A's queries read client_id",
        || async { seen(&app, KEY_A, "shared-1").await == (115, 4) },
    )
    .await;
}
