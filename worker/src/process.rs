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
//! 6. the reply is stored in `P_seen`, then published with `Nats-Msg-Id:
//!    reply.<sid>`, then the entry is marked done, then the inbound is acked.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use serde_json::json;
use smsgate_shared::bus::{self, Failure, MsgId, OutboundId};
use smsgate_shared::channels::{Live, Registry};
use smsgate_shared::consume::{self, Delivery, Handler, Key, Stranded, key_of};
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{self, ConversationState, DecodeError, Inbound, NoteReason, Origin, Outbound};
use smsgate_shared::topology::{Stage, Topology};
use time::OffsetDateTime;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::budget::Budget;
use crate::chat::{Answer, ChatBackend, ChatRequest, ErrorKind};
use crate::history::History;
use crate::keywords::{self, Keyword};
use crate::limiter::{Limiter, Verdict};
use crate::media::{self, Attachment, Content, Fetcher};
use crate::seen::{Claim, Record, Seen, State, StoredReply};
use crate::{Error, Tuning};

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
    /// `P_conversations`: conversations an operator has paused the bot for.
    pub conversations: kv::Store,
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

struct Step<'a> {
    p: &'a Processor,
    job: &'a Job,
    inbound: &'a Inbound,
    lane: &'a Lane,
    peer: E164,
    seq: u64,
    delivered: i64,
    /// JetStream will not deliver this message again.
    last: bool,
}

