//! Human takeover: pause and resume the bot for one conversation. The state
//! is one KV entry in `P_conversations` that every worker reads before it
//! calls the model; each change is also a note in the conversation.

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smsgate_shared::envelope::{self, ConversationState, NoteReason};
use smsgate_shared::redact::clip;
use smsgate_shared::topology::Topology;
use time::OffsetDateTime;

use crate::conversations::peer_of_path;
use crate::{AdminError, AdminState, bounded};

/// `POST .../pause` body: `{}`, `{"minutes": N}` (else the channel's
/// `pause_minutes`), and `reason` for a handoff (an agent handing the
/// conversation to a person: noted as `handoff`, event
/// `conversation.handoff`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseRequest {
    #[serde(default)]
    minutes: Option<f64>,
    #[serde(default)]
    reason: Option<String>,
}

/// The answer of pause and resume.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct TakeoverState {
    pub channel_id: String,
    pub peer: String,
    pub paused: bool,
    /// When the bot answers again on its own (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub paused_until: Option<OffsetDateTime>,
}

pub(crate) async fn pause_conversation(
    State(state): State<AdminState>,
    Path((channel_id, peer)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<TakeoverState>, AdminError> {
    let channel = state.channel(&channel_id).ok_or_else(|| {
        AdminError::not_found("unknown_channel", format!("no channel {:?} is configured", clip(&channel_id, 64)))
    })?;
    let peer = peer_of_path(&peer)?;
    let request: PauseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PauseRequest { minutes: None, reason: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AdminError::invalid("invalid_json", format!("the body is not a valid pause request: {e}")))?
    };
    let minutes = request.minutes.unwrap_or(channel.pause_minutes);
    smsgate_shared::config::check_pause_minutes(minutes)
        .map_err(|m| AdminError::invalid("invalid_minutes", format!("minutes {m}")))?;
    let reason = request.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > 500) {
        return Err(AdminError::invalid("invalid_reason", "reason is at most 500 characters"));
    }
    let now = OffsetDateTime::now_utc();
    let record = ConversationState::pause(now, minutes);
    let until = record.paused_until;
    let key = Topology::conversation_key(&channel.id, &peer);
    let store = state.conversations().await?;
    bounded("store the pause", store.put(&key, envelope::encode(&record))).await?;
    let until_text = envelope::note_time(until);
    let (note, detail) = match reason {
        Some(reason) => (NoteReason::Handoff, format!("handed to a person until {until_text}: {reason}")),
        None => (NoteReason::Paused, format!("an operator paused the bot for {minutes} minutes, until {until_text}")),
    };
    state.takeover_note(&channel.id, &peer, &key, note, detail).await?;
    tracing::info!(service = "ingress", stage = "admin", channel_id = %channel.id, minutes, outcome = "paused", "bot paused for a conversation");
    Ok(Json(TakeoverState {
        channel_id: channel.id.to_string(),
        peer: peer.to_string(),
        paused: true,
        paused_until: Some(until),
    }))
}

pub(crate) async fn resume_conversation(
    State(state): State<AdminState>,
    Path((channel_id, peer)): Path<(String, String)>,
) -> Result<Json<TakeoverState>, AdminError> {
    let channel = state.known_channel(&channel_id)?;
    let peer = peer_of_path(&peer)?;
    let key = Topology::conversation_key(&channel, &peer);
    let store = state.conversations().await?;
    bounded("remove the pause", store.delete(&key)).await?;
    state
        .takeover_note(
            &channel,
            &peer,
            &key,
            NoteReason::Resumed,
            "an operator handed the conversation back to the bot".to_owned(),
        )
        .await?;
    tracing::info!(service = "ingress", stage = "admin", channel_id = %channel, outcome = "resumed", "bot resumed for a conversation");
    Ok(Json(TakeoverState {
        channel_id: channel.to_string(),
        peer: peer.to_string(),
        paused: false,
        paused_until: None,
    }))
}
