//! The JSON payloads on the bus. Every one carries `"v": 1`; a payload of an
//! unknown version is refused by [`decode`] with an error that the consumer
//! dead-letters, never a panic.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

use crate::bus::OutboundId;
use crate::domain::{CallSid, ChannelId, E164, MessageSid};

/// The payload version this build writes and reads.
pub const VERSION: u32 = 1;

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not JSON or lacks fields: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("payload version {0} is not supported (this build reads version {VERSION})")]
    UnknownVersion(u64),
}

/// Reads a payload, checking its version first.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    #[derive(Deserialize)]
    struct Versioned {
        v: Option<u64>,
    }
    let head: Versioned = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
    match head.v {
        Some(v) if v == u64::from(VERSION) => serde_json::from_slice(bytes).map_err(DecodeError::Malformed),
        Some(v) => Err(DecodeError::UnknownVersion(v)),
        None => Err(DecodeError::UnknownVersion(0)),
    }
}

/// Writes a payload. Serialising these plain structs cannot fail.
pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    encode_within(value, 0)
}

/// [`encode`] into a buffer of `capacity` bytes from the start, for a
/// payload whose size is known roughly (a webhook's envelope, about twice
/// its form), instead of growing from nothing by doubling.
pub fn encode_within<T: Serialize>(value: &T, capacity: usize) -> bytes::Bytes {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, value).unwrap_or_else(|e| unreachable!("payloads always serialise: {e}"));
    bytes::Bytes::from(out)
}

fn v1() -> u32 {
    VERSION
}

/// One media attachment of an inbound MMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    pub url: String,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// An inbound webhook as ingress received it (`P.inbound.<channel_id>`,
/// `Nats-Msg-Id` = MessageSid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    #[serde(default = "v1")]
    pub v: u32,
    pub channel_id: ChannelId,
    pub message_sid: MessageSid,
    pub account_sid: String,
    /// As Twilio sent it; the worker parses it as E.164.
    pub from: String,
    pub to: String,
    pub body: String,
    #[serde(default)]
    pub media: Vec<Media>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// Every parameter Twilio posted, in order, known or not.
    #[serde(default)]
    pub params: Vec<(String, String)>,
    /// Set when this comes from a voice call, not a text (docs/ARCHITECTURE.md §8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallPart>,
}

/// What part of a call an [`Inbound`] carries. Its `message_sid` is made
/// by [`CallPart::message_sid`], which is also its `Nats-Msg-Id` and its
/// `P_seen` key: one stored copy per turn, voicemail and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallPart {
    /// The caller's words (`body`) of turn `turn`: the reply is spoken,
    /// through `P_calls`, not sent by SMS.
    Turn { call_sid: CallSid, turn: u32 },
    /// The caller's words (`body`) of a ConversationRelay turn: the reply is
    /// streamed as tokens on `P.voice.tokens.<CallSid>.<turn>` and written
    /// to `P_calls` when whole. Same id as a Gather turn (`<CallSid>-t<n>`;
    /// relay turns stop at `voice::MAX_RELAY_TURNS`).
    RelayTurn { call_sid: CallSid, turn: u32 },
    /// A voicemail's transcription (`body`): answered by SMS like a text.
    Voicemail { call_sid: CallSid },
    /// A call's progress: a status callback, an incoming call answered, a
    /// forwarded call's end. Recorded in history, never answered.
    Status {
        call_sid: CallSid,
        status: String,
        /// Twilio's `Direction` (`inbound`, `outbound-api`, …).
        direction: String,
        #[serde(default)]
        duration_secs: Option<u64>,
        #[serde(default)]
        detail: Option<String>,
    },
}

impl CallPart {
    pub fn call_sid(&self) -> &CallSid {
        match self {
            Self::Turn { call_sid, .. }
            | Self::RelayTurn { call_sid, .. }
            | Self::Voicemail { call_sid }
            | Self::Status { call_sid, .. } => call_sid,
        }
    }

