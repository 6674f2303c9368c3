//! One `Outbound` from `P_OUTBOUND`, from the bus to Twilio and back.
//!
//! 1. Decode (a bad payload or an unknown channel is dead-lettered).
//! 2. Opted out (`P_optout`)? Record a note, ack, send nothing. Not a
//!    direct reply (`guard` set)? The guard again (`crate::guarded`).
//! 3. [`sms::prepare`]: normalize, split, count. Deterministic, so a
//!    redelivery yields the same pieces under the same indices. With media
//!    (an MMS) the text is one message, never split, cut at 1600
//!    characters; the `MediaUrl`s go with it.
//! 4. `delivery: "log"`: log the pieces and record them; no Twilio.
//! 5. Each piece in order: skip it if `P_sent` has `<id>.<i>`; else pace,
//!    create it (retrying as [`crate::twilio::ErrorKind`] says), and put its
//!    SID under `<id>.<i>` right after Twilio's 201. A piece is only sent
//!    once the one before it is recorded, so `P_sent` is read once on a
//!    first delivery ([`recorded`]: no `<id>.0`, nothing sent).
//! 6. One `Outbound` history entry with every piece's SID (`Nats-Msg-Id`
//!    `out.<id>`), `<id>.done` in `P_sent`, then ack. A redelivered message
//!    that is done is acked at once.
//!
//! A crash between Twilio's 201 and the `P_sent` put is the one window in
//! which a redelivery sends a piece twice: Twilio has no idempotency key for
//! creates. The put follows the answer immediately to keep it short.
//!
//! Failures, decided in [`Disposition`]: 429 and connection errors are
//! retried in-process with backoff and jitter (honouring `Retry-After`),
//! then by JetStream redelivery with a growing delay, and dead-lettered when
//! `max_deliver` is reached. A 5xx or timeout is retried once after a delay
//! and counted as a possible duplicate; a second one is dead-lettered rather
//! than risk more copies. Permanent refusals are dead-lettered at once
//! (21610 also opts the number out).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use serde::Deserialize;
use smsgate_shared::bus::{self, Failure, MsgId, SentKey};
use smsgate_shared::config::{self, Channel};
use smsgate_shared::consume::{BoxError, Delivery, Handler, Key, Stranded, key_of};
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, HistoryEvent, NoteReason, Outbound, Piece};
use smsgate_shared::topology::{Stage, Topology};
use tokio::time::Instant;
use tracing::Instrument;

use crate::Ctx;
use crate::sms::{self, Encoding, SmsPiece};
use crate::twilio::{self, CreatedMessage, ErrorKind, NewMessage, TwilioError};

pub use smsgate_shared::consume::Disposition;

/// The consumer runtime's view of `P_OUTBOUND`: one recipient's messages
/// (and so one message's pieces) in order, recipients in parallel.
pub struct Replies(pub Arc<Ctx>);

impl Handler for Replies {
    type Item = ();

    fn decode(&self, _: &Message) {}

    /// Key: (channel, to), read without decoding the whole message.
    fn key(&self, payload: &[u8]) -> Option<Key> {
        #[derive(Deserialize)]
        struct Peer<'a> {
            #[serde(borrow)]
            channel_id: Option<&'a str>,
            #[serde(borrow)]
            to: Option<&'a str>,
        }
        serde_json::from_slice::<Peer<'_>>(payload)
            .ok()
            .map(|k| key_of(&[k.channel_id.unwrap_or(""), k.to.unwrap_or("")]))
    }

    async fn handle(&self, d: &Delivery<()>) -> Disposition {
        let span = tracing::info_span!(
            "deliver",
            stage = "sender",
            channel_id = tracing::field::Empty,
            outbound_id = tracing::field::Empty,
            // The inbound message this answers, so one message can be
            // followed by `message_sid` through every service's lines.
            message_sid = tracing::field::Empty,
            peer = tracing::field::Empty,
        );
        process(&self.0, d).instrument(span).await
    }

    async fn dead_letter(&self, s: Stranded<'_>) -> Result<(), BoxError> {
        tracing::warn!(seq = s.seq, reason = %s.reason, outcome = "dead_letter", "outbound message dead-lettered");
        let failure = Failure { stage: Stage::Sender, reason: s.reason.clone(), code: None, channel: None };
        bus::dead_letter(&self.0.bus.js, &self.0.bus.topology, &s, failure).await?;
        Ok(())
    }
}

