//! What request handlers share.

use sqlx::MySqlPool;

use crate::api::auth::ApiKeys;
use crate::dispatcher::Dispatcher;

/// Cloned into every handler; all fields are cheap handles.
#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: MySqlPool,
    pub api_keys: std::sync::Arc<ApiKeys>,
    pub dispatcher: Dispatcher,
}
