//! The parts of a voice call the worker handles (docs/ARCHITECTURE.md §8).
//!
//! - A **turn** (the caller's words): claimed in `P_seen` like a text, run
//!   through the same chat pipeline with the conversation's history (texts
//!   and calls together), made speakable, and written once to `P_calls`
//!   with `create`. If the key is there already (ingress gave up on the turn
//!   and spoke the fallback, or an earlier delivery wrote it), what is there
//!   is what the caller heard, and that is what history records: one
//!   `CallTurn` entry per turn, whatever the redeliveries. A chat failure is
//!   answered with the channel's fallback text, which ingress speaks and
//!   follows with a voicemail (answered by SMS).
//! - A **status** (call answered, forwarded, ringing, completed, …): one
//!   `Call` history entry.
//! - A **voicemail** goes through [`crate::process`] as a text (STOP-style
//!   keywords aside): its reply is an SMS.
//!
//! STOP does not apply to calls; the block list does, and so does a
//! human takeover (the caller is offered voicemail for the operator).

use async_nats::jetstream::kv;
use smsgate_shared::bus::MsgId;
use smsgate_shared::domain::{CallSid, E164};
use smsgate_shared::envelope::{self, CallPart, CallReply, HistoryEvent, Inbound, NoteReason, Origin};
use smsgate_shared::topology::Topology;
use smsgate_shared::twiml::speakable;
use tracing::{debug, info, warn};

use crate::Error;
use crate::chat::ChatRequest;
use crate::process::{Disposition, Job, Lane, Outcome, Processor};
use crate::seen::{Claim, Record, State};

/// Handles a call's part; `None` for a voicemail, which is a text to the
/// rest of the worker.
pub async fn handle(
    p: &Processor,
    job: &Job,
    inbound: &Inbound,
    lane: &Lane,
    peer: &E164,
) -> Option<Result<(Disposition, Outcome), Error>> {
    match inbound.call.as_ref()? {
        CallPart::Voicemail { .. } => None,
        CallPart::Status { call_sid, status, direction, duration_secs, detail } => {
            let event = HistoryEvent::Call {
                call_sid: call_sid.to_string(),
                status: status.clone(),
                direction: direction.clone(),
                duration_secs: *duration_secs,
                detail: detail.clone(),
            };
            let id = MsgId::HistoryCall { call_sid, status };
            Some(
                p.history
                    .append(&inbound.channel_id, peer, id, event)
                    .await
                    .map(|()| (Disposition::Ack, Outcome::CallStatus)),
            )
        }
        CallPart::Turn { call_sid, turn } => {
            Some(Turn { p, job, inbound, lane, peer, call_sid, n: *turn, relay: false }.run().await)
        }
        // ConversationRelay: the answer streamed ([`crate::stream`]).
        CallPart::RelayTurn { call_sid, turn } => {
            Some(Turn { p, job, inbound, lane, peer, call_sid, n: *turn, relay: true }.run().await)
        }
    }
}

pub(crate) struct Turn<'a> {
    pub(crate) p: &'a Processor,
    pub(crate) job: &'a Job,
    pub(crate) inbound: &'a Inbound,
    pub(crate) lane: &'a Lane,
    pub(crate) peer: &'a E164,
    pub(crate) call_sid: &'a CallSid,
    pub(crate) n: u32,
    /// A ConversationRelay turn: streamed, not written whole for polling.
    pub(crate) relay: bool,
}

