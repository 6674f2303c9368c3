//! The admin API's side of the compliance guard (`smsgate_shared::guard`):
//! every message or call the API is asked to send passes [`submit`], which
//! answers at once (202 queued or scheduled, 403, 409) and records the
//! verdict in the conversation. The sender runs the guard again before the
//! message goes out.

use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use smsgate_shared::config::Channel;
use smsgate_shared::envelope::{NoteReason, Outbound};
use smsgate_shared::guard::door::{self, Door, DoorError, Submission, Submitted};
use smsgate_shared::guard::{Denial, GuardStore, Initiator, Purpose};
use smsgate_shared::schedule::Schedule;
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

/// Runs the guard for `out` (through the one door,
/// `smsgate_shared::guard::door`) and answers 202 queued or scheduled, or
/// the refusal.
pub async fn submit(
    state: &AdminState,
    channel: &Channel,
    out: Outbound,
    request: Request,
    what: &'static str,
) -> Result<(StatusCode, Json<SendAccepted>), AdminError> {
    state.require_nats()?;
    let store = state.guard_store().await?;
    let schedule = state.schedule().await?;
    let door = Door { js: &state.js, topology: &state.topology, store: &store, schedule: &schedule };
    let (id, channel_id, to) = (out.id.to_string(), out.channel_id.clone(), out.to.masked());
    let submission = Submission {
        purpose: request.purpose,
        send_at: request.send_at,
        defer: request.defer,
        initiator: request.initiator,
    };
    let submitted = door::submit(&door, channel, out, submission).await.map_err(door_error)?;
    let (status, send_at, purpose, duplicate) = match submitted {
        Submitted::Refused { denial, next_allowed_at } => return Err(refusal(denial, next_allowed_at)),
        Submitted::Queued { purpose, duplicate } => ("queued", None, purpose, duplicate),
        Submitted::Scheduled { purpose, send_at, duplicate, .. } => ("scheduled", Some(send_at), purpose, duplicate),
    };
    let outcome = if duplicate { "duplicate" } else { status };
    metrics::counter!("smsgate_admin_messages_total", "channel_id" => channel_id.to_string(), "kind" => what, "outcome" => outcome).increment(1);
    tracing::info!(
        service = "ingress",
        stage = "admin",
        channel_id = %channel_id,
        peer = %to,
        outbound_id = %id,
        kind = what,
        purpose = purpose.as_str(),
        send_at = send_at.map(rfc3339),
        outcome,
        "{what} accepted"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(SendAccepted {
            id,
            status: status.to_owned(),
            send_at: send_at.map(rfc3339),
            purpose: Some(purpose.as_str().to_owned()),
            duplicate,
        }),
    ))
}

fn door_error(e: DoorError) -> AdminError {
    match e {
        DoorError::Facts(e) => AdminError::nats("read what the guard needs", e),
        DoorError::Schedule(e) => AdminError::nats("add to the schedule", e),
        DoorError::Publish { what, source } => AdminError::nats(what, source),
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

/// A note about `out` in its conversation.
pub(crate) async fn note(
    state: &AdminState,
    out: &Outbound,
    reason: NoteReason,
    detail: String,
) -> Result<(), AdminError> {
    bounded("record it in the conversation", door::note((&state.js, &state.topology), out, reason, detail)).await
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
