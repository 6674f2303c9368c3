//! The ledger: what the pipeline did, read back from the real streams and
//! the Twilio stub, checked against invariants 1 and 2 (docs/ARCHITECTURE.md §4).
//!
//! Sources:
//! - the test's own record of what ingress answered ([`Expect`]): a
//!   MessageSid is *acked* when ingress answered 200 to at least one post;
//! - `P_HISTORY`: inbound entries, notes (skips with their reason;
//!   `duplicate` notes for copies that reached the worker), `Outbound`
//!   entries with every piece's Twilio SID;
//! - `P_DEAD`: dead letters (`msg_id` = the MessageSid for the worker,
//!   `reply.<sid>` for the sender);
//! - `P_sent`: `<outbound id>.<piece>` → Twilio SID, `<outbound id>.done`;
//! - the stub's calls (To, Body, the SID it created).
//!
//! What "exactly one outcome per MessageSid" means with re-posted webhooks:
//! the outcome belongs to the MessageSid, not to a post. A copy that
//! JetStream's duplicate window caught is never stored and leaves no trace;
//! a copy stored beyond the window reaches the worker, which records a
//! `duplicate` note for that copy (its own stream sequence) and nothing
//! else. So: every acked MessageSid has exactly one of {reply delivered,
//! skip note, dead letter}, and the `duplicate` notes are exactly the copies
//! `P_INBOUND` stored (its sequence count minus the distinct MessageSids).
//!
//! Twilio has no idempotency key, so a sender SIGKILLed between Twilio's 201
//! and its `P_sent` put sends that piece again on redelivery (docs/ARCHITECTURE.md,
//! sender/src/deliver.rs). Such a second send is not hidden: it is counted,
//! and it is accepted only when its first copy reached the stub within
//! [`KILL_WINDOW`] before a sender was killed ([`Expect::sender_kills`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use smsgate_shared::bus::OutboundId;
use smsgate_shared::envelope::{self, DeadLetter, HistoryEntry, HistoryEvent, NoteReason, Origin};
use smsgate_testkit::twilio::Call;
use tokio::time::Instant;

use super::Stack;

/// How long before a sender's SIGKILL the first copy of a piece sent twice
/// may have reached Twilio: the 201 → `P_sent` put window is milliseconds;
/// this is generous for a loaded machine.
pub const KILL_WINDOW: Duration = Duration::from_secs(2);
/// How long after the kill is recorded a copy may still reach the stub: a
/// request the sender wrote just before SIGKILL is read by the stub after
/// the test took its timestamp, and its 201 goes to a dead socket, so
/// `P_sent` never learns it. The likely cause of one unexplained
/// "not in a kill window" failure in about ten full runs.
pub const AFTER_KILL_SLACK: Duration = Duration::from_millis(500);

/// What the test did.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Posts per MessageSid (every attempt, whatever the answer).
    pub posted: BTreeMap<String, usize>,
    /// 200 answers per MessageSid.
    pub acked: BTreeMap<String, usize>,
    /// When a sender was SIGKILLed.
    pub sender_kills: Vec<Instant>,
}

impl Expect {
    /// Records one post and ingress's answer.
    pub fn record(&mut self, sid: &str, status: u16) {
        *self.posted.entry(sid.to_owned()).or_default() += 1;
        if status == 200 {
            *self.acked.entry(sid.to_owned()).or_default() += 1;
        }
    }

    /// MessageSids posted but never acked.
    pub fn unacked(&self) -> Vec<String> {
        self.posted.keys().filter(|s| !self.acked.contains_key(*s)).cloned().collect()
    }
}

/// Everything read back.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub history: Vec<HistoryEntry>,
    pub dead: Vec<DeadLetter>,
    /// `P_sent` key → value.
    pub sent: BTreeMap<String, String>,
    pub calls: Vec<Call>,
    /// Messages `P_INBOUND` ever stored (its last sequence).
    pub inbound_stored: u64,
    /// Calls the chat stub received.
    pub chat_calls: usize,
}

