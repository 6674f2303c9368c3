//! The bus protocol, written once (docs/ARCHITECTURE.md §3.3): every
//! `Nats-Msg-Id` smsgate publishes with ([`MsgId`]), every key of the
//! `P_sent` bucket ([`SentKey`]), and the writes every service makes:
//! [`publish`] (with an id, awaiting the stream's ack), [`append_history`]
//! and [`dead_letter`].
//!
//! No service builds an id or a `P_sent` key itself: two writers that must
//! agree on an id (a redelivery and its first delivery, a webhook and
//! Twilio's retry of it) get it from the same variant here.

use std::fmt;

use async_nats::jetstream::{self, context::PublishError as NatsPublishError, message::PublishMessage};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::consume::Stranded;
use crate::domain::{CallSid, ChannelId, E164, MessageSid};
use crate::envelope::{self, DeadLetter, HistoryEntry, HistoryEvent, NoteReason};
use crate::topology::{Stage, Topology};

/// An outbound message's id: its `Nats-Msg-Id` on `P_OUTBOUND` (invariant
/// 2: one reply per inbound MessageSid, one send per API idempotency key),
/// the key of its pieces in `P_sent`, and what history names it by. Either
/// `reply.<inbound MessageSid>` ([`OutboundId::reply_to`]) or
/// `api.<key>` ([`OutboundId::api`]): an API key lives in its own namespace,
/// so no key (`reply.<sid>`, say) can suppress a reply the worker makes.
/// On the wire it is a plain string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OutboundId(String);

/// The namespace of outbound ids made by the admin API.
pub const API_PREFIX: &str = "api.";

impl OutboundId {
    /// The id of the reply to an inbound message.
    pub fn reply_to(inbound: &MessageSid) -> Self {
        Self(format!("reply.{inbound}"))
    }

    /// The "on it" text before the reply to `inbound`: `ack.<sid>`, one per
    /// inbound however often it is redelivered.
    pub fn ack_of(inbound: &MessageSid) -> Self {
        Self(format!("ack.{inbound}"))
    }

    /// The model's `n`th follow-up while answering `inbound`:
    /// `followup.<sid>.<n>`, the same on a redelivery.
    pub fn followup_of(inbound: &MessageSid, n: usize) -> Self {
        Self(format!("followup.{inbound}.{n}"))
    }

    /// The id for an API caller's idempotency key, or None when the key
    /// cannot be one (see [`OutboundId::is_valid`]).
    pub fn api(key: &str) -> Option<Self> {
        let id = Self(format!("{API_PREFIX}{key}"));
        (is_valid_id(key) && id.is_valid()).then_some(id)
    }

    /// An id as it came on the wire (a payload, a test), if it is valid.
    pub fn parse(text: &str) -> Option<Self> {
        let id = Self(text.to_owned());
        id.is_valid().then_some(id)
    }

    /// A fresh `api.` id for a request without a key.
    pub fn generated() -> Self {
        Self(format!("{API_PREFIX}{}", &crate::config::generate_token()[..24]))
    }

