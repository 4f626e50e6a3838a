//! `POST /v1/accruals?dry_run=true`: the same checks as a real request, an answer saying what it
//! would do, and nothing stored, queued or charged against the points allowance.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use crate::helpers::{TestApp, item, problem, seed_credits, spawn_app, spawn_app_with};

/// The row count of every table of the test's database, by name.
async fn row_counts(app: &TestApp) -> BTreeMap<String, i64> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
    )
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 5, "{tables:?}");
    let mut counts = BTreeMap::new();
    for table in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM `{table}`"
        )))
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
        counts.insert(table, n);
    }
    counts
}

async fn assert_queues_empty(app: &TestApp) {
    assert_eq!(app.env.depth(&app.env.queues.main).await, 0, "main queue");
    assert_eq!(
        app.env.depth(&app.env.queues.dlq).await,
        0,
        "dead-letter queue"
    );
}

#[tokio::test]
async fn a_dry_run_of_500000_items_answers_what_it_would_do_and_stores_and_queues_nothing() {
    // Dispatchers run: had anything been stored, it would be sent.
    let app = spawn_app().await;
    const ITEMS: usize = 500_000;
    const MEMBERS: usize = 300_000;
    // A third of the request's members this client has credited already, and some members it
    // does not name.
    let known: Vec<String> = (0..MEMBERS / 3)
        .map(|i| format!("m-{i}"))
        .chain((0..1_000).map(|i| format!("other-{i}")))
        .collect();
    seed_credits(&app.env.pool, "client_a", &known, 1, 1).await;
    let point_types = ["WELFARE", "BONUS", "GIFT_2026"];
    let mut amounts: BTreeMap<String, u64> = BTreeMap::new();
    let mut body = String::with_capacity(ITEMS * 64);
    body.push('[');
    for i in 0..ITEMS {
        let (point_type, amount) = (point_types[i % 3], 1 + (i % 1_000) as i64);
        *amounts.entry(point_type.to_owned()).or_default() += amount as u64;
        if i > 0 {
            body.push(',');
        }
        body.push_str(&item(&format!("m-{}", i % MEMBERS), point_type, amount));
    }
    body.push(']');
    let before = row_counts(&app).await;
    let reserve_at = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");

    let started = Instant::now();
    let response = app
        .post(body)
        .query(&format!(
            "dry_run=true&reserve_at={reserve_at}&label=spring-2026"
        ))
        .idempotency_key("dry-run-1")
        .await;
    let status = response.status().as_u16();
    let answer: Value = response.json().await.unwrap();
    let elapsed = started.elapsed();
    println!("dry run of {ITEMS} items ({MEMBERS} members): answered in {elapsed:?}");

    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dry_run"], true);
    assert_eq!(answer["points"], ITEMS);
    assert_eq!(answer["members"], MEMBERS);
    assert_eq!(answer["new_members"], MEMBERS - MEMBERS / 3);
    assert_eq!(answer["amounts"], json!(amounts));
    assert_eq!(answer["label"], "spring-2026");
    let at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(answer["reserve_at"].clone()).unwrap();
    assert_eq!(
        at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        reserve_at.to_string()
    );
    assert_eq!(row_counts(&app).await, before, "a dry run stored rows");
    assert_queues_empty(&app).await;
}

/// A request refused with `status` and `problem`, with and without `dry_run=true`.
struct Refused {
    what: &'static str,
    query: String,
    body: String,
    content_type: &'static str,
    idempotency_key: Option<&'static str>,
    status: u16,
    problem: &'static str,
}

fn refused(
    what: &'static str,
    query: String,
    body: String,
    status: u16,
    problem: &'static str,
) -> Refused {
    Refused {
        what,
        query,
        body,
        content_type: "application/json",
        idempotency_key: None,
        status,
        problem,
    }
}

