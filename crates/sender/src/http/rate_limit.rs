//! Per-client rate limits in Redis: requests per minute and points per minute, each a GCRA bucket
//! (generic cell rate algorithm) updated by one atomic Lua script, so every sender replica sharing
//! the Redis enforces the same limit. A bucket holds one minute's worth: a client may spend its
//! whole minute at once and then waits as it refills.
//!
//! Redis is not allowed to take the API down: if it is unreachable, requests are let through
//! (fail open), with a warning and the `accrual_sender_rate_limit_unavailable_total` metric. The
//! connection is taken at each check, so limits apply again as soon as Redis answers, even if it
//! was away when the sender started.

use std::collections::HashMap;
use std::time::Duration;

use accrual_core::progress::RedisHandle;
use accrual_core::settings::Problems;

use crate::metrics::SenderMetrics;

/// The window a bucket holds: a client may spend a whole minute's allowance at once.
const PERIOD_MICROS: u64 = 60_000_000;

/// GCRA: `KEYS[1]` the bucket, `ARGV[1]` the emission interval and `ARGV[2]` the period (both µs),
/// `ARGV[3]` the cost. Returns `{1, 0}` when allowed (and records the cost), or `{0, µs to wait}`.
/// The clock is Redis's own, so replicas with skewed clocks agree.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + emission * cost
local wait = new_tat - period - now
if wait > 0 then
  return {0, string.format('%.0f', wait)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, '0'}
";

/// A client's allowance per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub points_per_minute: u64,
}

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Points,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Points => "points",
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit: allowed again after this long.
    Limited {
        retry_after: Duration,
    },
    /// The cost alone is more than a whole minute's allowance: it can never be allowed.
    TooLarge {
        per_minute: u64,
    },
}

/// Parses per-client overrides: `client=requests/points,client2=requests/points`.
pub fn parse_overrides(spec: &str) -> Result<HashMap<String, Limits>, String> {
    let mut out = HashMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').and_then(|(client, limits)| {
            let (requests, points) = limits.split_once('/')?;
            Some((
                client.trim(),
                requests.trim().parse::<u64>().ok()?,
                points.trim().parse::<u64>().ok()?,
            ))
        });
        match parsed {
            Some((client, requests, points)) if requests > 0 && points > 0 => {
                out.insert(
                    client.to_owned(),
                    Limits {
                        requests_per_minute: requests,
                        points_per_minute: points,
                    },
                );
            }
            _ => {
                return Err(format!(
                    "`{entry}` is not client=<requests per minute>/<points per minute> with both above 0"
                ));
            }
        }
    }
    Ok(out)
}

/// Per-client rate limits, by default and per client.
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitSettings {
    /// Requests per minute a client may make (any route but health, metrics and the contract).
    #[arg(long, env = "RATE_LIMIT_REQUESTS_PER_MINUTE", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_limit_requests_per_minute: u64,

    /// Points per minute a client may submit.
    #[arg(long, env = "RATE_LIMIT_POINTS_PER_MINUTE", default_value_t = 3_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate_limit_points_per_minute: u64,

    /// Per-client limits that replace the defaults: `client=<requests>/<points>,...` per minute.
    #[arg(long, env = "RATE_LIMITS", default_value = "")]
    pub rate_limits: String,
}

impl RateLimitSettings {
    /// Refuses allowances of zero (every request would be refused) and malformed overrides.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Problems::default();
        problems.require(
            self.rate_limit_requests_per_minute >= 1 && self.rate_limit_points_per_minute >= 1,
            "RATE_LIMIT_REQUESTS_PER_MINUTE and RATE_LIMIT_POINTS_PER_MINUTE must be at least 1",
        );
        problems.check(
            parse_overrides(&self.rate_limits)
                .map(drop)
                .map_err(|e| format!("Invalid RATE_LIMITS: {e}")),
        );
        problems.into_group_result()
    }
}

/// Shared handle on the buckets; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    /// Without a connection (Redis away since start-up), every request is let through.
    redis: RedisHandle,
    prefix: String,
    defaults: Limits,
    overrides: std::sync::Arc<HashMap<String, Limits>>,
    script: std::sync::Arc<redis::Script>,
    metrics: std::sync::Arc<SenderMetrics>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("redis", &self.redis)
            .field("defaults", &self.defaults)
            .field("overrides", &self.overrides)
            .finish()
    }
}

impl RateLimiter {
    /// The limits `settings` give (validated), on the buckets under `prefix` in Redis.
    pub fn new(
        settings: &RateLimitSettings,
        redis: RedisHandle,
        prefix: &str,
        metrics: std::sync::Arc<SenderMetrics>,
    ) -> Result<Self, String> {
        let overrides = parse_overrides(&settings.rate_limits)?;
        Ok(Self {
            redis,
            prefix: prefix.to_owned(),
            defaults: Limits {
                requests_per_minute: settings.rate_limit_requests_per_minute,
                points_per_minute: settings.rate_limit_points_per_minute,
            },
            overrides: std::sync::Arc::new(overrides),
            script: std::sync::Arc::new(redis::Script::new(GCRA)),
            metrics,
        })
    }

    /// The limits that apply to `client`.
    pub fn limits(&self, client: &str) -> Limits {
        self.overrides.get(client).copied().unwrap_or(self.defaults)
    }

    /// Takes `cost` from `client`'s `kind` bucket if it fits.
    pub async fn check(&self, client: &str, kind: Kind, cost: u64) -> Decision {
        let limits = self.limits(client);
        let per_minute = match kind {
            Kind::Requests => limits.requests_per_minute,
            Kind::Points => limits.points_per_minute,
        };
        if cost > per_minute {
            return Decision::TooLarge { per_minute };
        }
        let Some(mut conn) = self.redis.get() else {
            self.metrics.rate_limit_unavailable.inc();
            return Decision::Allowed;
        };
        // Whole microseconds per unit; rounding up keeps the limit a ceiling.
        let emission = PERIOD_MICROS.div_ceil(per_minute);
        let key = format!("{}rate:{}:{}", self.prefix, client, kind.as_str());
        // The connection's own response timeout, and a bound on the whole script call (a
        // reconnecting connection manager could otherwise take longer).
        let result: redis::RedisResult<(i64, String)> = tokio::time::timeout(
            accrual_core::progress::RESPONSE_TIMEOUT,
            self.script
                .key(&key)
                .arg(emission)
                .arg(PERIOD_MICROS)
                .arg(cost)
                .invoke_async(&mut conn),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "rate limit check timed out",
            )))
        });
        match result {
            Ok((1, _)) => Decision::Allowed,
            Ok((_, wait)) => {
                let micros = wait.parse::<u64>().unwrap_or(PERIOD_MICROS);
                self.metrics.rate_limited.inc();
                Decision::Limited {
                    retry_after: Duration::from_micros(micros),
                }
            }
            Err(e) => {
                self.metrics.rate_limit_unavailable.inc();
                tracing::warn!(error = %e, client, "Redis unavailable for rate limits; letting the request through");
                Decision::Allowed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_per_client_and_refuse_nonsense() {
        let parsed = parse_overrides("client_a=60/100000, client_b = 1/1").expect("valid");
        assert_eq!(
            parsed["client_a"],
            Limits {
                requests_per_minute: 60,
                points_per_minute: 100_000
            }
        );
        assert_eq!(parsed["client_b"].points_per_minute, 1);
        assert!(parse_overrides("").expect("empty").is_empty());
        for bad in ["client_a", "client_a=60", "client_a=0/5", "client_a=x/5"] {
            assert!(parse_overrides(bad).is_err(), "{bad}");
        }
    }
}