/// How one acked MessageSid ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Replied,
    Skipped(String),
    Dead,
}

/// The checked ledger, in numbers.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub posts: usize,
    pub acked_posts: usize,
    pub distinct_acked: usize,
    pub replied: usize,
    pub skipped: usize,
    pub dead: usize,
    pub skip_reasons: BTreeMap<String, usize>,
    /// Copies stored beyond the duplicate window (each got a `duplicate` note).
    pub duplicate_notes: usize,
    /// Copies JetStream deduped (acked posts that stored nothing).
    pub deduped_by_jetstream: usize,
    pub twilio_calls: usize,
    pub twilio_created: usize,
    /// Stub answers by HTTP status.
    pub twilio_status: BTreeMap<u16, usize>,
    /// Distinct (outbound id, piece) pairs recorded in `P_sent`.
    pub pieces: usize,
    /// Pieces sent twice in a sender-kill window (accounted, see module docs).
    pub double_sends_in_kill_window: usize,
    pub chat_calls: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "posts {} (200: {}), distinct acked {}: replied {}, skipped {} {:?}, dead {}; duplicate notes {}, \
             deduped by JetStream {}; chat calls {}; Twilio calls {} {:?}, created {}, pieces {}, \
             double sends in a kill window {}",
            self.posts,
            self.acked_posts,
            self.distinct_acked,
            self.replied,
            self.skipped,
            self.skip_reasons,
            self.dead,
            self.duplicate_notes,
            self.deduped_by_jetstream,
            self.chat_calls,
            self.twilio_calls,
            self.twilio_status,
            self.twilio_created,
            self.pieces,
            self.double_sends_in_kill_window,
        )
    }
}

