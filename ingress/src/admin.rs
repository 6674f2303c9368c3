//! The admin API on the private listener (`SMSGATE_ADMIN_ADDR`), bearer
//! `SMSGATE_ADMIN_TOKEN`. (Filled by the operator-surface work.)

use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use secrecy::SecretString;
use smsgate_shared::config::Channel;
use smsgate_shared::topology::Topology;

/// What the admin routes need. The JetStream context works before NATS is
/// reachable (calls then fail and should answer 503); open key-value buckets
/// lazily with `js.get_key_value(topology.optout_bucket())` when needed.
#[derive(Clone)]
pub struct AdminState {
    pub js: jetstream::Context,
    pub topology: Topology,
    pub channels: Arc<Vec<Channel>>,
    pub token: Option<SecretString>,
}

/// The admin routes (`/api/v1/...` and `/metrics`).
pub fn router(state: AdminState) -> Router {
    let _ = state;
    Router::new()
}

/// Refuses an admin listener reachable beyond loopback without a token.
pub fn check_bind(addr: std::net::SocketAddr, token: Option<&SecretString>) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some() {
        Ok(())
    } else {
        Err(format!("SMSGATE_ADMIN_ADDR is {addr}, beyond loopback, and SMSGATE_ADMIN_TOKEN is not set"))
    }
}
