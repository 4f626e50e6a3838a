use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// The API port, as `http://127.0.0.1:{port}`.
    pub address: String,
    /// The operations port (`/metrics`, `/readyz`, `/healthz`), as `http://127.0.0.1:{port}`.
    pub ops_address: String,
    pub http: reqwest::Client,
    /// The operations address of each sender this app started, by its API address.
    ops_addresses: Mutex<HashMap<String, String>>,
    /// Stops the sender and any listener when the test ends.
    shutdown: CancellationToken,
    /// One step of each background task of the in-process sender.
    background: accrual_sender::workers::Steps,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with_dispatchers(2).await
}

/// An app whose in-process sender runs `dispatch_tasks` dispatchers (0: it only accepts, and
/// sender processes started by the test dispatch).
pub async fn spawn_app_with_dispatchers(dispatch_tasks: usize) -> TestApp {
    spawn_app_with(|s| s.dispatch.dispatch_tasks = dispatch_tasks).await
}

/// An app with the test defaults and the development keys, changed by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut SenderSettings)) -> TestApp {
    spawn_app_parsing(&[], |settings| {
        settings.keys.accrual_api_keys = DEV_KEYS.into();
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
    settings.http.sender_addr = "127.0.0.1:0".parse().unwrap();
    settings.http.sender_ops_addr = "127.0.0.1:0".parse().unwrap();
    settings.dispatch.dispatch_lease = std::time::Duration::from_secs(10);
    settings.dispatch.dispatch_poll = std::time::Duration::from_millis(200);
    settings.shutdown_grace_secs = 5;
    settings.database = env.database.clone();
    settings.sqs = env.sqs.clone();
    settings.redis = env.redis.clone();
    adjust(&mut settings);
    let app = Application::build(settings).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let ops_address = format!("http://127.0.0.1:{}", app.ops_port());
    let shutdown = CancellationToken::new();
    let background = app.background_steps();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        env,
        background,
        ops_addresses: Mutex::new(HashMap::from([(address.clone(), ops_address.clone())])),
        address,
        ops_address,
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl TestApp {
    /// Starts one more sender on this app's database, queues and Redis prefix, with the test
    /// defaults and the development keys changed by `adjust`; returns its API address
    /// ([`Self::metrics_at`] finds its operations port from it). It stops with the app.
    pub async fn spawn_sender(&self, adjust: impl FnOnce(&mut SenderSettings)) -> String {
        let mut settings =
            <SenderSettings as clap::Parser>::try_parse_from(["accrual-sender"]).unwrap();
        settings.http.sender_addr = "127.0.0.1:0".parse().unwrap();
        settings.http.sender_ops_addr = "127.0.0.1:0".parse().unwrap();
        settings.keys.accrual_api_keys = DEV_KEYS.into();
        settings.dispatch.dispatch_lease = std::time::Duration::from_secs(10);
        settings.dispatch.dispatch_poll = std::time::Duration::from_millis(200);
        settings.shutdown_grace_secs = 5;
        settings.database = self.env.database.clone();
        settings.sqs = self.env.sqs.clone();
        settings.redis = self.env.redis.clone();
        adjust(&mut settings);
        let app = Application::build(settings).await.unwrap();
        let address = format!("http://127.0.0.1:{}", app.port());
        let ops_address = format!("http://127.0.0.1:{}", app.ops_port());
        tokio::spawn(app.run_until_stopped(self.shutdown.clone()));
        self.ops_addresses
            .lock()
            .unwrap()
            .insert(address.clone(), ops_address);
        address
    }

    /// Runs each background task of the in-process sender once, now (dispatch every due chunk,
    /// settle, purge, deliver due webhooks, reconcile): for tests of that work that need not wait
    /// for the loops, which keep running beside it.
    pub async fn run_background_once(&self) {
        self.background.run_once().await.unwrap();
    }

    /// Starts a listener on this app's queue and database.
    pub async fn spawn_listener(&self) -> Arc<ListenerMetrics> {
        let listener = self.build_listener().await;
        let stats = listener.metrics();
        tokio::spawn(listener.run(self.shutdown.clone()));
        stats
    }

    /// Starts a listener on this app's queue and database; returns the address of its own HTTP
    /// endpoints (`/healthz`, `/metrics`), as `http://127.0.0.1:{port}`.
    pub async fn spawn_listener_http(&self) -> String {
        let listener = self.build_listener().await;
        let address = format!("http://127.0.0.1:{}", listener.port());
        tokio::spawn(listener.run(self.shutdown.clone()));
        address
    }

    /// Starts a listener with the test defaults changed by `configure`.
    pub async fn spawn_listener_with(&self, configure: impl FnOnce(&mut ListenerSettings)) {
        let mut settings = self.listener_settings();
        configure(&mut settings);
        let listener = Listener::build(settings).await.unwrap();
        tokio::spawn(listener.run(self.shutdown.clone()));
    }

    /// A listener with the test defaults on a free port, not yet running.
    async fn build_listener(&self) -> Listener {
        Listener::build(self.listener_settings()).await.unwrap()
    }

    /// The test listeners' settings.
    fn listener_settings(&self) -> ListenerSettings {
        ListenerSettings {
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
        }
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

    /// `GET /readyz` on the operations port, as JSON.
    pub async fn readiness(&self) -> Value {
        let response = self.http.get(format!("{}/readyz", self.ops_address)).send();
        response.await.unwrap().json().await.unwrap()
    }

    /// This app's sender's `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        self.metrics_at(&self.address).await
    }

    /// `GET /metrics` of the service at `address` as text: a sender this app started, named by its
    /// API address (the request goes to its operations port), or a listener, or a sender process
    /// named by its operations address. Read a value with `accrual_testkit::process::metric`.
    pub async fn metrics_at(&self, address: &str) -> String {
        let ops = self.ops_addresses.lock().unwrap().get(address).cloned();
        let address = ops.as_deref().unwrap_or(address);
        let response = self.http.get(format!("{address}/metrics")).send();
        response.await.unwrap().text().await.unwrap()
    }

    /// `POST /v1/accruals` with `body`, as client_a, `application/json`, to this app's sender:
    /// change any of that on the answer ([`AccrualPost`]), then `.await` it for the response or
    /// [`AccrualPost::job_id`] for the new job's id.
    pub fn post(&self, body: impl Into<reqwest::Body>) -> AccrualPost<'_> {
        AccrualPost {
            app: self,
            body: body.into(),
            address: self.address.clone(),
            query: String::new(),
            api_key: Some(KEY_A.to_owned()),
            content_type: "application/json".to_owned(),
            idempotency_key: None,
        }
    }
}

/// One `POST /v1/accruals` of a test, made by [`TestApp::post`]; `.await` sends it.
pub struct AccrualPost<'a> {
    app: &'a TestApp,
    body: reqwest::Body,
    address: String,
    query: String,
    api_key: Option<String>,
    content_type: String,
    idempotency_key: Option<String>,
}

