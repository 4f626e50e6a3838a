//! Live job progress counters in Redis: `enqueued` (dispatcher), `written`, `duplicates`,
//! `dead_lettered` (listener), in one hash per job.
//!
//! Redis holds nothing that cannot be rebuilt: the counters drive live progress (SSE) cheaply, and a
//! job's final state is always computed from MySQL. If Redis is down, updates are skipped with a
//! warning and readers fall back to MySQL.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use uuid::Uuid;

/// How long a job's counters live after their last update.
const COUNTER_TTL_SECS: i64 = 7 * 24 * 3600;

#[derive(Debug, Clone, clap::Args)]
pub struct RedisSettings {
    /// Redis for rate limits and live progress counters.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix of every key this deployment writes (lets tests and deployments share a server).
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "accrual:")]
    pub redis_key_prefix: String,
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
    /// `None` when Redis was unreachable at start-up.
    conn: Option<ConnectionManager>,
    prefix: String,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("connected", &self.conn.is_some())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Progress {
    /// Connects; if Redis does not answer within 3 s, runs without counters (and says so).
    pub async fn connect(settings: &RedisSettings) -> Self {
        let conn = async {
            let client = redis::Client::open(settings.redis_url.as_str())?;
            tokio::time::timeout(Duration::from_secs(3), client.get_connection_manager())
                .await
                .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))?
        }
        .await;
        let conn = match conn {
            Ok(conn) => Some(conn),
            Err(e) => {
                tracing::warn!(error = %e, "Redis unavailable; live progress counters are off");
                None
            }
        };
        Self {
            conn,
            prefix: settings.redis_key_prefix.clone(),
        }
    }

    /// The Redis connection, if Redis answered at start-up (for other users of the same server).
    pub fn connection(&self) -> Option<ConnectionManager> {
        self.conn.clone()
    }

    fn key(&self, job_id: Uuid) -> String {
        format!("{}job:{}", self.prefix, job_id)
    }

    /// Adds to counters of one job (pairs of field and amount) and bumps its version.
    pub async fn add(&self, job_id: Uuid, fields: &[(&str, u64)]) {
        let Some(mut conn) = self.conn.clone() else {
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
        let mut conn = self.conn.clone()?;
        let values: Vec<Option<u64>> = conn
            .hmget(
                self.key(job_id),
                &["enqueued", "written", "duplicates", "dead_lettered"],
            )
            .await
            .map_err(|e| tracing::warn!(%job_id, error = %e, "Failed to read progress counters"))
            .ok()?;
        let at = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
        Some(Counters {
            enqueued: at(0),
            written: at(1),
            duplicates: at(2),
            dead_lettered: at(3),
        })
    }
}
