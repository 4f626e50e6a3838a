//! A member's ledger and balance (issue #15, point 4), on real MariaDB, Redis and LocalStack SQS:
//! every number is checked against SQL sums the test computes itself (and against what it
//! posted), with another client's job for the same member, a reversed job, an expired credit and
//! reserved jobs, one of them cancelled.

use std::collections::BTreeMap;
use std::time::Duration;

use accrual_testkit::eventually;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{KEY_A, TestApp, problem, spawn_app, spawn_app_with};

const KEY_B: &str = "key_b";

/// `GET path` with the key; (status, JSON).
async fn get_as(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let response = app
        .http
        .get(format!("{}{path}", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn completed(app: &TestApp, key: &str, job_id: &str) -> bool {
    let (_, view) = get_as(app, key, &format!("/v1/jobs/{job_id}")).await;
    view["status"] == "completed"
}

/// Per point type: (credited, reversed, expired), summed by SQL over the member's ledger rows
/// whose job belongs to `client` (a subquery, not the API's join), expiry compared with `as_of`.
async fn sql_ledger_sums(
    app: &TestApp,
    client: &str,
    member: &str,
    as_of: &str,
) -> BTreeMap<String, (i64, i64, i64)> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT point_type, \
           CAST(COALESCE(SUM(IF(amount > 0, amount, 0)), 0) AS SIGNED), \
           CAST(COALESCE(SUM(IF(amount < 0, -amount, 0)), 0) AS SIGNED), \
           CAST(COALESCE(SUM(IF(expires_at IS NOT NULL AND expires_at <= ?, amount, 0)), 0) AS SIGNED) \
         FROM point_accruals \
         WHERE member_id = ? AND job_id IN (SELECT job_id FROM accrual_jobs WHERE client_id = ?) \
         GROUP BY point_type",
    )
    .bind(
        DateTime::parse_from_rfc3339(as_of)
            .unwrap()
            .with_timezone(&Utc)
            .naive_utc(),
    )
    .bind(member)
    .bind(client)
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(t, c, r, e)| (t, (c, r, e)))
        .collect()
}

/// The balance answer as point type → (credited, reversed, expired, active, reserved).
fn shown(balance: &Value) -> BTreeMap<String, (i64, i64, i64, i64, i64)> {
    balance["point_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = |f: &str| p[f].as_i64().unwrap();
            (
                p["point_type"].as_str().unwrap().to_owned(),
                (
                    n("credited"),
                    n("reversed"),
                    n("expired"),
                    n("active"),
                    n("reserved"),
                ),
            )
        })
        .collect()
}

/// Reverses `original` through the API (`POST /v1/jobs/{id}/reversal`) and waits until the
/// reversal job has written its compensating rows.
async fn reverse(app: &TestApp, key: &str, original: &str) -> Uuid {
    let response = app
        .http
        .post(format!("{}/v1/jobs/{original}/reversal", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let accepted: Value = response.json().await.unwrap();
    let reversal = accepted["job_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(60), "the reversal written", || {
        completed(app, key, &reversal)
    })
    .await;
    reversal.parse().unwrap()
}

/// Every page of `GET path` (limit 2), following `next`; the rows in the order shown.
async fn all_pages(app: &TestApp, key: &str, first: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut path = first.to_owned();
    loop {
        let (status, page) = get_as(app, key, &path).await;
        assert_eq!(status, 200, "{page}");
        let got = page["accruals"].as_array().unwrap();
        assert!(got.len() <= 2, "limit 2 gave {}", got.len());
        rows.extend(got.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(page["next_cursor"].as_str().map(str::is_empty), Some(false));
                path = next.to_owned();
            }
            None => {
                assert!(page["next_cursor"].is_null());
                return rows;
            }
        }
    }
}

/// The member's ledger accrual_ids of the client's jobs, newest written first, by SQL.
async fn sql_ledger_ids(
    app: &TestApp,
    client: &str,
    member: &str,
    point_type: Option<&str>,
) -> Vec<String> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT accrual_id FROM point_accruals \
         WHERE member_id = ? AND (? IS NULL OR point_type = ?) \
           AND job_id IN (SELECT job_id FROM accrual_jobs WHERE client_id = ?) \
         ORDER BY id DESC",
    )
    .bind(member)
    .bind(point_type)
    .bind(point_type)
    .bind(client)
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    ids.iter().map(Uuid::to_string).collect()
}