    /// The inbound's id: `<CallSid>-t<turn>`, `<CallSid>-vm` or
    /// `<CallSid>-<status>` (a status seen twice is stored once).
    pub fn message_sid(&self) -> MessageSid {
        let id = match self {
            Self::Turn { call_sid, turn } | Self::RelayTurn { call_sid, turn } => format!("{call_sid}-t{turn}"),
            Self::Voicemail { call_sid } => format!("{call_sid}-vm"),
            Self::Status { call_sid, status, .. } => format!("{call_sid}-{status}"),
        };
        MessageSid::parse(&id).unwrap_or_else(|e| unreachable!("a CallSid and a status token make a MessageSid: {e}"))
    }
}

/// The call status ingress records when a ConversationRelay socket opens
/// (event `call.stream.started`).
pub const STREAM_STARTED: &str = "stream-started";
/// … and when it closes (event `call.stream.ended`).
pub const STREAM_ENDED: &str = "stream-ended";

/// Twilio's call statuses that end a call.
pub fn call_ended(status: &str) -> bool {
    matches!(status, "completed" | "busy" | "no-answer" | "failed" | "canceled")
}

/// The reply of one call turn in `P_calls` (`Topology::call_key`), written
/// once (`create`): by the worker with the reply, or by ingress with the
/// fallback when the reply did not come in time; whichever is first is
/// what the caller hears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallReply {
    #[serde(default = "v1")]
    pub v: u32,
    /// What to say (already made speakable).
    pub say: String,
    /// Hang up after saying it (the caller said goodbye, or the model failed).
    #[serde(default)]
    pub end: bool,
    pub origin: Origin,
    /// `worker` or `ingress` (the turn timed out).
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl CallReply {
    /// A reply decided now by `by` (`worker` or `ingress`).
    pub fn new(by: &str, say: String, origin: Origin, end: bool) -> Self {
        Self { v: VERSION, say, end, origin, by: by.to_owned(), at: OffsetDateTime::now_utc() }
    }
}

/// The same payload as [`Inbound`], written from borrowed parts: ingress
/// serialises it straight from the request body without copying every
/// parameter into an owned `String` first. Readers decode it as [`Inbound`].
#[derive(Debug, Serialize)]
pub struct InboundRef<'a> {
    pub v: u32,
    pub channel_id: &'a ChannelId,
    pub message_sid: &'a MessageSid,
    pub account_sid: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub body: &'a str,
    pub media: Vec<Media>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub params: &'a [(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)],
}

/// Where an outbound message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The chat pipeline's answer.
    Chat,
    /// The channel's help text (HELP/INFO).
    Help,
    /// The one notice per window to a rate-limited sender.
    RateLimitNotice,
    /// The fallback text after the chat backend failed.
    Fallback,
    /// Sent through the admin API.
    Api,
    /// Said by ingress because a call turn's reply did not come in time.
    Timeout,
    /// The channel's "on it" text, sent when the chat was slow
    /// (`chat.ack_after_ms`), before the reply.
    Ack,
    /// Started by the agent, not a direct reply: the model's `followup`
    /// tool, an MCP tool. It went through the guard.
    Agent,
}

/// A message to send (`P.outbound.<channel_id>`, `Nats-Msg-Id` = `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    #[serde(default = "v1")]
    pub v: u32,
    /// `reply.<inbound MessageSid>` or `api.<key>` ([`OutboundId`]).
    pub id: OutboundId,
    pub channel_id: ChannelId,
    pub to: E164,
    pub body: String,
    #[serde(default)]
    pub media_urls: Vec<String>,
    #[serde(default)]
    pub in_reply_to: Option<MessageSid>,
    pub origin: Origin,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Set for an outbound call instead of an SMS: `body` is what to say
    /// unless the call carries its own TwiML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<OutboundCall>,
    /// Set for a text or call that is not a direct reply: the sender runs
    /// the guard again before it goes out (`crate::guard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guarded>,
}