/// Why a piece was not sent.
pub(crate) enum SendFailure {
    /// Shutdown while waiting.
    Interrupted,
    /// Worth another delivery later (429, connection errors).
    Retryable(TwilioError),
    /// Final: permanent refusal, or an unknown outcome twice.
    Final(TwilioError),
}

async fn process(ctx: &Ctx, d: &Delivery<()>) -> Disposition {
    let (msg, delivered) = (&d.msg, d.delivered);
    let out: Outbound = match envelope::decode(&msg.payload) {
        Ok(o) => o,
        Err(e) => return dead(ctx, msg, None, format!("cannot read the outbound message: {e}"), None).await,
    };
    let span = tracing::Span::current();
    span.record("channel_id", out.channel_id.as_str());
    span.record("outbound_id", out.id.as_str());
    if let Some(sid) = &out.in_reply_to {
        span.record("message_sid", sid.as_str());
    }
    span.record("peer", out.to.masked());
    let Some(live) = ctx.channels.get_fresh(&out.channel_id).await else {
        let reason = format!("channel {} is not configured in this sender", out.channel_id);
        return dead(ctx, msg, Some(&out.channel_id), reason, None).await;
    };
    let channel = &live.channel;
    if !out.id.is_valid() {
        let reason = "the outbound id is not 1-128 letters, digits, '_', '-' or '.'".to_owned();
        return dead(ctx, msg, Some(&out.channel_id), reason, None).await;
    }

    let started = match recorded(ctx, &out, channel.delivery == config::Delivery::Log).await {
        Ok(Recorded::Done) => {
            tracing::info!(outcome = "already_delivered", "delivered before (a redelivery); nothing to do");
            return Disposition::Ack;
        }
        Ok(Recorded::Fresh) => None,
        Ok(Recorded::Started(sid)) => Some(sid),
        Err(e) => {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot read the sent bucket");
            return Disposition::Retry(ctx.tuning.redelivery_delay);
        }
    };

    if let Some(guarded) = out.guard {
        // Not a direct reply: the guard (opt-out included) decides.
        if let crate::guarded::Gate::Stop(disposition) = crate::guarded::gate(ctx, channel, &out, guarded).await {
            return disposition;
        }
    } else {
        match ctx.optout.get(&Topology::optout_key(&out.channel_id, &out.to)).await {
            Ok(Some(_)) => {
                tracing::info!(outcome = "opted_out", "recipient opted out; not sent");
                metrics::counter!("smsgate_sender_sends_total", "outcome" => "opted_out").increment(1);
                return note_then_ack(ctx, &out, NoteReason::OptedOut, "recipient opted out; reply not sent").await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = &e as &dyn std::error::Error, "cannot read the opt-out bucket");
                return Disposition::Retry(ctx.tuning.redelivery_delay);
            }
        }
    }

    if let Some(call) = &out.call {
        return crate::call::place(ctx, d, channel, &out, call, started).await;
    }

    let prepared = if out.media_urls.is_empty() {
        sms::prepare(&out.body, channel.sms_max_len, channel.max_parts)
    } else {
        // An MMS is one message: the text goes whole with its media, no
        // `(i/n)` pieces, cut at Twilio's 1600-character body limit.
        sms::prepare(&out.body, config::TWILIO_MAX_BODY, 1)
    };
    let pieces = if prepared.pieces.is_empty() {
        if out.media_urls.is_empty() {
            tracing::info!(outcome = "empty", "nothing to send: empty body and no media");
            return note_then_ack(ctx, &out, NoteReason::NoReply, "empty body and no media; nothing sent").await;
        }
        // Media only: one message without a body.
        vec![SmsPiece { body: String::new(), encoding: Encoding::Gsm7, segments: 0 }]
    } else {
        prepared.pieces
    };
    if prepared.truncated {
        tracing::info!(pieces = pieces.len(), "reply cut at max_parts");
    }

    if channel.delivery == config::Delivery::Log {
        return log_delivery(ctx, &out, &pieces).await;
    }

    let n = pieces.len();
    let resuming = started.is_some();
    let mut sids: Vec<Option<String>> = Vec::with_capacity(n);
    for (i, piece) in pieces.iter().enumerate() {
        let key = SentKey::Piece { outbound: &out.id, index: i }.to_string();
        // Piece 0 was read above; the others only when it was there (a
        // piece is sent only once the one before it is recorded).
        let sent = match i {
            0 => Ok(started.clone()),
            _ if resuming => read_sid(ctx, &key).await,
            _ => Ok(None),
        };
        match sent {
            Ok(Some(sid)) => {
                tracing::info!(piece = i + 1, of = n, outcome = "already_sent", "piece sent before; skipped");
                metrics::counter!("smsgate_sender_sends_total", "outcome" => "already_sent").increment(1);
                sids.push(Some(sid));
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                // Never send without knowing whether it was sent.
                tracing::warn!(error = &e as &dyn std::error::Error, "cannot read the sent bucket");
                return Disposition::Retry(ctx.tuning.redelivery_delay);
            }
        }
        let media: &[String] = if i == 0 { &out.media_urls } else { &[] };
        let status_url = channel.status_url();
        let request =
            NewMessage { to: &out.to, body: &piece.body, media_urls: media, status_callback: status_url.as_deref() };
        match send_piece(ctx, msg, channel, Create::Piece(request, piece), (i, n)).await {
            Ok(created) => {
                let sid = created.sid.unwrap_or_else(|| "unknown".to_owned());
                if !remember_sent(ctx, &key, &sid).await {
                    // The next piece waits for a redelivery: sending on
                    // would break the order `recorded` relies on.
                    return Disposition::Retry(ctx.tuning.redelivery_delay);
                }
                metrics::counter!("smsgate_sender_sends_total", "outcome" => "sent").increment(1);
                metrics::counter!("smsgate_sender_segments_total", "encoding" => piece.encoding.as_str())
                    .increment(u64::from(piece.segments));
                sids.push(Some(sid));
            }
            Err(SendFailure::Interrupted) => return Disposition::Release,
            Err(SendFailure::Retryable(e)) if !d.is_last() => {
                let delay = redelivery_delay(ctx, delivered);
                tracing::warn!(
                    piece = i + 1,
                    of = n,
                    delivered,
                    error = &e as &dyn std::error::Error,
                    outcome = "retry_later",
                    "Twilio unavailable; redelivering later"
                );
                return Disposition::Retry(delay);
            }
            Err(SendFailure::Retryable(e)) => {
                let reason = format!("gave up after {delivered} deliveries: {e}");
                return failed(ctx, msg, &out, &pieces, &sids, (i, n), &e, reason, "gave_up").await;
            }
            Err(SendFailure::Final(e)) => {
                if e.code() == Some(twilio::CODE_OPTED_OUT) {
                    opt_out(ctx, &out.channel_id, &out.to).await;
                }
                let reason = match e.kind() {
                    ErrorKind::UnknownOutcome => format!("outcome unknown after one retry (possible duplicate): {e}"),
                    _ => e.to_string(),
                };
                return failed(ctx, msg, &out, &pieces, &sids, (i, n), &e, reason, "failed").await;
            }
        }
    }

    let event = HistoryEvent::Outbound {
        id: out.id.to_string(),
        body: out.body.clone(),
        in_reply_to: out.in_reply_to.clone(),
        origin: out.origin,
        pieces: history_pieces(&pieces, &sids),
        delivery: "twilio".to_owned(),
        media: out.media_urls.clone(),
    };
    tracing::info!(
        event = "message.sent",
        pieces = n,
        segments = prepared_segments(&pieces),
        outcome = "delivered",
        "reply sent"
    );
    let disposition = finish(ctx, &out, event, "delivered").await;
    if disposition == Disposition::Ack {
        // After the Outbound entry, so history reads message then cost; a
        // crash in between loses the estimate (Twilio's price still comes).
        crate::cost::estimate(ctx, channel, &out.to, &pieces, &sids).await;
    }
    disposition
}

