//! Consent on record (KV `P_consent`): `POST /api/v1/consent`, and `GET` /
//! `DELETE /api/v1/consent/{channel_id}/{e164}`. Revoking by the API is an
//! opt-out (47 CFR 64.1200(a)(10): revocation by any reasonable means): the
//! guard refuses the number until it texts START.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::json;
use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::envelope::{self, HistoryEvent, NoteReason};
use smsgate_shared::guard::{ConsentKind, ConsentRecord};
use smsgate_shared::redact::clip;
use smsgate_shared::topology::Topology;
use time::OffsetDateTime;

use crate::compliance::rfc3339;
use crate::messages::{enabled_channel, json_object, recipient};
use crate::{AdminError, AdminState, bounded};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    pub channel_id: String,
    pub to: String,
    pub kind: String,
    pub source: String,
    #[serde(default)]
    pub evidence: Option<String>,
}

/// A number's consent and opt-out state on a channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConsentView {
    pub channel_id: String,
    pub to: String,
    /// `express` or `written`, or none on record.
    pub consent: Option<String>,
    pub source: Option<String>,
    pub evidence: Option<String>,
    pub at: Option<String>,
    pub opted_out: bool,
}

async fn view(state: &AdminState, channel: &str, to: &smsgate_shared::domain::E164) -> Result<ConsentView, AdminError> {
    let channel = state.known_channel(channel)?;
    let store = state.guard_store().await?;
    let record = store.consent(&channel, to).await.map_err(|e| AdminError::nats("read the consent bucket", e))?;
    let opted_out = bounded("read the opt-out bucket", store.optout_store().get(Topology::optout_key(&channel, to)))
        .await?
        .is_some();
    Ok(ConsentView {
        channel_id: channel.to_string(),
        to: to.as_str().to_owned(),
        consent: record.as_ref().map(|r| kind_name(r.kind).to_owned()),
        source: record.as_ref().map(|r| r.source.clone()),
        evidence: record.as_ref().and_then(|r| r.evidence.clone()),
        at: record.as_ref().map(|r| rfc3339(r.at)),
        opted_out,
    })
}

fn kind_name(kind: ConsentKind) -> &'static str {
    match kind {
        ConsentKind::Express => "express",
        ConsentKind::Written => "written",
    }
}

async fn consent_note(
    state: &AdminState,
    channel: &smsgate_shared::domain::ChannelId,
    to: &smsgate_shared::domain::E164,
    detail: String,
) -> Result<(), AdminError> {
    let key = Topology::consent_key(channel, to);
    let event = HistoryEvent::Note { reason: NoteReason::Consent, message_sid: None, outbound_id: None, detail };
    let id = MsgId::Takeover {
        conversation: &key,
        reason: NoteReason::Consent,
        at_ns: OffsetDateTime::now_utc().unix_timestamp_nanos(),
    };
    bounded("record it in the conversation", bus::append_history(&state.js, &state.topology, (channel, to), id, event))
        .await
}

pub(crate) async fn add_consent(State(state): State<AdminState>, body: Bytes) -> Result<Json<ConsentView>, AdminError> {
    let request: ConsentRequest = json_object(&body, "consent request")?;
    let channel = enabled_channel(&state, &request.channel_id)?;
    let to = recipient(&request.to)?;
    let kind = match request.kind.trim() {
        "express" => ConsentKind::Express,
        "written" => ConsentKind::Written,
        _ => return Err(AdminError::invalid("invalid_kind", "kind must be express or written")),
    };
    let source = request.source.trim();
    if source.is_empty() || source.chars().count() > 200 {
        return Err(AdminError::invalid(
            "invalid_source",
            "source must say where consent was given (1-200 characters)",
        ));
    }
    if request.evidence.as_ref().is_some_and(|e| e.chars().count() > 2000) {
        return Err(AdminError::invalid("invalid_evidence", "evidence is at most 2000 characters"));
    }
    let record = ConsentRecord {
        v: envelope::VERSION,
        kind,
        source: source.to_owned(),
        evidence: request.evidence.filter(|e| !e.trim().is_empty()),
        at: OffsetDateTime::now_utc(),
    };
    let store = state.guard_store().await?;
    let value = serde_json::to_vec(&record).unwrap_or_default();
    bounded(
        "write the consent bucket",
        store.consent_store().put(Topology::consent_key(&channel.id, &to), value.into()),
    )
    .await?;
    consent_note(&state, &channel.id, &to, format!("{} consent recorded ({})", kind_name(kind), clip(source, 80)))
        .await?;
    tracing::info!(service = "ingress", stage = "admin", channel_id = %channel.id, peer = %to.masked(), kind = kind_name(kind), outcome = "consent_recorded", "consent recorded");
    Ok(Json(view(&state, channel.id.as_str(), &to).await?))
}

pub(crate) async fn show_consent(
    State(state): State<AdminState>,
    Path((channel_id, peer)): Path<(String, String)>,
) -> Result<Json<ConsentView>, AdminError> {
    let to = recipient(&peer)?;
    Ok(Json(view(&state, &channel_id, &to).await?))
}

pub(crate) async fn revoke_consent(
    State(state): State<AdminState>,
    Path((channel_id, peer)): Path<(String, String)>,
) -> Result<Json<ConsentView>, AdminError> {
    let to = recipient(&peer)?;
    let channel = state.known_channel(&channel_id)?;
    let store = state.guard_store().await?;
    bounded("delete from the consent bucket", store.consent_store().delete(Topology::consent_key(&channel, &to)))
        .await?;
    let value = json!({"at": OffsetDateTime::now_utc().unix_timestamp(), "revoked_by": "api"});
    bounded(
        "write the opt-out bucket",
        store.optout_store().put(Topology::optout_key(&channel, &to), value.to_string().into()),
    )
    .await?;
    consent_note(
        &state,
        &channel,
        &to,
        "consent revoked by the operator; the number is opted out until it texts START".to_owned(),
    )
    .await?;
    tracing::info!(service = "ingress", stage = "admin", channel_id = %channel, peer = %to.masked(), outcome = "consent_revoked", "consent revoked; number opted out");
    Ok(Json(view(&state, channel.as_str(), &to).await?))
}
