//! One message's walk through the decisions, in order (steps 2 to 4 of
//! the module comment): claiming the MessageSid, recording the inbound,
//! keywords, opt-out, lists, takeover, rate limit, the channel's limits,
//! HELP and the day's budget, before the chat call; and the notes and
//! marks every step leaves.

use serde_json::json;
use smsgate_shared::domain::{E164, MessageSid};
use smsgate_shared::envelope::{self, Inbound, NoteReason, Origin};
use smsgate_shared::topology::Topology;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::{Disposition, Job, Lane, Outcome, Processor};
use crate::Error;
use crate::keywords::{self, Keyword};
use crate::limiter::Verdict;
use crate::seen::{Claim, Record, State};

pub(super) struct Step<'a> {
    pub(super) p: &'a Processor,
    pub(super) job: &'a Job,
    pub(super) inbound: &'a Inbound,
    pub(super) lane: &'a Lane,
    pub(super) peer: E164,
    pub(super) seq: u64,
    pub(super) delivered: i64,
    /// JetStream will not deliver this message again.
    pub(super) last: bool,
}

impl Step<'_> {
    pub(super) fn sid(&self) -> &MessageSid {
        &self.inbound.message_sid
    }

    pub(super) async fn run(&self) -> Result<(Disposition, Outcome), Error> {
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

    pub(super) async fn note(&self, reason: NoteReason, detail: impl Into<String>) -> Result<(), Error> {
        self.p.history.note(&self.inbound.channel_id, &self.peer, self.sid(), self.seq, reason, detail).await
    }

    pub(super) async fn done(&self, outcome: Outcome) -> Result<(Disposition, Outcome), Error> {
        self.p.seen.store(self.sid(), &Record { seq: self.seq, state: State::Done, reply: None }).await?;
        Ok((Disposition::Ack, outcome))
    }
}
