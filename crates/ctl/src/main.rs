//! `accrualctl`: operator commands for the accrual pipeline.

use accrual_core::retention::{self, RetentionSettings};
use accrual_core::settings::{DatabaseSettings, SqsSettings};
use accrual_core::sqs::QueueOptions;
use accrual_core::{db, dlq, sqs};
use anyhow::Context;
use clap::{Parser, Subcommand};

mod backfill;
mod webhooks;

#[derive(Parser)]
#[command(
    name = "accrualctl",
    version,
    about = "Operate the bulk point-accrual pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if absent, run migrations, create the queues. Idempotent.
    Init {
        #[command(flatten)]
        database: DatabaseSettings,
        #[command(flatten)]
        sqs: SqsSettings,
        /// Receives after which SQS moves a message to the dead-letter queue.
        #[arg(long, env = "MAX_RECEIVE_COUNT", default_value_t = 5)]
        max_receive_count: u32,
        /// Seconds a received message stays hidden from other receivers.
        #[arg(long, env = "VISIBILITY_TIMEOUT_SECS", default_value_t = 60)]
        visibility_timeout_secs: u32,
        /// Lower the main queue's maxReceiveCount if it is higher than --max-receive-count. Without
        /// this, init refuses: messages already received that often would leave for the
        /// dead-letter queue uncounted before the listeners re-read the count (every minute).
        #[arg(long, env = "ALLOW_LOWER_MAX_RECEIVE_COUNT")]
        allow_lower_max_receive_count: bool,
    },
    /// Online data migrations that `init` leaves out because they walk large tables.
    Backfill {
        #[command(subcommand)]
        command: BackfillCommand,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Inspect or empty the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        #[command(flatten)]
        sqs: SqsSettings,
    },
    /// Create API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Set, show or remove a client's webhook endpoint; list its deliveries.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Show a job as JSON: its stored view (status, counts once settled, and what the reconciler
    /// did to it) and its points as the ledger and the dead letters have them now.
    Job {
        job_id: uuid::Uuid,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Delete the stored chunk bodies of jobs final for longer than RESULTS_RETENTION_DAYS and
    /// clear idempotency keys older than IDEMPOTENCY_RETENTION_HOURS, as the senders' retention
    /// task does; print what went as JSON. Ledger rows and job rows stay.
    Purge {
        /// Print what would go and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        retention: RetentionSettings,
        #[command(flatten)]
        database: DatabaseSettings,
    },
}