/// How long a message Twilio could not take waits for its next delivery:
/// longer with every delivery.
pub(crate) fn redelivery_delay(ctx: &Ctx, delivered: i64) -> Duration {
    ctx.tuning.redelivery_delay * u32::try_from(delivered.max(1)).unwrap_or(1)
}

/// Writes the Outbound history entry, then marks the message done so that a
/// redelivery later than the history stream's duplicate window (2 min) does
/// not write the entry twice.
pub(crate) async fn finish(ctx: &Ctx, out: &Outbound, event: HistoryEvent, outcome: &str) -> Disposition {
    let disposition = history_then_ack(ctx, out, event, MsgId::HistoryOutbound(&out.id)).await;
    if disposition == Disposition::Ack {
        // If this never lands, only a late redelivery's duplicate history entry is at stake.
        put_patiently(
            ctx,
            &SentKey::Done(&out.id).to_string(),
            outcome.to_owned().into_bytes().into(),
            "the message as done",
        )
        .await;
    }
    disposition
}

fn prepared_segments(pieces: &[SmsPiece]) -> u32 {
    pieces.iter().map(|p| p.segments).sum()
}

fn history_pieces(pieces: &[SmsPiece], sids: &[Option<String>]) -> Vec<Piece> {
    pieces
        .iter()
        .zip(sids)
        .enumerate()
        .map(|(index, (p, sid))| Piece {
            index,
            body: p.body.clone(),
            segments: p.segments,
            encoding: p.encoding.as_str().to_owned(),
            sid: sid.clone(),
        })
        .collect()
}

