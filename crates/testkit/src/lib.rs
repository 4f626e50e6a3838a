//! Test support shared by the service crates' integration tests.
//!
//! [`TestEnv::new`] creates a database and a main/dead-letter queue pair with names of their own,
//! so tests run in parallel against the real MariaDB and LocalStack; dropping it removes them.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod process;
pub mod proxy;
pub mod seed;

use std::future::Future;
use std::time::{Duration, Instant};

use accrual_core::progress::RedisSettings;
use accrual_core::settings::{DatabaseSettings, SqsSettings};
use accrual_core::sqs::{QueueOptions, QueueUrls};
use accrual_core::{db, sqs};
use aws_sdk_sqs::Client;
use sqlx::MySqlPool;
use uuid::Uuid;

/// MySQL server the tests use: `TEST_MYSQL_URL`, or root on 127.0.0.1:3306.
fn server_url() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A database and queues for one test.
pub struct TestEnv {
    pub database: DatabaseSettings,
    pub sqs: SqsSettings,
    /// Redis with a key prefix of this test's own.
    pub redis: RedisSettings,
    pub pool: MySqlPool,
    pub client: Client,
    pub queues: QueueUrls,
}

impl TestEnv {
    /// Creates and migrates a fresh database and creates fresh queues (max receive count 5).
    pub async fn new() -> Self {
        Self::with_queue_options(QueueOptions::default()).await
    }

    pub async fn with_queue_options(options: QueueOptions) -> Self {
        // The tail of a v7 UUID is random; its head is the clock, shared by tests started together.
        let uuid = Uuid::now_v7().simple().to_string();
        let id = &uuid[16..];
        let database = DatabaseSettings::new(format!("{}/accrual_test_{}", server_url(), id), 8);
        db::create_database_if_absent(&database.database_url)
            .await
            .unwrap();
        let pool = db::connect(&database).await.unwrap();
        db::migrate(&pool).await.unwrap();
        let sqs = SqsSettings::new(
            std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into()),
            "us-east-1",
            format!("test-{id}"),
            format!("test-{id}-dlq"),
        );
        let client = sqs::client(&sqs).await;
        let queues = sqs::ensure_queues(&client, &sqs.accrual_queue, &sqs.accrual_dlq, options)
            .await
            .unwrap();
        let redis = RedisSettings {
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            redis_key_prefix: format!("accrual-test:{id}:"),
        };
        Self {
            database,
            sqs,
            redis,
            pool,
            client,
            queues,
        }
    }

    /// Rows in the ledger.
    pub async fn ledger_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM point_accruals")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Rows in `members`.
    pub async fn member_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM members")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Messages visible or in flight on a queue.
    pub async fn depth(&self, url: &str) -> u64 {
        sqs::approximate_depth(&self.client, url).await.unwrap()
    }

    /// One receive of up to 10 dead letters with their attributes (2 s long poll); they become
    /// visible again after the queue's visibility timeout.
    pub async fn receive_dead_letters(&self) -> Vec<aws_sdk_sqs::types::Message> {
        self.client
            .receive_message()
            .queue_url(&self.queues.dlq)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    }

    /// Puts message bodies on the main queue with SendMessageBatch, 10 a call and 8 calls at once,
    /// as the dispatcher does; panics if any is refused.
    pub async fn send_bodies(&self, bodies: &[String]) {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        use futures_util::{StreamExt, stream};
        let batches: Vec<Vec<SendMessageBatchRequestEntry>> = bodies
            .chunks(sqs::MAX_BATCH_ENTRIES)
            .map(|chunk| {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(body)
                            .build()
                            .unwrap()
                    })
                    .collect()
            })
            .collect();
        let calls = batches.into_iter().map(|entries| {
            self.client
                .send_message_batch()
                .queue_url(&self.queues.main)
                .set_entries(Some(entries))
                .send()
        });
        let mut results = stream::iter(calls).buffer_unordered(8);
        while let Some(result) = results.next().await {
            let out = result.unwrap();
            assert!(
                out.failed().is_empty(),
                "SendMessageBatch refused {:?}",
                out.failed()
            );
        }
    }

    /// `database_url` with its host and port replaced by `127.0.0.1:port` (a proxy's).
    pub fn database_url_via(&self, port: u16) -> String {
        let mut url = url::Url::parse(&self.database.database_url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(port)).unwrap();
        url.to_string()
    }

    /// The MySQL server's address, for a proxy in front of it.
    pub fn database_addr(&self) -> std::net::SocketAddr {
        address_of(&self.database.database_url, 3306)
    }

    /// The SQS endpoint's address, for a proxy in front of it.
    pub fn sqs_addr(&self) -> std::net::SocketAddr {
        address_of(&self.sqs.aws_endpoint_url, 4566)
    }

    /// Puts a raw body on the main queue, as a misbehaving producer would.
    pub async fn send_raw(&self, body: &str) {
        self.client
            .send_message()
            .queue_url(&self.queues.main)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
}

/// The emulator behind `AWS_ENDPOINT_URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    LocalStack,
    Fauxqs,
}

impl Emulator {
    /// LocalStack answers its own health route; fauxqs signs every answer `x-amz-id-2: fauxqs`.
    pub async fn of(env: &TestEnv) -> Self {
        let url = format!(
            "{}/_localstack/health",
            env.sqs.aws_endpoint_url.trim_end_matches('/')
        );
        let answer = reqwest::get(&url).await.unwrap();
        if answer.status().is_success() {
            return Self::LocalStack;
        }
        let signed = answer
            .headers()
            .get("x-amz-id-2")
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            signed,
            Some("fauxqs"),
            "{url}: neither LocalStack nor fauxqs; these tests pin those two"
        );
        Self::Fauxqs
    }
}

impl Drop for TestEnv {
    /// Drops the database and deletes the queues. Runs on a thread of its own with its own runtime,
    /// because `Drop` cannot await and the test's runtime may be shutting down.
    fn drop(&mut self) {
        let url = self.database.database_url.clone();
        let settings = self.sqs.clone();
        let redis = self.redis.clone();
        let queues = [self.queues.main.clone(), self.queues.dlq.clone()];
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Err(e) = drop_database(&url).await {
                    eprintln!("could not drop the test database: {e}");
                }
                // A client of this runtime: the test's client has connections tied to the test's
                // runtime, which is blocked while this thread runs.
                let client = sqs::client(&settings).await;
                for q in queues {
                    let _ = client.delete_queue().queue_url(q).send().await;
                }
                let _ = delete_keys(&redis).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// The socket address a service URL names (`default_port` when it names none).
fn address_of(service_url: &str, default_port: u16) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let url = url::Url::parse(service_url).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    (host, url.port().unwrap_or(default_port))
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap()
}

/// Polls `check` every 100 ms until it returns true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deletes every Redis key under the test's prefix.
async fn delete_keys(settings: &RedisSettings) -> redis::RedisResult<()> {
    let client = redis::Client::open(settings.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", settings.redis_key_prefix))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(())
}

/// Drops the test database after killing the test's own connections to it: a connection frozen
/// inside a transaction (its runtime is blocked while this runs) would hold a metadata lock and
/// make `DROP DATABASE` wait forever.
async fn drop_database(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};
    let name = db::database_name(url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
    let mut conn = sqlx::MySqlConnection::connect(url).await?;
    let others: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
    )
    .bind(&name)
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    for id in others {
        let _ = conn
            .execute(sqlx::AssertSqlSafe(format!("KILL {id}")))
            .await;
    }
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .await?;
    conn.close().await
}
