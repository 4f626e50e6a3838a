use std::sync::Arc;

use accrual_listener::metrics::ListenerMetrics;
use accrual_listener::{Listener, ListenerSettings};
use accrual_sender::{Application, SenderSettings};
use accrual_testkit::TestEnv;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const KEY_A: &str = "key_a";

/// The development keys the tests use (the sender has none by default).
pub const DEV_KEYS: &str = "client_a:key_a,client_b:key_b";

/// A sender on a free port with its own database and queues; a listener on demand.
pub struct TestApp {
    pub env: TestEnv,
    pub address: String,
    pub http: reqwest::Client,
    /// Stops the sender and any listener when the test ends.
    shutdown: CancellationToken,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with_dispatchers(2).await
}

/// An app whose in-process sender runs `dispatch_tasks` dispatchers (0: it only accepts, and
/// sender processes started by the test dispatch).
pub async fn spawn_app_with_dispatchers(dispatch_tasks: usize) -> TestApp {
    spawn_app_with(|s| s.dispatch_tasks = dispatch_tasks).await
}

/// An app with the test defaults and the development keys, changed by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut SenderSettings)) -> TestApp {
    spawn_app_parsing(&[], |settings| {
        settings.accrual_api_keys = DEV_KEYS.into();
        adjust(settings);
    })
    .await
}

/// An app whose settings are parsed from the command-line flags `args` (no API key unless they
/// give one), then given the test's database, queues, Redis prefix and timings and changed by
/// `adjust`.
pub async fn spawn_app_parsing(args: &[&str], adjust: impl FnOnce(&mut SenderSettings)) -> TestApp {
    accrual_core::telemetry::init();
    spawn_app_in(TestEnv::new().await, args, adjust).await
}

/// [`spawn_app_parsing`] on a test environment made by the caller (queue options of its own, or
/// rows stored before the sender starts).
pub async fn spawn_app_in(
    env: TestEnv,
    args: &[&str],
    adjust: impl FnOnce(&mut SenderSettings),
) -> TestApp {
    accrual_core::telemetry::init();
    // Every setting at its documented default or as `args` give it, then the test's own.
    let command_line = std::iter::once("accrual-sender").chain(args.iter().copied());
    let mut settings = <SenderSettings as clap::Parser>::try_parse_from(command_line).unwrap();
    settings.sender_addr = "127.0.0.1:0".parse().unwrap();
    settings.dispatch_lease = std::time::Duration::from_secs(10);
    settings.dispatch_poll = std::time::Duration::from_millis(200);
    settings.shutdown_grace_secs = 5;
    settings.database = env.database.clone();
    settings.sqs = env.sqs.clone();
    settings.redis = env.redis.clone();
    adjust(&mut settings);
    let app = Application::build(settings).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        env,
        address,
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl TestApp {
    /// Starts one more sender on this app's database, queues and Redis prefix, with the test
    /// defaults and the development keys changed by `adjust`; returns its address. It stops with
    /// the app.
    pub async fn spawn_sender(&self, adjust: impl FnOnce(&mut SenderSettings)) -> String {
        let mut settings =
            <SenderSettings as clap::Parser>::try_parse_from(["accrual-sender"]).unwrap();
        settings.sender_addr = "127.0.0.1:0".parse().unwrap();
        settings.accrual_api_keys = DEV_KEYS.into();
        settings.dispatch_lease = std::time::Duration::from_secs(10);
        settings.dispatch_poll = std::time::Duration::from_millis(200);
        settings.shutdown_grace_secs = 5;
        settings.database = self.env.database.clone();
        settings.sqs = self.env.sqs.clone();
        settings.redis = self.env.redis.clone();
        adjust(&mut settings);
        let app = Application::build(settings).await.unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until_stopped(self.shutdown.clone()));
        address
    }

    /// Starts a listener on this app's queue and database.
    pub async fn spawn_listener(&self) -> Arc<ListenerMetrics> {
        let settings = ListenerSettings {
            listener_addr: "127.0.0.1:0".parse().unwrap(),
            shutdown_grace_secs: 5,
            queue_attributes_refresh: std::time::Duration::from_secs(60),
            receive_tasks: 4,
            receive_wait_secs: 1,
            batch_max_rows: 512,
            batch_linger: std::time::Duration::from_millis(100),
            database: self.env.database.clone(),
            sqs: self.env.sqs.clone(),
            redis: self.env.redis.clone(),
        };
        let listener = Listener::build(settings).await.unwrap();
        let stats = listener.metrics();
        tokio::spawn(listener.run(self.shutdown.clone()));
        stats
    }

    /// `GET /v1/jobs/{job_id}` as client_a, as JSON.
    pub async fn job_view(&self, job_id: &str) -> Value {
        let url = format!("{}/v1/jobs/{job_id}", self.address);
        let response = self.http.get(url).bearer_auth(KEY_A).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// `GET path` (no key) as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.address)).send();
        response.await.unwrap().json().await.unwrap()
    }

    /// `GET path` (no key) as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.http.get(format!("{}{path}", self.address)).send();
        response.await.unwrap().text().await.unwrap()
    }

    /// `GET /metrics` of the service at `address` (this app's sender, one `spawn_sender` started,
    /// a listener) as text; read a value with `accrual_testkit::process::metric`.
    pub async fn metrics_at(&self, address: &str) -> String {
        let response = self.http.get(format!("{address}/metrics")).send();
        response.await.unwrap().text().await.unwrap()
    }

    /// `POST /v1/accruals{query}` with `body` as the client whose key is `key`; expects a `202`
    /// and returns the new job's id.
    pub async fn post_job_as(&self, key: &str, query: &str, body: String) -> String {
        let response = self
            .http
            .post(format!("{}/v1/accruals{query}", self.address))
            .bearer_auth(key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let accepted: Value = response.json().await.unwrap();
        accepted["job_id"].as_str().unwrap().to_owned()
    }

    /// `POST /v1/accruals` as client_a with a JSON content type.
    pub async fn post_accruals(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.post_accruals_as(body, Some(KEY_A), "application/json")
            .await
    }

    pub async fn post_accruals_as(
        &self,
        body: impl Into<reqwest::Body>,
        key: Option<&str>,
        content_type: &str,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/v1/accruals", self.address))
            .header("Content-Type", content_type)
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Reads a problem+json response, checking its content type and status.
pub async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    response.json().await.unwrap()
}

/// One item as JSON text.
pub fn item(member: &str, point_type: &str, amount: i64) -> String {
    format!(r#"{{"member_id":"{member}","point_type":"{point_type}","amount":{amount}}}"#)
}
