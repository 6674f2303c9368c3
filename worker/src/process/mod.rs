//! One inbound message, start to finish: the decisions of the worker in the
//! order that keeps invariants 1 and 2 (docs/ARCHITECTURE.md §4) together.
//!
//! 1. decode (a bad payload, an unknown channel or sender → dead letter);
//! 2. claim the MessageSid in `P_seen` (a second copy → note `duplicate`;
//!    a redelivery of a message whose reply was already decided → publish
//!    that same reply again, no chat call);
//! 3. record the inbound in history (once, even across redeliveries);
//! 4. STOP/START keywords, opted-out senders, allow/block lists, the
//!    per-sender rate limit, the channel's limits and reply countries
//!    ([`crate::budget`]), then HELP: each recorded as a note, none reaches
//!    the chat pipeline (HELP after the limits: each answer costs a reply);
//! 5. the message's media fetched for backends that read it ([`crate::media`]:
//!    only this message's Twilio media; a transient failure is retried like
//!    the chat call, what cannot be loaded is described and noted), then the
//!    chat call (with `Progress` acks while it runs); a transient
//!    failure is retried through redelivery, the last one or a permanent one
//!    gives the fallback text and a dead letter; with
//!    `delete_media_after_fetch` the fetched media is deleted from Twilio
//!    once the backend answered;
//! 6. the reply is stored in `P_seen` (`replied`, the entry's final state),
//!    then published with `Nats-Msg-Id: reply.<sid>`, then the inbound is
//!    acked.
//!
//! # Layout
//!
//! - this file: the [`Processor`] (the runtime's [`Handler`]), decoding and
//!   what cannot be processed at all, and the outcome types;
//! - `steps`: one message's walk through the decisions above (steps 2 to 4)
//!   and the notes and marks they leave;
//! - `answer`: step 5, the media and the chat call, and what its answer
//!   (or failure) becomes;
//! - `reply`: step 6, storing and publishing the reply.

mod answer;
mod reply;
mod steps;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use smsgate_shared::bus::{self, Failure};
use smsgate_shared::channels::{Live, Registry};
use smsgate_shared::consume::{self, Delivery, Handler, Key, Stranded, key_of};
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, ConversationState, DecodeError, Inbound, Origin};
use smsgate_shared::topology::{Stage, Topology};
use time::OffsetDateTime;
use tracing::{Instrument, info, info_span, warn};

use crate::budget::Budget;
use crate::chat::ChatBackend;
use crate::history::History;
use crate::limiter::Limiter;
use crate::media::Fetcher;
use crate::seen::{Record, Seen, State};
use crate::{Error, Tuning};

use steps::Step;

/// What to do with the inbound message once processing stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Finished (answered, skipped or dead-lettered): ack it.
    Ack,
    /// Try again after this delay: nak it.
    Retry(Duration),
}

/// How a message ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Replied,
    NoReply,
    Duplicate,
    Redelivered,
    OptOutKeyword,
    OptInKeyword,
    OptedOut,
    Blocked,
    /// An operator has the conversation (human takeover): recorded, not answered.
    Paused,
    Help,
    RateLimited,
    /// Refused by the channel's `limits` or `reply_countries`.
    OverLimit,
    Retry,
    Fallback,
    /// The reply was over the size cap: cut, sent and dead-lettered.
    Oversized,
    DeadLetter,
    /// NATS failed mid-way; the message comes back.
    Error,
    /// A call's progress, recorded.
    CallStatus,
    /// A call turn whose reply came after ingress had spoken the fallback.
    CallTurnLate,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replied => "replied",
            Self::NoReply => "no_reply",
            Self::Duplicate => "duplicate",
            Self::Redelivered => "redelivered",
            Self::OptOutKeyword => "opt_out_keyword",
            Self::OptInKeyword => "opt_in_keyword",
            Self::OptedOut => "opted_out",
            Self::Blocked => "blocked",
            Self::Paused => "paused",
            Self::Help => "help",
            Self::RateLimited => "rate_limited",
            Self::OverLimit => "over_limit",
            Self::Retry => "retry",
            Self::Fallback => "fallback",
            Self::Oversized => "oversized",
            Self::DeadLetter => "dead_letter",
            Self::Error => "error",
            Self::CallStatus => "call_status",
            Self::CallTurnLate => "call_turn_late",
        }
    }
}

/// A channel as the worker needs it: its chat backend built once.
pub type Lane = Live<ChatBackend>;