/// How a guarded message was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarded {
    pub purpose: crate::guard::Purpose,
    pub initiator: crate::guard::Initiator,
}

/// What an outbound call plays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundCall {
    /// The operator's own TwiML, sent as Twilio's `Twiml` parameter.
    #[serde(default)]
    pub twiml: Option<String>,
}

/// A Twilio status callback (`P.status.<channel_id>`, `Nats-Msg-Id` =
/// `<MessageSid>.<MessageStatus>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    #[serde(default = "v1")]
    pub v: u32,
    pub channel_id: ChannelId,
    pub message_sid: MessageSid,
    pub status: String,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(default)]
    pub params: Vec<(String, String)>,
}

/// Twilio's `MessageStatus` (docs/TWILIO.md §3): the one place its
/// vocabulary is known. On the wire it stays a string (a status Twilio adds
/// later is kept as sent); here an unknown one is [`MessageStatus::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    Accepted,
    Scheduled,
    Queued,
    Sending,
    Sent,
    Failed,
    Delivered,
    Undelivered,
    Receiving,
    Received,
    Read,
    PartiallyDelivered,
    Canceled,
    Other,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 14] = [
        Self::Accepted,
        Self::Scheduled,
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Failed,
        Self::Delivered,
        Self::Undelivered,
        Self::Receiving,
        Self::Received,
        Self::Read,
        Self::PartiallyDelivered,
        Self::Canceled,
        Self::Other,
    ];

    pub fn parse(s: &str) -> Self {
        Self::ALL.into_iter().find(|k| k.as_str() == s).unwrap_or(Self::Other)
    }

    /// Twilio's name (`other` for [`MessageStatus::Other`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Receiving => "receiving",
            Self::Received => "received",
            Self::Read => "read",
            Self::PartiallyDelivered => "partially_delivered",
            Self::Canceled => "canceled",
            Self::Other => "other",
        }
    }

    /// How far a message has got; a status never moves a piece backwards,
    /// since Twilio's callbacks can arrive out of order.
    pub fn rank(self) -> u8 {
        match self {
            Self::Accepted | Self::Scheduled => 1,
            Self::Queued => 2,
            Self::Sending => 3,
            Self::Sent => 4,
            Self::Failed | Self::Undelivered | Self::Canceled => 5,
            Self::Delivered | Self::PartiallyDelivered => 6,
            Self::Read => 7,
            Self::Receiving | Self::Received | Self::Other => 0,
        }
    }

    /// Twilio could not deliver it (or it was canceled): final, not good.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Undelivered | Self::Canceled)
    }
}

/// Why a message got no answer from the chat pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteReason {
    Duplicate,
    RateLimited,
    /// Over the channel's `limits` (replies per minute or per day).
    OverLimit,
    /// The number's country is not in the channel's `reply_countries`.
    CountryNotAllowed,
    OptedOut,
    OptOutKeyword,
    OptInKeyword,
    HelpKeyword,
    Blocked,
    ChatError,
    NoReply,
    SendFailed,
    Delivered,
    Logged,
    /// An operator paused the bot for this conversation (human takeover).
    Paused,
    /// The operator handed the conversation back to the bot.
    Resumed,
    /// Media not given to the chat pipeline (a URL that is not this
    /// message's Twilio media, too large, a type not allowed, unreachable);
    /// the detail says which and why.
    MediaSkipped,
    /// Inbound media deleted from Twilio after the chat pipeline had it
    /// (`delete_media_after_fetch`).
    MediaDeleted,
    /// The media of a reply (an agent's `"media"`) refused; the text went alone.
    MediaRefused,
    /// A text or call scheduled for later (`send_at`, or deferred by the
    /// guard to the recipient's allowed hours); the detail says when and why.
    Scheduled,
    /// A scheduled text or call canceled before it went out.
    Canceled,
    /// The guard refused a text or call (opted out, no consent, paused,
    /// the recipient's cap…); the detail starts with the code.
    Refused,
    /// Consent recorded or revoked (API, START, STOP).
    Consent,
    /// The conversation handed to a person (the model's `handoff` tool, an
    /// agent's `handoff_to_human`, or an operator's pause with a reason):
    /// paused, the detail says why.
    Handoff,
    /// The channel spent its `limits.usd_per_day`: no model call today.
    Budget,
}

