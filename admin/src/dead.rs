//! `GET /api/v1/dead` and `POST /api/v1/dead/{seq}/replay`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::domain::ChannelId;
use smsgate_shared::envelope::{self, DeadLetter};
use smsgate_shared::redact::clip;

use crate::conversations::{LimitQuery, parse_limit};
use crate::reader::read_all;
use crate::{AdminError, AdminState, NATS_TIMEOUT, bounded};

#[derive(Debug, Serialize)]
pub struct DeadList {
    pub entries: Vec<DeadView>,
}

#[derive(Debug, Serialize)]
pub struct DeadView {
    pub seq: u64,
    #[serde(flatten)]
    pub letter: DeadLetter,
}

pub(crate) async fn list_dead(
    State(state): State<AdminState>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<DeadList>, AdminError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let filter = match query.channel_id.as_deref().filter(|c| !c.is_empty()) {
        // Dead letters of a channel that is no longer configured stay listable.
        Some(c) => {
            let c = ChannelId::parse(c).map_err(|e| AdminError::invalid("invalid_channel", e.reason))?;
            state.topology.dead_filter(Some(&c))
        }
        None => state.topology.dead_filter(None),
    };
    let stream = state.stream(state.topology.dead_stream()).await?;
    let entries = read_all(&stream, filter, Some(limit))
        .await?
        .into_iter()
        .map(|(seq, at, payload)| {
            let letter = envelope::decode::<DeadLetter>(&payload).unwrap_or_else(|e| DeadLetter {
                v: envelope::VERSION,
                stage: "unknown".to_owned(),
                channel_id: String::new(),
                reason: format!("this dead letter cannot be read: {e}"),
                code: None,
                subject: String::new(),
                msg_id: None,
                payload: String::from_utf8_lossy(&payload).into_owned(),
                at,
            });
            DeadView { seq, letter }
        })
        .collect();
    Ok(Json(DeadList { entries }))
}

/// The answer to a replay (202).
#[derive(Debug, Serialize, Deserialize)]
pub struct Replayed {
    /// The dead letter's sequence in `P_DEAD` (now deleted).
    pub seq: u64,
    /// Where the original was published again.
    pub subject: String,
    /// The `Nats-Msg-Id` of the replay.
    pub msg_id: String,
    /// True when this dead letter was replayed within the duplicate window already.
    pub duplicate: bool,
}

pub(crate) async fn replay_dead(
    State(state): State<AdminState>,
    Path(seq): Path<String>,
) -> Result<(StatusCode, Json<Replayed>), AdminError> {
    let seq: u64 = seq.trim().parse().ok().filter(|s| *s > 0).ok_or_else(|| {
        AdminError::invalid("invalid_seq", "seq must be a dead letter's sequence number (smsgate dead list)")
    })?;
    let stream = state.stream(state.topology.dead_stream()).await?;
    let stored = match tokio::time::timeout(NATS_TIMEOUT, stream.get_raw_message(seq)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {
            return Err(AdminError::not_found("no_such_dead_letter", format!("no dead letter {seq}")));
        }
        Ok(Err(e)) => return Err(AdminError::nats("read the dead letter", e)),
        Err(_) => {
            return Err(AdminError::Unavailable { what: "read the dead letter: timed out".to_owned(), source: None });
        }
    };
    let letter: DeadLetter = envelope::decode(&stored.payload)
        .map_err(|e| AdminError::invalid("not_replayable", format!("dead letter {seq} cannot be read: {e}")))?;
    // Only the three work queues take replays: never history or DEAD itself.
    let replayable = state.topology.parse_work_subject(&letter.subject).is_some();
    if !replayable {
        return Err(AdminError::invalid(
            "not_replayable",
            format!(
                "dead letter {seq} names subject {:?}, which is not a work queue of this prefix",
                clip(&letter.subject, 100)
            ),
        ));
    }
    // A fresh Nats-Msg-Id: the original one may still be inside the
    // duplicate window and would be dropped. Replaying the same letter twice
    // within the window is a no-op.
    let id = MsgId::Replay { seq, original: letter.msg_id.as_deref() };
    let msg_id = id.to_string();
    let payload = Bytes::from(letter.payload.clone());
    let ack =
        bounded("republish the dead letter", bus::publish(&state.js, letter.subject.clone(), id, payload)).await?;
    if let Err(e) = bounded("delete the dead letter", stream.delete_message(seq)).await {
        // Republished but still listed: a second replay dedupes on msg_id.
        tracing::warn!(
            service = "ingress",
            stage = "admin",
            seq,
            error = &e as &dyn std::error::Error,
            "replayed dead letter could not be deleted"
        );
    }
    metrics::counter!("smsgate_dead_replays_total", "channel_id" => letter.channel_id.clone()).increment(1);
    tracing::info!(service = "ingress", stage = "admin", seq, channel_id = %letter.channel_id, dead_stage = %letter.stage, outcome = "replayed", "dead letter replayed");
    Ok((StatusCode::ACCEPTED, Json(Replayed { seq, subject: letter.subject, msg_id, duplicate: ack.duplicate })))
}