#[tokio::test]
async fn invalid_requests_get_the_same_answer_with_and_without_dry_run() {
    let app = spawn_app().await;
    let at = |d: chrono::Duration| {
        (chrono::Utc::now() + d)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let one = format!("[{}]", item("a", "P", 1));
    let expires_early = format!(
        r#"[{{"member_id":"a","point_type":"P","amount":1,"expires_at":"{}"}}]"#,
        at(chrono::Duration::minutes(5))
    );
    let invalid_items = format!(
        r#"[{},{{"member_id":"bad id","point_type":"p","amount":0}},{{"colour":1}}]"#,
        item("a", "P", 1)
    );
    let cases = [
        refused(
            "invalid items",
            String::new(),
            invalid_items,
            422,
            "validation-failed",
        ),
        refused(
            "empty array",
            String::new(),
            "[]".into(),
            422,
            "empty-request",
        ),
        refused(
            "malformed JSON",
            String::new(),
            "[{\"member_id\":".into(),
            400,
            "malformed-json",
        ),
        refused(
            "not an array",
            String::new(),
            "{}".into(),
            400,
            "malformed-json",
        ),
        refused(
            "500,001 items",
            String::new(),
            format!("[{}]", vec![item("m", "P", 1); 500_001].join(",")),
            413,
            "payload-too-large",
        ),
        Refused {
            content_type: "text/plain",
            ..refused(
                "text/plain",
                String::new(),
                one.clone(),
                415,
                "unsupported-media-type",
            )
        },
        refused(
            "past reserve_at",
            format!("reserve_at={}", at(-chrono::Duration::hours(1))),
            one.clone(),
            400,
            "invalid-parameter",
        ),
        refused(
            "expiry before reserve_at",
            format!("reserve_at={}", at(chrono::Duration::hours(1))),
            expires_early,
            422,
            "validation-failed",
        ),
        refused(
            "bad label",
            "label=two%20words".into(),
            one.clone(),
            400,
            "invalid-parameter",
        ),
        Refused {
            idempotency_key: Some("a b"),
            ..refused(
                "bad Idempotency-Key",
                String::new(),
                one,
                400,
                "invalid-parameter",
            )
        },
    ];
    for case in cases {
        let mut answers = Vec::new();
        for dry_run in ["", "dry_run=true"] {
            let query = [case.query.as_str(), dry_run]
                .into_iter()
                .filter(|q| !q.is_empty())
                .collect::<Vec<_>>()
                .join("&");
            let body = case.body.clone();
            let response = app
                .post(body)
                .query(&query)
                .content_type(case.content_type)
                .idempotency_key(case.idempotency_key)
                .await;
            let mut answer = problem(response, case.status).await;
            let what = case.what;
            assert_eq!(
                answer["type"],
                format!("/problems/{}", case.problem),
                "{what}: {answer}"
            );
            answer.as_object_mut().unwrap().remove("request_id");
            answers.push(answer);
        }
        assert_eq!(
            answers[0], answers[1],
            "{}: with and without dry_run",
            case.what
        );
    }
    assert_eq!(app.env.member_rows().await, 0, "members were stored");
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "a job was stored");
    assert_queues_empty(&app).await;
}

#[tokio::test]
async fn dry_run_is_true_or_false_and_false_makes_a_real_job() {
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    let body = format!("[{}]", item("a", "P", 1));
    for bad in ["yes", "1", "TRUE", ""] {
        let response = app
            .post(body.clone())
            .query(&format!("dry_run={bad}"))
            .await;
        let problem = problem(response, 400).await;
        assert_eq!(problem["type"], "/problems/invalid-parameter", "{bad:?}");
        assert!(
            problem["detail"].as_str().unwrap().contains("dry_run"),
            "{problem}"
        );
    }
    let response = app.post(body).query("dry_run=false").await;
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(app.env.member_rows().await, 1);
}

#[tokio::test]
async fn a_dry_run_costs_a_request_but_no_points_and_keeps_no_idempotency_record() {
    // Three requests a minute, and fewer points than one dry run holds.
    let app = spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.rate.rate_limits = "client_a=3/10".into();
    })
    .await;
    seed_credits(&app.env.pool, "client_a", &["known".to_owned()], 1, 1).await;
    let big: Vec<String> = (0..100)
        .map(|i| item(if i % 2 == 0 { "known" } else { "fresh" }, "P", 2))
        .collect();

    let response = app
        .post(format!("[{}]", big.join(",")))
        .query("dry_run=true")
        .idempotency_key("k1")
        .await;
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["points"], 100, "{answer}");
    assert_eq!(answer["members"], 2);
    assert_eq!(answer["new_members"], 1);
    assert_eq!(answer["amounts"], json!({"P": 200}));
    assert_eq!(answer["reserve_at"], Value::Null);

    // The key was not recorded: a real request with it and another body makes a new job.
    let real = app
        .post(format!("[{}]", item("known", "P", 1)))
        .idempotency_key("k1")
        .await;
    assert_eq!(real.status().as_u16(), 202);
    // The third request of the minute is allowed, the fourth is not.
    let third = app
        .post(format!("[{}]", item("a", "P", 1)))
        .query("dry_run=true")
        .await;
    assert_eq!(third.status().as_u16(), 200);
    let fourth = app
        .post(format!("[{}]", item("a", "P", 1)))
        .query("dry_run=true")
        .await;
    assert_eq!(problem(fourth, 429).await["type"], "/problems/rate-limited");
}
