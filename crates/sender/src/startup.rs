//! `Application::build` connects and binds; `run_until_stopped` serves until the token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use accrual_core::{db, sqs};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, auth::ApiKeys};
use crate::background::BackgroundRuntime;
use crate::completion::Completion;
use crate::dispatcher::{DeadLetterQueue, Dispatcher};
use crate::fanout::Fanout;
use crate::metrics::SenderMetrics;
use crate::rate_limit::{Limits, RateLimiter};
use crate::server::{self, HttpLimits};
use crate::settings::SenderSettings;
use crate::state::{AppState, Uploads};

pub struct Application {
    listener: TcpListener,
    state: AppState,
    dispatch_tasks: usize,
    /// Where the dispatchers, completion, retention and webhooks run, at `DISPATCH_NICE`.
    background: BackgroundRuntime,
    /// The completion task, started with the dispatchers.
    completion: Completion,
    /// The retention task, started with the dispatchers.
    retention: crate::retention::Retention,
    /// The webhook delivery task, started with the dispatchers.
    webhooks: crate::webhooks::Webhooks,
    /// The reconciler, started with the dispatchers (one replica at a time works, by lease).
    reconciler: crate::reconciler::Reconciler,
    /// Connection limits and the shutdown grace, for the HTTP server.
    http: HttpLimits,
}

impl Application {
    /// Connects to MySQL and SQS and binds the HTTP listener (port 0 picks a free port).
    pub async fn build(settings: SenderSettings) -> anyhow::Result<Self> {
        settings.validate()?;
        let mut api_keys = ApiKeys::parse(&settings.accrual_api_keys)
            .map_err(anyhow::Error::msg)
            .context("Invalid ACCRUAL_API_KEYS")?;
        if let Some(path) = &settings.accrual_api_keys_file {
            api_keys
                .add_file(path)
                .map_err(anyhow::Error::msg)
                .context("Invalid ACCRUAL_API_KEYS_FILE")?;
        }
        let api_keys = api_keys
            .require_some()
            .map_err(anyhow::Error::msg)
            .context("Set ACCRUAL_API_KEYS or ACCRUAL_API_KEYS_FILE")?;
        let pool = db::connect(&settings.database)
            .await
            .context("Failed to connect to MySQL")?;
        let client = sqs::client(&settings.sqs).await;
        let queue_url = sqs::find_queue(&client, &settings.sqs.accrual_queue).await?;
        let dlq_url = sqs::find_queue(&client, &settings.sqs.accrual_dlq).await?;
        let progress = Progress::connect(&settings.redis).await;
        let background = BackgroundRuntime::start(background_threads(), settings.dispatch_nice)
            .context("Failed to start the background runtime")?;
        let mut database = settings.database.clone();
        database.database_max_connections = background_connections(&settings);
        let (database, sqs_settings, redis) =
            (database, settings.sqs.clone(), settings.redis.clone());
        // Connected on the background runtime, so that its threads drive their I/O.
        let (bg_pool, bg_client, bg_progress) = background
            .handle()
            .spawn(async move {
                let pool = db::connect(&database).await?;
                let client = sqs::client(&sqs_settings).await;
                let progress = Progress::connect(&redis).await;
                Ok::<_, db::DbError>((pool, client, progress))
            })
            .await
            .context("The background runtime failed while connecting")?
            .context("Failed to connect to MySQL for the background tasks")?;
        let metrics = Arc::new(SenderMetrics::new());
        let overrides = crate::rate_limit::parse_overrides(&settings.rate_limits)
            .map_err(anyhow::Error::msg)
            .context("Invalid RATE_LIMITS")?;
        let rate_limiter = RateLimiter::new(
            progress.redis(),
            &settings.redis.redis_key_prefix,
            Limits {
                requests_per_minute: settings.rate_limit_requests_per_minute,
                points_per_minute: settings.rate_limit_points_per_minute,
            },
            overrides,
            metrics.clone(),
        );
        let fanout = Fanout::new(
            bg_client.clone(),
            queue_url.clone(),
            settings.send_concurrency,
            metrics.send_calls.clone(),
        );
        let dead_letter_queue = DeadLetterQueue {
            client: bg_client.clone(),
            url: dlq_url,
            source_queue: settings.sqs.accrual_queue.clone(),
        };
        let replica = replica_id();
        let backlog_client = bg_client.clone();
        let reconciler = crate::reconciler::Reconciler {
            pool: bg_pool.clone(),
            fanout: fanout.clone(),
            dead_letters: dead_letter_queue.clone(),
            queue_url: queue_url.clone(),
            points_per_message: settings.points_per_message,
            settings: settings.reconciler.clone(),
            metrics: metrics.clone(),
            owner: replica.clone(),
        };
        let dispatcher = Dispatcher::new(
            bg_pool.clone(),
            fanout,
            dead_letter_queue,
            settings.points_per_message,
            bg_progress.clone(),
            metrics.clone(),
            settings.dispatch_lease,
            settings.dispatch_poll,
            replica.clone(),
            crate::backlog::Backlog::new(
                backlog_client,
                queue_url.clone(),
                settings.dispatch_max_queue_depth,
                settings.dispatch_poll,
                metrics.clone(),
            ),
        );
        let metrics_for_watch = metrics.sse_pollers.clone();
        let state = AppState {
            pool,
            api_keys: Arc::new(api_keys),
            dispatcher,
            progress,
            chunk_items: settings.chunk_items as usize,
            known_members: crate::members::KnownMembers::default(),
            metrics,
            rate_limiter,
            job_watch: crate::api::watch::JobWatch::new(metrics_for_watch),
            sqs: client,
            queue_url,
            uploads: Uploads {
                // Validated to fit a semaphore.
                budget: Arc::new(Semaphore::new(settings.sender_body_budget_bytes as usize)),
                min_bytes_per_sec: settings.sender_body_min_bytes_per_sec,
                rate_grace: settings.sender_body_rate_grace,
                timeout: settings.sender_body_timeout,
            },
            results_retention: settings.retention.results_retention,
            // Replaced by a child of the token `run_until_stopped` is given.
            shutdown: CancellationToken::new(),
        };
        let completion = Completion {
            pool: bg_pool.clone(),
            progress: bg_progress,
            metrics: state.metrics.clone(),
        };
        let webhooks = crate::webhooks::Webhooks::new(
            bg_pool.clone(),
            settings.webhooks,
            state.metrics.clone(),
            replica.clone(),
        )
        .context("Failed to build the webhook HTTP client")?;
        let retention = crate::retention::Retention::new(
            bg_pool,
            settings.retention,
            settings.retention_interval,
            state.metrics.clone(),
            replica,
        );
        let listener = TcpListener::bind(settings.sender_addr)
            .await
            .with_context(|| format!("Failed to bind {}", settings.sender_addr))?;
        Ok(Self {
            listener,
            state,
            dispatch_tasks: settings.dispatch_tasks,
            background,
            completion,
            retention,
            webhooks,
            reconciler,
            http: HttpLimits {
                header_read_timeout: settings.sender_header_read_timeout,
                idle_timeout: settings.sender_idle_timeout,
                max_connections: settings.sender_max_connections,
                shutdown_grace: Duration::from_secs(settings.shutdown_grace_secs),
            },
        })
    }

