//! `Application::build` connects and binds; `run_until_stopped` serves until the token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use accrual_core::progress::Progress;
use accrual_core::{db, sqs};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::rate_limit::RateLimiter;
use crate::http::server::{self, HttpLimits};
use crate::http::state::{ApiDeps, AppState};
use crate::http::{self, auth::ApiKeys};
use crate::metrics::SenderMetrics;
use crate::settings::SenderSettings;
use crate::store::chunks::place::QueuePlaces;
use crate::workers::Workers;
use crate::workers::completion::Completion;
use crate::workers::dispatch::{DeadLetterQueue, DispatchDeps, Dispatcher};
use crate::workers::reconciler::Reconciler;
use crate::workers::retention::Retention;
use crate::workers::runtime::BackgroundRuntime;

/// Connections the operations port serves at once: probes and scrapes are few, and a cap of its
/// own keeps them answered while the API port is at `SENDER_MAX_CONNECTIONS`.
const OPS_MAX_CONNECTIONS: usize = 64;

pub struct Application {
    listener: TcpListener,
    /// The operations port: `/metrics`, `/readyz` and `/healthz`.
    ops_listener: TcpListener,
    state: AppState,
    /// The dispatchers, completion, retention, webhooks and the reconciler, on their own runtime
    /// at `DISPATCH_NICE`; started with the server.
    workers: Workers,
    /// Connection limits and the shutdown grace, for the HTTP server.
    http: HttpLimits,
}

impl Application {
    /// Connects to MySQL and SQS and binds the API and operations ports (port 0 picks a free one).
    pub async fn build(settings: SenderSettings) -> anyhow::Result<Self> {
        settings.validate()?;
        let api_keys = ApiKeys::from_settings(&settings.keys).map_err(anyhow::Error::msg)?;
        let pool = db::connect(&settings.database)
            .await
            .context("Failed to connect to MySQL")?;
        let client = sqs::client(&settings.sqs).await;
        let queue_url = sqs::find_queue(&client, &settings.sqs.accrual_queue).await?;
        let dlq_url = sqs::find_queue(&client, &settings.sqs.accrual_dlq).await?;
        let progress = Progress::connect(&settings.redis).await;
        let background =
            BackgroundRuntime::start(background_threads(), settings.dispatch.dispatch_nice)
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
        let metrics = Arc::new(SenderMetrics::for_clients(api_keys.clients()));
        let rate_limiter = RateLimiter::new(
            &settings.rate,
            progress.redis(),
            &settings.redis.redis_key_prefix,
            metrics.clone(),
        )
        .map_err(anyhow::Error::msg)
        .context("Invalid RATE_LIMITS")?;
        let replica = replica_id();
        let dispatcher = Dispatcher::new(
            &settings.dispatch,
            DispatchDeps {
                pool: bg_pool.clone(),
                sqs: bg_client.clone(),
                queue_url: queue_url.clone(),
                dead_letters: DeadLetterQueue {
                    client: bg_client,
                    url: dlq_url,
                    source_queue: settings.sqs.accrual_queue.clone(),
                },
                progress: bg_progress.clone(),
                metrics: metrics.clone(),
                owner: replica.clone(),
            },
        );
        let reconciler = Reconciler::new(
            &settings.reconciler,
            &dispatcher,
            queue_url.clone(),
            metrics.clone(),
            replica.clone(),
        );
        let state = AppState::new(
            &settings.api,
            &settings.uploads,
            ApiDeps {
                pool,
                api_keys,
                wake: dispatcher.wake_handle(),
                progress,
                metrics: metrics.clone(),
                rate_limiter,
                sqs: client,
                queue_url,
                results_retention: settings.retention.rules.results_retention,
                placing: crate::http::place::Placing {
                    places: QueuePlaces::new(Arc::new(
                        settings.dispatch.dispatch_client_weights.clone(),
                    )),
                    points_per_message: u64::from(settings.dispatch.points_per_message),
                    metrics,
                },
            },
        );
        let completion = Completion {
            pool: bg_pool.clone(),
            progress: bg_progress,
            metrics: state.metrics.clone(),
        };
        let webhooks = crate::workers::webhook_delivery::Webhooks::new(
            bg_pool.clone(),
            settings.webhooks,
            state.metrics.clone(),
            replica.clone(),
        )
        .context("Failed to build the webhook HTTP client")?;
        let retention =
            Retention::new(&settings.retention, bg_pool, state.metrics.clone(), replica);
        let http = &settings.http;
        let listener = TcpListener::bind(http.sender_addr)
            .await
            .with_context(|| format!("Failed to bind {}", http.sender_addr))?;
        let ops_listener = TcpListener::bind(http.sender_ops_addr)
            .await
            .with_context(|| {
                format!("Failed to bind {} (SENDER_OPS_ADDR)", http.sender_ops_addr)
            })?;
        Ok(Self {
            listener,
            ops_listener,
            state,
            workers: Workers {
                runtime: background,
                dispatcher,
                completion,
                retention,
                webhooks,
                reconciler,
            },
            http: http.limits(Duration::from_secs(settings.shutdown_grace_secs)),
        })
    }

    /// A step of each background task, to run on demand (tests drive the background work with it
    /// instead of waiting for the loops).
    pub fn background_steps(&self) -> crate::workers::Steps {
        self.workers.steps()
    }

    /// The bound API port (useful when built with port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The bound operations port (useful when built with port 0).
    pub fn ops_port(&self) -> u16 {
        self.ops_listener
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
        let ops_addr = self.ops_listener.local_addr()?;
        tracing::info!(%addr, %ops_addr, "Sender listening");
        self.state.shutdown = shutdown.child_token();
        let workers = self.workers.spawn(&shutdown);
        let ops_router = http::ops::router(self.state.clone());
        let router = http::router(self.state);
        let ops_limits = HttpLimits {
            max_connections: OPS_MAX_CONNECTIONS,
            ..self.http
        };
        let grace = self.http.shutdown_grace;
        // The workers' grace runs alongside the server's: shutdown takes one grace, not two.
        tokio::join!(
            server::serve(self.listener, router, self.http, shutdown.clone()),
            server::serve(self.ops_listener, ops_router, ops_limits, shutdown.clone()),
            workers.stopped(&shutdown, grace)
        );
        // Whatever is still running after the grace is dropped here (its leases expire).
        drop(workers);
        tracing::info!("Sender stopped");
        Ok(())
    }
}

/// The background's own MySQL pool: two connections per dispatcher task (a claim or mark, and a
/// lease renewal or dead letter beside it) and one each for completion, retention, webhooks and
/// the reconciler, never more than `DATABASE_MAX_CONNECTIONS`.
fn background_connections(settings: &SenderSettings) -> u32 {
    let wanted = 2 * settings.dispatch.dispatch_tasks as u32 + 4;
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