    /// Whether it can be an outbound id (it becomes a `Nats-Msg-Id` and
    /// part of a key-value key): 1-128 letters, digits, `_`, `-`, `.`, not
    /// starting or ending with `.`. Checked again by the sender, since a
    /// payload may come from anywhere.
    pub fn is_valid(&self) -> bool {
        is_valid_id(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && !id.ends_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl fmt::Display for OutboundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for OutboundId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for OutboundId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for OutboundId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<OutboundId> for String {
    fn from(id: OutboundId) -> Self {
        id.0
    }
}

/// Every `Nats-Msg-Id`. JetStream stores a message once per id within the
/// stream's duplicate window; each variant says what that protects.
#[derive(Debug, Clone, Copy)]
pub enum MsgId<'a> {
    /// A webhook (`P_INBOUND`): its MessageSid. Twilio's retry of the same
    /// message is stored once (invariant 2).
    Inbound(&'a MessageSid),
    /// A status callback (`P_STATUS`): `<MessageSid>.<MessageStatus>`. The
    /// same callback twice is stored once.
    Status { sid: &'a MessageSid, status: &'a str },
    /// A message to send (`P_OUTBOUND`): its outbound id (`reply.<sid>`,
    /// `api.<key>` or `api.<random>`, see [`envelope::Outbound`]). One send
    /// per id (invariant 2).
    Outbound(&'a str),
    /// A scheduled or deferred message put on `P_OUTBOUND` when due:
    /// `<id>.at<unix seconds>`. Two schedulers firing the same entry store
    /// it once; the same id deferred again to another time is a new message.
    Scheduled { id: &'a str, at: i64 },
    /// A dead letter replayed to its subject: `replay.<seq>[.<original>]`.
    /// A second replay of the same letter is stored once.
    Replay { seq: u64, original: Option<&'a str> },
    /// History: an inbound message, `in.<sid>`. A redelivered inbound is
    /// recorded once.
    HistoryInbound(&'a MessageSid),
    /// History: why the worker did not answer, `note.<sid>.<reason>.<seq>`.
    /// The inbound's stream sequence tells a stored duplicate's note apart.
    WorkerNote { sid: &'a MessageSid, reason: NoteReason, seq: u64 },
    /// History: the sender's note about an outbound message,
    /// `note.<id>.<reason>` (opted out, empty, failed).
    SenderNote { outbound: &'a str, reason: NoteReason },
    /// History: a reply as delivered, `out.<id>`. A redelivered reply is
    /// recorded once.
    HistoryOutbound(&'a str),
    /// History: a piece's delivery status, `status.<sid>.<status>`.
    HistoryStatus { sid: &'a MessageSid, status: &'a str },
    /// History: an operator paused or resumed the bot,
    /// `takeover.<channel>.<digits>.<reason>.<unix ns>`: each action once.
    Takeover { conversation: &'a str, reason: NoteReason, at_ns: i128 },
    /// History: a call's progress, `call.<CallSid>.<status>`: each status
    /// of a call recorded once.
    HistoryCall { call_sid: &'a CallSid, status: &'a str },
    /// History: one turn of a call, `turn.<CallSid>.<n>`: a redelivered
    /// turn is recorded once.
    HistoryCallTurn { call_sid: &'a CallSid, turn: u32 },
    /// History: a cost figure, `cost.<item>.<basis>.<reference>`: the
    /// estimate and Twilio's price of one piece, or one answer's tokens,
    /// each recorded once however often it is computed again.
    HistoryCost { item: crate::cost::Item, basis: crate::cost::Basis, reference: &'a str },
    /// A dead letter: `dead.<stage>.<original subject>.<seq>`. One per
    /// stored message however often it is redelivered; a replay is a new
    /// stored message and may be dead-lettered again.
    Dead { stage: Stage, subject: &'a str, seq: u64 },
}

impl fmt::Display for MsgId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inbound(sid) => write!(f, "{sid}"),
            Self::Status { sid, status } => write!(f, "{sid}.{status}"),
            Self::Outbound(id) => write!(f, "{id}"),
            Self::Scheduled { id, at } => write!(f, "{id}.at{at}"),
            Self::Replay { seq, original: Some(original) } => write!(f, "replay.{seq}.{original}"),
            Self::Replay { seq, original: None } => write!(f, "replay.{seq}"),
            Self::HistoryInbound(sid) => write!(f, "in.{sid}"),
            Self::WorkerNote { sid, reason, seq } => write!(f, "note.{sid}.{}.{seq}", reason.as_str()),
            Self::SenderNote { outbound, reason } => write!(f, "note.{outbound}.{}", sender_note_tag(*reason)),
            Self::HistoryOutbound(id) => write!(f, "out.{id}"),
            Self::HistoryStatus { sid, status } => write!(f, "status.{sid}.{status}"),
            Self::Takeover { conversation, reason, at_ns } => {
                write!(f, "takeover.{conversation}.{}.{at_ns}", reason.as_str())
            }
            Self::HistoryCall { call_sid, status } => write!(f, "call.{call_sid}.{status}"),
            Self::HistoryCallTurn { call_sid, turn } => write!(f, "turn.{call_sid}.{turn}"),
            Self::Dead { stage, subject, seq } => write!(f, "dead.{}.{subject}.{seq}", stage.as_str()),
            Self::HistoryCost { item, basis, reference } => {
                write!(f, "cost.{}.{}.{reference}", item.as_str(), basis.as_str())
            }
        }
    }
}

/// The sender's note ids predate [`NoteReason::as_str`]: `failed` rather
/// than `send_failed`, `empty` rather than `no_reply`. Kept, so that a
/// redelivery across an upgrade still dedupes.
fn sender_note_tag(reason: NoteReason) -> &'static str {
    match reason {
        NoteReason::SendFailed => "failed",
        NoteReason::NoReply => "empty",
        other => other.as_str(),
    }
}

/// Every key of the `P_sent` bucket. The three families never collide:
/// piece keys end in a number, done keys in `done`, status keys start with
/// `status.` and outbound ids never do.
#[derive(Debug, Clone, Copy)]
pub enum SentKey<'a> {
    /// `<outbound id>.<index>`: the Twilio SID of piece `index` (0-based).
    /// Present means sent: a redelivery skips the piece (invariant 2).
    Piece { outbound: &'a str, index: usize },
    /// `<outbound id>.done`: every piece sent and the history written.
    Done(&'a str),
    /// `status.<SID>`: a piece's latest delivery status.
    Status(&'a str),
}

impl fmt::Display for SentKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Piece { outbound, index } => write!(f, "{outbound}.{index}"),
            Self::Done(outbound) => write!(f, "{outbound}.done"),
            Self::Status(sid) => write!(f, "status.{sid}"),
        }
    }
}

/// Publishing failed or was not acknowledged (the caller retries later).
#[derive(Debug, thiserror::Error)]
#[error("cannot publish to {subject}")]
pub struct PublishError {
    pub subject: String,
    #[source]
    pub source: NatsPublishError,
}

/// Publishes `payload` to `subject` with `id` and waits for the stream's
/// ack: whatever a message records is stored before the message is acked.
pub async fn publish(
    js: &jetstream::Context,
    subject: String,
    id: MsgId<'_>,
    payload: Bytes,
) -> Result<jetstream::publish::PublishAck, PublishError> {
    let message = PublishMessage::build().payload(payload).message_id(id.to_string());
    let sent = js.send_publish(subject.clone(), message).await;
    match sent {
        Ok(ack) => ack.await.map_err(|source| PublishError { subject, source }),
        Err(source) => Err(PublishError { subject, source }),
    }
}

/// Appends an entry to `P.history.<channel>.<peer>`.
pub async fn append_history(
    js: &jetstream::Context,
    topology: &Topology,
    (channel, peer): (&ChannelId, &E164),
    id: MsgId<'_>,
    event: HistoryEvent,
) -> Result<(), PublishError> {
    let entry = HistoryEntry::now(channel.clone(), peer.clone(), event);
    publish(js, topology.history_subject(channel, peer), id, envelope::encode(&entry)).await.map(|_| ())
}

/// What went wrong, for a dead letter.
pub struct Failure<'a> {
    pub stage: Stage,
    pub reason: String,
    /// Twilio's error code, when it gave one.
    pub code: Option<i64>,
    /// The channel, when known; else the last token of the subject.
    pub channel: Option<&'a ChannelId>,
}

/// Publishes the original message to `P.dead.<stage>.<channel>` with the
/// reason, so that it can be read and replayed to its subject.
pub async fn dead_letter(
    js: &jetstream::Context,
    topology: &Topology,
    original: &Stranded<'_>,
    failure: Failure<'_>,
) -> Result<(), PublishError> {
    let channel = match failure.channel {
        Some(c) => c.clone(),
        None => channel_of_subject(original.subject)
            .unwrap_or_else(|| ChannelId::parse("unknown").unwrap_or_else(|e| unreachable!("{e}"))),
    };
    let letter = DeadLetter {
        v: envelope::VERSION,
        stage: failure.stage.as_str().to_owned(),
        channel_id: channel.to_string(),
        reason: failure.reason,
        code: failure.code,
        subject: original.subject.to_owned(),
        msg_id: original.msg_id.clone(),
        payload: String::from_utf8_lossy(original.payload).into_owned(),
        at: OffsetDateTime::now_utc(),
    };
    let id = MsgId::Dead { stage: failure.stage, subject: original.subject, seq: original.seq };
    metrics::counter!("smsgate_dead_letters_total", "stage" => failure.stage.as_str()).increment(1);
    tracing::warn!(
        event = "dead.letter",
        stage = failure.stage.as_str(),
        channel_id = letter.channel_id.as_str(),
        reason = %crate::redact::mask_numbers(&letter.reason),
        error_code = letter.code.unwrap_or_default(),
        "dead letter written"
    );
    publish(js, topology.dead_subject(failure.stage, &channel), id, envelope::encode(&letter)).await.map(|_| ())
}

/// `P.<what>.<channel>` → the channel.
pub fn channel_of_subject(subject: &str) -> Option<ChannelId> {
    subject.rsplit('.').next().and_then(|c| ChannelId::parse(c).ok())
}

/// The `Nats-Msg-Id` header of a stored message, if it has one.
pub fn msg_id_of(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers.and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)).map(|v| v.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_wire_format() {
        let sid = MessageSid::parse("SM0123456789abcdef0123456789abcdef").unwrap();
        let call = CallSid::parse("CA0123456789abcdef0123456789abcdef").unwrap();
        let cases = [
            (MsgId::Inbound(&sid), "SM0123456789abcdef0123456789abcdef"),
            (MsgId::Status { sid: &sid, status: "delivered" }, "SM0123456789abcdef0123456789abcdef.delivered"),
            (MsgId::Outbound("reply.SM1"), "reply.SM1"),
            (MsgId::Replay { seq: 7, original: Some("reply.SM1") }, "replay.7.reply.SM1"),
            (MsgId::Replay { seq: 7, original: None }, "replay.7"),
            (MsgId::HistoryInbound(&sid), "in.SM0123456789abcdef0123456789abcdef"),
            (
                MsgId::WorkerNote { sid: &sid, reason: NoteReason::RateLimited, seq: 9 },
                "note.SM0123456789abcdef0123456789abcdef.rate_limited.9",
            ),
            (MsgId::SenderNote { outbound: "reply.SM1", reason: NoteReason::SendFailed }, "note.reply.SM1.failed"),
            (MsgId::SenderNote { outbound: "reply.SM1", reason: NoteReason::NoReply }, "note.reply.SM1.empty"),
            (MsgId::SenderNote { outbound: "reply.SM1", reason: NoteReason::OptedOut }, "note.reply.SM1.opted_out"),
            (MsgId::HistoryOutbound("reply.SM1"), "out.reply.SM1"),
            (MsgId::HistoryStatus { sid: &sid, status: "sent" }, "status.SM0123456789abcdef0123456789abcdef.sent"),
            (MsgId::Dead { stage: Stage::Worker, subject: "P.inbound.sms", seq: 3 }, "dead.worker.P.inbound.sms.3"),
            (
                MsgId::HistoryCall { call_sid: &call, status: "completed" },
                "call.CA0123456789abcdef0123456789abcdef.completed",
            ),
            (MsgId::HistoryCallTurn { call_sid: &call, turn: 3 }, "turn.CA0123456789abcdef0123456789abcdef.3"),
        ];
        for (id, wire) in cases {
            assert_eq!(id.to_string(), wire);
        }
    }

    #[test]
    fn sent_keys_of_one_outbound_never_collide() {
        let keys =
            [SentKey::Piece { outbound: "reply.SM1", index: 0 }, SentKey::Done("reply.SM1"), SentKey::Status("SM1")]
                .map(|k| k.to_string());
        assert_eq!(keys, ["reply.SM1.0", "reply.SM1.done", "status.SM1"]);
    }
}