    /// The bound port (useful when built with port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves and dispatches until `shutdown` is cancelled; then stops accepting, lets requests
    /// and dispatchers finish for at most `SHUTDOWN_GRACE_SECS` (connections still open then are
    /// dropped; chunks still in hand are handed back, and another replica takes them over) and
    /// returns.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "Sender listening");
        self.state.shutdown = shutdown.child_token();
        let tracker = TaskTracker::new();
        let background = self.background;
        let on = background.handle();
        self.state
            .dispatcher
            .spawn(self.dispatch_tasks, &tracker, &shutdown, on);
        tracker.spawn_on(self.completion.run(shutdown.clone()), on);
        tracker.spawn_on(self.retention.run(shutdown.clone()), on);
        tracker.spawn_on(self.webhooks.run(shutdown.clone()), on);
        tracker.spawn_on(self.reconciler.run(shutdown.clone()), on);
        tracker.close();
        let router = api::router(self.state);
        let grace = self.http.shutdown_grace;
        // The dispatchers' grace runs alongside the server's: shutdown takes one grace, not two.
        let dispatchers = async {
            shutdown.cancelled().await;
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "Background tasks (dispatchers, completion, retention, webhooks) still busy at shutdown; their leases expire and another replica takes over"
                );
            }
        };
        tokio::join!(
            server::serve(self.listener, router, self.http, shutdown.clone()),
            dispatchers
        );
        // Whatever is still running after the grace is dropped here (its leases expire).
        drop(background);
        tracing::info!("Sender stopped");
        Ok(())
    }
}

/// The background's own MySQL pool: two connections per dispatcher task (a claim or mark, and a
/// lease renewal or dead letter beside it) and one each for completion, retention, webhooks and
/// the reconciler, never more than `DATABASE_MAX_CONNECTIONS`.
fn background_connections(settings: &SenderSettings) -> u32 {
    let wanted = 2 * settings.dispatch_tasks as u32 + 4;
    wanted
        .min(settings.database.database_max_connections)
        .max(1)
}

/// Worker threads of the background runtime: one per core, as the request path has. Their priority,
/// not their number, is what keeps them behind requests.
fn background_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// This replica's name in leases (`accrual_chunks.lease_owner`, `dispatched_by`,
/// `maintenance_leases.owner`): its process id and a random suffix, so two replicas on one host,
/// or a restarted one, never share it.
fn replica_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}