impl AccrualPost<'_> {
    /// The query string, with or without its leading `?`.
    pub fn query(mut self, query: &str) -> Self {
        self.query = query.trim_start_matches('?').to_owned();
        self
    }

    /// As the client whose API key is `key`.
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_owned());
        self
    }

    /// With no `Authorization` header at all.
    pub fn without_key(mut self) -> Self {
        self.api_key = None;
        self
    }

    pub fn content_type(mut self, content_type: &str) -> Self {
        self.content_type = content_type.to_owned();
        self
    }

    /// With this `Idempotency-Key` header (none for `None`).
    pub fn idempotency_key<'k>(mut self, key: impl Into<Option<&'k str>>) -> Self {
        self.idempotency_key = key.into().map(str::to_owned);
        self
    }

    /// To another sender of the app (an address [`TestApp::spawn_sender`] returned).
    pub fn to(mut self, address: &str) -> Self {
        self.address = address.to_owned();
        self
    }

    /// Sends it, expects a `202`, and returns the new job's id.
    pub async fn job_id(self) -> String {
        let response = self.await;
        let status = response.status().as_u16();
        let accepted: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{accepted}");
        accepted["job_id"].as_str().unwrap().to_owned()
    }

    /// Sends it; returns the status and the JSON answer.
    pub async fn status_and_json(self) -> (u16, Value) {
        let response = self.await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn send(self) -> reqwest::Response {
        let separator = if self.query.is_empty() { "" } else { "?" };
        let mut request = self
            .app
            .http
            .post(format!(
                "{}/v1/accruals{separator}{}",
                self.address, self.query
            ))
            .header("Content-Type", self.content_type)
            .body(self.body);
        if let Some(key) = self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(key) = self.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }
}

impl<'a> std::future::IntoFuture for AccrualPost<'a> {
    type Output = reqwest::Response;
    type IntoFuture =
        std::pin::Pin<Box<dyn std::future::Future<Output = reqwest::Response> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
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

/// A completed job of `client` whose ledger rows credit each of `members` with `amount` of
/// `WELFARE`, `rows_each` times, written as a listener did before the ledger had `client_id` (the
/// column is left NULL, as on rows the backfill has not reached); the members are in `members`
/// too. Returns the job's id.
pub async fn seed_credits(
    pool: &sqlx::MySqlPool,
    client: &str,
    members: &[String],
    rows_each: usize,
    amount: i64,
) -> uuid::Uuid {
    let job_id = uuid::Uuid::now_v7();
    let total = members.len() * rows_each;
    sqlx::query(
        "INSERT INTO accrual_jobs (job_id, client_id, body_sha256, total, members, status, created_at, completed_at, written, dead_lettered) \
         VALUES (?, ?, REPEAT('x', 32), ?, ?, 'completed', NOW(6), NOW(6), ?, 0)",
    )
    .bind(job_id)
    .bind(client)
    .bind(total as u64)
    .bind(members.len() as u64)
    .bind(total as u64)
    .execute(pool)
    .await
    .unwrap();
    for batch in members.chunks(5_000) {
        let sql = format!(
            "INSERT IGNORE INTO members (member_id, created_at) VALUES {}",
            vec!["(?, NOW(6))"; batch.len()].join(",")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in batch {
            query = query.bind(id);
        }
        query.execute(pool).await.unwrap();
        for _ in 0..rows_each {
            let sql = format!(
                "INSERT INTO point_accruals (accrual_id, job_id, member_id, point_type, amount, accepted_at) VALUES {}",
                vec!["(UNHEX(REPLACE(UUID(), '-', '')), ?, ?, 'WELFARE', ?, NOW(6))"; batch.len()]
                    .join(",")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in batch {
                query = query.bind(job_id).bind(id).bind(amount);
            }
            query.execute(pool).await.unwrap();
        }
    }
    job_id
}