fn reason_name(reason: NoteReason) -> String {
    serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Notes that are an outcome of their own (the message got no chat reply).
fn is_skip(reason: NoteReason) -> bool {
    matches!(
        reason,
        NoteReason::RateLimited
            | NoteReason::OptedOut
            | NoteReason::OptOutKeyword
            | NoteReason::OptInKeyword
            | NoteReason::HelpKeyword
            | NoteReason::Blocked
            | NoteReason::NoReply
            // The channel's day budget was spent: recorded, not answered.
            | NoteReason::Budget
    )
}

impl Ledger {
    pub async fn read(stack: &Stack) -> anyhow::Result<Self> {
        let t = &stack.topology;
        let history = read_stream(&stack.js, &t.history_stream())
            .await?
            .into_iter()
            .map(|(_, payload)| envelope::decode::<HistoryEntry>(&payload).context("a history entry"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dead = read_stream(&stack.js, &t.dead_stream())
            .await?
            .into_iter()
            .map(|(_, payload)| envelope::decode::<DeadLetter>(&payload).context("a dead letter"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bucket = t.sent_bucket();
        let key_prefix = format!("$KV.{bucket}.");
        let sent = read_stream(&stack.js, &format!("KV_{bucket}"))
            .await?
            .into_iter()
            .filter_map(|(subject, payload)| {
                let key = subject.strip_prefix(&key_prefix)?.to_owned();
                Some((key, String::from_utf8_lossy(&payload).into_owned()))
            })
            .collect();
        let mut inbound = stack.js.get_stream(t.inbound_stream()).await?;
        let inbound_stored = inbound.info().await?.state.last_sequence;
        Ok(Self {
            history,
            dead,
            sent,
            calls: stack.twilio.calls(),
            inbound_stored,
            chat_calls: stack.chat.requests().len(),
        })
    }

    /// Checks invariants 1 and 2; the error lists every violation found.
    pub fn check(&self, expect: &Expect) -> anyhow::Result<Report> {
        let mut v: Vec<String> = Vec::new();
        let mut report = Report {
            posts: expect.posted.values().sum(),
            acked_posts: expect.acked.values().sum(),
            distinct_acked: expect.acked.len(),
            twilio_calls: self.calls.len(),
            chat_calls: self.chat_calls,
            ..Report::default()
        };
        for c in &self.calls {
            *report.twilio_status.entry(c.status).or_default() += 1;
        }

        // Everything recorded, by MessageSid.
        let mut inbound_entries: BTreeMap<String, usize> = BTreeMap::new();
        let mut skips: BTreeMap<String, Vec<NoteReason>> = BTreeMap::new();
        let mut duplicates: BTreeMap<String, usize> = BTreeMap::new();
        let mut outbound: BTreeMap<String, Vec<&HistoryEvent>> = BTreeMap::new();
        for entry in &self.history {
            match &entry.event {
                HistoryEvent::Inbound { message_sid, .. } => {
                    *inbound_entries.entry(message_sid.to_string()).or_default() += 1;
                }
                HistoryEvent::Note { reason: NoteReason::Duplicate, message_sid: Some(sid), .. } => {
                    *duplicates.entry(sid.to_string()).or_default() += 1;
                }
                HistoryEvent::Note { reason, message_sid: Some(sid), .. } if is_skip(*reason) => {
                    skips.entry(sid.to_string()).or_default().push(*reason);
                }
                ev @ HistoryEvent::Outbound { id, .. } => outbound.entry(id.clone()).or_default().push(ev),
                _ => {}
            }
        }
        let mut dead: BTreeMap<String, usize> = BTreeMap::new();
        for d in &self.dead {
            let sid = match (d.stage.as_str(), d.msg_id.as_deref()) {
                ("worker", Some(id)) => id.to_owned(),
                ("sender", Some(id)) => id.strip_prefix("reply.").unwrap_or(id).to_owned(),
                _ => {
                    v.push(format!("a dead letter without a message id: {d:?}"));
                    continue;
                }
            };
            *dead.entry(sid).or_default() += 1;
        }

        // Invariant 1: exactly one outcome per acked MessageSid.
        for (sid, acks) in &expect.acked {
            let id = OutboundId::reply_to(&parse_sid(sid)?).to_string();
            let entries = outbound.get(&id).map(Vec::as_slice).unwrap_or_default();
            // Delivered: the sender's Outbound entry with every piece's SID.
            // (Not the `.done` marker: the sender writes it after the entry,
            // best effort, and a NATS restart may cost it.)
            let delivered = entries.iter().any(|e| complete(e));
            let origin = entries.iter().find_map(|e| match e {
                HistoryEvent::Outbound { origin, .. } => Some(*origin),
                _ => None,
            });
            if entries.len() > 1 {
                v.push(format!("{sid}: the reply was recorded {} times", entries.len()));
            }
            if delivered {
                for e in entries {
                    if let HistoryEvent::Outbound { pieces, .. } = e
                        && pieces.iter().any(|p| p.sid.is_none())
                    {
                        v.push(format!("{sid}: delivered, but a piece has no Twilio SID"));
                    }
                }
                if entries.is_empty() {
                    v.push(format!("{sid}: marked delivered without an Outbound history entry"));
                }
            }
            match inbound_entries.get(sid).copied().unwrap_or(0) {
                1 => {}
                n => v.push(format!("{sid}: {n} inbound history entries (expected 1)")),
            }
            let dups = duplicates.get(sid).copied().unwrap_or(0);
            let posts = expect.posted.get(sid).copied().unwrap_or(*acks);
            if dups + 1 > posts {
                v.push(format!("{sid}: {dups} duplicate notes for {posts} posts"));
            }
            let skip = skips.get(sid);
            let outcome = match (dead.get(sid).copied().unwrap_or(0), skip) {
                (0, None) if delivered => Outcome::Replied,
                (0, None) => {
                    v.push(format!("{sid}: acked by ingress but has no outcome (lost)"));
                    continue;
                }
                (0, Some(reasons)) => {
                    if reasons.len() > 1 {
                        v.push(format!("{sid}: several skip notes {reasons:?}"));
                    }
                    if delivered && origin == Some(Origin::Chat) {
                        v.push(format!("{sid}: skipped ({reasons:?}) and answered by the chat pipeline"));
                    }
                    Outcome::Skipped(reason_name(reasons[0]))
                }
                (1, skip) => {
                    if delivered && origin == Some(Origin::Chat) {
                        v.push(format!("{sid}: dead-lettered and its chat reply delivered"));
                    }
                    if let Some(reasons) = skip {
                        v.push(format!("{sid}: dead-lettered and skipped {reasons:?}"));
                    }
                    Outcome::Dead
                }
                (n, _) => {
                    v.push(format!("{sid}: dead-lettered {n} times"));
                    Outcome::Dead
                }
            };
            match outcome {
                Outcome::Replied => report.replied += 1,
                Outcome::Skipped(reason) => {
                    report.skipped += 1;
                    *report.skip_reasons.entry(reason).or_default() += 1;
                }
                Outcome::Dead => report.dead += 1,
            }
        }
        let acked: BTreeSet<String> = expect
            .acked
            .keys()
            .map(|s| parse_sid(s).map(|s| OutboundId::reply_to(&s).to_string()))
            .collect::<Result<_, _>>()?;
        for id in outbound.keys() {
            if !acked.contains(id) {
                v.push(format!("a reply {id} to a MessageSid ingress never acked"));
            }
        }

        // Invariant 2: replies = distinct acked − skips − dead; one chat reply per MessageSid.
        let chat_replies = outbound
            .values()
            .filter(|es| {
                es.iter().any(|e| complete(e) && matches!(e, HistoryEvent::Outbound { origin: Origin::Chat, .. }))
            })
            .count();
        if chat_replies != report.distinct_acked - report.skipped - report.dead {
            v.push(format!(
                "{chat_replies} chat replies delivered, expected distinct acked {} − skipped {} − dead {}",
                report.distinct_acked, report.skipped, report.dead
            ));
        }

        // Duplicates: every copy P_INBOUND stored got exactly one note.
        report.duplicate_notes = duplicates.values().sum();
        let stored_copies = self.inbound_stored.saturating_sub(expect.acked.len() as u64);
        if report.duplicate_notes as u64 != stored_copies {
            v.push(format!(
                "{} duplicate notes, but P_INBOUND stored {} messages for {} distinct MessageSids",
                report.duplicate_notes,
                self.inbound_stored,
                expect.acked.len()
            ));
        }
        report.deduped_by_jetstream = report.acked_posts.saturating_sub(self.inbound_stored as usize);

        // Invariant 2 at Twilio: one send per (outbound id, piece).
        let pieces: BTreeMap<&str, &str> = self
            .sent
            .iter()
            .filter(|(k, _)| !k.ends_with(".done"))
            .map(|(k, val)| (k.as_str(), val.as_str()))
            .collect();
        report.pieces = pieces.len();
        let mut key_of_sid: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, sid) in &pieces {
            if let Some(other) = key_of_sid.insert(sid, key) {
                v.push(format!("Twilio SID {sid} recorded for two pieces: {other} and {key}"));
            }
        }
        for (id, entries) in &outbound {
            for e in entries {
                if let HistoryEvent::Outbound { pieces: hp, .. } = e {
                    for p in hp {
                        let key = format!("{id}.{}", p.index);
                        if p.sid.as_deref() != pieces.get(key.as_str()).copied() {
                            v.push(format!(
                                "{key}: history says {:?}, P_sent says {:?}",
                                p.sid,
                                pieces.get(key.as_str())
                            ));
                        }
                    }
                }
            }
        }
        let created: Vec<&Call> = self.calls.iter().filter(|c| c.created()).collect();
        report.twilio_created = created.len();
        let created_sids: BTreeSet<&str> = created.iter().filter_map(|c| c.sid.as_deref()).collect();
        for (key, sid) in &pieces {
            if !created_sids.contains(sid) {
                v.push(format!("{key}: P_sent holds {sid}, which the stub never created"));
            }
        }
        let mut by_content: BTreeMap<(Option<&str>, Option<&str>), Vec<&Call>> = BTreeMap::new();
        for c in &created {
            by_content.entry((c.get("To"), c.get("Body"))).or_default().push(c);
        }
        for ((to, body), calls) in &by_content {
            if calls.len() == 1 {
                continue;
            }
            // The same piece created more than once: only the copies P_sent
            // does not know are extra; each must sit in a kill window.
            let extra = calls.iter().filter(|c| !c.sid.as_deref().is_some_and(|s| key_of_sid.contains_key(s)));
            for c in extra {
                let in_window = expect
                    .sender_kills
                    .iter()
                    .any(|k| c.at <= *k + AFTER_KILL_SLACK && k.saturating_duration_since(c.at) <= KILL_WINDOW);
                if in_window {
                    report.double_sends_in_kill_window += 1;
                } else {
                    v.push(format!(
                        "piece sent {} times (To {to:?}, Body {body:?}), not in a sender-kill window",
                        calls.len()
                    ));
                }
            }
        }
        for c in &created {
            let known = c.sid.as_deref().is_some_and(|s| key_of_sid.contains_key(s));
            let twin = by_content.get(&(c.get("To"), c.get("Body"))).is_some_and(|cs| cs.len() > 1);
            if !known && !twin {
                v.push(format!("the stub created {:?} (Body {:?}) but no piece records it", c.sid, c.get("Body")));
            }
        }
        if report.twilio_created != report.pieces + report.double_sends_in_kill_window {
            v.push(format!(
                "the stub created {} messages for {} distinct pieces (+{} accounted double sends)",
                report.twilio_created, report.pieces, report.double_sends_in_kill_window
            ));
        }

        if v.is_empty() {
            Ok(report)
        } else {
            let n = v.len();
            v.truncate(40);
            anyhow::bail!("{n} ledger violations:\n  {}\nreport: {report}", v.join("\n  "))
        }
    }
}

/// Whether an Outbound entry records every piece of its message with a
/// Twilio SID: a split message's last piece is marked `(n/n)` with n pieces
/// recorded; an unsplit one is one piece. (The sender also records the
/// pieces that went out before a failure: those entries are partial.)
fn complete(event: &HistoryEvent) -> bool {
    let HistoryEvent::Outbound { pieces, .. } = event else { return false };
    if pieces.is_empty() || pieces.iter().any(|p| p.sid.is_none()) {
        return false;
    }
    let last = pieces[pieces.len() - 1].body.trim_end();
    let marker = last.strip_suffix(')').and_then(|s| s.rsplit_once('(')).and_then(|(_, m)| m.split_once('/'));
    match marker.and_then(|(k, n)| Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?))) {
        Some((k, n)) => k == n && n == pieces.len(),
        None => pieces.len() == 1,
    }
}

fn parse_sid(sid: &str) -> anyhow::Result<smsgate_shared::domain::MessageSid> {
    smsgate_shared::domain::MessageSid::parse(sid).map_err(|e| anyhow::anyhow!("{sid}: {e}"))
}

/// Every message of a stream, oldest first, as (subject, payload).
pub async fn read_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<Vec<(String, bytes::Bytes)>> {
    let mut stream = js.get_stream(name).await.with_context(|| format!("stream {name}"))?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("an ordered consumer on {name}"))?;
    let mut messages = consumer.messages().await?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .with_context(|| format!("reading {name}: nothing for 10 s after {} messages", out.len()))?;
        let Some(msg) = next else { break };
        let msg = msg?;
        let seq = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
        out.push((msg.subject.to_string(), msg.payload.clone()));
        if seq >= state.last_sequence {
            break;
        }
    }
    Ok(out)
}
