//! `POST /api/v1/calls`: an outbound call that says a text (or plays the
//! operator's TwiML), put on the outbound stream like a message (same id
//! rules and idempotency); the sender places it through Twilio's Calls API.
//! The guard ([`crate::compliance`]) refuses opted-out and blocked numbers
//! and calls without consent (an AI voice needs it, FCC 24-17) here, and
//! again in the sender; `send_at` schedules the call.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use smsgate_shared::config::Channel;
use smsgate_shared::envelope::{self, Origin, Outbound, OutboundCall};
use smsgate_shared::guard::Initiator;
use time::OffsetDateTime;

use crate::compliance::{self, SendAccepted};
use crate::messages::{enabled_channel, json_object, outbound_id, recipient};
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
    fn validate(self, state: &AdminState) -> Result<(Channel, Outbound, compliance::Request), AdminError> {
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
