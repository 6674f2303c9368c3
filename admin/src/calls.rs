//! `POST /api/v1/calls`: an outbound call that says a text (or plays the
//! operator's TwiML), put on the outbound stream like a message (same id
//! rules and idempotency); the sender places it through Twilio's Calls API.
//! Opted-out and blocked numbers are refused here, and again by the sender.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;
use smsgate_shared::envelope::{self, Origin, Outbound, OutboundCall};
use smsgate_shared::topology::Topology;
use time::OffsetDateTime;

use crate::messages::{SendAccepted, enabled_channel, json_object, outbound_id, publish_outbound, recipient};
use crate::{AdminError, AdminState, bounded};

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
}

impl CallRequest {
    async fn validate(self, state: &AdminState) -> Result<Outbound, AdminError> {
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
        if !channel.admits(&to) {
            return Err(AdminError::invalid("blocked", "the number may not be called on this channel"));
        }
        state.require_nats()?;
        let optout = bounded("open the opt-out bucket", state.js.get_key_value(state.topology.optout_bucket())).await?;
        let opted_out = bounded("read the opt-out bucket", optout.get(Topology::optout_key(&channel.id, &to))).await?;
        if opted_out.is_some() {
            return Err(AdminError::invalid("opted_out", "the number has opted out of this channel"));
        }
        Ok(Outbound {
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
        })
    }
}

pub(crate) async fn place_call(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<(StatusCode, Json<SendAccepted>), AdminError> {
    let request: CallRequest = json_object(&body, "call request")?;
    let outbound = request.validate(&state).await?;
    publish_outbound(&state, &outbound, "call").await
}
