//! Channels connected at run time, and the one live channel set every
//! service holds (docs/ARCHITECTURE.md §3.6).
//!
//! - [`registry`]: [`Registry`], the file's channels plus the runtime ones,
//!   re-read whenever `P_channels` changes. ingress finds a channel by path
//!   token in it, the worker and the sender by id.
//! - [`stored`]: the stored form, with every secret sealed by
//!   `SMSGATE_SECRET_KEY` ([`crate::secret_key`]).
//! - This file: [`connect`] and [`disconnect`], the only writers of the
//!   bucket (the admin API calls them).
//!
//! File channels stay read-only: a runtime channel can take neither a file
//! channel's id nor any channel's webhook path token; a stored one that does
//! anyway (written by hand, or by a process with another file) is skipped by
//! every registry, with the reason in its log.

pub mod registry;
pub mod stored;

use async_nats::jetstream::kv;
use secrecy::ExposeSecret;
use serde_json::Value;
use time::OffsetDateTime;

pub use registry::{Live, Registry, RuntimeSource, Snapshot, Source};

use crate::config::{Channel, ConfigError, parse_runtime_channel};

/// A channel just connected.
#[derive(Debug)]
pub struct Connected {
    pub channel: Channel,
    pub revision: u64,
    pub connected_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("this process has no channels bucket yet (NATS not reachable)")]
    NoBucket,
    #[error(
        "SMSGATE_SECRET_KEY is not set: a channel connected at run time keeps its secrets encrypted with it, so \
         connecting is refused (make one with `smsgate gen-token --secret-key`, give it to ingress, worker and \
         sender, see deploy/OPERATIONS.md)"
    )]
    NoKey,
    #[error("{0}")]
    Invalid(ConfigError),
    #[error("channel {id:?} exists already ({} channel)", from.as_str())]
    Exists { id: String, from: Source },
    #[error("config.webhook_path_token is the same as channel {other:?}'s; make one with `smsgate gen-token`")]
    TokenInUse { other: String },
    #[error("cannot read or write the channels bucket")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Debug, thiserror::Error)]
pub enum DisconnectError {
    #[error("this process has no channels bucket yet (NATS not reachable)")]
    NoBucket,
    #[error("no channel {0:?} is connected")]
    NotFound(String),
    #[error("channel {0:?} comes from the channel file, which is read-only at run time: remove it there and restart")]
    FileChannel(String),
    #[error("cannot read or write the channels bucket")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Validates `value` (one channel object, the file's keys) exactly as a
/// channel of the file, refuses an id or path token already in use, seals
/// its secrets and stores it with an atomic create. `registry` is re-read
/// before (so the checks see every channel) and after (so its own process
/// serves the channel at once).
pub async fn connect<T: Send + Sync + 'static>(
    registry: &Registry<T>,
    value: Value,
) -> Result<Connected, ConnectError> {
    let source = registry.runtime_source().cloned().ok_or(ConnectError::NoBucket)?;
    let key = source.key.clone().ok_or(ConnectError::NoKey)?;
    let (channel, stored_json) =
        parse_runtime_channel(value, "request", source.public_base_url.as_deref()).map_err(ConnectError::Invalid)?;
    registry.reload().await.map_err(|e| ConnectError::Store(Box::new(e)))?;
    let now = registry.snapshot();
    if let Some(existing) = now.get(&channel.id) {
        return Err(ConnectError::Exists { id: channel.id.to_string(), from: existing.source });
    }
    if let Some(other) = now.find_token(channel.path_token.expose_secret()) {
        return Err(ConnectError::TokenInUse { other: other.channel.id.to_string() });
    }
    let connected_at = OffsetDateTime::now_utc();
    let bytes = stored::seal(&stored_json, channel.id.as_str(), &key, connected_at);
    let revision = match source.store.create(channel.id.as_str(), bytes).await {
        Ok(revision) => revision,
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            return Err(ConnectError::Exists { id: channel.id.to_string(), from: Source::Runtime });
        }
        Err(e) => return Err(ConnectError::Store(Box::new(e))),
    };
    if let Err(e) = registry.reload().await {
        tracing::warn!(error = %e, channel_id = %channel.id, "connected, but cannot re-read the channels bucket");
    }
    tracing::info!(channel_id = %channel.id, revision, key_id = key.id(), outcome = "stored", "channel stored in P_channels");
    Ok(Connected { channel, revision, connected_at })
}

/// Removes a runtime channel from the bucket (a purge: the sealed secrets
/// are gone from the stream too). A file channel is refused.
pub async fn disconnect<T: Send + Sync + 'static>(registry: &Registry<T>, id: &str) -> Result<(), DisconnectError> {
    let source = registry.runtime_source().cloned().ok_or(DisconnectError::NoBucket)?;
    if registry.snapshot().get_str(id).is_some_and(|l| l.source == Source::File) {
        return Err(DisconnectError::FileChannel(id.to_owned()));
    }
    let valid_key = crate::domain::ChannelId::parse(id).is_ok();
    let stored =
        if valid_key { source.store.entry(id).await.map_err(|e| DisconnectError::Store(Box::new(e)))? } else { None };
    if !stored.is_some_and(|e| e.operation == kv::Operation::Put) {
        return Err(DisconnectError::NotFound(id.to_owned()));
    }
    source.store.purge(id).await.map_err(|e| DisconnectError::Store(Box::new(e)))?;
    if let Err(e) = registry.reload().await {
        tracing::warn!(error = %e, channel_id = %id, "disconnected, but cannot re-read the channels bucket");
    }
    tracing::info!(channel_id = %id, outcome = "purged", "channel removed from P_channels");
    Ok(())
}
