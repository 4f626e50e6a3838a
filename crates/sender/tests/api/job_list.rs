//! `GET /v1/jobs` and job labels: a client's own jobs, newest first, each exactly once across
//! pages; filters by status, label and creation time; refusals of bad parameters.

use accrual_core::job_status::JobStatus;
use std::collections::HashSet;

use accrual_sender::store::jobs::{self, JobFilter, ListPosition};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{KEY_A, TestApp, item, problem, spawn_app_with};

const KEY_B: &str = "key_b";
/// A label with characters a query string must encode.
const ODD_LABEL: &str = "春/キャンペーン&2026=+";

/// A sender that only accepts (jobs stay `dispatching`) and does not rate-limit the test.
async fn app() -> TestApp {
    spawn_app_with(|s| {
        s.dispatch.dispatch_tasks = 0;
        s.rate.rate_limits = "client_a=100000/100000000,client_b=100000/100000000".into();
    })
    .await
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `POST /v1/accruals?{query}` of one point; returns the job id.
async fn post_job(app: &TestApp, key: &str, query: &str, member: &str) -> String {
    let body = format!("[{}]", item(member, "P", 1));
    app.post(body)
        .api_key(key)
        .query(&format!("?{query}"))
        .job_id()
        .await
}

/// `GET {path_and_query}` with `key`.
async fn get(app: &TestApp, key: &str, path_and_query: &str) -> reqwest::Response {
    let url = format!("{}{path_and_query}", app.address);
    app.http.get(url).bearer_auth(key).send().await.unwrap()
}

/// Every page of `/v1/jobs?{query}`, following `next_cursor`; returns the jobs in order and the
/// number of pages.
async fn all_pages(app: &TestApp, key: &str, query: &str) -> (Vec<Value>, usize) {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1.. {
        let cursor_param = cursor
            .as_deref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let response = get(app, key, &format!("/v1/jobs?{query}{cursor_param}")).await;
        assert_eq!(response.status().as_u16(), 200);
        let page: Value = response.json().await.unwrap();
        jobs.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                assert_eq!(page["next"], Value::Null);
                return (jobs, pages);
            }
        }
        assert!(pages < 100, "paging does not end");
    }
    unreachable!()
}

fn ids(jobs: &[Value]) -> Vec<String> {
    jobs.iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect()
}

fn created_at(job: &Value) -> DateTime<Utc> {
    serde_json::from_value(job["created_at"].clone()).unwrap()
}

/// Newest first: `created_at`, then `job_id`, both descending.
fn newest_first(jobs: &mut [Value]) {
    jobs.sort_by(|a, b| {
        let key = |j: &Value| {
            (
                created_at(j),
                j["job_id"].as_str().unwrap().parse::<Uuid>().unwrap(),
            )
        };
        key(b).cmp(&key(a))
    });
}