impl NoteReason {
    /// The name on the wire (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::RateLimited => "rate_limited",
            Self::OverLimit => "over_limit",
            Self::CountryNotAllowed => "country_not_allowed",
            Self::OptedOut => "opted_out",
            Self::OptOutKeyword => "opt_out_keyword",
            Self::OptInKeyword => "opt_in_keyword",
            Self::HelpKeyword => "help_keyword",
            Self::Blocked => "blocked",
            Self::ChatError => "chat_error",
            Self::NoReply => "no_reply",
            Self::SendFailed => "send_failed",
            Self::Delivered => "delivered",
            Self::Logged => "logged",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::MediaSkipped => "media_skipped",
            Self::MediaDeleted => "media_deleted",
            Self::MediaRefused => "media_refused",
            Self::Scheduled => "scheduled",
            Self::Canceled => "canceled",
            Self::Refused => "refused",
            Self::Consent => "consent",
            Self::Handoff => "handoff",
            Self::Budget => "budget",
        }
    }

    pub const ALL: [NoteReason; 19] = [
        Self::Duplicate,
        Self::RateLimited,
        Self::OverLimit,
        Self::CountryNotAllowed,
        Self::OptedOut,
        Self::OptOutKeyword,
        Self::OptInKeyword,
        Self::HelpKeyword,
        Self::Blocked,
        Self::ChatError,
        Self::NoReply,
        Self::SendFailed,
        Self::Delivered,
        Self::Logged,
        Self::Paused,
        Self::Resumed,
        Self::MediaSkipped,
        Self::MediaDeleted,
        Self::MediaRefused,
    ];
}

/// One piece of an outbound message as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub index: usize,
    pub body: String,
    pub segments: u32,
    pub encoding: String,
    /// Twilio's SID (`SM…`), or None for `delivery: "log"`.
    #[serde(default)]
    pub sid: Option<String>,
}

/// What happened, as kept in a conversation's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryEvent {
    Inbound {
        message_sid: MessageSid,
        body: String,
        #[serde(default)]
        media: Vec<Media>,
    },
    Outbound {
        id: String,
        body: String,
        #[serde(default)]
        in_reply_to: Option<MessageSid>,
        origin: Origin,
        pieces: Vec<Piece>,
        /// `twilio` or `log`.
        delivery: String,
        /// The media URLs sent with the first piece (an MMS).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        media: Vec<String>,
    },
    Status {
        /// Twilio's SID of the piece.
        sid: String,
        status: String,
        #[serde(default)]
        error_code: Option<String>,
    },
    Note {
        reason: NoteReason,
        #[serde(default)]
        message_sid: Option<MessageSid>,
        #[serde(default)]
        outbound_id: Option<String>,
        detail: String,
    },
    /// A call's progress (event `call.started`, or `call.ended` when
    /// [`call_ended`]): a status callback, an incoming call answered or
    /// forwarded, an outbound call created.
    Call {
        call_sid: String,
        status: String,
        direction: String,
        #[serde(default)]
        duration_secs: Option<u64>,
        #[serde(default)]
        detail: Option<String>,
    },
    /// One turn of a call (event `call.turn`): what the caller said and
    /// what was said back (`origin` `chat`, `fallback` or `timeout`).
    /// `interrupted`: the caller barged in (relay mode) and `said` is what
    /// they heard of the answer.
    CallTurn {
        call_sid: String,
        turn: u32,
        heard: String,
        said: String,
        origin: Origin,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        interrupted: bool,
    },
    /// A cost figure (event `cost.recorded`; `crate::cost`): an SMS piece's
    /// estimate at send and Twilio's price later under the same `reference`
    /// (the piece's SID), a call's price, a model answer's tokens. Readers
    /// older than this entry skip it, as they skip any entry they cannot read.
    Cost {
        item: crate::cost::Item,
        /// The piece's or call's Twilio SID, or the inbound MessageSid a
        /// model answer was for.
        reference: String,
        /// Segments, seconds or tokens.
        units: u64,
        /// None: not known (a model server that gives no `usage`).
        usd: Option<f64>,
        basis: crate::cost::Basis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

/// A conversation's state in the `P_conversations` bucket
/// (`Topology::conversation_key`): the bot paused by an operator (human
/// takeover). No entry, or one whose pause has ended, means the bot answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationState {
    #[serde(default = "v1")]
    pub v: u32,
    /// The bot does not answer before this time.
    #[serde(with = "time::serde::rfc3339")]
    pub paused_until: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub paused_at: OffsetDateTime,
}