fn note(out: &Outbound, reason: NoteReason, detail: String) -> HistoryEvent {
    HistoryEvent::Note { reason, message_sid: out.in_reply_to.clone(), outbound_id: Some(out.id.to_string()), detail }
}

/// Appends to the conversation of `out`.
async fn history(ctx: &Ctx, out: &Outbound, id: MsgId<'_>, event: HistoryEvent) -> Result<(), bus::PublishError> {
    bus::append_history(&ctx.bus.js, &ctx.bus.topology, (&out.channel_id, &out.to), id, event).await
}

/// Records why `out` was not sent, then acks.
pub(crate) async fn note_then_ack(ctx: &Ctx, out: &Outbound, reason: NoteReason, detail: &str) -> Disposition {
    let event = note(out, reason, detail.to_owned());
    history_then_ack(ctx, out, event, MsgId::SenderNote { outbound: &out.id, reason }).await
}

async fn history_then_ack(ctx: &Ctx, out: &Outbound, event: HistoryEvent, id: MsgId<'_>) -> Disposition {
    match history(ctx, out, id, event).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot write history; retrying later");
            Disposition::Retry(ctx.tuning.redelivery_delay)
        }
    }
}

async fn dead(ctx: &Ctx, msg: &Message, channel: Option<&ChannelId>, reason: String, code: Option<i64>) -> Disposition {
    tracing::warn!(outcome = "dead_letter", reason = %reason, "outbound message dead-lettered");
    let failure = Failure { stage: Stage::Sender, reason, code, channel };
    match bus::dead_letter(&ctx.bus.js, &ctx.bus.topology, &Stranded::of(msg, String::new()), failure).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot dead-letter; retrying later");
            Disposition::Retry(ctx.tuning.redelivery_delay)
        }
    }
}

