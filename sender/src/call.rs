//! An outbound call (`Outbound` with `call`, from `POST /api/v1/calls`):
//! placed through Twilio's Calls API under the same rules as an SMS piece
//! ([`crate::deliver`]): opted-out recipients skipped (checked before this),
//! blocked numbers refused, paced per sending number, retried as the
//! error's kind says, the Call SID kept under `<id>.0` in `P_sent` so a
//! redelivery never places it twice, one `Call` history entry (`out.<id>`),
//! `<id>.done`. Its progress comes back through the voice status route.

use smsgate_shared::bus::SentKey;
use smsgate_shared::config::{self, Channel};
use smsgate_shared::consume::Delivery;
use smsgate_shared::envelope::{HistoryEvent, NoteReason, Outbound, OutboundCall};
use smsgate_shared::redact::clip;
use smsgate_shared::twiml::Twiml;
use smsgate_shared::voice;

use crate::Ctx;
use crate::deliver::{self, Create, Disposition, SendFailure};
use crate::twilio::NewCall;

/// `placed`: the Call SID `P_sent` already holds (a redelivery), as
/// [`deliver::recorded`] read it.
pub async fn place(
    ctx: &Ctx,
    d: &Delivery<()>,
    channel: &Channel,
    out: &Outbound,
    call: &OutboundCall,
    placed: Option<String>,
) -> Disposition {
    if !channel.admits(&out.to) {
        tracing::info!(outcome = "blocked", "recipient on the block list; call not placed");
        return deliver::note_then_ack(ctx, out, NoteReason::Blocked, "the number may not be called on this channel")
            .await;
    }
    let (twiml, detail) = match &call.twiml {
        Some(t) => (t.clone(), "plays the operator's TwiML".to_owned()),
        None => {
            let twiml = Twiml::new().say(&out.body, &channel.voice.speech()).hangup().finish();
            (twiml, format!("says: {}", clip(&out.body, 200)))
        }
    };
    let key = SentKey::Piece { outbound: &out.id, index: 0 }.to_string();
    // A log-only channel never calls: its history says so, not `queued`.
    let logged = channel.delivery == config::Delivery::Log;
    let sid = match placed {
        Some(sid) => sid,
        None if logged => {
            tracing::info!(body = %twiml, outcome = "logged", "call (delivery: log)");
            "logged".to_owned()
        }
        None => {
            let status_url = channel.voice_route(voice::path::STATUS);
            let request = NewCall { to: &out.to, twiml: &twiml, status_callback: status_url.as_deref() };
            match deliver::send_piece(ctx, &d.msg, channel, Create::Call(request), (0, 1)).await {
                Ok(created) => {
                    let sid = created.sid.unwrap_or_else(|| "unknown".to_owned());
                    if !deliver::remember_sent(ctx, &key, &sid).await {
                        return Disposition::Retry(ctx.tuning.redelivery_delay);
                    }
                    crate::cost::fetch_call_price_later(ctx, channel, &out.to, &sid);
                    metrics::counter!("smsgate_sender_calls_total", "outcome" => "placed").increment(1);
                    sid
                }
                Err(SendFailure::Interrupted) => return Disposition::Release,
                Err(SendFailure::Retryable(e)) if !d.is_last() => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        outcome = "retry_later",
                        "call not placed yet"
                    );
                    return Disposition::Retry(deliver::redelivery_delay(ctx, d.delivered));
                }
                Err(SendFailure::Retryable(e) | SendFailure::Final(e)) => {
                    let reason = format!("the call was not placed: {e}");
                    return deliver::failed(ctx, &d.msg, out, &[], &[], (0, 1), &e, reason, "call_failed").await;
                }
            }
        }
    };
    let (status, detail) = if logged {
        ("logged", format!("not placed (delivery: log); {detail}"))
    } else {
        tracing::info!(call_sid = %sid, outcome = "placed", "call placed");
        ("queued", detail)
    };
    let event = HistoryEvent::Call {
        call_sid: sid,
        status: status.to_owned(),
        direction: "outbound-api".to_owned(),
        duration_secs: None,
        detail: Some(detail),
    };
    deliver::finish(ctx, out, event, "delivered").await
}
