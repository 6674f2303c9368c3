//! The admin API on the private listener (`SMSGATE_ADMIN_ADDR`), bearer
//! `SMSGATE_ADMIN_TOKEN`. (Filled by the operator-surface work.)

use std::sync::Arc;

use axum::Router;
use secrecy::SecretString;
use smsgate_shared::config::Channel;
use smsgate_shared::topology::Bus;

/// What the admin routes need.
#[derive(Clone)]
pub struct AdminState {
    pub bus: Bus,
    pub channels: Arc<Vec<Channel>>,
    pub token: Option<SecretString>,
}

/// The admin routes (`/api/v1/...` and `/metrics`).
pub fn router(state: AdminState) -> Router {
    let _ = state;
    Router::new()
}
