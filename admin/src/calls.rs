//! `POST /api/v1/calls`: an outbound call that says a text (or plays the
//! operator's TwiML), put on the outbound stream like a message (same id
//! rules and idempotency); the sender places it through Twilio's Calls API.
//! The guard ([`crate::compliance`]) refuses opted-out and blocked numbers
//! and calls without consent (an AI voice needs it, FCC 24-17) here, and
//! again in the sender; `send_at` schedules the call.
//!
//! `GET /api/v1/calls/{CallSid}`: a call's state (status, duration, the
//! turns so far), folded from its entries in the caller's conversation
//! (`Call` and `CallTurn`); the conversation index knows which one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smsgate_shared::config::Channel;
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, HistoryEntry, HistoryEvent, Origin, Outbound, OutboundCall};
use smsgate_shared::guard::Initiator;
use time::OffsetDateTime;

use crate::compliance::{self, SendAccepted, rfc3339};
use crate::messages::{enabled_channel, json_object, outbound_id, recipient};
use crate::reader::read_all;
use crate::{AdminError, AdminState};

/// Twilio's limit on the `Twiml` parameter, and so on what a call says.
pub const MAX_TWIML_CHARS: usize = 4000;

/// The body of `POST /api/v1/calls`: `say` or `twiml`, not both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    pub channel_id: String,
    pub to: String,
    #[serde(default)]
    pub say: Option<String>,
    #[serde(default)]
    pub twiml: Option<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    /// RFC 3339: place the call then.
    #[serde(default)]
    pub send_at: Option<String>,
    #[serde(default)]
    pub defer: Option<bool>,
}

impl CallRequest {
    pub(crate) fn validate(self, state: &AdminState) -> Result<(Channel, Outbound, compliance::Request), AdminError> {
        let channel = enabled_channel(state, &self.channel_id)?;
        let to = recipient(&self.to)?;
        if channel.from_number.is_none() {
            return Err(AdminError::invalid("no_from_number", "a call needs the channel's twilio_from_number"));
        }
        let (body, twiml) = match (self.say.filter(|s| !s.trim().is_empty()), self.twiml) {
            (Some(say), None) => (say, None),
            (None, Some(twiml)) => {
                // The operator's own document: checked for shape, sent as it is.
                if !twiml.trim_start().starts_with('<') || !twiml.contains("<Response") {
                    return Err(AdminError::invalid("invalid_twiml", "twiml must be a TwiML <Response> document"));
                }
                (String::new(), Some(twiml))
            }
            _ => return Err(AdminError::invalid("say_or_twiml", "give exactly one of say and twiml")),
        };
        let chars = body.chars().count() + twiml.as_deref().map_or(0, |t| t.chars().count());
        if chars > MAX_TWIML_CHARS {
            return Err(AdminError::invalid(
                "too_long",
                format!("{chars} characters; Twilio takes at most {MAX_TWIML_CHARS} of TwiML"),
            ));
        }
        let request = compliance::Request {
            purpose: compliance::parse_purpose(self.purpose.as_deref())?,
            send_at: compliance::parse_send_at(self.send_at.as_deref())?,
            defer: self.defer.unwrap_or(true),
            initiator: Initiator::Operator,
        };
        let outbound = Outbound {
            v: envelope::VERSION,
            id: outbound_id(self.idempotency_key)?,
            channel_id: channel.id.clone(),
            to,
            body,
            media_urls: Vec::new(),
            in_reply_to: None,
            origin: Origin::Api,
            created_at: OffsetDateTime::now_utc(),
            call: Some(OutboundCall { twiml }),
            guard: None,
        };
        Ok((channel, outbound, request))
    }
}