impl ConversationState {
    /// A pause of `minutes` from `now`.
    pub fn pause(now: OffsetDateTime, minutes: f64) -> Self {
        let until = now + time::Duration::seconds_f64(minutes * 60.0);
        Self { v: VERSION, paused_until: until, paused_at: now }
    }

    pub fn paused(&self, now: OffsetDateTime) -> bool {
        now < self.paused_until
    }

    /// When the pause stored as `value` ends, if it has not ended by `now`
    /// (what the worker and the admin API both ask of an entry).
    pub fn paused_until(value: &[u8], now: OffsetDateTime) -> Result<Option<OffsetDateTime>, serde_json::Error> {
        let state: Self = serde_json::from_slice(value)?;
        Ok(state.paused(now).then_some(state.paused_until))
    }
}

/// A time as a note's text gives it (`2026-12-06 23:58 UTC`): to the minute,
/// the way the conversation views show times, with its zone said, since
/// the viewer's own may differ.
pub fn note_time(t: OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_default()
}

/// An entry of `P.history.<channel_id>.<e164>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(default = "v1")]
    pub v: u32,
    pub channel_id: ChannelId,
    pub peer: E164,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub event: HistoryEvent,
}

impl HistoryEntry {
    pub fn now(channel_id: ChannelId, peer: E164, event: HistoryEvent) -> Self {
        Self { v: VERSION, channel_id, peer, at: OffsetDateTime::now_utc(), event }
    }
}