/// Everything processing needs, shared by every handler task.
pub struct Processor {
    pub js: jetstream::Context,
    pub topology: Topology,
    /// The live channels (file and runtime).
    pub channels: Registry<ChatBackend>,
    pub seen: Seen,
    pub optout: kv::Store,
    /// `P_consent`: STOP revokes the consent on record, START records it.
    pub consent: kv::Store,
    /// What the guard reads, for the model's `followup` tool.
    pub guard: smsgate_shared::guard::GuardStore,
    /// `P_schedule`: the model's follow-ups wait here.
    pub schedule: smsgate_shared::schedule::Schedule,
    /// `P_conversations`: conversations an operator has paused the bot for,
    /// read from memory (a pause another process wrote may be a millisecond
    /// late: an operator's click, not a message, is on the other side).
    pub conversations: smsgate_shared::mirror::Mirror,
    /// `P_calls`: each call turn's reply, for ingress to speak.
    pub calls: kv::Store,
    pub history: History,
    pub limiter: Limiter,
    pub budget: Budget,
    /// The day's spend and model cost entries.
    pub spend: crate::cost::Spend,
    /// Fetches (and deletes) inbound media.
    pub media: Fetcher,
    pub tuning: Tuning,
}

/// One delivery of an inbound message, decoded once by the runtime.
pub type Job = Delivery<Result<Inbound, DecodeError>>;

/// A reply larger than this is absurd (an agent or model gone wrong): it is
/// cut to what the channel's `max_parts` can carry and dead-lettered with
/// the reason, never retried (it would not fit a NATS message either).
pub const REPLY_CAP_BYTES: usize = 64 * 1024;

fn sender_key(inbound: &Inbound) -> Key {
    key_of(&[inbound.channel_id.as_str(), &inbound.from])
}

impl Handler for Processor {
    type Item = Result<Inbound, DecodeError>;

    /// Messages of one sender on one channel keep their order.
    fn key(&self, payload: &[u8]) -> Option<Key> {
        envelope::decode::<Inbound>(payload).ok().map(|i| sender_key(&i))
    }

    fn decode(&self, msg: &jetstream::Message) -> Self::Item {
        envelope::decode(&msg.payload)
    }

    fn prepare(&self, msg: &jetstream::Message) -> (Option<Key>, Self::Item) {
        let inbound: Result<Inbound, DecodeError> = envelope::decode(&msg.payload);
        (inbound.as_ref().ok().map(sender_key), inbound)
    }

    async fn handle(&self, job: &Job) -> consume::Disposition {
        let (disposition, outcome) = match self.process(job).await {
            Ok(r) => r,
            Err(e) if job.is_last() => {
                // NATS failed on the last delivery JetStream will make: the
                // fallback reply and a dead letter, if NATS lets us now.
                warn!(
                    error = &e as &dyn std::error::Error,
                    outcome = "fallback",
                    "processing failed on the last delivery"
                );
                match self
                    .last_resort(job, format!("processing failed on the last delivery: {}", error_chain(&e)))
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = &e as &dyn std::error::Error, "the fallback failed too");
                        (Disposition::Retry(self.tuning.error_delay), Outcome::Error)
                    }
                }
            }
            Err(e) => {
                // NATS trouble mid-way: everything done so far is idempotent,
                // so the message simply comes back.
                warn!(error = &e as &dyn std::error::Error, outcome = "error", "processing failed; will retry");
                (Disposition::Retry(self.tuning.error_delay), Outcome::Error)
            }
        };
        metrics::counter!("smsgate_worker_messages_total", "outcome" => outcome.as_str()).increment(1);
        match disposition {
            Disposition::Ack => consume::Disposition::Ack,
            Disposition::Retry(d) => consume::Disposition::Retry(d),
        }
    }

    async fn dead_letter(&self, s: Stranded<'_>) -> Result<(), consume::BoxError> {
        warn!(subject = %s.subject, seq = s.seq, reason = %s.reason, outcome = "dead_letter", "inbound message dead-lettered");
        self.dead(&s, s.reason.clone()).await?;
        // A redelivery that still slips through (say its ack was lost) does nothing more.
        if let Ok(inbound) = envelope::decode::<Inbound>(s.payload) {
            let _ =
                self.seen.store(&inbound.message_sid, &Record { seq: s.seq, state: State::Dead, reply: None }).await;
        }
        Ok(())
    }
}

