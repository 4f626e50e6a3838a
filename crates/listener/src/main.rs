use accrual_listener::{Listener, ListenerSettings};
use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    accrual_core::telemetry::init();
    let settings = ListenerSettings::parse();
    let listener = Listener::build(settings)
        .await
        .context("Failed to start the listener")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(accrual_core::telemetry::cancel_on_signal(shutdown.clone()));
    listener.run(shutdown).await
}
