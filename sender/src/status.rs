//! Twilio's status callbacks from `P_STATUS` (published by ingress with
//! `Nats-Msg-Id` `<MessageSid>.<MessageStatus>`).
//!
//! Callbacks can arrive out of order (docs/TWILIO.md §3), so each piece's
//! state lives in the `P_sent` bucket under `status.<SID>` and only moves
//! forward by [`MessageStatus::rank`]: a late `sent` never overwrites `delivered`.
//! When a status advances, a `Status` history entry is appended (with
//! Twilio's error code for failed/undelivered), then the state is stored
//! with compare-and-set. History first: a crash in between repeats the
//! (deduplicated) history write instead of losing it.

use std::sync::Arc;

use async_nats::jetstream::{Message, kv};
use serde::Deserialize;
use smsgate_shared::bus::{self, Failure, MsgId, SentKey};
use smsgate_shared::domain::E164;
use smsgate_shared::envelope::{self, HistoryEvent, MessageStatus, StatusUpdate};
use smsgate_shared::topology::Stage;
use tracing::Instrument;

use crate::Ctx;
use crate::deliver::Disposition;
use smsgate_shared::consume::{BoxError, Delivery, Handler, Key, Stranded, key_of};

/// Asynchronous delivery errors that retrying cannot fix (docs/TWILIO.md
/// §6): blocked, unknown handset, landline or unreachable carrier,
/// filtered as spam, unregistered 10DLC sender, unverified toll-free.
pub const PERMANENT_ASYNC_CODES: [&str; 6] = ["30004", "30005", "30006", "30007", "30034", "30032"];

/// From this rank on a status is final (failed, undelivered, canceled,
/// delivered, read): Twilio has billed the piece or never will.
const FINAL_RANK: u8 = 5;

/// The consumer runtime's view of `P_STATUS`: one piece's callbacks in
/// order (keyed by its MessageSid), pieces in parallel.
pub struct Status(pub Arc<Ctx>);

impl Handler for Status {
    type Item = ();

    fn decode(&self, _: &Message) {}

    fn key(&self, payload: &[u8]) -> Option<Key> {
        #[derive(Deserialize)]
        struct Sid<'a> {
            #[serde(borrow)]
            message_sid: Option<&'a str>,
        }
        let sid = serde_json::from_slice::<Sid<'_>>(payload).ok().and_then(|k| k.message_sid);
        sid.map(|s| key_of(&[s]))
    }

    async fn handle(&self, d: &Delivery<()>) -> Disposition {
        let span = tracing::info_span!(
            "status",
            stage = "status",
            channel_id = tracing::field::Empty,
            message_sid = tracing::field::Empty,
            peer = tracing::field::Empty,
        );
        process(&self.0, &d.msg).instrument(span).await
    }

    async fn dead_letter(&self, s: Stranded<'_>) -> Result<(), BoxError> {
        tracing::warn!(seq = s.seq, reason = %s.reason, outcome = "dead_letter", "status callback dead-lettered");
        let failure = Failure { stage: Stage::Status, reason: s.reason.clone(), code: None, channel: None };
        bus::dead_letter(&self.0.bus.js, &self.0.bus.topology, &s, failure).await?;
        Ok(())
    }
}

