//! What the sender lets in and what it tells strangers: metric labels a client cannot multiply,
//! no development keys unless configured, the bearer scheme, readiness without error text, and
//! rate limits that come back with Redis.

use std::net::SocketAddr;
use std::time::Duration;

use accrual_core::api_key;
use accrual_testkit::eventually;
use accrual_testkit::proxy::TcpProxy;
use uuid::Uuid;

use crate::helpers::{KEY_A, TestApp, spawn_app, spawn_app_parsing, spawn_app_with};

/// `GET /v1/jobs/{random id}` with `authorization` as the header's whole value: 404 once the
/// key is accepted (the job does not exist), 401 if not.
async fn get_job(app: &TestApp, authorization: &str) -> reqwest::Response {
    app.http
        .get(format!("{}/v1/jobs/{}", app.address, Uuid::now_v7()))
        .header("Authorization", authorization)
        .send()
        .await
        .unwrap()
}

/// Where the tests' Redis listens (`REDIS_URL` as `redis://host:port`, or the default).
fn redis_addr() -> SocketAddr {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    url.trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[tokio::test]
async fn made_up_methods_are_counted_as_other_and_add_no_series() {
    let app = spawn_app().await;
    let methods: Vec<String> = (0..50)
        .map(|_| format!("X{:016X}", rand::random::<u64>()))
        .collect();
    for method in &methods {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{}/healthz", app.address);
        let _ = app.http.request(method, url).send().await.unwrap();
    }

    let metrics = app.metrics().await;

    for method in &methods {
        assert!(!metrics.contains(method.as_str()), "{method} in\n{metrics}");
    }
    let other: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("accrual_sender_http_requests_total{"))
        .filter(|l| l.contains(r#"method="OTHER""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(other, 50.0, "{metrics}");
}

#[tokio::test]
async fn with_only_a_key_file_the_development_keys_are_refused() {
    let key = api_key::generate();
    let file = std::env::temp_dir().join(format!("accrual-keys-{}", Uuid::now_v7()));
    std::fs::write(&file, format!("{}\n", api_key::config_entry("crm", &key))).unwrap();
    // No ACCRUAL_API_KEYS: its default applies.
    let app = spawn_app_parsing(&["--accrual-api-keys-file", file.to_str().unwrap()], |_| {}).await;
    let _ = std::fs::remove_file(&file);

    for development in ["key_a", "key_b"] {
        let response = get_job(&app, &format!("Bearer {development}")).await;
        assert_eq!(response.status(), 401, "{development}");
    }
    assert_eq!(get_job(&app, &format!("Bearer {key}")).await.status(), 404);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_an_empty_key_is_refused() {
    let app = spawn_app().await;
    for authorization in ["Bearer key_a", "bearer key_a", "BEARER key_a"] {
        let response = get_job(&app, authorization).await;
        assert_eq!(response.status(), 404, "{authorization}");
    }
    for authorization in ["Bearer ", "Bearer", "bearer", "Basic key_a"] {
        let response = get_job(&app, authorization).await;
        assert_eq!(response.status(), 401, "{authorization:?}");
    }
}

#[tokio::test]
async fn readyz_is_200_with_each_dependency_up() {
    let app = spawn_app().await;

    let response = app
        .http
        .get(format!("{}/readyz", app.ops_address))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ready",
            "checks": {"mysql": "up", "redis": "up", "sqs": "up"},
        })
    );
}

#[tokio::test]
async fn readyz_stays_ready_with_redis_down_says_so_and_shows_no_error_text() {
    let app = spawn_app_with(|s| s.redis.redis_url = "redis://127.0.0.1:1".into()).await;

    let response = app
        .http
        .get(format!("{}/readyz", app.ops_address))
        .send()
        .await
        .unwrap();

    // Redis holds nothing the API needs to accept a job: reported, but still ready.
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ready",
            "checks": {"mysql": "up", "redis": "down", "sqs": "up"},
        })
    );
    for leak in ["127.0.0.1", "error", "refused"] {
        assert!(!text.to_lowercase().contains(leak), "{leak} in {text}");
    }
}

#[tokio::test]
async fn rate_limits_apply_once_redis_answers_even_if_it_was_away_at_start_up() {
    let proxy = TcpProxy::start(redis_addr()).await;
    proxy.cut();
    let port = proxy.port;
    let app = spawn_app_with(|s| {
        s.redis.redis_url = format!("redis://127.0.0.1:{port}");
        s.rate.rate_limits = "client_a=2/1000000".into();
    })
    .await;
    let bearer = format!("Bearer {KEY_A}");
    // Redis away: rate limits fail open.
    for _ in 0..3 {
        assert_eq!(get_job(&app, &bearer).await.status(), 404);
    }

    proxy.restore();

    // Once the sender has connected, two requests pass and the third is limited.
    eventually(
        Duration::from_secs(12),
        "a 429 after Redis answers",
        || async { get_job(&app, &bearer).await.status() == 429 },
    )
    .await;
}
