//! The one door: what every caller that sends on its own does with the
//! guard's verdict (STYLE 19). The admin API, the MCP tools and the model's
//! `followup` tool call [`submit`] and turn its [`Submitted`] into a status
//! code, a tool result or an answer to the model; none re-implements it.

use async_nats::jetstream;
use time::OffsetDateTime;

use super::{Ask, Denial, GuardStore, Initiator, Kind, Purpose, Verdict};
use crate::bus::{self, MsgId};
use crate::config::Channel;
use crate::envelope::{self, Guarded, HistoryEvent, NoteReason, Outbound};
use crate::schedule::{Added, Schedule, ScheduleError, Scheduled, Why};
use crate::topology::Topology;

/// What the caller asks of the guard besides the message itself.
#[derive(Debug, Clone, Copy)]
pub struct Submission {
    /// None: conversational when the person texted within the window, else
    /// informational.
    pub purpose: Option<Purpose>,
    /// Send then, not now.
    pub send_at: Option<OffsetDateTime>,
    /// Outside the allowed hours: defer (true) or refuse with the next
    /// allowed time (false).
    pub defer: bool,
    pub initiator: Initiator,
}

/// What became of a submitted message.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// On `P_OUTBOUND` now (`duplicate`: the same id was there already).
    Queued { purpose: Purpose, duplicate: bool },
    /// In `P_schedule`, to go at `send_at`.
    Scheduled { purpose: Purpose, send_at: OffsetDateTime, why: Why, duplicate: bool },
    /// Refused; `next_allowed_at` for quiet hours when asked not to defer.
    Refused { denial: Denial, next_allowed_at: Option<OffsetDateTime> },
}

#[derive(Debug, thiserror::Error)]
pub enum DoorError {
    #[error("cannot read what the guard needs")]
    Facts(#[from] super::FactsError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("cannot {what}")]
    Publish {
        what: &'static str,
        #[source]
        source: bus::PublishError,
    },
}

/// Where [`submit`] reads and writes.
pub struct Door<'a> {
    pub js: &'a jetstream::Context,
    pub topology: &'a Topology,
    pub store: &'a GuardStore,
    pub schedule: &'a Schedule,
}

/// Runs the guard for `out` on `channel` and queues, schedules or refuses
/// it, noting a refusal or a schedule in the conversation.
pub async fn submit(
    door: &Door<'_>,
    channel: &Channel,
    mut out: Outbound,
    sub: Submission,
) -> Result<Submitted, DoorError> {
    let now = OffsetDateTime::now_utc();
    let at = sub.send_at.unwrap_or(now);
    let window = channel.compliance.conversation_window_hours;
    let mut facts = door.store.facts(&channel.id, &out.to, window, at, Some(out.id.as_str())).await?;
    if sub.send_at.is_some() {
        // The cap is counted when it goes out, not against today's texts.
        facts.sent_last_24h = 0;
    } else {
        // A text for later meets the budget of its own day, when it goes out.
        facts.budget_exceeded = door.store.budget_exceeded(channel).await?;
    }
    let purpose = sub.purpose.unwrap_or_else(|| super::default_purpose(&channel.compliance, &facts, now));
    out.guard = Some(Guarded { purpose, initiator: sub.initiator });
    let ask = Ask {
        channel,
        to: &out.to,
        purpose,
        initiator: sub.initiator,
        kind: if out.call.is_some() { Kind::Call } else { Kind::Text },
        follow_up: out.in_reply_to.is_some(),
        at,
    };
    let verdict = super::decide(&ask, &facts);
    let label = match verdict {
        Verdict::Send => "send",
        Verdict::Defer { .. } => "defer",
        Verdict::Deny(d) => d.as_str(),
    };
    metrics::counter!("smsgate_guard_total", "stage" => "submit", "verdict" => label).increment(1);
    match verdict {
        Verdict::Deny(denial) => {
            noted(door, &out, NoteReason::Refused, super::refusal_note(denial)).await?;
            Ok(Submitted::Refused { denial, next_allowed_at: None })
        }
        Verdict::Defer { until } if !sub.defer => {
            Ok(Submitted::Refused { denial: Denial::QuietHours, next_allowed_at: Some(until) })
        }
        Verdict::Defer { until } => schedule(door, out, purpose, until, Why::QuietHours).await,
        Verdict::Send => match sub.send_at {
            Some(send_at) => schedule(door, out, purpose, send_at, Why::Requested).await,
            None => {
                let subject = door.topology.outbound_subject(&out.channel_id);
                let ack = bus::publish(door.js, subject, MsgId::Outbound(&out.id), envelope::encode(&out))
                    .await
                    .map_err(|source| DoorError::Publish { what: "publish to the outbound stream", source })?;
                Ok(Submitted::Queued { purpose, duplicate: ack.duplicate })
            }
        },
    }
}

async fn schedule(
    door: &Door<'_>,
    out: Outbound,
    purpose: Purpose,
    send_at: OffsetDateTime,
    why: Why,
) -> Result<Submitted, DoorError> {
    let entry = Scheduled::new(out, send_at, why);
    match door.schedule.add(&entry).await? {
        Added::New => {
            let detail = super::scheduled_note(send_at, why.as_str(), purpose);
            noted(door, &entry.outbound, NoteReason::Scheduled, detail).await?;
            Ok(Submitted::Scheduled { purpose, send_at, why, duplicate: false })
        }
        Added::Exists(existing) => Ok(Submitted::Scheduled {
            purpose: existing.outbound.guard.map_or(purpose, |g| g.purpose),
            send_at: existing.send_at,
            why: existing.why,
            duplicate: true,
        }),
    }
}

async fn noted(door: &Door<'_>, out: &Outbound, reason: NoteReason, detail: String) -> Result<(), DoorError> {
    note((door.js, door.topology), out, reason, detail)
        .await
        .map_err(|source| DoorError::Publish { what: "record it in the conversation", source })
}

/// A note about `out` in its conversation.
pub async fn note(
    (js, topology): (&jetstream::Context, &Topology),
    out: &Outbound,
    reason: NoteReason,
    detail: String,
) -> Result<(), bus::PublishError> {
    let event = HistoryEvent::Note {
        reason,
        message_sid: out.in_reply_to.clone(),
        outbound_id: Some(out.id.to_string()),
        detail,
    };
    let id = MsgId::SenderNote { outbound: &out.id, reason };
    bus::append_history(js, topology, (&out.channel_id, &out.to), id, event).await
}
