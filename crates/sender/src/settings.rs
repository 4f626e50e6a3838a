//! Sender settings: environment variables and the matching CLI flags, one group per component,
//! each defined (with its own `validate`) beside the component it builds. This file only puts them
//! together and checks what spans groups.

use accrual_core::progress::RedisSettings;
use accrual_core::settings::{DatabaseSettings, Problems, SqsSettings};

use crate::http::accruals::body::UploadSettings;
use crate::http::auth::KeySettings;
use crate::http::rate_limit::RateLimitSettings;
use crate::http::server::HttpSettings;
use crate::http::state::ApiSettings;
use crate::workers::dispatch::DispatchSettings;
use crate::workers::reconciler::ReconcilerSettings;
use crate::workers::retention::RetentionTaskSettings;
use crate::workers::webhook_delivery::WebhookSettings;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "accrual-sender",
    version,
    about = "HTTP API that accepts bulk point accruals"
)]
pub struct SenderSettings {
    #[command(flatten)]
    pub http: HttpSettings,

    #[command(flatten)]
    pub keys: KeySettings,

    #[command(flatten)]
    pub rate: RateLimitSettings,

    #[command(flatten)]
    pub api: ApiSettings,

    #[command(flatten)]
    pub uploads: UploadSettings,

    #[command(flatten)]
    pub dispatch: DispatchSettings,

    /// Seconds to let requests and dispatchers finish after SIGTERM; connections still open then
    /// are dropped.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub retention: RetentionTaskSettings,

    #[command(flatten)]
    pub webhooks: WebhookSettings,

    #[command(flatten)]
    pub reconciler: ReconcilerSettings,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub sqs: SqsSettings,

    #[command(flatten)]
    pub redis: RedisSettings,
}

impl SenderSettings {
    /// Refuses values that would make a component spin, hang or panic, naming each one: every
    /// group's own `validate`. Flags with a range are checked when parsed already; they are
    /// checked again here for settings built in code.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Problems::default();
        problems.check(self.http.validate());
        problems.check(self.rate.validate());
        problems.check(self.api.validate());
        problems.check(self.uploads.validate());
        problems.check(self.dispatch.validate());
        problems.check(self.retention.validate());
        problems.check(self.webhooks.validate());
        problems.check(self.reconciler.validate());
        problems.check(self.database.validate());
        problems.check(self.sqs.validate());
        problems.check(self.redis.validate());
        problems.into_result()
    }
}

#[cfg(test)]
mod tests;