pub(crate) async fn place_call(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<(StatusCode, Json<SendAccepted>), AdminError> {
    let request: CallRequest = json_object(&body, "call request")?;
    let (channel, outbound, request) = request.validate(&state)?;
    compliance::submit(&state, &channel, outbound, request, "call").await
}

/// `GET /api/v1/calls/{CallSid}`: what is known of a call so far.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CallState {
    pub call_sid: String,
    pub channel_id: String,
    /// The other party (E.164).
    pub peer: String,
    /// `inbound`, `outbound-api`, ... (Twilio's `Direction`), when a status said it.
    pub direction: Option<String>,
    /// The latest status: Twilio's `CallStatus` (`queued`, `ringing`,
    /// `in-progress`, `completed`, `busy`, `no-answer`, `failed`,
    /// `canceled`) or smsgate's own (`answered`, `forwarded`, `voicemail`).
    pub status: Option<String>,
    /// True once the call is over (completed, busy, no-answer, failed, canceled).
    pub ended: bool,
    /// Seconds, once Twilio said (at the end).
    pub duration_secs: Option<u64>,
    /// When the first entry of the call was recorded (RFC 3339).
    pub started_at: Option<String>,
    /// When the latest entry was recorded (RFC 3339).
    pub updated_at: Option<String>,
    /// The turns so far, in order: what the caller said and what was said back.
    pub turns: Vec<CallTurnView>,
    /// Every status recorded, in order.
    pub statuses: Vec<CallStatusView>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CallTurnView {
    pub turn: u32,
    /// What the caller said.
    pub heard: String,
    /// What the caller heard back.
    pub said: String,
    /// `chat` (the model), `fallback` or `timeout`.
    pub origin: String,
    /// The caller barged in (relay mode): `said` is what they heard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub at: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CallStatusView {
    pub status: String,
    pub at: String,
    pub detail: Option<String>,
}

/// A Twilio Call SID: `CA` and 32 hex digits.
pub(crate) fn is_call_sid(text: &str) -> bool {
    text.len() == 34 && text.starts_with("CA") && text[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) async fn call_state(
    State(state): State<AdminState>,
    Path(call_sid): Path<String>,
) -> Result<Json<CallState>, AdminError> {
    let call_sid = call_sid.trim();
    if !is_call_sid(call_sid) {
        return Err(AdminError::invalid("invalid_call_sid", "a Call SID is CA followed by 32 hex digits"));
    }
    let stream = state.stream(state.topology.history_stream()).await?;
    crate::conversations::index_caught_up(&state, &stream).await?;
    let Some((channel, peer)) = state.index.call(call_sid) else {
        return Err(AdminError::not_found("unknown_call", "no call with this Call SID is recorded"));
    };
    let (Ok(channel), Ok(peer)) = (ChannelId::parse(&channel), E164::parse(&peer)) else {
        return Err(AdminError::not_found("unknown_call", "no call with this Call SID is recorded"));
    };
    let subject = state.topology.history_subject(&channel, &peer);
    let mut call = CallState {
        call_sid: call_sid.to_owned(),
        channel_id: channel.to_string(),
        peer: peer.to_string(),
        direction: None,
        status: None,
        ended: false,
        duration_secs: None,
        started_at: None,
        updated_at: None,
        turns: Vec::new(),
        statuses: Vec::new(),
    };
    for (_, stored, payload) in read_all(&stream, subject, None).await? {
        let Ok(entry) = envelope::decode::<HistoryEntry>(&payload) else { continue };
        match entry.event {
            HistoryEvent::Call { call_sid: sid, status, direction, duration_secs, detail } if sid == call_sid => {
                // A late callback never takes an ended call back to ringing.
                if !call.ended {
                    call.ended = envelope::call_ended(&status);
                    call.status = Some(status.clone());
                }
                call.direction.get_or_insert(direction);
                if duration_secs.is_some() {
                    call.duration_secs = duration_secs;
                }
                call.statuses.push(CallStatusView { status, at: rfc3339(stored), detail });
            }
            HistoryEvent::CallTurn { call_sid: sid, turn, heard, said, origin, interrupted } if sid == call_sid => {
                let origin = serde_json::to_value(origin).ok().and_then(|v| v.as_str().map(str::to_owned));
                call.turns.push(CallTurnView {
                    turn,
                    heard,
                    said,
                    origin: origin.unwrap_or_default(),
                    interrupted,
                    at: rfc3339(stored),
                });
            }
            _ => continue,
        }
        call.started_at.get_or_insert_with(|| rfc3339(stored));
        call.updated_at = Some(rfc3339(stored));
    }
    call.turns.sort_by_key(|t| t.turn);
    Ok(Json(call))
}
