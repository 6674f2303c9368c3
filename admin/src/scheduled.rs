//! `GET /api/v1/scheduled` and `DELETE /api/v1/scheduled/{id}`: what waits
//! in `P_schedule` (scheduled by `send_at`, or deferred by the guard).

use axum::Json;
use axum::extract::{Path, Query, State};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smsgate_shared::envelope::NoteReason;
use smsgate_shared::schedule::{Canceled, Scheduled};

use crate::compliance::{note, rfc3339};
use crate::messages::recipient;
use crate::{AdminError, AdminState};

#[derive(Debug, Deserialize)]
pub struct ScheduledQuery {
    #[serde(default)]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
}

/// One scheduled message or call.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ScheduledView {
    pub id: String,
    pub channel_id: String,
    pub to: String,
    pub body: String,
    /// `text` or `call`.
    pub kind: String,
    pub purpose: Option<String>,
    pub send_at: String,
    /// Why it waits: `requested` (send_at) or `quiet_hours` (deferred).
    pub why: String,
    pub scheduled_at: String,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ScheduledList {
    pub scheduled: Vec<ScheduledView>,
}

impl From<&Scheduled> for ScheduledView {
    fn from(s: &Scheduled) -> Self {
        let out = &s.outbound;
        Self {
            id: out.id.to_string(),
            channel_id: out.channel_id.to_string(),
            to: out.to.as_str().to_owned(),
            body: out.body.clone(),
            kind: if out.call.is_some() { "call" } else { "text" }.to_owned(),
            purpose: out.guard.map(|g| g.purpose.as_str().to_owned()),
            send_at: rfc3339(s.send_at),
            why: s.why.as_str().to_owned(),
            scheduled_at: rfc3339(s.scheduled_at),
        }
    }
}

pub(crate) async fn list_scheduled(
    State(state): State<AdminState>,
    Query(query): Query<ScheduledQuery>,
) -> Result<Json<ScheduledList>, AdminError> {
    let channel = match query.channel_id.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(state.known_channel(c)?),
        None => None,
    };
    let to = match query.to.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => Some(recipient(t)?),
        None => None,
    };
    let all = state.schedule().await?.list().await.map_err(|e| AdminError::nats("list the schedule", e))?;
    let scheduled = all
        .iter()
        .filter(|s| channel.as_ref().is_none_or(|c| &s.outbound.channel_id == c))
        .filter(|s| to.as_ref().is_none_or(|t| &s.outbound.to == t))
        .map(ScheduledView::from)
        .collect();
    Ok(Json(ScheduledList { scheduled }))
}

/// The answer to a cancel.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct CanceledView {
    pub id: String,
    pub status: String,
}

pub(crate) async fn cancel_scheduled(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<CanceledView>, AdminError> {
    let Some(id) = smsgate_shared::bus::OutboundId::parse(&id) else {
        return Err(AdminError::not_found("unknown_scheduled", "no scheduled message has this id"));
    };
    let schedule = state.schedule().await?;
    match schedule.cancel(id.as_str()).await.map_err(|e| AdminError::nats("cancel a scheduled message", e))? {
        Canceled::Canceled(entry) => {
            note(&state, &entry.outbound, NoteReason::Canceled, "canceled before it was sent".to_owned()).await?;
            tracing::info!(
                service = "ingress",
                stage = "admin",
                channel_id = %entry.outbound.channel_id,
                outbound_id = %entry.outbound.id,
                outcome = "canceled",
                "scheduled message canceled"
            );
            Ok(Json(CanceledView { id: id.to_string(), status: "canceled".to_owned() }))
        }
        Canceled::NotFound => Err(AdminError::not_found(
            "unknown_scheduled",
            "no scheduled message has this id (sent already, or canceled)",
        )),
        Canceled::Firing => Err(AdminError::Conflict {
            code: "firing",
            detail: "it is being sent right now and can no longer be canceled".to_owned(),
        }),
    }
}
