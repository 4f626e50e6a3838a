//! Per-item results: what became of each item, matched to its place in the request.

use std::time::Duration;

use accrual_testkit::eventually;
use chrono::Utc;
use serde_json::Value;

use crate::helpers::{KEY_A, TestApp, item, problem, spawn_app, spawn_app_with};

/// `GET /v1/jobs/{job_id}/results{query}` as client_a, with `accept` if given.
async fn results(
    app: &TestApp,
    job_id: &str,
    query: &str,
    accept: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .http
        .get(format!("{}/v1/jobs/{job_id}/results{query}", app.address))
        .bearer_auth(KEY_A);
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    request.send().await.unwrap()
}

/// The NDJSON records of a results answer.
async fn ndjson(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = response.text().await.unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The CSV header's columns, in order: the fields of each NDJSON record.
const COLUMNS: [&str; 11] = [
    "index",
    "accrual_id",
    "member_id",
    "point_type",
    "amount",
    "outcome",
    "reason",
    "written_at",
    "external_id",
    "existing_accrual_id",
    "existing_job_id",
];

/// Member of the item at `index` in the 20,000-item job: three of them are poison for MySQL.
fn member_at(index: usize) -> String {
    match index {
        7 | 10_001 | 19_999 => format!("poison-{index}"),
        _ => format!("m{}", index % 5_000),
    }
}

/// Python's `csv` module reads the CSV answer into rows of strings (the header row first).
fn parse_csv_with_python(csv: &str) -> Vec<Vec<String>> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import csv, io, json, sys\n\
             rows = list(csv.reader(io.TextIOWrapper(sys.stdin.buffer, encoding='utf-8', newline='')))\n\
             json.dump(rows, sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(csv.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python's csv module read the answer"
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A record as the strings its CSV row holds.
fn as_csv_row(record: &Value) -> Vec<String> {
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    COLUMNS.iter().map(|field| text(&record[*field])).collect()
}

/// The acceptance case: 20,000 items, three of which MySQL refuses. The dead-lettered ones come
/// back with their request indexes and reasons; every item comes back once, in request order, as
/// NDJSON and as a CSV that Python's `csv` module reads to the same records.
#[tokio::test]
async fn a_job_s_results_name_each_dead_letter_by_its_request_index_and_list_every_item_in_order() {
    let app = spawn_app().await;
    sqlx::query(
        // The constraint's name is in the reason MySQL gives: with a comma and quotes, the CSV
        // form has to quote it.
        r#"ALTER TABLE point_accruals ADD CONSTRAINT `no_poison, "please"` CHECK (member_id NOT LIKE 'poison-%')"#,
    )
    .execute(&app.env.pool)
    .await
    .unwrap();
    let _listener = app.spawn_listener().await;
    let items: Vec<String> = (0..20_000)
        .map(|i| {
            item(
                &member_at(i),
                if i % 2 == 0 { "WELFARE" } else { "BONUS" },
                (i % 1000 + 1) as i64,
            )
        })
        .collect();
    let job_id = app.post(format!("[{}]", items.join(","))).job_id().await;

    eventually(Duration::from_secs(120), "the job is final", || async {
        app.job_view(&job_id).await["status"] == "completed_with_errors"
    })
    .await;
    let view = app.job_view(&job_id).await;
    assert_eq!(view["results_url"], format!("/v1/jobs/{job_id}/results"));
    assert_eq!(
        (view["written"].as_u64(), view["dead_lettered"].as_u64()),
        (Some(19_997), Some(3))
    );

    let dead = ndjson(results(&app, &job_id, "?outcome=dead_lettered", None).await).await;
    let indexes: Vec<u64> = dead.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, vec![7, 10_001, 19_999]);
    for record in &dead {
        let index = record["index"].as_u64().unwrap() as usize;
        assert_eq!(record["member_id"], member_at(index));
        assert_eq!(record["amount"], (index % 1000 + 1) as i64);
        assert_eq!(record["outcome"], "dead_lettered");
        assert!(record["written_at"].is_null());
        let reason = record["reason"].as_str().unwrap();
        assert!(reason.contains(r#"no_poison, "please""#), "{reason}");
    }

    let all =
        ndjson(results(&app, &job_id, "?outcome=all", Some("application/x-ndjson")).await).await;
    assert_eq!(all.len(), 20_000);
    let mut ids = std::collections::HashSet::new();
    for (i, record) in all.iter().enumerate() {
        assert_eq!(record["index"].as_u64(), Some(i as u64), "request order");
        assert_eq!(record["member_id"], member_at(i));
        assert_eq!(
            record["point_type"],
            if i % 2 == 0 { "WELFARE" } else { "BONUS" }
        );
        assert_eq!(record["amount"], (i % 1000 + 1) as i64);
        assert!(ids.insert(record["accrual_id"].as_str().unwrap().to_owned()));
        if [7, 10_001, 19_999].contains(&i) {
            assert_eq!(record["outcome"], "dead_lettered");
        } else {
            assert_eq!(record["outcome"], "written", "{record}");
            assert!(record["reason"].is_null());
            assert!(
                record["written_at"]
                    .as_str()
                    .unwrap()
                    .parse::<chrono::DateTime<Utc>>()
                    .is_ok()
            );
        }
    }
    // Each written record's accrual_id and time are the ledger's.
    let ledger: Vec<(uuid::Uuid, chrono::NaiveDateTime)> =
        sqlx::query_as("SELECT accrual_id, created_at FROM point_accruals ORDER BY id LIMIT 3")
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    for (accrual_id, created_at) in ledger {
        let record = all
            .iter()
            .find(|r| r["accrual_id"] == accrual_id.to_string())
            .expect("a ledger row is an item of the job");
        let shown: chrono::DateTime<Utc> = record["written_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(shown.naive_utc(), created_at);
    }
    let written = ndjson(results(&app, &job_id, "?outcome=written", None).await).await;
    assert_eq!(written.len(), 19_997);
    assert!(
        ndjson(results(&app, &job_id, "?outcome=pending", None).await)
            .await
            .is_empty()
    );

    let response = results(&app, &job_id, "", Some("text/csv")).await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let rows = parse_csv_with_python(&response.text().await.unwrap());
    assert_eq!(rows[0], COLUMNS);
    assert_eq!(rows.len(), 20_001);
    for (row, record) in rows[1..].iter().zip(&all) {
        assert_eq!(row, &as_csv_row(record));
    }
}

/// Results are there while the job runs: a reserved job's items are all pending, in order.
#[tokio::test]
async fn a_reserved_job_s_items_are_pending_in_request_order() {
    let app = spawn_app_with(|s| s.api.chunk_items = 3).await;
    let reserve_at = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let items: Vec<String> = (0..10)
        .map(|i| item(&format!("m{i}"), "WELFARE", i + 1))
        .collect();
    let job_id = app
        .post(format!("[{}]", items.join(",")))
        .query(&format!("?reserve_at={reserve_at}"))
        .job_id()
        .await;

    let pending = ndjson(results(&app, &job_id, "?outcome=pending", None).await).await;
    let seen: Vec<(u64, String, i64)> = pending
        .iter()
        .map(|r| {
            assert!(r["reason"].is_null() && r["written_at"].is_null());
            (
                r["index"].as_u64().unwrap(),
                r["member_id"].as_str().unwrap().to_owned(),
                r["amount"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, String, i64)> = (0..10)
        .map(|i| (i, format!("m{i}"), i as i64 + 1))
        .collect();
    assert_eq!(
        seen, expected,
        "four chunks of 3, 3, 3 and 1 items, in order"
    );
    assert!(
        ndjson(results(&app, &job_id, "?outcome=written", None).await)
            .await
            .is_empty()
    );
}

/// Another client's job is not found; a cancelled job has no results; bad parameters and an
/// `Accept` we cannot give are problems.
#[tokio::test]
async fn results_refuse_what_they_cannot_answer_with_a_problem() {
    let app = spawn_app().await;
    let reserve_at = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let job_id = app
        .post(format!("[{}]", item("m1", "WELFARE", 1)))
        .query(&format!("?reserve_at={reserve_at}"))
        .job_id()
        .await;

    let other = app
        .http
        .get(format!("{}/v1/jobs/{job_id}/results", app.address))
        .bearer_auth("key_b")
        .send()
        .await
        .unwrap();
    problem(other, 404).await;
    let bad = problem(results(&app, &job_id, "?outcome=lost", None).await, 400).await;
    assert_eq!(bad["type"], "/problems/invalid-parameter");
    problem(results(&app, &job_id, "?outcomes=all", None).await, 400).await;
    let refused = problem(
        results(&app, &job_id, "", Some("application/xml")).await,
        406,
    )
    .await;
    assert_eq!(refused["type"], "/problems/not-acceptable");

    let cancelled = app
        .http
        .delete(format!("{}/v1/jobs/{job_id}", app.address))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status().as_u16(), 200);
    let conflict = problem(results(&app, &job_id, "", None).await, 409).await;
    assert_eq!(conflict["type"], "/problems/conflict");
}
