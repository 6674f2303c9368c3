//! The admin API's side of the compliance guard (`smsgate_shared::guard`):
//! every message or call the API is asked to send passes [`submit`], which
//! answers at once (202 queued or scheduled, 403, 409) and records the
//! verdict in the conversation. The sender runs the guard again before the
//! message goes out.

use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::config::Channel;
use smsgate_shared::envelope::{Guarded, HistoryEvent, NoteReason, Outbound};
use smsgate_shared::guard::{self, Ask, Denial, GuardStore, Initiator, Kind, Purpose, Verdict};
use smsgate_shared::schedule::{Added, Schedule, Scheduled, Why};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{AdminError, AdminState, bounded};

/// The longest a message may be scheduled ahead.
pub const MAX_AHEAD: time::Duration = time::Duration::days(366);

/// The answer to an accepted send (202).
#[derive(Debug, Serialize, Deserialize)]
pub struct SendAccepted {
    /// The outbound id: `api.<idempotency key>`, or a generated `api.<random>`.
    pub id: String,
    /// `queued` (on its way now) or `scheduled` (see `send_at`).
    #[serde(default = "queued")]
    pub status: String,
    /// When a scheduled message goes out (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<String>,
    /// The purpose the guard checked it for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// True when the same id was accepted before (nothing new is sent).
    pub duplicate: bool,
}

fn queued() -> String {
    "queued".to_owned()
}

/// What a request says about the guard.
pub struct Request {
    pub purpose: Option<Purpose>,
    pub send_at: Option<OffsetDateTime>,
    /// Defer outside quiet hours (true) or answer 409 (false).
    pub defer: bool,
    pub initiator: Initiator,
}

/// `purpose` of a request body.
pub fn parse_purpose(text: Option<&str>) -> Result<Option<Purpose>, AdminError> {
    text.map(|p| {
        Purpose::parse(p.trim()).ok_or_else(|| {
            AdminError::invalid("invalid_purpose", "purpose must be conversational, informational or marketing")
        })
    })
    .transpose()
}

/// `send_at` of a request body: RFC 3339, at most [`MAX_AHEAD`] ahead; a
/// time already past means now.
pub fn parse_send_at(text: Option<&str>) -> Result<Option<OffsetDateTime>, AdminError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    let at = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        AdminError::invalid("invalid_send_at", "send_at must be an RFC 3339 time, e.g. 2026-12-07T09:00:00-05:00")
    })?;
    let now = OffsetDateTime::now_utc();
    if at - now > MAX_AHEAD {
        return Err(AdminError::invalid("invalid_send_at", "send_at is more than a year ahead"));
    }
    Ok((at > now).then_some(at))
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Runs the guard for `out` and queues, schedules or refuses it.
pub async fn submit(
    state: &AdminState,
    channel: &Channel,
    mut out: Outbound,
    request: Request,
    what: &'static str,
) -> Result<(StatusCode, Json<SendAccepted>), AdminError> {
    state.require_nats()?;
    let store = state.guard_store().await?;
    let now = OffsetDateTime::now_utc();
    let at = request.send_at.unwrap_or(now);
    let window = channel.compliance.conversation_window_hours;
    let mut facts = store
        .facts(&channel.id, &out.to, window, at, Some(out.id.as_str()))
        .await
        .map_err(|e| AdminError::nats("read what the guard needs", e))?;
    if request.send_at.is_some() {
        // The cap is counted when it goes out, not against today's texts.
        facts.sent_last_24h = 0;
    } else {
        // A text for later meets the budget of its own day, when it goes out.
        facts.budget_exceeded =
            store.budget_exceeded(channel).await.map_err(|e| AdminError::nats("read the channel's spend today", e))?;
    }
    let purpose = request.purpose.unwrap_or_else(|| guard::default_purpose(&channel.compliance, &facts, now));
    let guarded = Guarded { purpose, initiator: request.initiator };
    out.guard = Some(guarded);
    let ask = Ask {
        channel,
        to: &out.to,
        purpose,
        initiator: request.initiator,
        kind: if out.call.is_some() { Kind::Call } else { Kind::Text },
        follow_up: out.in_reply_to.is_some(),
        at,
    };
    let verdict = guard::decide(&ask, &facts);
    let label = match verdict {
        Verdict::Send => "send",
        Verdict::Defer { .. } => "defer",
        Verdict::Deny(d) => d.as_str(),
    };
    metrics::counter!("smsgate_guard_total", "stage" => "api", "verdict" => label).increment(1);
    match verdict {
        Verdict::Deny(denial) => {
            note(state, &out, NoteReason::Refused, guard::refusal_note(denial)).await?;
            Err(refusal(denial, None))
        }
        Verdict::Defer { until } if !request.defer => Err(refusal(Denial::QuietHours, Some(until))),
        Verdict::Defer { until } => schedule(state, out, until, Why::QuietHours, what).await,
        Verdict::Send => match request.send_at {
            Some(send_at) => schedule(state, out, send_at, Why::Requested, what).await,
            None => crate::messages::publish_outbound(state, &out, what).await,
        },
    }
}

