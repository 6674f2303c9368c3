//! `GET /api/v1/channels`: the configured channels with their health.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use futures::TryStreamExt;
use serde::Serialize;
use smsgate_shared::config::WEBHOOK_PATH;

use crate::{AdminError, AdminState, NATS_TIMEOUT, bounded};

#[derive(Debug, Serialize)]
pub struct ChannelsView {
    pub nats: NatsHealth,
    pub channels: Vec<ChannelView>,
}

#[derive(Debug, Serialize)]
pub struct NatsHealth {
    pub connected: bool,
    pub streams_present: bool,
}

/// A channel as the API shows it: no auth token, no path token.
#[derive(Debug, Serialize)]
pub struct ChannelView {
    pub channel_id: String,
    /// `file` (read-only) or `runtime` (connected through this API).
    pub source: &'static str,
    pub enabled: bool,
    pub from_number: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub chat: &'static str,
    pub delivery: &'static str,
    pub public_base_url: Option<String>,
    /// The webhook URL with the secret path token elided; the real one comes
    /// from `smsgate webhook-url`, which reads the config.
    pub webhook_url: Option<String>,
    pub insecure_skip_signature: bool,
    /// Entries in `P_DEAD` for this channel (None when NATS did not answer).
    pub dead_letters: Option<u64>,
    /// `ok`, `degraded`, `down` or `disabled`.
    pub health: &'static str,
    pub problems: Vec<String>,
}

pub(crate) async fn list_channels(State(state): State<AdminState>) -> Json<ChannelsView> {
    let connected = state.nats_connected();
    let streams_present =
        connected && tokio::time::timeout(NATS_TIMEOUT, state.topology.present(&state.js)).await.unwrap_or(false);
    let dead_counts: Option<HashMap<String, u64>> =
        if streams_present { dead_counts_by_channel(&state).await.ok() } else { None };
    let snapshot = state.channels.snapshot();
    let channels = snapshot
        .iter()
        .map(|live| {
            let c = &live.channel;
            let dead_letters = dead_counts.as_ref().map(|m| m.get(c.id.as_str()).copied().unwrap_or(0));
            let mut problems = Vec::new();
            if !connected {
                problems.push("NATS is not connected".to_owned());
            } else if !streams_present {
                problems.push("the JetStream streams are missing".to_owned());
            }
            if let Some(n) = dead_letters.filter(|n| *n > 0) {
                problems.push(format!("{n} dead letter(s): smsgate dead list"));
            }
            if c.public_base_url.is_none() {
                problems.push("no public base URL: set SMSGATE_PUBLIC_BASE_URL or public_base_url".to_owned());
            }
            if c.insecure_skip_signature {
                problems.push("signature checking is off (insecure_skip_signature)".to_owned());
            }
            let health = if !c.enabled {
                "disabled"
            } else if !streams_present {
                "down"
            } else if problems.is_empty() {
                "ok"
            } else {
                "degraded"
            };
            ChannelView {
                channel_id: c.id.to_string(),
                source: live.source.as_str(),
                enabled: c.enabled,
                from_number: c.from_number.as_ref().map(ToString::to_string),
                messaging_service_sid: c.messaging_service_sid.clone(),
                chat: c.chat.kind(),
                delivery: match c.delivery {
                    smsgate_shared::config::Delivery::Twilio => "twilio",
                    smsgate_shared::config::Delivery::Log => "log",
                },
                public_base_url: c.public_base_url.clone(),
                webhook_url: c.public_base_url.as_ref().map(|b| format!("{b}{WEBHOOK_PATH}…")),
                insecure_skip_signature: c.insecure_skip_signature,
                dead_letters,
                health,
                problems,
            }
        })
        .collect();
    Json(ChannelsView { nats: NatsHealth { connected, streams_present }, channels })
}

/// Dead letters per channel from the subject counts (`P.dead.<stage>.<channel>`).
async fn dead_counts_by_channel(state: &AdminState) -> Result<HashMap<String, u64>, AdminError> {
    let stream = state.stream(state.topology.dead_stream()).await?;
    let filter = format!("{}.dead.>", state.topology.prefix());
    let subjects: Vec<(String, usize)> = bounded("read dead-letter subjects", async {
        stream.info_with_subjects(filter).await?.try_collect::<Vec<_>>().await
    })
    .await?;
    let mut counts = HashMap::new();
    for (subject, n) in subjects {
        if let Some(channel) = subject.rsplit('.').next() {
            *counts.entry(channel.to_owned()).or_insert(0) += n as u64;
        }
    }
    Ok(counts)
}