/// 120 jobs over two clients (70 for client_a, 50 for client_b), with three labels or none and
/// three statuses (dispatching, reserved, cancelled); returns each client's job views, newest
/// first.
async fn seed(app: &TestApp) -> (Vec<Value>, Vec<Value>) {
    let tomorrow = (Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let labels = ["spring", ODD_LABEL, "autumn", ""];
    let mut views = (Vec::new(), Vec::new());
    for i in 0..120 {
        let (key, mine) = if i % 12 < 7 {
            (KEY_A, &mut views.0)
        } else {
            (KEY_B, &mut views.1)
        };
        let mut query = Vec::new();
        let label = labels[i % 4];
        if !label.is_empty() {
            query.push(format!("label={}", encode(label)));
        }
        if i % 3 == 0 {
            query.push(format!("reserve_at={tomorrow}"));
        }
        let job_id = post_job(app, key, &query.join("&"), &format!("m-{i}")).await;
        if i % 6 == 0 {
            let url = format!("{}/v1/jobs/{job_id}", app.address);
            let response = app.http.delete(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 200);
        }
        let mut view: Value = get(app, key, &format!("/v1/jobs/{job_id}"))
            .await
            .json()
            .await
            .unwrap();
        // A waiting job's place is in its own view only, not in the list.
        view.as_object_mut().unwrap().remove("queue");
        mine.push(view);
    }
    newest_first(&mut views.0);
    newest_first(&mut views.1);
    (views.0, views.1)
}

#[tokio::test]
async fn paging_with_limit_50_returns_each_of_a_clients_jobs_exactly_once_newest_first() {
    let app = app().await;
    let (a, b) = seed(&app).await;
    assert_eq!((a.len(), b.len()), (70, 50));

    let (listed_a, pages_a) = all_pages(&app, KEY_A, "limit=50").await;
    let (listed_b, pages_b) = all_pages(&app, KEY_B, "limit=50").await;

    // Each job exactly once, in order, shown as its own view shows it; nobody else's.
    assert_eq!(listed_a, a);
    assert_eq!(listed_b, b);
    assert_eq!(ids(&listed_a).into_iter().collect::<HashSet<_>>().len(), 70);
    assert_eq!(
        (pages_a, pages_b),
        (2, 1),
        "a full last page has no next page"
    );
    // The default page is 50 jobs, and `next` leads to the same page as `next_cursor`.
    let first: Value = get(&app, KEY_A, "/v1/jobs").await.json().await.unwrap();
    assert_eq!(first["jobs"].as_array().unwrap().len(), 50);
    let next = first["next"].as_str().unwrap();
    assert!(next.starts_with("/v1/jobs?limit=50&cursor="), "{next}");
    let second: Value = get(&app, KEY_A, next).await.json().await.unwrap();
    assert_eq!(second["jobs"].as_array().unwrap()[..], a[50..]);
    assert_eq!(second["next_cursor"], Value::Null);
}

#[tokio::test]
async fn filters_by_status_label_and_creation_time_list_only_the_clients_matching_jobs() {
    let app = app().await;
    let (a, b) = seed(&app).await;
    let b_ids: HashSet<String> = ids(&b).into_iter().collect();
    let expect = |keep: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        a.iter().filter(|j| keep(j)).cloned().collect()
    };

    let mut checked = 0;
    for status in ["reserved", "cancelled", "dispatching"] {
        let (listed, _) = all_pages(&app, KEY_A, &format!("status={status}&limit=7")).await;
        assert_eq!(listed, expect(&|j| j["status"] == status), "{status}");
        assert!(!listed.is_empty(), "{status}");
        checked += listed.len();
    }
    assert_eq!(checked, a.len(), "three statuses cover every job");
    for label in ["spring", ODD_LABEL] {
        let query = format!("label={}&limit=7", encode(label));
        let (listed, _) = all_pages(&app, KEY_A, &query).await;
        assert_eq!(listed, expect(&|j| j["label"] == label), "{label}");
        assert!(!listed.is_empty());
        // Both filters at once.
        let query = format!("{query}&status=cancelled");
        let (listed, _) = all_pages(&app, KEY_A, &query).await;
        let wanted = expect(&|j| j["label"] == label && j["status"] == "cancelled");
        assert_eq!(listed, wanted, "{label} cancelled");
    }
    let (none, pages) = all_pages(&app, KEY_A, "label=never-used").await;
    assert_eq!((none.len(), pages), (0, 1));
    // From inclusive, to exclusive.
    let (from, to) = (created_at(&a[55]), created_at(&a[10]));
    let query = format!(
        "created_from={}&created_to={}&limit=9",
        encode(&from.to_rfc3339()),
        encode(&to.to_rfc3339())
    );
    let (listed, _) = all_pages(&app, KEY_A, &query).await;
    let wanted = expect(&|j| created_at(j) >= from && created_at(j) < to);
    assert_eq!(listed, wanted);
    assert!(listed.contains(&a[55]) && !listed.contains(&a[10]));
    // Nothing of the other client's, whatever the filter.
    for query in [
        "limit=500",
        "status=reserved",
        "label=spring",
        "label=autumn",
    ] {
        let (listed, _) = all_pages(&app, KEY_A, query).await;
        assert!(ids(&listed).iter().all(|id| !b_ids.contains(id)), "{query}");
    }
}