/// What could not be processed (`P.dead.<stage>.<channel_id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    #[serde(default = "v1")]
    pub v: u32,
    pub stage: String,
    pub channel_id: String,
    pub reason: String,
    /// Twilio's error code, when Twilio refused.
    #[serde(default)]
    pub code: Option<i64>,
    /// Where the original was published, to replay it there.
    pub subject: String,
    /// The original `Nats-Msg-Id`, if any.
    #[serde(default)]
    pub msg_id: Option<String>,
    /// The original payload (UTF-8, lossy for anything that was not).
    pub payload: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_are_refused_not_panicked_on() {
        assert!(matches!(decode::<Inbound>(br#"{"v": 2}"#), Err(DecodeError::UnknownVersion(2))));
        assert!(matches!(decode::<Inbound>(br#"{}"#), Err(DecodeError::UnknownVersion(0))));
        assert!(matches!(decode::<Inbound>(b"\xff"), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn history_entries_round_trip_with_a_kind_tag() {
        let e = HistoryEntry::now(
            ChannelId::parse("c").unwrap(),
            E164::parse("+14155550100").unwrap(),
            HistoryEvent::Note {
                reason: NoteReason::RateLimited,
                message_sid: Some(MessageSid::parse("SM1").unwrap()),
                outbound_id: None,
                detail: "over 10/min".to_owned(),
            },
        );
        let bytes = encode(&e);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""kind":"note""#), "{text}");
        assert!(text.contains(r#""reason":"rate_limited""#), "{text}");
        assert_eq!(decode::<HistoryEntry>(&bytes).unwrap(), e);
    }

    #[test]
    fn a_borrowed_inbound_decodes_as_an_inbound() {
        use std::borrow::Cow;
        let params = vec![(Cow::Borrowed("Body"), Cow::Owned("hi there".to_owned()))];
        let channel = ChannelId::parse("c").unwrap();
        let sid = MessageSid::parse("SM1").unwrap();
        let at = OffsetDateTime::now_utc();
        let borrowed = InboundRef {
            v: VERSION,
            channel_id: &channel,
            message_sid: &sid,
            account_sid: "AC1",
            from: "+14155550100",
            to: "+15550001111",
            body: "hi there",
            media: vec![Media { url: "https://m/0".to_owned(), content_type: Some("image/png".to_owned()) }],
            received_at: at,
            params: &params,
        };
        let inbound: Inbound = decode(&encode(&borrowed)).unwrap();
        let expected = Inbound {
            v: VERSION,
            channel_id: channel.clone(),
            message_sid: sid.clone(),
            account_sid: "AC1".to_owned(),
            from: "+14155550100".to_owned(),
            to: "+15550001111".to_owned(),
            body: "hi there".to_owned(),
            media: borrowed.media.clone(),
            received_at: inbound.received_at,
            params: vec![("Body".to_owned(), "hi there".to_owned())],
            call: None,
        };
        assert_eq!(inbound, expected);
        assert_eq!(inbound.received_at.unix_timestamp(), at.unix_timestamp());
    }

    #[test]
    fn later_statuses_outrank_earlier_ones() {
        let rank = |s: &str| MessageStatus::parse(s).rank();
        assert!(rank("delivered") > rank("sent"));
        assert!(rank("sent") > rank("queued"));
        assert!(rank("undelivered") > rank("sent"));
        assert_eq!(rank("something_new"), 0);
    }

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_other() {
        for status in MessageStatus::ALL {
            assert_eq!(MessageStatus::parse(status.as_str()), status);
        }
        assert_eq!(MessageStatus::parse("Delivered"), MessageStatus::Other);
        let failures: Vec<_> = MessageStatus::ALL.into_iter().filter(|s| s.is_failure()).map(|s| s.as_str()).collect();
        assert_eq!(failures, ["failed", "undelivered", "canceled"]);
    }

    #[test]
    fn call_parts_make_distinct_message_sids() {
        let call_sid = CallSid::parse("CA0123456789abcdef0123456789abcdef").unwrap();
        let turn = CallPart::Turn { call_sid: call_sid.clone(), turn: 2 };
        assert_eq!(turn.message_sid().as_str(), "CA0123456789abcdef0123456789abcdef-t2");
        let vm = CallPart::Voicemail { call_sid: call_sid.clone() };
        assert_eq!(vm.message_sid().as_str(), "CA0123456789abcdef0123456789abcdef-vm");
        let status = CallPart::Status {
            call_sid,
            status: "no-answer".to_owned(),
            direction: "outbound-api".to_owned(),
            duration_secs: None,
            detail: None,
        };
        assert_eq!(status.message_sid().as_str(), "CA0123456789abcdef0123456789abcdef-no-answer");
        let json = serde_json::to_string(&turn).unwrap();
        assert_eq!(json, r#"{"kind":"turn","call_sid":"CA0123456789abcdef0123456789abcdef","turn":2}"#);
    }

    #[test]
    fn note_reason_names_match_serde() {
        for reason in NoteReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str(), "{reason:?}");
        }
    }
}
