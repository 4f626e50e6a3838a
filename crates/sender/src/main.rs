use accrual_sender::{Application, SenderSettings};
use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    accrual_core::telemetry::init();
    let settings = SenderSettings::parse();
    let app = Application::build(settings)
        .await
        .context("Failed to start the sender")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(accrual_core::telemetry::cancel_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await
}