#[derive(Subcommand)]
enum BackfillCommand {
    /// Fill `point_accruals.client_id` of rows written before the listener did, by primary-key
    /// ranges in short statements of their own (no write waits long for one), then build the
    /// index `(client_id, member_id, id)` online; the senders' member queries use it once it
    /// exists. Run it once every listener writes `client_id`. Idempotent; run it again to resume.
    /// Prints progress on stderr and a JSON summary on stdout.
    LedgerClientIds {
        /// Ledger ids per statement.
        #[arg(long, default_value_t = accrual_core::ledger_clients::DEFAULT_BATCH_ROWS,
              value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch_rows: u64,
        /// Start at this ledger id (the `--from-id` a progress line gave) instead of the first.
        #[arg(long, default_value_t = 0)]
        from_id: u64,
        /// Fill the rows but do not build the index.
        #[arg(long)]
        skip_index: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random key for CLIENT and the entry to add to ACCRUAL_API_KEYS or to the
    /// ACCRUAL_API_KEYS_FILE (the entry holds only the key's SHA-256 digest).
    New { client: String },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Set CLIENT's endpoint to URL (http or https, with a host) with a new random secret, printed
    /// only now; replaces an endpoint and secret set before.
    Set { client: String, url: String },
    /// Print CLIENT's endpoint (URL, created and updated times; never the secret) as JSON.
    Show { client: String },
    /// Remove CLIENT's endpoint; its events not yet delivered are given up.
    Remove { client: String },
    /// Print CLIENT's webhook events, newest first, as JSON lines: status (delivered, pending,
    /// gave_up), attempts and each attempt's HTTP status or error.
    Deliveries {
        client: String,
        /// Most events to print.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Print dead letters (body, reason, source queue) as JSON lines; they stay in the queue.
    List {
        /// Most dead letters to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move dead letters back to the main queue, each deleted from the DLQ only once re-sent. A
    /// dead letter whose external_id a later job has claimed since is dropped instead (logged).
    Redrive {
        /// Most dead letters to move (all by default).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        database: DatabaseSettings,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    accrual_core::telemetry::init();
    match Cli::parse().command {
        Command::Init {
            database,
            sqs: sqs_settings,
            max_receive_count,
            visibility_timeout_secs,
            allow_lower_max_receive_count,
        } => {
            db::create_database_if_absent(&database.database_url)
                .await
                .context("Failed to create the database")?;
            let pool = db::connect(&database)
                .await
                .context("Failed to connect to MySQL")?;
            let applied = db::migrate(&pool)
                .await
                .context("Failed to run migrations")?;
            let client = sqs::client(&sqs_settings).await;
            let options = QueueOptions {
                max_receive_count,
                visibility_timeout_secs,
            };
            let lower = if allow_lower_max_receive_count {
                sqs::LowerReceiveCount::Allow
            } else {
                sqs::LowerReceiveCount::Refuse
            };
            let urls = sqs::ensure_queues_with(
                &client,
                &sqs_settings.accrual_queue,
                &sqs_settings.accrual_dlq,
                options,
                lower,
            )
            .await
            .map_err(|e| match e {
                refused @ sqs::EnsureQueuesError::LowerMaxReceiveCount { .. } => {
                    anyhow::Error::new(refused).context(
                        "Refusing to lower maxReceiveCount on a live queue; drain the queue first, \
                         or pass --allow-lower-max-receive-count",
                    )
                }
                other => anyhow::Error::new(other).context("Failed to create the queues"),
            })?;
            println!(
                "{}",
                serde_json::json!({
                    "database": db::database_name(&database.database_url)?,
                    "migrations_applied": applied,
                    "queue_url": urls.main,
                    "dlq_url": urls.dlq,
                    "max_receive_count": max_receive_count,
                })
            );
        }
        Command::Backfill {
            command:
                BackfillCommand::LedgerClientIds {
                    batch_rows,
                    from_id,
                    skip_index,
                },
            database,
        } => {
            database.validate().map_err(anyhow::Error::msg)?;
            let pool = db::connect(&database)
                .await
                .context("Failed to connect to MySQL")?;
            let done = backfill::ledger_client_ids(&pool, from_id, batch_rows, skip_index).await?;
            println!("{done}");
        }
        Command::Dlq {
            command,
            sqs: settings,
        } => {
            let client = sqs::client(&settings).await;
            let dlq_url = sqs::find_queue(&client, &settings.accrual_dlq).await?;
            match command {
                DlqCommand::List { limit } => {
                    let letters = dlq::list(&client, &dlq_url, limit)
                        .await
                        .context("Failed to read the DLQ")?;
                    for letter in &letters {
                        println!("{}", serde_json::to_string(letter)?);
                    }
                    let points: usize = letters.iter().map(|l| l.points).sum();
                    eprintln!("{points} points in {} dead letters", letters.len());
                }
                DlqCommand::Redrive { limit, database } => {
                    let main_url = sqs::find_queue(&client, &settings.accrual_queue).await?;
                    let pool = db::connect(&database)
                        .await
                        .context("Failed to connect to MySQL")?;
                    let moved = dlq::redrive_except_superseded(
                        &client,
                        &dlq_url,
                        &main_url,
                        limit.unwrap_or(usize::MAX),
                        &pool,
                    )
                    .await
                    .context("Failed to redrive the DLQ")?;
                    println!(
                        "{}",
                        serde_json::json!({
                            "redriven": moved.points,
                            "messages": moved.messages,
                            "dropped_superseded": moved.dropped,
                        })
                    );
                }
            }
        }
        Command::Keys {
            command: KeysCommand::New { client },
        } => {
            if !accrual_core::api_key::valid_client_id(&client) {
                anyhow::bail!("client id `{client}` must be 1-64 characters of [A-Za-z0-9_.-]");
            }
            let key = accrual_core::api_key::generate();
            let entry = accrual_core::api_key::config_entry(&client, &key);
            println!(
                "{}",
                serde_json::json!({ "client": client, "key": key, "config_entry": entry })
            );
            eprintln!(
                "Give `key` to the client (it is shown only now); add `config_entry` to ACCRUAL_API_KEYS (comma-separated) or as a line of ACCRUAL_API_KEYS_FILE, then restart the senders."
            );
        }
        Command::Webhooks { command, database } => {
            database.validate().map_err(anyhow::Error::msg)?;
            let pool = db::connect(&database)
                .await
                .context("Failed to connect to MySQL")?;
            webhooks::run(&pool, command).await?;
        }
        Command::Job { job_id, database } => {
            let pool = db::connect(&database)
                .await
                .context("Failed to connect to MySQL")?;
            println!("{}", job(&pool, job_id).await?);
        }
        Command::Purge {
            dry_run,
            retention: settings,
            database,
        } => purge(dry_run, &settings, &database).await?,
    }
    Ok(())
}

/// `accrualctl job <job_id>`: the job's stored view (what `GET /v1/jobs/{job_id}` shows once it
/// is settled, `reconciler` included) and, under `now`, its points counted in the ledger and the
/// dead letters at this moment (by the settlement rules), so nobody needs SQL to see where a job
/// stands.
async fn job(pool: &sqlx::MySqlPool, job_id: uuid::Uuid) -> anyhow::Result<serde_json::Value> {
    let mut conn = pool.acquire().await?;
    let Some((client_id, view)) = accrual_core::job_view::stored(&mut conn, job_id)
        .await
        .context("Failed to read the job")?
    else {
        anyhow::bail!("No job {job_id}");
    };
    let now = accrual_core::job_outcome::count_on(&mut conn, job_id)
        .await
        .context("Failed to count the job's points")?;
    let mut out = serde_json::to_value(&view)?;
    out["client_id"] = client_id.into();
    out["now"] = serde_json::json!({
        "written": now.written,
        "dead_lettered": now.dead_lettered,
        "missing": view.total.saturating_sub(now.written + now.dead_lettered),
    });
    Ok(out)
}

/// `accrualctl purge [--dry-run]`. Running it beside the senders' retention task is harmless:
/// what one deletes the other finds gone.
async fn purge(
    dry_run: bool,
    settings: &RetentionSettings,
    database: &DatabaseSettings,
) -> anyhow::Result<()> {
    settings.validate().map_err(anyhow::Error::msg)?;
    database.validate().map_err(anyhow::Error::msg)?;
    let pool = db::connect(database)
        .await
        .context("Failed to connect to MySQL")?;
    if dry_run {
        let plan = retention::plan(&pool, settings)
            .await
            .context("Failed to count what would be purged")?;
        let mut printed = serde_json::to_value(plan)?;
        printed["dry_run"] = true.into();
        println!("{printed}");
        eprintln!(
            "Would delete {} stored chunks ({} bytes) of {} final jobs and clear {} idempotency keys; nothing was changed.",
            plan.chunks, plan.chunk_bytes, plan.jobs, plan.idempotency_keys
        );
        return Ok(());
    }
    // Never cancelled: Ctrl-C ends the process, and a job cut short is picked again next time.
    let purged = retention::purge(&pool, settings, &Default::default()).await;
    let (purged, failed) = match purged {
        Ok(purged) => (purged, None),
        Err(e) => (e.purged, Some(e.source)),
    };
    let mut printed = serde_json::to_value(purged)?;
    printed["dry_run"] = false.into();
    println!("{printed}");
    eprintln!(
        "Deleted {} stored chunks of {} final jobs and cleared {} idempotency keys.",
        purged.chunks, purged.jobs, purged.idempotency_keys
    );
    match failed {
        Some(e) => Err(e).context("Failed to purge (what went is printed; run it again)"),
        None => Ok(()),
    }
}
