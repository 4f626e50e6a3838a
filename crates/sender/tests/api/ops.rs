//! Keys on every route, rate limits shared across replicas, health, readiness and metrics.

use std::time::{Duration, Instant};

use accrual_testkit::eventually;
use accrual_testkit::process::metric;
use uuid::Uuid;

use crate::helpers::{TestApp, item, problem, spawn_app, spawn_app_with};
use crate::process::SenderProcess;

#[tokio::test]
async fn every_api_route_needs_a_key_and_health_readiness_and_metrics_on_the_ops_port_do_not() {
    let app = spawn_app().await;
    let job = format!("{}/v1/jobs/{}", app.address, Uuid::now_v7());
    let requests = [
        app.http.post(format!("{}/v1/accruals", app.address)),
        app.http.get(&job),
        app.http.delete(&job),
        app.http.get(format!("{job}/events")),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        let url = response.url().clone();
        let body = problem(response, 401).await;
        assert_eq!(body["type"], "/problems/unauthorized", "{url}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = app
            .http
            .get(format!("{}{path}", app.ops_address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

/// `GET {base}{path}`'s status, with no key.
async fn status_of(app: &TestApp, base: &str, path: &str) -> u16 {
    let response = app.http.get(format!("{base}{path}")).send().await.unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn metrics_and_readiness_are_served_on_the_ops_port_and_not_on_the_api_port() {
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    let process = SenderProcess::spawn_with(&app.env, &[("DISPATCH_TASKS", "0")]).await;
    for (api, ops) in [
        (&app.address, &app.ops_address),
        (&process.address, &process.ops_address),
    ] {
        for path in ["/metrics", "/readyz"] {
            let response = app.http.get(format!("{api}{path}")).send().await.unwrap();
            let body = problem(response, 404).await;
            assert_eq!(body["type"], "/problems/not-found", "{api}{path}");
            assert_eq!(status_of(&app, ops, path).await, 200, "{ops}{path}");
        }
        for base in [api, ops] {
            assert_eq!(status_of(&app, base, "/healthz").await, 200, "{base}");
        }
        // The API is not on the operations port.
        assert_eq!(status_of(&app, ops, "/openapi.json").await, 404, "{ops}");
        let post = app
            .http
            .post(format!("{ops}/v1/accruals"))
            .bearer_auth("key_a");
        assert_eq!(post.send().await.unwrap().status(), 404, "{ops}");
    }
}

/// The readiness checks the app's sender has made, from its `/metrics`.
async fn readiness_checks(app: &TestApp) -> f64 {
    let name = "accrual_sender_readiness_checks_total";
    let metrics = app.metrics().await;
    metric(&metrics, name).unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[tokio::test]
async fn a_flood_of_readyz_costs_one_dependency_check_a_second() {
    const CALLS: usize = 50;
    let app = spawn_app_with(|s| s.dispatch.dispatch_tasks = 0).await;
    let before = readiness_checks(&app).await;
    let started = Instant::now();

    let calls = (0..CALLS).map(|_| {
        let request = app.http.get(format!("{}/readyz", app.ops_address));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let elapsed = started.elapsed();
    let checks = readiness_checks(&app).await - before;

    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["status"], "ready", "{body}");
    }
    // One check, and one more for each further second the calls took (one check's result answers
    // for a second; a loaded machine may stretch the calls over one).
    let allowed = 1.0 + elapsed.as_secs() as f64;
    assert!(
        (1.0..=allowed).contains(&checks),
        "{CALLS} calls in {elapsed:?} made {checks} checks"
    );
    // The result is not kept for ever: a second later, /readyz checks again.
    eventually(
        Duration::from_secs(10),
        "a later /readyz to check again",
        || async {
            let _ = app.readiness().await;
            readiness_checks(&app).await > before + checks
        },
    )
    .await;
}

#[tokio::test]
async fn readyz_reports_each_dependency_and_metrics_count_requests_by_route() {
    let app = spawn_app().await;
    let ready = app.readiness().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    for dependency in ["mysql", "redis", "sqs"] {
        assert_eq!(ready["checks"][dependency], "up", "{ready}");
    }
    let accepted = app
        .post(format!("[{}]", item("member-1", "WELFARE", 5)))
        .await;
    assert_eq!(accepted.status(), 202);
    let _ = app
        .http
        .get(format!("{}/v1/jobs/{}", app.address, Uuid::now_v7()))
        .bearer_auth("key_a")
        .send()
        .await
        .unwrap();

    let metrics = app.metrics().await;

    for line in [
        r#"accrual_sender_http_requests_total{route="/v1/accruals",method="POST",status="202"} 1"#,
        r#"accrual_sender_http_requests_total{route="/v1/jobs/{job_id}",method="GET",status="404"} 1"#,
        "accrual_sender_points_accepted_total 1",
        "accrual_sender_jobs_accepted_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("accrual_sender_dispatch_lag_seconds "));
}

#[tokio::test]
async fn a_malformed_job_id_is_a_problem_json_400() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(format!("{}/v1/jobs/not-a-uuid", app.address))
        .bearer_auth("key_a")
        .send()
        .await
        .unwrap();
    let body = problem(response, 400).await;
    assert_eq!(body["type"], "/problems/invalid-parameter");
}

#[tokio::test]
async fn the_request_rate_is_shared_by_two_sender_processes_and_other_clients_are_unaffected() {
    let app = spawn_app().await;
    let limits = [("RATE_LIMITS", "client_a=5/1000000")];
    let senders = [
        SenderProcess::spawn_with(&app.env, &limits).await,
        SenderProcess::spawn_with(&app.env, &limits).await,
    ];
    let job_url = |i: usize| format!("{}/v1/jobs/{}", senders[i % 2].address, Uuid::now_v7());
    let get = |url: String, key: &'static str| {
        let http = app.http.clone();
        async move { http.get(url).bearer_auth(key).send().await.unwrap() }
    };

    // Five requests per minute for client_a, alternating between the two processes.
    for i in 0..5 {
        assert_eq!(get(job_url(i), "key_a").await.status(), 404, "request {i}");
    }
    let limited = get(job_url(5), "key_a").await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = problem(limited, 429).await;

    assert_eq!(body["type"], "/problems/rate-limited");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    // The other process agrees, and client_b has its own (default) allowance.
    assert_eq!(get(job_url(6), "key_a").await.status(), 429);
    for i in 0..5 {
        assert_eq!(get(job_url(i), "key_b").await.status(), 404);
    }
}

#[tokio::test]
async fn points_over_the_per_minute_allowance_are_refused_with_429_and_nothing_is_stored() {
    let app = spawn_app_with(|s| s.rate.rate_limits = "client_a=100/1000".into()).await;
    let body = |n: usize| {
        let items: Vec<String> = (0..n)
            .map(|i| item(&format!("m{i}"), "WELFARE", 1))
            .collect();
        format!("[{}]", items.join(","))
    };
    assert_eq!(app.post(body(600)).await.status(), 202);

    let refused = app.post(body(600)).await;
    assert!(refused.headers().contains_key("retry-after"));
    let problem_body = problem(refused, 429).await;

    assert!(
        problem_body["detail"]
            .as_str()
            .unwrap()
            .contains("1000 points per minute"),
        "{problem_body}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accrual_jobs")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 1, "the refused request stored nothing");
    let other = app.post(body(600)).api_key("key_b").await;
    assert_eq!(other.status(), 202, "client_b is not limited by client_a");
}

#[tokio::test]
async fn without_redis_the_api_keeps_serving_and_says_so() {
    let app = spawn_app_with(|s| {
        s.redis.redis_url = "redis://127.0.0.1:1".into();
        s.rate.rate_limits = "client_a=1/1".into();
    })
    .await;
    for _ in 0..3 {
        let response = app
            .post(format!("[{}]", item("member-1", "WELFARE", 5)))
            .await;
        assert_eq!(response.status(), 202, "fail open: no limit without Redis");
    }
    let ready = app.readiness().await;
    // Reported, but Redis does not decide readiness: the API serves without it.
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["redis"], "down", "{ready}");
    let metrics = app.metrics().await;
    let unavailable = metric(&metrics, "accrual_sender_rate_limit_unavailable_total").unwrap();
    assert!(unavailable >= 6.0, "{metrics}");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_problem_json() {
    let app = spawn_app().await;
    let missing = app
        .http
        .get(format!("{}/v2/nothing", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(missing, 404).await["type"], "/problems/not-found");
    let wrong_method = app
        .http
        .put(format!("{}/v1/accruals", app.address))
        .bearer_auth("key_a")
        .send()
        .await
        .unwrap();
    let body = problem(wrong_method, 405).await;
    assert_eq!(body["type"], "/problems/method-not-allowed");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line_with_the_request_id() {
    let app = spawn_app().await;
    let log = std::env::temp_dir().join(format!("accrual-sender-{}.log", Uuid::now_v7()));
    let mut sender = SenderProcess::spawn_logging_to(
        &app.env,
        &[
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
            ("DISPATCH_TASKS", "0"),
        ],
        &log,
    )
    .await;
    let response = app
        .http
        .post(format!("{}/v1/accruals", sender.address))
        .bearer_auth("key_a")
        .header("Content-Type", "application/json")
        .body(format!("[{}]", item("member-1", "WELFARE", 5)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    sender.kill();

    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let accepted = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Accepted accrual job")
        .unwrap_or_else(|| panic!("no acceptance line in:\n{text}"));
    assert_eq!(
        accepted["span"]["request_id"],
        request_id.as_str(),
        "{accepted}"
    );
    assert_eq!(accepted["level"], "INFO");
}

/// Every answer carries a request id: the client's when it is usable (and then also in a problem
/// body), a new UUID v7 when it is missing or unusable.
#[tokio::test]
async fn a_usable_client_request_id_is_echoed_and_any_other_is_replaced() {
    let app = spawn_app().await;
    let get = |id: Option<String>| {
        let mut request = app.http.get(format!("{}/v1/jobs/not-a-uuid", app.address));
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };
    let header = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();

    let echoed = get(Some("trace-42".into())).await.unwrap();
    assert_eq!(header(&echoed), "trace-42");
    let body = problem(echoed, 401).await;
    assert_eq!(body["request_id"], "trace-42");

    for unusable in [None, Some("x".repeat(129)), Some("two words".into())] {
        let response = get(unusable.clone()).await.unwrap();
        let id = header(&response);
        let uuid: Uuid = id
            .parse()
            .unwrap_or_else(|_| panic!("{unusable:?} gave {id}"));
        assert_eq!(uuid.get_version_num(), 7, "{unusable:?} gave {id}");
        assert_eq!(problem(response, 401).await["request_id"], id.as_str());
    }
}
