//! `POST /api/v1/messages`: an operator's or an agent's message, checked
//! (400 for bad input), then through the guard ([`crate::compliance`]) onto
//! the outbound stream for the sender, or into the schedule.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use smsgate_shared::bus::OutboundId;
use smsgate_shared::config::{Channel, TWILIO_MAX_BODY};
use smsgate_shared::domain::{E164, MessageSid};
use smsgate_shared::envelope::{self, Origin, Outbound};
use smsgate_shared::guard::Initiator;
use smsgate_shared::media::{OutboundMediaError, check_outbound_urls};
use smsgate_shared::redact::clip;
use time::OffsetDateTime;

use crate::compliance::{self, SendAccepted};
use crate::{AdminError, AdminState};

/// The body of `POST /api/v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub channel_id: String,
    pub to: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub media_urls: Vec<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// `conversational`, `informational` or `marketing` (the guard's
    /// default: conversational when the person texted within the window).
    #[serde(default)]
    pub purpose: Option<String>,
    /// RFC 3339: send then (through the guard again), not now.
    #[serde(default)]
    pub send_at: Option<String>,
    /// false: outside the recipient's allowed hours answer 409 instead of
    /// deferring.
    #[serde(default)]
    pub defer: Option<bool>,
    /// The inbound MessageSid this follows up (an agent's later answer).
    #[serde(default)]
    pub in_reply_to: Option<String>,
}

/// The channel named by a request, configured and enabled.
pub(crate) fn enabled_channel(state: &AdminState, id: &str) -> Result<Channel, AdminError> {
    let channel = state.channel(id).ok_or_else(|| {
        AdminError::invalid("unknown_channel", format!("no channel {:?} is configured", clip(id, 64)))
    })?;
    if !channel.enabled {
        return Err(AdminError::invalid("channel_disabled", format!("channel {} is disabled", channel.id)));
    }
    Ok(channel)
}

/// The recipient: an E.164 number.
pub(crate) fn recipient(to: &str) -> Result<E164, AdminError> {
    E164::parse(to.trim()).map_err(|e| AdminError::invalid("invalid_number", format!("to: {}", e.reason)))
}

/// The outbound id of a request: `api.<idempotency key>`, or a generated
/// `api.<random>`; caller keys and generated ids alike live under `api.`.
pub(crate) fn outbound_id(key: Option<String>) -> Result<OutboundId, AdminError> {
    match key {
        Some(key) => OutboundId::api(&key).ok_or_else(|| {
            AdminError::invalid(
                "invalid_idempotency_key",
                "idempotency_key must be 1-124 letters, digits, '_', '-' or '.', not starting or ending with '.'",
            )
        }),
        None => Ok(OutboundId::generated()),
    }
}

impl SendRequest {
    pub(crate) fn validate(self, state: &AdminState) -> Result<(Channel, Outbound, compliance::Request), AdminError> {
        let channel = enabled_channel(state, &self.channel_id)?;
        let to = recipient(&self.to)?;
        if self.body.trim().is_empty() && self.media_urls.is_empty() {
            return Err(AdminError::invalid("empty_body", "body is empty (and there are no media_urls)"));
        }
        let chars = self.body.chars().count();
        if chars > TWILIO_MAX_BODY {
            return Err(AdminError::invalid(
                "body_too_long",
                format!("body has {chars} characters; Twilio takes at most {TWILIO_MAX_BODY}"),
            ));
        }
        // https only, at most 10, public host names: Twilio fetches them.
        check_outbound_urls(&self.media_urls).map_err(|e| {
            let code = match e {
                OutboundMediaError::TooMany(_) => "too_many_media",
                OutboundMediaError::Bad { .. } => "invalid_media_url",
            };
            AdminError::invalid(code, e.to_string())
        })?;
        let id = outbound_id(self.idempotency_key)?;
        let in_reply_to = match self.in_reply_to.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(sid) => Some(
                MessageSid::parse(sid)
                    .map_err(|e| AdminError::invalid("invalid_in_reply_to", format!("in_reply_to: {}", e.reason)))?,
            ),
            None => None,
        };
        let request = compliance::Request {
            purpose: compliance::parse_purpose(self.purpose.as_deref())?,
            send_at: compliance::parse_send_at(self.send_at.as_deref())?,
            defer: self.defer.unwrap_or(true),
            // A follow-up is the agent's; a plain send is the operator's own.
            initiator: if in_reply_to.is_some() { Initiator::Agent } else { Initiator::Operator },
        };
        let outbound = Outbound {
            v: envelope::VERSION,
            id,
            channel_id: channel.id.clone(),
            to,
            body: self.body,
            media_urls: self.media_urls,
            in_reply_to,
            origin: Origin::Api,
            created_at: OffsetDateTime::now_utc(),
            call: None,
            guard: None,
        };
        Ok((channel, outbound, request))
    }
}

pub(crate) async fn send_message(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<(StatusCode, Json<SendAccepted>), AdminError> {
    let request: SendRequest = json_object(&body, "message request")?;
    let (channel, outbound, request) = request.validate(&state)?;
    compliance::submit(&state, &channel, outbound, request, "message").await
}

/// A request body: one JSON object (serde would also read a struct from a
/// JSON array) of the request's shape.
pub(crate) fn json_object<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, AdminError> {
    let invalid =
        |e: serde_json::Error| AdminError::invalid("invalid_json", format!("the body is not a valid {what}: {e}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    if !value.is_object() {
        return Err(AdminError::invalid("invalid_json", "the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(invalid)
}