#[tokio::test]
async fn a_members_ledger_and_balance_match_sql_sums_with_reversal_expiry_and_reserved_jobs() {
    let app = spawn_app_with(|s| s.retention.retention_interval = Duration::from_secs(1)).await;
    app.spawn_listener().await;
    let soon = Utc::now() + chrono::Duration::seconds(4);
    let later = Utc::now() + chrono::Duration::days(30);
    let reserve_at = rfc3339(Utc::now() + chrono::Duration::hours(1));

    // client_a: a credit that stays, a job that will be reversed, and one that expires soon.
    let kept = app
        .post(format!(
                r#"[{{"member_id":"m1","point_type":"WELFARE","amount":25,"reason":"kept","external_id":"ext-1","expires_at":"{}"}},
                    {{"member_id":"m2","point_type":"WELFARE","amount":9}}]"#,
                rfc3339(later)
            )).job_id()
        .await;
    let reversed = app
        .post(format!(
            r#"[{{"member_id":"m1","point_type":"WELFARE","amount":100,"expires_at":"{}"}},
                    {{"member_id":"m1","point_type":"BONUS","amount":50}},
                    {{"member_id":"m2","point_type":"WELFARE","amount":10}}]"#,
            rfc3339(later)
        ))
        .job_id()
        .await;
    let expiring = app
        .post(format!(
            r#"[{{"member_id":"m1","point_type":"WELFARE","amount":7,"expires_at":"{}"}},
                    {{"member_id":"m1","point_type":"BONUS","amount":3}}]"#,
            rfc3339(soon)
        ))
        .job_id()
        .await;
    // client_b: the same member, which client_a must not see.
    let foreign = app
        .post(r#"[{"member_id":"m1","point_type":"WELFARE","amount":1000}]"#)
        .api_key(KEY_B)
        .job_id()
        .await;
    // Reserved jobs: one stays reserved, one gets cancelled; client_b has one too.
    let reserved = app
        .post(
            r#"[{"member_id":"m1","point_type":"WELFARE","amount":300},
                {"member_id":"m1","point_type":"WELFARE","amount":200},
                {"member_id":"m1","point_type":"CASH","amount":40},
                {"member_id":"m2","point_type":"CASH","amount":1}]"#,
        )
        .query(&format!("?reserve_at={reserve_at}"))
        .job_id()
        .await;
    let to_cancel = app
        .post(r#"[{"member_id":"m1","point_type":"WELFARE","amount":60}]"#)
        .query(&format!("?reserve_at={reserve_at}"))
        .job_id()
        .await;
    app.post(r#"[{"member_id":"m1","point_type":"WELFARE","amount":999}]"#)
        .api_key(KEY_B)
        .query(&format!("?reserve_at={reserve_at}"))
        .job_id()
        .await;

    for (key, job) in [
        (KEY_A, &kept),
        (KEY_A, &reversed),
        (KEY_A, &expiring),
        (KEY_B, &foreign),
    ] {
        eventually(Duration::from_secs(60), "jobs written", || {
            completed(&app, key, job)
        })
        .await;
    }
    let reversal = reverse(&app, KEY_A, &reversed).await;
    // Past the short expiry.
    let wait = (soon - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200);
    tokio::time::sleep(wait).await;

    let (status, balance) = get_as(&app, KEY_A, "/v1/members/m1/balance").await;
    assert_eq!(status, 200, "{balance}");
    assert_eq!(balance["member_id"], "m1");
    let as_of = balance["as_of"].as_str().unwrap().to_owned();
    let sums = sql_ledger_sums(&app, "client_a", "m1", &as_of).await;
    // What the test posted, as it expects the sums to come out (and SQL agrees).
    let expected_sql: BTreeMap<String, (i64, i64, i64)> = [
        ("BONUS".to_owned(), (53, 50, 0)),
        ("WELFARE".to_owned(), (132, 100, 7)),
    ]
    .into();
    assert_eq!(sums, expected_sql, "the SQL sums of the ledger");
    let mut expected: BTreeMap<String, (i64, i64, i64, i64, i64)> = sums
        .iter()
        .map(|(t, (c, r, e))| (t.clone(), (*c, *r, *e, c - r - e, 0)))
        .collect();
    // Reserved, from the items posted: 300 + 200 + 60 WELFARE, 40 CASH.
    expected.entry("WELFARE".into()).or_default().4 = 560;
    expected.insert("CASH".into(), (0, 0, 0, 0, 40));
    assert_eq!(shown(&balance), expected, "{balance}");

    // Cancelling a reserved job takes its points out of the balance at once.
    let cancel = app
        .http
        .delete(format!("{}/v1/jobs/{to_cancel}", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 200);
    let (_, balance) = get_as(&app, KEY_A, "/v1/members/m1/balance").await;
    expected.get_mut("WELFARE").unwrap().4 = 500;
    assert_eq!(shown(&balance), expected, "{balance}");

    // client_b sees its own credit and reservation only.
    let (_, theirs) = get_as(&app, KEY_B, "/v1/members/m1/balance").await;
    let b_sums = sql_ledger_sums(&app, "client_b", "m1", theirs["as_of"].as_str().unwrap()).await;
    assert_eq!(b_sums, [("WELFARE".to_owned(), (1000, 0, 0))].into());
    assert_eq!(
        shown(&theirs),
        [("WELFARE".to_owned(), (1000, 0, 0, 1000, 999))].into()
    );

    // A member with nothing: an empty list.
    let (status, nobody) = get_as(&app, KEY_A, "/v1/members/nobody/balance").await;
    assert_eq!(status, 200);
    assert_eq!(nobody["point_types"], serde_json::json!([]));

    // The ledger: every row of client_a exactly once across pages, newest written first.
    let rows = all_pages(&app, KEY_A, "/v1/members/m1/accruals?limit=2").await;
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r["accrual_id"].as_str().unwrap().to_owned())
        .collect();
    let expected_ids = sql_ledger_ids(&app, "client_a", "m1", None).await;
    assert_eq!(
        expected_ids.len(),
        7,
        "3 credits of m1 + 2 + 2 reversal rows"
    );
    assert_eq!(ids, expected_ids);
    // The newest rows are the reversal's, with their negative amount and the reversed id.
    assert_eq!(rows[0]["job_id"], reversal.to_string());
    assert!(rows[0]["amount"].as_i64().unwrap() < 0);
    assert!(rows[0]["reverses"].is_string());
    let kept_row = rows
        .iter()
        .find(|r| r["job_id"] == kept.as_str())
        .expect("the kept credit");
    assert_eq!(kept_row["amount"], 25);
    assert_eq!(kept_row["reason"], "kept");
    assert_eq!(kept_row["external_id"], "ext-1");
    assert_eq!(kept_row["point_type"], "WELFARE");
    assert!(kept_row["reverses"].is_null());
    for field in ["expires_at", "accepted_at", "written_at"] {
        assert!(kept_row[field].is_string(), "{field}: {kept_row}");
    }
    // Filtered by point type.
    let welfare = all_pages(
        &app,
        KEY_A,
        "/v1/members/m1/accruals?point_type=WELFARE&limit=2",
    )
    .await;
    let welfare_ids: Vec<String> = welfare
        .iter()
        .map(|r| r["accrual_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        welfare_ids,
        sql_ledger_ids(&app, "client_a", "m1", Some("WELFARE")).await
    );
    assert_eq!(welfare_ids.len(), 4);
    assert!(welfare.iter().all(|r| r["point_type"] == "WELFARE"));
    // client_b's ledger of the same member: its one row.
    let theirs = all_pages(&app, KEY_B, "/v1/members/m1/accruals?limit=2").await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0]["job_id"], foreign.as_str());

    // Retention deletes the cancelled job's reserved amounts; the reserved job's stay.
    let left = |job: String| {
        let pool = app.env.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM accrual_reserved_amounts WHERE job_id = ?",
            )
            .bind(job.parse::<Uuid>().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    eventually(
        Duration::from_secs(20),
        "the cancelled job's amounts deleted",
        || {
            let left = left(to_cancel.clone());
            async move { left.await == 0 }
        },
    )
    .await;
    assert_eq!(
        left(reserved.clone()).await,
        3,
        "m1 WELFARE, m1 CASH, m2 CASH"
    );
}

#[tokio::test]
async fn bad_member_ids_limits_point_types_and_cursors_are_400() {
    let app = spawn_app().await;
    for path in [
        "/v1/members/bad%20id/accruals",
        "/v1/members/bad%20id/balance",
        &format!("/v1/members/{}/balance", "m".repeat(65)),
        "/v1/members/m1/accruals?limit=0",
        "/v1/members/m1/accruals?limit=501",
        "/v1/members/m1/accruals?point_type=welfare",
        "/v1/members/m1/accruals?cursor=00ff",
        "/v1/members/m1/accruals?status=x",
        "/v1/members/m1/balance?point_type=X",
    ] {
        let response = app
            .http
            .get(format!("{}{path}", app.address))
            .bearer_auth(KEY_A)
            .send()
            .await
            .unwrap();
        let body = problem(response, 400).await;
        assert_eq!(
            body["type"], "/problems/invalid-parameter",
            "{path}: {body}"
        );
    }
    let (status, empty) = get_as(&app, KEY_A, "/v1/members/m1/accruals").await;
    assert_eq!(status, 200);
    assert_eq!(empty["accruals"], serde_json::json!([]));
    assert!(empty["next_cursor"].is_null());
    let response = app
        .http
        .get(format!("{}/v1/members/m1/balance", app.address))
        .send()
        .await
        .unwrap();
    problem(response, 401).await;
}