impl Turn<'_> {
    async fn run(&self) -> Result<(Disposition, Outcome), Error> {
        let p = self.p;
        let sid = &self.inbound.message_sid;
        match p.seen.claim(sid, self.job.seq).await? {
            Claim::Duplicate { .. } | Claim::Resume(Record { state: State::Done | State::Dead, .. }) => {
                return Ok((Disposition::Ack, Outcome::Redelivered));
            }
            Claim::Resume(_) | Claim::New => {}
        }
        let key = Topology::call_key(self.call_sid, self.n);
        // A redelivery whose reply is decided already: record it, no chat call.
        let (reply, interrupted) = match self.read(&key).await? {
            Some(reply) => (reply, false),
            None if self.relay => self.stream(&key).await?,
            None => {
                let decided = self.decide().await?;
                (self.write(&key, decided).await?, false)
            }
        };
        let event = HistoryEvent::CallTurn {
            call_sid: self.call_sid.to_string(),
            turn: self.n,
            heard: self.inbound.body.clone(),
            said: reply.say.clone(),
            origin: reply.origin,
            interrupted,
        };
        self.p
            .history
            .append(
                &self.inbound.channel_id,
                self.peer,
                MsgId::HistoryCallTurn { call_sid: self.call_sid, turn: self.n },
                event,
            )
            .await?;
        p.seen.store(sid, &Record { seq: self.job.seq, state: State::Done, reply: None }).await?;
        let outcome = match reply.origin {
            Origin::Chat => Outcome::Replied,
            Origin::Timeout => Outcome::CallTurnLate,
            _ => Outcome::Fallback,
        };
        Ok((Disposition::Ack, outcome))
    }

    /// What to say: the chat pipeline's answer, or the fallback.
    async fn decide(&self) -> Result<CallReply, Error> {
        let channel = &self.lane.channel;
        let reply = |say: String, origin: Origin, end: bool| CallReply::new("worker", say, origin, end);
        if !channel.admits(self.peer) {
            self.note(NoteReason::Blocked, "the caller is not allowed on this channel").await?;
            return Ok(reply(smsgate_shared::voice::GOODBYE.to_owned(), Origin::Chat, true));
        }
        // Human takeover: the operator has the conversation, so the agent does
        // not answer; the caller may leave a message for the operator.
        if self.p.paused_until(&self.inbound.channel_id, self.peer).await?.is_some() {
            self.note(NoteReason::Paused, "the bot is paused (human takeover); the caller was offered voicemail")
                .await?;
            return Ok(reply(smsgate_shared::voice::OPERATOR_WILL_ANSWER.to_owned(), Origin::Fallback, true));
        }
        let backend = &self.lane.local;
        let recent = self
            .p
            .history
            .recent(&self.inbound.channel_id, self.peer, &self.inbound.message_sid, backend.history_turns())
            .await?;
        // A call carries no pictures; the media a model may answer with are not spoken.
        let request = ChatRequest { inbound: self.inbound, history: &recent.turns, attachments: &[], tools: None };
        let started = std::time::Instant::now();
        // No retry through redelivery: the caller is on the line, and
        // ingress gives the turn up within seconds.
        let answer = backend.reply(&request).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        metrics::histogram!("smsgate_worker_chat_seconds", "kind" => backend.kind())
            .record(started.elapsed().as_secs_f64());
        match answer {
            Ok(Some(answer)) if !speakable(&answer.text).is_empty() => {
                info!(latency_ms, chat = backend.kind(), turn = self.n, "chat answered the call turn");
                debug!(reply = %answer.text, "call turn reply");
                Ok(reply(speakable(&answer.text), Origin::Chat, false))
            }
            Ok(_) => {
                self.note(NoteReason::NoReply, "the chat pipeline gave no reply to a call turn").await?;
                Ok(reply(smsgate_shared::voice::GOODBYE.to_owned(), Origin::Chat, true))
            }
            Err(e) => {
                self.chat_failed(&e, latency_ms).await?;
                Ok(reply(channel.fallback_text.clone(), Origin::Fallback, true))
            }
        }
    }

    pub(crate) async fn read(&self, key: &str) -> Result<Option<CallReply>, Error> {
        let bytes = self.p.calls.get(key).await.map_err(|e| Error::Calls(Box::new(e)))?;
        Ok(bytes.and_then(|b| envelope::decode::<CallReply>(&b).ok()))
    }

    /// Writes the reply unless something is there already; returns what is
    /// there (what the caller hears).
    pub(crate) async fn write(&self, key: &str, reply: CallReply) -> Result<CallReply, Error> {
        match self.p.calls.create(key, envelope::encode(&reply)).await {
            Ok(_) => Ok(reply),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                info!(turn = self.n, outcome = "late", "the call turn was already answered; this reply is dropped");
                self.read(key).await?.ok_or_else(|| Error::Protocol(format!("{key} exists but cannot be read")))
            }
            Err(e) => Err(Error::Calls(Box::new(e))),
        }
    }

    /// The chat backend failed on this turn (asked whole or streamed): one
    /// warning and a `chat_error` note; the caller then hears the fallback.
    pub(crate) async fn chat_failed(&self, e: &crate::chat::ChatError, latency_ms: u64) -> Result<(), Error> {
        warn!(
            latency_ms,
            turn = self.n,
            error = e as &dyn std::error::Error,
            outcome = "fallback",
            "chat backend failed on a call turn"
        );
        self.note(NoteReason::ChatError, &format!("chat backend failed on call turn {}: {e}", self.n)).await
    }

    pub(crate) async fn note(&self, reason: NoteReason, detail: &str) -> Result<(), Error> {
        self.p
            .history
            .note(&self.inbound.channel_id, self.peer, &self.inbound.message_sid, self.job.seq, reason, detail)
            .await
    }
}