impl Processor {
    /// Processes one delivery and returns what to do with it. Errors are
    /// infrastructure failures (NATS unreachable): the caller naks and the
    /// message comes back.
    pub async fn process(&self, job: &Job) -> Result<(Disposition, Outcome), Error> {
        let (seq, delivered) = (job.seq, job.delivered);
        let inbound = match &job.item {
            Ok(i) => i,
            Err(e) => return self.dead_letter_only(job, seq, e.to_string()).await,
        };
        let Some(lane) = self.channels.get_fresh(&inbound.channel_id).await else {
            return self.dead_letter_only(job, seq, format!("channel {} is not configured", inbound.channel_id)).await;
        };
        if !lane.channel.enabled {
            return self.dead_letter_only(job, seq, format!("channel {} is disabled", inbound.channel_id)).await;
        }
        let lane = &*lane;
        let Ok(peer) = E164::parse(&inbound.from) else {
            return self.dead_letter_only(job, seq, "From is not an E.164 number".to_owned()).await;
        };
        let span = info_span!(
            "message",
            channel_id = %inbound.channel_id,
            message_sid = %inbound.message_sid,
            peer = %peer.masked(),
            stage = "worker",
            delivered,
        );
        if let Some(result) = crate::call::handle(self, job, inbound, lane, &peer).instrument(span.clone()).await {
            if let Ok((_, outcome)) = &result {
                span.in_scope(|| info!(event = "call.processed", outcome = outcome.as_str(), "call part processed"));
            }
            return result;
        }
        let step = Step { p: self, job, inbound, lane, peer, seq, delivered, last: job.is_last() };
        let started = Instant::now();
        let result = step.run().instrument(span.clone()).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Ok((_, outcome)) = &result {
            span.in_scope(|| {
                info!(event = "message.processed", outcome = outcome.as_str(), latency_ms, "message processed")
            });
        }
        result
    }

    /// The fallback reply and a dead letter for `reason`, without a chat
    /// call (NATS failed on the last delivery).
    async fn last_resort(&self, job: &Job, reason: String) -> Result<(Disposition, Outcome), Error> {
        let Ok(inbound) = &job.item else { return self.dead_letter_only(job, job.seq, reason).await };
        // A call's turn or status gets no SMS: the caller already heard
        // ingress's fallback when the turn was given up.
        if inbound.call.as_ref().is_some_and(|c| !matches!(c, envelope::CallPart::Voicemail { .. })) {
            return self.dead_letter_only(job, job.seq, reason).await;
        }
        let (Some(lane), Ok(peer)) = (self.channels.get(&inbound.channel_id), E164::parse(&inbound.from)) else {
            return self.dead_letter_only(job, job.seq, reason).await;
        };
        let lane = &*lane;
        let step = Step { p: self, job, inbound, lane, peer, seq: job.seq, delivered: job.delivered, last: true };
        let text = lane.channel.fallback_text.clone();
        step.reply(text, Origin::Fallback, Some(reason)).await
    }

    async fn dead_letter_only(&self, job: &Job, seq: u64, reason: String) -> Result<(Disposition, Outcome), Error> {
        warn!(subject = %job.msg.subject, seq, reason = %reason, outcome = "dead_letter", "inbound message cannot be processed");
        self.publish_dead(&job.msg, seq, reason).await?;
        Ok((Disposition::Ack, Outcome::DeadLetter))
    }

    /// When the bot's pause for this conversation ends, if it is paused now.
    pub(crate) async fn paused_until(&self, channel: &ChannelId, peer: &E164) -> Result<Option<OffsetDateTime>, Error> {
        let key = Topology::conversation_key(channel, peer);
        let Some(value) = self.conversations.get(&key).await.map_err(|e| Error::Conversations(Box::new(e)))? else {
            return Ok(None);
        };
        // An unreadable entry pauses nothing: the bot answering beats a
        // conversation silently stuck.
        Ok(ConversationState::paused_until(&value, OffsetDateTime::now_utc()).unwrap_or_else(|e| {
            warn!(error = %e, "unreadable conversation state; answering");
            None
        }))
    }

    /// Dead-letters `msg` (stream sequence `seq`) with `reason`.
    async fn publish_dead(&self, msg: &jetstream::Message, seq: u64, reason: String) -> Result<(), Error> {
        let original = Stranded { seq, ..Stranded::of(msg, String::new()) };
        self.dead(&original, reason).await
    }

    async fn dead(&self, original: &Stranded<'_>, reason: String) -> Result<(), Error> {
        // The channel is the subject's last token (or "unknown").
        let failure = Failure { stage: Stage::Worker, reason, code: None, channel: None };
        bus::dead_letter(&self.js, &self.topology, original, failure)
            .await
            .map_err(|e| Error::Publish { what: "dead letter", source: Box::new(e) })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