/// A piece could not be sent: record what was sent, a note, a dead letter.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn failed(
    ctx: &Ctx,
    msg: &Message,
    out: &Outbound,
    pieces: &[SmsPiece],
    sids: &[Option<String>],
    (i, n): (usize, usize),
    error: &TwilioError,
    reason: String,
    outcome: &'static str,
) -> Disposition {
    metrics::counter!("smsgate_sender_sends_total", "outcome" => outcome).increment(1);
    tracing::warn!(
        piece = i + 1,
        of = n,
        twilio_code = error.code(),
        http_status = error.http_status(),
        error = error as &dyn std::error::Error,
        outcome,
        "piece not sent"
    );
    if !sids.is_empty() {
        // The pieces that did go out stay visible in the conversation.
        let event = HistoryEvent::Outbound {
            id: out.id.to_string(),
            body: out.body.clone(),
            in_reply_to: out.in_reply_to.clone(),
            origin: out.origin,
            pieces: history_pieces(&pieces[..sids.len()], sids),
            delivery: "twilio".to_owned(),
            media: out.media_urls.clone(),
        };
        if let Err(e) = history(ctx, out, MsgId::HistoryOutbound(&out.id), event).await {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot write history; retrying later");
            return Disposition::Retry(ctx.tuning.redelivery_delay);
        }
    }
    let detail = format!("piece {}/{n} not sent: {reason}", i + 1);
    let event = note(out, NoteReason::SendFailed, detail);
    if let Err(e) =
        history(ctx, out, MsgId::SenderNote { outbound: &out.id, reason: NoteReason::SendFailed }, event).await
    {
        tracing::warn!(error = &e as &dyn std::error::Error, "cannot write history; retrying later");
        return Disposition::Retry(ctx.tuning.redelivery_delay);
    }
    dead(ctx, msg, Some(&out.channel_id), reason, error.code()).await
}

/// Twilio said the recipient replied STOP (21610): mark it as the worker's
/// STOP handling does, so nothing more is sent.
async fn opt_out(ctx: &Ctx, channel: &ChannelId, peer: &E164) {
    // The worker's STOP handling writes the same key, `at` in Unix seconds.
    let at = time::OffsetDateTime::now_utc().unix_timestamp();
    let value = serde_json::json!({ "at": at, "source": "twilio_21610" }).to_string();
    match ctx.optout.put(&Topology::optout_key(channel, peer), value.into()).await {
        Ok(_) => tracing::info!(outcome = "opted_out", "Twilio reports the recipient opted out; recorded"),
        Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "cannot record the opt-out"),
    }
}

/// What `P_sent` holds for an outbound.
pub(crate) enum Recorded {
    /// Nothing: no piece of it was sent.
    Fresh,
    /// Piece 0 was sent (its SID), not all of it, or its history is not written.
    Started(String),
    /// Every piece sent and the history written (`<id>.done`).
    Done,
}

/// Reads what `P_sent` holds for `out` in as few requests as the order of
/// the writes allows, one in the common case (a first delivery). Pieces are
/// sent in order and a piece only after the one before it is recorded
/// ([`remember_sent`]), and `<id>.done` is written after the last; so no
/// `<id>.0` means nothing was sent and nothing is done. A log channel
/// records no pieces: its done mark is read directly.
pub(crate) async fn recorded(
    ctx: &Ctx,
    out: &Outbound,
    log: bool,
) -> Result<Recorded, async_nats::jetstream::kv::EntryError> {
    let first =
        if log { None } else { read_sid(ctx, &SentKey::Piece { outbound: &out.id, index: 0 }.to_string()).await? };
    if first.is_none() && !log {
        return Ok(Recorded::Fresh);
    }
    Ok(match (ctx.bus.sent.get(SentKey::Done(&out.id).to_string()).await?, first) {
        (Some(_), _) => Recorded::Done,
        (None, Some(sid)) => Recorded::Started(sid),
        (None, None) => Recorded::Fresh,
    })
}