impl Step<'_> {
    fn sid(&self) -> &MessageSid {
        &self.inbound.message_sid
    }

    async fn run(&self) -> Result<(Disposition, Outcome), Error> {
        let p = self.p;
        let is_new = match p.seen.claim(self.sid(), self.seq).await? {
            Claim::Duplicate { first_seq } => {
                self.note(
                    NoteReason::Duplicate,
                    format!("a copy of this MessageSid was received before (stream sequence {first_seq})"),
                )
                .await?;
                return Ok((Disposition::Ack, Outcome::Duplicate));
            }
            Claim::Resume(Record { state: State::Done | State::Dead, .. }) => {
                return Ok((Disposition::Ack, Outcome::Redelivered));
            }
            Claim::Resume(Record { state: State::Replied, reply: Some(reply), .. }) => {
                // Killed after the reply was decided: send that very reply, no second chat call.
                info!(outcome = "resume_reply", "reply already decided; publishing it again");
                return self.finish_reply(reply).await;
            }
            Claim::Resume(_) => false,
            Claim::New => true,
        };

        // STOP-style keywords are for texts: a voicemail saying "stop" opts nobody out.
        let keyword = if self.inbound.call.is_some() { None } else { keywords::classify(&self.inbound.body) };
        let wants_history = keyword.is_none() && self.lane.local.history_turns() > 0;
        // The inbound entry goes in once: on a redelivery it may be there already.
        let recent = if wants_history || !is_new {
            Some(
                p.history
                    .recent(&self.inbound.channel_id, &self.peer, self.sid(), self.lane.local.history_turns())
                    .await?,
            )
        } else {
            None
        };
        if !recent.as_ref().is_some_and(|r| r.has_current) {
            p.history.inbound(self.inbound, &self.peer).await?;
        }
        debug!(body = %self.inbound.body, "inbound message");

        let optout_key = Topology::optout_key(&self.inbound.channel_id, &self.peer);
        match keyword {
            Some(Keyword::OptOut) => {
                let value = json!({"at": OffsetDateTime::now_utc().unix_timestamp(), "message_sid": self.sid()});
                p.optout.put(&optout_key, value.to_string().into()).await.map_err(|e| Error::OptOut(Box::new(e)))?;
                // The opt-out revokes consent too: START does not bring a
                // marketing (written) consent back.
                p.consent
                    .delete(Topology::consent_key(&self.inbound.channel_id, &self.peer))
                    .await
                    .map_err(|e| Error::OptOut(Box::new(e)))?;
                self.note(NoteReason::OptOutKeyword, "opted out by keyword; consent on record revoked").await?;
                return self.done(Outcome::OptOutKeyword).await;
            }
            Some(Keyword::OptIn) => {
                p.optout.delete(&optout_key).await.map_err(|e| Error::OptOut(Box::new(e)))?;
                let record = smsgate_shared::guard::ConsentRecord {
                    v: envelope::VERSION,
                    kind: smsgate_shared::guard::ConsentKind::Express,
                    source: "START keyword".to_owned(),
                    evidence: Some(format!("MessageSid {}", self.sid())),
                    at: OffsetDateTime::now_utc(),
                };
                let value = serde_json::to_vec(&record).unwrap_or_default();
                p.consent
                    .put(Topology::consent_key(&self.inbound.channel_id, &self.peer), value.into())
                    .await
                    .map_err(|e| Error::OptOut(Box::new(e)))?;
                self.note(NoteReason::OptInKeyword, "opted back in by keyword; express consent recorded").await?;
                return self.done(Outcome::OptInKeyword).await;
            }
            Some(Keyword::Help) | None => {}
        }
        if p.optout.get(&optout_key).await.map_err(|e| Error::OptOut(Box::new(e)))?.is_some() {
            self.note(NoteReason::OptedOut, "the sender has opted out").await?;
            return self.done(Outcome::OptedOut).await;
        }
        if !self.lane.channel.admits(&self.peer) {
            self.note(NoteReason::Blocked, "the sender is not allowed on this channel").await?;
            return self.done(Outcome::Blocked).await;
        }
        // Human takeover: while an operator has the conversation the inbound
        // is recorded (above) and not answered; STOP/START (above) and HELP
        // (below) still work.
        if keyword != Some(Keyword::Help)
            && let Some(until) = p.paused_until(&self.inbound.channel_id, &self.peer).await?
        {
            let until = smsgate_shared::envelope::note_time(until);
            self.note(NoteReason::Paused, format!("the bot is paused until {until} (human takeover); not answered"))
                .await?;
            return self.done(Outcome::Paused).await;
        }
        // A redelivery was counted the first time. HELP counts too: it costs a reply.
        let limit = self.lane.channel.rate_limit;
        let verdict = if is_new {
            p.limiter
                .check(&self.inbound.channel_id, &self.peer, limit)
                .await
                .map_err(|e| Error::Budget(Box::new(e)))?
        } else {
            Verdict::Allowed
        };
        if let Verdict::Limited { notify } = verdict {
            let detail = format!("over {} per minute (burst {})", limit.per_minute, limit.burst);
            self.note(NoteReason::RateLimited, detail).await?;
            if notify && self.within_budget(true).await? {
                let text = self.lane.channel.rate_limit_text.clone();
                let (d, _) = self.reply(text, Origin::RateLimitNotice, None).await?;
                return Ok((d, Outcome::RateLimited));
            }
            return self.done(Outcome::RateLimited).await;
        }
        // The country always; the counters once (a redelivery took its unit).
        if !self.within_budget(is_new).await? {
            return self.done(Outcome::OverLimit).await;
        }
        if keyword == Some(Keyword::Help) {
            self.note(NoteReason::HelpKeyword, "answered with the channel's help text").await?;
            let help = self.lane.channel.help_text.clone();
            return self.reply(help, Origin::Help, None).await;
        }
        if p.spend.over_budget(&self.lane.channel).await? {
            warn!(
                event = "message.skipped",
                reason = "budget",
                outcome = "over_limit",
                "the channel spent its limits.usd_per_day; no model call"
            );
            let detail = "the channel has spent its limits.usd_per_day for today (UTC); not given to the model";
            self.note(NoteReason::Budget, detail).await?;
            return self.done(Outcome::OverLimit).await;
        }
        let turns = recent.map(|r| r.turns).unwrap_or_default();
        self.chat(&turns).await
    }

    /// The message's media as the backend gets it: fetched and checked
    /// ([`crate::media`]), scaled for a model, each skip noted. `Err` is the
    /// delay after a transient failure that is worth another delivery.
    async fn attachments(&self) -> Result<Result<Vec<Attachment>, Duration>, Error> {
        let (backend, channel) = (&self.lane.local, &self.lane.channel);
        if !backend.wants_media() || self.inbound.media.is_empty() {
            return Ok(Ok(vec![]));
        }
        let mut attachments = self.p.media.fetch_all(channel, self.inbound).await;
        if let Some(retry_after) = attachments.iter().find_map(Attachment::transient)
            && self.delivered < self.p.tuning.max_attempts()
            && !self.last
        {
            let delay = self.p.tuning.retry_delay(self.delivered, retry_after);
            warn!(
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                outcome = "retry",
                "media could not be fetched; will retry"
            );
            return Ok(Err(delay));
        }
        if backend.scales_pictures() {
            attachments = media::fit_for_model(attachments, channel.media.max_edge).await;
        }
        let skipped: Vec<String> = attachments.iter().filter_map(Attachment::skip_line).collect();
        if !skipped.is_empty() {
            warn!(
                skipped = skipped.len(),
                of = attachments.len(),
                outcome = "media_skipped",
                "media not given to the chat pipeline"
            );
            self.note(NoteReason::MediaSkipped, skipped.join("; ")).await?;
        }
        Ok(Ok(attachments))
    }

    /// `delete_media_after_fetch`: deletes what the backend was given from
    /// Twilio and notes each result. A failed delete does not hold the reply.
    async fn delete_media(&self, attachments: &[Attachment]) -> Result<(), Error> {
        let channel = &self.lane.channel;
        let fetched: Vec<_> = attachments
            .iter()
            .filter_map(|a| match &a.content {
                Content::Loaded { media, .. } => Some(media),
                Content::Skipped(_) => None,
            })
            .collect();
        if !channel.delete_media_after_fetch || fetched.is_empty() {
            return Ok(());
        }
        let results = futures::future::join_all(fetched.iter().map(|m| self.p.media.delete(channel, m))).await;
        let lines: Vec<String> = fetched
            .iter()
            .zip(results)
            .map(|(m, r)| match r {
                Ok(()) => format!("{} deleted from Twilio", m.media_sid),
                Err(e) => {
                    warn!(error = %e, outcome = "media_not_deleted", "cannot delete media from Twilio");
                    format!("{} not deleted: {e}", m.media_sid)
                }
            })
            .collect();
        self.note(NoteReason::MediaDeleted, lines.join("; ")).await
    }

    /// The reply's media if it may be sent; else none, with a note.
    async fn checked_media(&self, media: Vec<String>) -> Result<Vec<String>, Error> {
        match smsgate_shared::media::check_outbound_urls(&media) {
            Ok(()) => Ok(media),
            Err(e) => {
                warn!(error = %e, outcome = "media_refused", "reply media refused; sending the text alone");
                self.note(NoteReason::MediaRefused, format!("the reply's media was not sent: {e}")).await?;
                Ok(vec![])
            }
        }
    }

    async fn chat(&self, turns: &[crate::chat::Turn]) -> Result<(Disposition, Outcome), Error> {
        let backend = &self.lane.local;
        let attachments = match self.attachments().await? {
            Ok(a) => a,
            Err(delay) => return Ok((Disposition::Retry(delay), Outcome::Retry)),
        };
        let started = Instant::now();
        let toolbox = crate::tools::ToolBox::new(self.p, &self.lane.channel, self.inbound, &self.peer, self.seq);
        let request =
            ChatRequest { inbound: self.inbound, history: turns, attachments: &attachments, tools: Some(&toolbox) };
        // The runtime keeps the message alive while the call runs.
        let answer = match &self.lane.channel.chat_ack {
            Some(ack) => {
                let call = backend.reply(&request);
                tokio::pin!(call);
                tokio::select! {
                    answer = &mut call => answer,
                    () = tokio::time::sleep(ack.after) => {
                        self.acknowledge(&ack.text).await?;
                        call.await
                    }
                }
            }
            None => backend.reply(&request).await,
        };
        let elapsed = started.elapsed();
        metrics::histogram!("smsgate_worker_chat_seconds", "kind" => backend.kind()).record(elapsed.as_secs_f64());
        let latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if let Ok(Some(a)) = &answer {
            let (channel, sid) = (&self.lane.channel, self.sid());
            self.p.spend.model_answer(channel, &self.peer, sid, backend.kind(), a.usage).await;
        }
        if answer.is_ok() {
            // The backend has the media now.
            self.delete_media(&attachments).await?;
        }
        match answer {
            Ok(Some(Answer { text, .. })) if text.len() > REPLY_CAP_BYTES => {
                let carry = self.lane.channel.sms_max_len.saturating_mul(self.lane.channel.max_parts);
                let cut: String = text.chars().take(carry).collect();
                let reason = format!(
                    "the chat reply is {} bytes, over the {REPLY_CAP_BYTES}-byte cap; cut to {} characters",
                    text.len(),
                    cut.chars().count()
                );
                warn!(
                    latency_ms,
                    chat = backend.kind(),
                    bytes = text.len(),
                    outcome = "oversized",
                    "chat reply over the size cap; cut"
                );
                self.note(NoteReason::ChatError, reason.clone()).await?;
                let (d, _) = self.reply(cut, Origin::Chat, Some(reason)).await?;
                Ok((d, Outcome::Oversized))
            }
            Ok(Some(Answer { text, media, .. })) => {
                info!(
                    event = "model.answered",
                    latency_ms,
                    chat = backend.kind(),
                    media = media.len(),
                    "chat answered"
                );
                debug!(reply = %text, "chat reply");
                let media = self.checked_media(media).await?;
                if text.is_empty() && media.is_empty() {
                    self.note(NoteReason::NoReply, "the chat pipeline gave no text and no media that can be sent")
                        .await?;
                    return self.done(Outcome::NoReply).await;
                }
                let reply = StoredReply { body: text, media, origin: Origin::Chat, dead_reason: None };
                self.store_and_finish(reply).await
            }
            Ok(None) => {
                info!(latency_ms, chat = backend.kind(), "chat answered with no reply");
                self.note(NoteReason::NoReply, "the chat pipeline gave no reply").await?;
                self.done(Outcome::NoReply).await
            }
            Err(e) => {
                let max_attempts = self.p.tuning.max_attempts();
                match e.kind() {
                    ErrorKind::Transient { retry_after } if self.delivered < max_attempts && !self.last => {
                        let delay = self.p.tuning.retry_delay(self.delivered, retry_after);
                        warn!(
                            latency_ms,
                            error = &e as &dyn std::error::Error,
                            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            outcome = "retry",
                            "chat backend failed; will retry"
                        );
                        Ok((Disposition::Retry(delay), Outcome::Retry))
                    }
                    kind => {
                        let why = match kind {
                            ErrorKind::Permanent => "permanent",
                            _ if self.delivered < max_attempts => "last delivery",
                            _ => "retries exhausted",
                        };
                        let reason =
                            format!("chat backend failed ({why}, attempt {}): {}", self.delivered, error_chain(&e));
                        warn!(
                            event = "model.failed",
                            latency_ms,
                            error = &e as &dyn std::error::Error,
                            outcome = "fallback",
                            "chat backend failed; sending the fallback text"
                        );
                        self.note(NoteReason::ChatError, reason.clone()).await?;
                        let text = self.lane.channel.fallback_text.clone();
                        self.reply(text, Origin::Fallback, Some(reason)).await
                    }
                }
            }
        }
    }

    /// The "on it" text (`chat.ack_after_ms`): published before the reply,
    /// so the sender (one person's messages in order) sends it first. Its
    /// id, `ack.<sid>`, keeps it to one per inbound across redeliveries.
    async fn acknowledge(&self, text: &str) -> Result<(), Error> {
        let id = OutboundId::ack_of(self.sid());
        self.publish_direct(id, text.to_owned(), vec![], Origin::Ack, "acknowledgement").await?;
        info!(outcome = "acknowledged", "the chat is slow; the acknowledgement went first");
        metrics::counter!("smsgate_worker_acks_total", "channel_id" => self.inbound.channel_id.to_string())
            .increment(1);
        Ok(())
    }

    /// Publishes a direct reply to this inbound (`in_reply_to` set, no
    /// guard) to `P.outbound.<channel>` with `id` as `Nats-Msg-Id`.
    async fn publish_direct(
        &self,
        id: OutboundId,
        body: String,
        media_urls: Vec<String>,
        origin: Origin,
        what: &'static str,
    ) -> Result<(), Error> {
        let p = self.p;
        let outbound = Outbound {
            v: envelope::VERSION,
            id,
            channel_id: self.inbound.channel_id.clone(),
            to: self.peer.clone(),
            body,
            media_urls,
            in_reply_to: Some(self.sid().clone()),
            origin,
            created_at: OffsetDateTime::now_utc(),
            call: None,
            guard: None,
        };
        let subject = p.topology.outbound_subject(&self.inbound.channel_id);
        bus::publish(&p.js, subject, MsgId::Outbound(&outbound.id), envelope::encode(&outbound))
            .await
            .map_err(|e| Error::Publish { what, source: Box::new(e) })?;
        Ok(())
    }

    /// The channel's `reply_countries` and, when `count`, its `limits`
    /// ([`crate::budget`]); a refusal is recorded as a note and logged.
    async fn within_budget(&self, count: bool) -> Result<bool, Error> {
        let Some(refusal) = self.p.budget.check(&self.lane.channel, &self.peer, count).await? else {
            return Ok(true);
        };
        warn!(limit = refusal.limit, detail = %refusal.detail, outcome = "over_limit", "reply refused by the channel's limits");
        self.note(refusal.reason, refusal.detail).await?;
        Ok(false)
    }

    async fn note(&self, reason: NoteReason, detail: impl Into<String>) -> Result<(), Error> {
        self.p.history.note(&self.inbound.channel_id, &self.peer, self.sid(), self.seq, reason, detail).await
    }

    async fn done(&self, outcome: Outcome) -> Result<(Disposition, Outcome), Error> {
        self.p.seen.store(self.sid(), &Record { seq: self.seq, state: State::Done, reply: None }).await?;
        Ok((Disposition::Ack, outcome))
    }

    /// Stores the reply before publishing it: from here on a redelivery
    /// republishes this text instead of deciding again.
    async fn reply(
        &self,
        body: String,
        origin: Origin,
        dead_reason: Option<String>,
    ) -> Result<(Disposition, Outcome), Error> {
        self.store_and_finish(StoredReply { body, media: vec![], origin, dead_reason }).await
    }

    async fn store_and_finish(&self, reply: StoredReply) -> Result<(Disposition, Outcome), Error> {
        let record = Record { seq: self.seq, state: State::Replied, reply: Some(reply.clone()) };
        self.p.seen.store(self.sid(), &record).await?;
        self.finish_reply(reply).await
    }

    async fn finish_reply(&self, reply: StoredReply) -> Result<(Disposition, Outcome), Error> {
        let p = self.p;
        self.publish_direct(OutboundId::reply_to(self.sid()), reply.body, reply.media, reply.origin, "reply").await?;
        if let Some(pause) = p.tuning.pause_after_publish {
            // Test hook (crash tests): the reply is out, nothing is marked or acked yet.
            info!(outcome = "paused", "reply published; pausing before marking it done");
            tokio::time::sleep(pause).await;
        }
        let (state, outcome) = match reply.dead_reason {
            Some(reason) => {
                p.publish_dead(&self.job.msg, self.seq, reason).await?;
                (State::Dead, Outcome::Fallback)
            }
            None if reply.origin == Origin::Help => (State::Done, Outcome::Help),
            None if reply.origin == Origin::RateLimitNotice => (State::Done, Outcome::RateLimited),
            None => (State::Done, Outcome::Replied),
        };
        p.seen.store(self.sid(), &Record { seq: self.seq, state, reply: None }).await?;
        Ok((Disposition::Ack, outcome))
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
