//! Live job progress counters in Redis: `enqueued` (dispatcher), `written`, `duplicates`,
//! `dead_lettered` (listener), in one hash per job; and [`RedisHandle`], the process's one Redis
//! connection, which the sender's rate limits use too.
//!
//! Redis holds nothing that cannot be rebuilt: the counters drive live progress (SSE) cheaply, and a
//! job's final state is always computed from MySQL. If Redis is down, updates are skipped with a
//! warning and readers fall back to MySQL.
//!
//! A process that starts while Redis is away keeps trying to connect in the background, and every
//! user takes the connection at each use, so counters and rate limits come back by themselves when
//! Redis does (redis's `ConnectionManager` reconnects by itself, but only once it has been created).

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use uuid::Uuid;

/// How long a job's counters live after their last update.
const COUNTER_TTL_SECS: i64 = 7 * 24 * 3600;

/// How long one attempt to connect may take (the client retries a few times inside it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one command may wait for Redis's answer before it counts as failed (rate limits then
/// fail open, a progress update is skipped). The client's own default, 500 ms, is passed by a
/// healthy Redis on a machine whose CPUs are saturated for a moment, which would let requests
/// through the rate limit while Redis is fine; two seconds is still far below any HTTP deadline.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The wait before the first background attempt; it doubles after each failed one...
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(500);

/// ...up to this: how late a process may notice that Redis is back.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct RedisSettings {
    /// Redis for rate limits and live progress counters.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix of every key this deployment writes (lets tests and deployments share a server).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "accrual:")]
    pub redis_key_prefix: String,
}

impl RedisSettings {
    /// Refuses a `REDIS_URL` that no attempt could ever connect to.
    pub fn validate(&self) -> Result<(), String> {
        redis::Client::open(self.redis_url.as_str())
            .map(drop)
            .map_err(|e| format!("REDIS_URL is not a Redis URL ({e})"))
    }
}

/// The process's Redis connection, present once Redis has answered; cheap to clone.
#[derive(Clone, Default)]
pub struct RedisHandle {
    /// Set once, by [`RedisHandle::connect`] or by its background task.
    conn: Arc<OnceLock<ConnectionManager>>,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("connected", &self.conn.get().is_some())
            .finish()
    }
}

impl RedisHandle {
    /// Connects, waiting at most [`CONNECT_TIMEOUT`]. If Redis does not answer, the handle starts
    /// without a connection and a background task keeps trying, with back-off, until Redis answers
    /// or every clone of the handle is gone.
    pub async fn connect(url: &str) -> Self {
        let handle = Self::default();
        let client = match redis::Client::open(url) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "REDIS_URL is not a Redis URL; running without Redis");
                return handle;
            }
        };
        match connect_once(&client).await {
            Ok(conn) => {
                let _ = handle.conn.set(conn);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis unavailable; running without it and retrying in the background");
                tokio::spawn(keep_connecting(client, Arc::downgrade(&handle.conn)));
            }
        }
        handle
    }

    /// The connection, if Redis has answered since start-up (it reconnects by itself after that).
    pub fn get(&self) -> Option<ConnectionManager> {
        self.conn.get().cloned()
    }
}

async fn connect_once(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))?
}

/// Tries to connect until it succeeds or nobody holds the handle any more.
async fn keep_connecting(client: redis::Client, slot: Weak<OnceLock<ConnectionManager>>) {
    let mut delay = RECONNECT_MIN_DELAY;
    loop {
        tokio::time::sleep(delay).await;
        let Some(slot) = slot.upgrade() else {
            return;
        };
        match connect_once(&client).await {
            Ok(conn) => {
                let _ = slot.set(conn);
                tracing::info!("Redis answers again; connected");
                return;
            }
            Err(e) => {
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                tracing::debug!(error = %e, retry_in = ?delay, "Redis still unavailable");
            }
        }
    }
}

/// The counters of one job, as Redis has them (zero where absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub enqueued: u64,
    pub written: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
}

/// Handle on the counters; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    redis: RedisHandle,
    prefix: String,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("connected", &self.redis.get().is_some())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Progress {
    /// Connects (see [`RedisHandle::connect`]): without Redis the counters are off until it answers.
    pub async fn connect(settings: &RedisSettings) -> Self {
        Self {
            redis: RedisHandle::connect(&settings.redis_url).await,
            prefix: settings.redis_key_prefix.clone(),
        }
    }

    /// The Redis connection, if Redis has answered since start-up.
    pub fn connection(&self) -> Option<ConnectionManager> {
        self.redis.get()
    }

    /// The shared handle, for other users of the same server (they take the connection at each use).
    pub fn redis(&self) -> RedisHandle {
        self.redis.clone()
    }

    fn key(&self, job_id: Uuid) -> String {
        format!("{}job:{}", self.prefix, job_id)
    }

    /// Adds to counters of one job (pairs of field and amount) and bumps its version.
    pub async fn add(&self, job_id: Uuid, fields: &[(&str, u64)]) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let key = self.key(job_id);
        let mut pipe = redis::pipe();
        for (field, n) in fields.iter().filter(|(_, n)| *n > 0) {
            pipe.hincr(&key, *field, *n).ignore();
        }
        pipe.expire(&key, COUNTER_TTL_SECS).ignore();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::warn!(%job_id, error = %e, "Failed to update progress counters in Redis");
        }
    }

    /// Reads a job's counters; `None` if Redis is unavailable.
    pub async fn get(&self, job_id: Uuid) -> Option<Counters> {
        let mut conn = self.connection()?;
        let values: Vec<Option<u64>> = conn
            .hmget(self.key(job_id), &COUNTER_FIELDS)
            .await
            .map_err(|e| tracing::warn!(%job_id, error = %e, "Failed to read progress counters"))
            .ok()?;
        Some(counters_of(&values))
    }

    /// Reads the counters of many jobs in one round trip, in the order of `job_ids`; `None` if
    /// Redis is unavailable. A loop of [`Progress::get`] over hundreds of jobs costs as many round
    /// trips, seconds on a loaded machine.
    pub async fn get_many(&self, job_ids: &[Uuid]) -> Option<Vec<Counters>> {
        if job_ids.is_empty() {
            return Some(Vec::new());
        }
        let mut conn = self.connection()?;
        let mut pipe = redis::pipe();
        for job_id in job_ids {
            pipe.hmget(self.key(*job_id), &COUNTER_FIELDS);
        }
        let values: Vec<Vec<Option<u64>>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| tracing::warn!(jobs = job_ids.len(), error = %e, "Failed to read progress counters"))
            .ok()?;
        Some(values.iter().map(|v| counters_of(v)).collect())
    }
}

/// The counter fields of a job's hash, in the order [`counters_of`] reads them.
const COUNTER_FIELDS: [&str; 4] = ["enqueued", "written", "duplicates", "dead_lettered"];

/// Counters from the values of [`COUNTER_FIELDS`]; a missing field is 0.
fn counters_of(values: &[Option<u64>]) -> Counters {
    let at = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
    Counters {
        enqueued: at(0),
        written: at(1),
        duplicates: at(2),
        dead_lettered: at(3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_url_that_cannot_name_a_server_is_refused() {
        let settings = |url: &str| RedisSettings {
            redis_url: url.into(),
            redis_key_prefix: "accrual:".into(),
        };
        assert!(settings("redis://127.0.0.1:6379").validate().is_ok());
        for bad in ["", "127.0.0.1:6379", "http://127.0.0.1:6379"] {
            assert!(settings(bad).validate().is_err(), "{bad}");
        }
    }
}