/// The guard's refusal as an answer: 403 `{error}`, or 409 `{error:
/// "quiet_hours", next_allowed_at}` when the request asked not to defer.
fn refusal(denial: Denial, next_allowed_at: Option<OffsetDateTime>) -> AdminError {
    let status = if denial == Denial::QuietHours { StatusCode::CONFLICT } else { StatusCode::FORBIDDEN };
    AdminError::Guard {
        status,
        code: denial.as_str(),
        detail: denial.explain(),
        next_allowed_at: next_allowed_at.map(rfc3339),
    }
}

async fn schedule(
    state: &AdminState,
    out: Outbound,
    send_at: OffsetDateTime,
    why: Why,
    what: &'static str,
) -> Result<(StatusCode, Json<SendAccepted>), AdminError> {
    let schedule = state.schedule().await?;
    let purpose = out.guard.map(|g| g.purpose.as_str().to_owned());
    let entry = Scheduled::new(out, send_at, why);
    let added = schedule.add(&entry).await.map_err(|e| AdminError::nats("add to the schedule", e))?;
    let (entry, duplicate) = match added {
        Added::New => (entry, false),
        Added::Exists(existing) => (*existing, true),
    };
    let out = &entry.outbound;
    if !duplicate {
        let detail =
            guard::scheduled_note(entry.send_at, why.as_str(), out.guard.map_or(Purpose::Informational, |g| g.purpose));
        note(state, out, NoteReason::Scheduled, detail).await?;
    }
    metrics::counter!("smsgate_admin_messages_total", "channel_id" => out.channel_id.to_string(), "kind" => what, "outcome" => "scheduled").increment(1);
    tracing::info!(
        service = "ingress",
        stage = "admin",
        channel_id = %out.channel_id,
        peer = %out.to.masked(),
        outbound_id = %out.id,
        kind = what,
        why = why.as_str(),
        send_at = %rfc3339(entry.send_at),
        outcome = "scheduled",
        "{what} scheduled"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(SendAccepted {
            id: out.id.to_string(),
            status: "scheduled".to_owned(),
            send_at: Some(rfc3339(entry.send_at)),
            purpose,
            duplicate,
        }),
    ))
}

/// A note about `out` in its conversation.
pub(crate) async fn note(
    state: &AdminState,
    out: &Outbound,
    reason: NoteReason,
    detail: String,
) -> Result<(), AdminError> {
    let event = HistoryEvent::Note {
        reason,
        message_sid: out.in_reply_to.clone(),
        outbound_id: Some(out.id.to_string()),
        detail,
    };
    bounded(
        "record it in the conversation",
        bus::append_history(
            &state.js,
            &state.topology,
            (&out.channel_id, &out.to),
            MsgId::SenderNote { outbound: &out.id, reason },
            event,
        ),
    )
    .await
}

impl AdminState {
    /// What the guard reads, opened once.
    pub(crate) async fn guard_store(&self) -> Result<GuardStore, AdminError> {
        self.require_nats()?;
        let (js, topology) = (self.js.clone(), self.topology.clone());
        self.guard
            .get_or_try_init(|| async move { GuardStore::open(&js, &topology).await })
            .await
            .cloned()
            .map_err(|e| AdminError::nats("open the guard's buckets", e))
    }

    /// The `P_schedule` bucket.
    pub(crate) async fn schedule(&self) -> Result<Schedule, AdminError> {
        self.require_nats()?;
        let kv = bounded("open the schedule bucket", self.js.get_key_value(self.topology.schedule_bucket())).await?;
        Ok(Schedule::new(kv))
    }
}