#[tokio::test]
async fn bad_list_parameters_get_a_400_problem_naming_them() {
    let app = app().await;
    for i in 0..3 {
        post_job(&app, KEY_A, "label=x", &format!("m-{i}")).await;
    }
    let page: Value = get(&app, KEY_A, "/v1/jobs?limit=1")
        .await
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let mut tampered = cursor.clone().into_bytes();
    tampered[20] = if tampered[20] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    let long_label = "x".repeat(129);
    for (query, named) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("status=done", "status"),
        ("label=a%20b", "label"),
        (&format!("label={long_label}"), "label"),
        ("created_from=yesterday", "created_from"),
        ("created_to=2026-01-01T00:00:00.0000001Z", "created_to"),
        ("cursor=garbage", "cursor"),
        (&format!("cursor={tampered}"), "cursor"),
        // A cursor of another query.
        (&format!("cursor={cursor}&status=reserved"), "cursor"),
        ("state=reserved", "unknown field"),
    ] {
        let response = get(&app, KEY_A, &format!("/v1/jobs?{query}")).await;
        let problem = problem(response, 400).await;
        assert_eq!(problem["type"], "/problems/invalid-parameter", "{query}");
        assert!(
            problem["detail"].as_str().unwrap().contains(named),
            "{query}: {problem}"
        );
    }
    // Another client's cursor is not a place in this client's list.
    let response = get(&app, KEY_B, &format!("/v1/jobs?limit=1&cursor={cursor}")).await;
    assert_eq!(
        problem(response, 400).await["type"],
        "/problems/invalid-parameter"
    );
    let response = app
        .http
        .get(format!("{}/v1/jobs", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(response, 401).await["type"],
        "/problems/unauthorized"
    );
    // The cursor itself still works.
    let response = get(&app, KEY_A, &format!("/v1/jobs?limit=1&cursor={cursor}")).await;
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn a_label_is_stored_exactly_on_the_job_and_shown_in_its_view() {
    let app = app().await;
    let job_id = post_job(&app, KEY_A, &format!("label={}", encode(ODD_LABEL)), "m").await;
    assert_eq!(app.job_view(&job_id).await["label"], ODD_LABEL);
    let unlabelled = post_job(&app, KEY_A, "", "m").await;
    assert_eq!(app.job_view(&unlabelled).await["label"], Value::Null);
    for bad in [
        "",
        "a%20b",
        "tab%09",
        "%C2%A0",
        "%EF%BF%BF",
        &"x".repeat(129),
    ] {
        let response = app
            .http
            .post(format!("{}/v1/accruals?label={bad}", app.address))
            .bearer_auth(KEY_A)
            .header("Content-Type", "application/json")
            .body(format!("[{}]", item("m", "P", 1)))
            .send()
            .await
            .unwrap();
        let problem = problem(response, 400).await;
        assert_eq!(problem["type"], "/problems/invalid-parameter", "{bad}");
        assert!(
            problem["detail"].as_str().unwrap().starts_with("label "),
            "{problem}"
        );
    }
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 2, "a refused label stored a job");
}

/// Every combination of filters reads its list index, backwards, with no sort, and from a cursor
/// on: a page costs about `limit` index entries however many jobs a client has.
#[tokio::test]
async fn every_filter_of_the_job_list_reads_a_list_index_without_sorting() {
    let app = app().await;
    // Enough jobs over enough clients that the optimiser weighs indexes as it would in production.
    let statuses = [
        "reserved",
        "dispatching",
        "enqueued",
        "completed",
        "completed_with_errors",
        "cancelled",
    ];
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let rows: Vec<u32> = (0..20_000).collect();
    for batch in rows.chunks(2_000) {
        let sql = format!(
            "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, label) VALUES {}",
            vec!["(?, ?, ?, 1, 1, ?, ?, ?)"; batch.len()].join(",")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for &n in batch {
            let label = (n % 3 != 0).then(|| format!("campaign-{}", n % 50));
            query = query
                .bind(Uuid::now_v7())
                .bind(format!("client_{}", n % 20))
                .bind(&[0_u8; 32][..])
                .bind(statuses[n as usize % 6])
                .bind((start + chrono::Duration::seconds(i64::from(n))).naive_utc())
                .bind(label);
        }
        query.execute(&app.env.pool).await.unwrap();
    }
    let at = |s: &str| Some(s.parse::<DateTime<Utc>>().unwrap());
    let after = ListPosition {
        created_at: "2026-01-01T02:00:00Z".parse().unwrap(),
        job_id: Uuid::from_u128(u128::MAX / 2),
    };
    for n in 0..16 {
        let filter = JobFilter {
            status: (n & 1 != 0).then_some(JobStatus::Completed),
            label: (n & 2 != 0).then(|| "campaign-3".to_owned()),
            created_from: if n & 4 != 0 {
                at("2026-01-01T01:00:00Z")
            } else {
                None
            },
            created_to: if n & 8 != 0 {
                at("2026-01-01T04:00:00Z")
            } else {
                None
            },
        };
        for position in [None, Some(&after)] {
            let plan = jobs::list_plan(&app.env.pool, "client_3", &filter, position, 51)
                .await
                .unwrap();
            // The list read, and for each listed job one unique-key probe for `reversed_by`.
            assert_eq!(plan.len(), 2, "{plan:?}");
            assert_eq!(
                (plan[1].key.as_deref(), plan[1].access.as_str()),
                (Some("uq_accrual_jobs_reverses"), "eq_ref"),
                "{plan:?}"
            );
            // The label's index with a label (a campaign is a few jobs), else the status's.
            let index = match (&filter.label, filter.status) {
                (Some(_), _) => "ix_accrual_jobs_client_label",
                (None, Some(_)) => "ix_accrual_jobs_client_status",
                (None, None) => "ix_accrual_jobs_client_created",
            };
            let key = plan[0].key.as_deref();
            assert_eq!(key, Some(index), "{filter:?} {position:?}: {plan:?}");
            assert!(
                !plan[0].extra.contains("filesort"),
                "{filter:?} {position:?}: {plan:?}"
            );
            // From a cursor the read starts there, not at the client's newest job.
            if position.is_some() {
                assert_eq!(plan[0].access, "range", "{filter:?} {position:?}: {plan:?}");
            }
        }
    }
}