/// The SID recorded under a piece key.
async fn read_sid(ctx: &Ctx, key: &str) -> Result<Option<String>, async_nats::jetstream::kv::EntryError> {
    Ok(ctx.bus.sent.get(key).await?.map(|sid| String::from_utf8_lossy(&sid).into_owned()))
}

/// Records a sent piece's Twilio SID under `key` in `P_sent`. Until this
/// put lands, a redelivery would send the piece again, so it is retried for
/// up to [`RECORD_FOR`]: long enough for a NATS cluster to elect a new
/// leader for the bucket after a node dies (a few seconds; the runtime
/// keeps the message alive meanwhile). False when it never landed: the
/// caller sends nothing more of the message on this delivery.
pub(crate) async fn remember_sent(ctx: &Ctx, key: &str, sid: &str) -> bool {
    let landed = put_patiently(ctx, key, sid.to_owned().into(), "a sent piece").await;
    if !landed {
        tracing::error!(key, outcome = "unrecorded", "sent piece not recorded: a redelivery may send it again");
    }
    landed
}

/// How long a `P_sent` put is retried before giving up.
const RECORD_FOR: Duration = Duration::from_secs(30);

/// Puts `value` under `key` in `P_sent`, retrying with a growing pause (200
/// ms up to 2 s) for up to [`RECORD_FOR`]; false if it never landed.
async fn put_patiently(ctx: &Ctx, key: &str, value: bytes::Bytes, what: &str) -> bool {
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    for attempt in 0u32.. {
        let Err(e) = ctx.bus.sent.put(key, value.clone()).await else {
            return true;
        };
        if started.elapsed() + pause > RECORD_FOR {
            tracing::warn!(attempt, error = &e as &dyn std::error::Error, "cannot record {what}; giving up");
            return false;
        }
        if attempt % 5 == 0 {
            tracing::warn!(attempt, error = &e as &dyn std::error::Error, "cannot record {what}; retrying");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    false
}

/// `delivery: "log"`: the pieces go to the log and the history, not Twilio.
async fn log_delivery(ctx: &Ctx, out: &Outbound, pieces: &[SmsPiece]) -> Disposition {
    let n = pieces.len();
    for (i, p) in pieces.iter().enumerate() {
        // The one place a body is logged at info: a "log" channel exists to
        // show its replies (local runs without a Twilio account).
        tracing::info!(
            piece = i + 1,
            of = n,
            segments = p.segments,
            encoding = p.encoding.as_str(),
            body = %p.body,
            outcome = "logged",
            "reply (delivery: log)"
        );
        metrics::counter!("smsgate_sender_sends_total", "outcome" => "logged").increment(1);
        metrics::counter!("smsgate_sender_segments_total", "encoding" => p.encoding.as_str())
            .increment(u64::from(p.segments));
    }
    let event = HistoryEvent::Outbound {
        id: out.id.to_string(),
        body: out.body.clone(),
        in_reply_to: out.in_reply_to.clone(),
        origin: out.origin,
        pieces: history_pieces(pieces, &vec![None; n]),
        delivery: "log".to_owned(),
        media: out.media_urls.clone(),
    };
    finish(ctx, out, event, "logged").await
}

/// One create at Twilio: a piece of a message, or a call.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Create<'a> {
    Piece(NewMessage<'a>, &'a SmsPiece),
    Call(twilio::NewCall<'a>),
}

/// Creates one piece (or call), paced per sending number, retrying
/// in-process as the error's kind says.
pub(crate) async fn send_piece(
    ctx: &Ctx,
    msg: &Message,
    channel: &Channel,
    request: Create<'_>,
    (i, n): (usize, usize),
) -> Result<CreatedMessage, SendFailure> {
    let sender_key = channel
        .messaging_service_sid
        .clone()
        .or_else(|| channel.from_number.as_ref().map(ToString::to_string))
        .unwrap_or_default();
    let (body, segments, encoding) = match request {
        Create::Piece(_, piece) => (piece.body.as_str(), piece.segments, piece.encoding.as_str()),
        Create::Call(call) => (call.twiml, 0, "call"),
    };
    let mut attempts = 0u32;
    let mut retried_unknown = false;
    loop {
        let slot = ctx.pacer.reserve(&sender_key, channel.mps).await;
        wait_until(ctx, msg, slot).await?;
        // No `Progress` ack here: the consumer runtime keeps every running
        // message alive every third of `ack_wait` (60 s) while the call
        // runs, and a Twilio call is bounded at 20 s (connect 5 + request 15).
        tracing::debug!(piece = i + 1, of = n, body = %body, "sending piece");
        let started = Instant::now();
        let result = match request {
            Create::Piece(m, _) => ctx.twilio.create_message(channel, m).await,
            Create::Call(c) => ctx.twilio.create_call(channel, c).await,
        };
        let latency = started.elapsed();
        let label = if result.is_ok() { "created" } else { "error" };
        metrics::histogram!("smsgate_sender_twilio_seconds", "outcome" => label).record(latency.as_secs_f64());
        let error = match result {
            Ok(created) => {
                tracing::info!(
                    piece = i + 1,
                    of = n,
                    segments,
                    encoding,
                    message_sid = created.sid.as_deref().unwrap_or("unknown"),
                    latency_ms = latency.as_millis() as u64,
                    outcome = "sent",
                    "piece sent"
                );
                return Ok(created);
            }
            Err(e) => e,
        };
        let log_retry = |wait: Duration, e: &TwilioError| {
            tracing::warn!(
                piece = i + 1,
                of = n,
                twilio_code = e.code(),
                http_status = e.http_status(),
                latency_ms = latency.as_millis() as u64,
                wait_ms = wait.as_millis() as u64,
                error = e as &dyn std::error::Error,
                outcome = e.label(),
                "Twilio call failed; retrying"
            );
        };
        match error.kind() {
            ErrorKind::Permanent => return Err(SendFailure::Final(error)),
            ErrorKind::UnknownOutcome if retried_unknown => return Err(SendFailure::Final(error)),
            ErrorKind::UnknownOutcome => {
                retried_unknown = true;
                metrics::counter!("smsgate_sender_possible_duplicates_total").increment(1);
                let wait = ctx.tuning.unknown_outcome_delay;
                log_retry(wait, &error);
                wait_until(ctx, msg, Instant::now() + wait).await?;
            }
            ErrorKind::Transient | ErrorKind::RateLimited { .. } => {
                attempts += 1;
                if attempts >= ctx.tuning.attempts {
                    return Err(SendFailure::Retryable(error));
                }
                let retry_after = match error.kind() {
                    ErrorKind::RateLimited { retry_after } => retry_after,
                    _ => None,
                };
                let wait = ctx.tuning.retry.delay(attempts, retry_after);
                log_retry(wait, &error);
                wait_until(ctx, msg, Instant::now() + wait).await?;
            }
        }
    }
}

/// Sleeps until `deadline`, telling JetStream the message is in progress
/// every `progress_every`; returns early on shutdown.
async fn wait_until(ctx: &Ctx, msg: &Message, deadline: Instant) -> Result<(), SendFailure> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        let step = (deadline - now).min(ctx.tuning.progress_every);
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Err(SendFailure::Interrupted),
            _ = tokio::time::sleep(step) => {}
        }
        if Instant::now() < deadline {
            let _ = msg.ack_with(AckKind::Progress).await;
        }
    }
}