async fn process(ctx: &Ctx, msg: &Message) -> Disposition {
    let update: StatusUpdate = match envelope::decode(&msg.payload) {
        Ok(u) => u,
        Err(e) => return dead(ctx, msg, format!("cannot read the status callback: {e}")).await,
    };
    let span = tracing::Span::current();
    span.record("channel_id", update.channel_id.as_str());
    span.record("message_sid", update.message_sid.as_str());
    // For a message we sent, the callback's To is the person we talk to.
    let Some(peer) = update.to.as_deref().and_then(|t| E164::parse(t.trim()).ok()) else {
        return dead(ctx, msg, "status callback without a valid To number".to_owned()).await;
    };
    span.record("peer", peer.masked());
    let status = MessageStatus::parse(&update.status);
    let rank = status.rank();
    metrics::counter!("smsgate_sender_status_total", "status" => status.as_str()).increment(1);
    if rank == 0 {
        tracing::info!(status = %update.status, outcome = "ignored", "status with no place in the order; not recorded");
        return Disposition::Ack;
    }
    let key = SentKey::Status(update.message_sid.as_str()).to_string();
    let sid = update.message_sid.as_str();
    // Compare-and-set, retried when another replica moved the state meanwhile.
    for _ in 0..8 {
        let entry = match ctx.bus.sent.entry(&key).await {
            Ok(e) => e.filter(|e| e.operation == kv::Operation::Put),
            Err(e) => {
                tracing::warn!(error = &e as &dyn std::error::Error, "cannot read the delivery state");
                return Disposition::Retry(ctx.tuning.redelivery_delay);
            }
        };
        let current = entry.as_ref().map(|e| String::from_utf8_lossy(&e.value).into_owned());
        if let Some(current) = &current
            && MessageStatus::parse(current).rank() >= rank
        {
            tracing::info!(status = %update.status, current = %current, outcome = "stale", "status arrived late; kept the later one");
            return Disposition::Ack;
        }
        let error_code = update.error_code.clone().filter(|c| !c.trim().is_empty());
        let permanent = error_code.as_deref().is_some_and(|c| PERMANENT_ASYNC_CODES.contains(&c));
        if matches!(status, MessageStatus::Failed | MessageStatus::Undelivered) {
            metrics::counter!("smsgate_sender_delivery_errors_total", "error_code" => error_label(error_code.as_deref()))
                .increment(1);
            tracing::warn!(
                event = "message.status",
                status = %update.status,
                error_code = error_code.as_deref().unwrap_or(""),
                twilio_code = error_code.as_deref().unwrap_or(""),
                permanent,
                outcome = "not_delivered",
                "Twilio could not deliver a piece"
            );
        } else {
            tracing::info!(event = "message.status", status = %update.status, outcome = "recorded", "delivery status");
        }
        let event = HistoryEvent::Status { sid: sid.to_owned(), status: update.status.clone(), error_code };
        let id = MsgId::HistoryStatus { sid: &update.message_sid, status: &update.status };
        if let Err(e) =
            bus::append_history(&ctx.bus.js, &ctx.bus.topology, (&update.channel_id, &peer), id, event).await
        {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot write history; retrying later");
            return Disposition::Retry(ctx.tuning.redelivery_delay);
        }
        let value = update.status.clone().into_bytes().into();
        let stored = match &entry {
            None => ctx.bus.sent.create(&key, value).await.map(|_| ()).map_err(|e| e.to_string()),
            Some(e) => ctx.bus.sent.update(&key, value, e.revision).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        match stored {
            Ok(()) => {
                // The first final status: Twilio bills the piece now.
                let was_final = current.as_deref().is_some_and(|c| MessageStatus::parse(c).rank() >= FINAL_RANK);
                if rank >= FINAL_RANK && !was_final {
                    crate::cost::fetch_price_later(ctx, &update.channel_id, &peer, sid);
                }
                return Disposition::Ack;
            }
            Err(e) => tracing::debug!(error = %e, "delivery state changed meanwhile; checking again"),
        }
    }
    Disposition::Retry(ctx.tuning.redelivery_delay)
}

/// Twilio's error code as a metric label: the codes operators watch
/// (docs/TWILIO.md §6), `other` for the rest, `none` without one, so the
/// label's values stay few.
fn error_label(code: Option<&str>) -> &'static str {
    const WATCHED: [&str; 14] = [
        "30001", "30002", "30003", "30004", "30005", "30006", "30007", "30008", "30024", "30032", "30034", "21610",
        "21611", "21614",
    ];
    match code {
        None => "none",
        Some(c) => WATCHED.iter().find(|w| **w == c).copied().unwrap_or("other"),
    }
}

async fn dead(ctx: &Ctx, msg: &Message, reason: String) -> Disposition {
    tracing::warn!(outcome = "dead_letter", reason = %reason, "status callback dead-lettered");
    let failure = Failure { stage: Stage::Status, reason, code: None, channel: None };
    match bus::dead_letter(&ctx.bus.js, &ctx.bus.topology, &Stranded::of(msg, String::new()), failure).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot dead-letter; retrying later");
            Disposition::Retry(ctx.tuning.redelivery_delay)
        }
    }
}
