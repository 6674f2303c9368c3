//! `GET /api/v1/conversations` and `GET /api/v1/conversations/{channel_id}/{peer}`.

use std::collections::{HashMap, VecDeque};

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use smsgate_shared::cost::{Basis, CostSum, Item};
use smsgate_shared::domain::{E164, MessageSid};
use smsgate_shared::envelope::{self, HistoryEntry, HistoryEvent, Media, MessageStatus, NoteReason, Origin};
use time::OffsetDateTime;

use crate::index::{ConversationSummary, Cursor, PageQuery};
use crate::reader::read_all;
use crate::{AdminError, AdminState, DEFAULT_LIMIT, MAX_LIMIT};

#[derive(Debug, Deserialize)]
pub struct ConversationsQuery {
    #[serde(default)]
    pub channel_id: Option<String>,
    /// Part of the number (digits, with or without `+`).
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// One page of the conversation list, newest first.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// Conversations matching the filters, over all pages.
    pub total: usize,
}

/// How long a list request waits for the index's first read of the
/// history stream after a start.
const INDEX_WAIT: std::time::Duration = crate::NATS_TIMEOUT;
/// How long a list request waits for entries stored before it to be
/// indexed (a few milliseconds normally; the bound covers an entry that aged
/// out of the stream before the index saw it).
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

pub(crate) async fn list_conversations(
    State(state): State<AdminState>,
    Query(query): Query<ConversationsQuery>,
) -> Result<Json<ConversationList>, AdminError> {
    let channel = match query.channel_id.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(state.known_channel(c)?),
        None => None,
    };
    let limit = parse_limit(query.limit.as_deref())?;
    let cursor = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| {
            AdminError::invalid("invalid_cursor", "cursor must be the next_cursor of an earlier answer")
        })?),
        None => None,
    };
    if let Some(q) = query.q.as_deref()
        && (q.len() > 20 || !q.trim().trim_start_matches('+').chars().all(|c| c.is_ascii_digit()))
    {
        return Err(AdminError::invalid("invalid_query", "q must be digits of a number, with or without '+'"));
    }
    // What was recorded before this request is in the answer.
    let stream = state.stream(state.topology.history_stream()).await?;
    index_caught_up(&state, &stream).await?;
    let channel_text = channel.as_ref().map(ToString::to_string);
    let page = state.index.page(&PageQuery { channel: channel_text.as_deref(), q: query.q.as_deref(), limit, cursor });
    Ok(Json(ConversationList {
        conversations: page.conversations,
        next_cursor: page.next_cursor.map(|c| c.encode()),
        total: page.total,
    }))
}

/// Waits (bounded) until the index holds what the history stream held when
/// the request came, so an answer from it includes what was recorded before.
pub(crate) async fn index_caught_up(
    state: &AdminState,
    stream: &async_nats::jetstream::stream::Stream,
) -> Result<(), AdminError> {
    if !state.index.wait_loaded(INDEX_WAIT).await {
        return Err(AdminError::Unavailable {
            what: "the conversation list is still being read from the history stream".to_owned(),
            source: None,
        });
    }
    let last = stream.cached_info().state.last_sequence;
    if !state.index.wait_applied(last, CATCH_UP_WAIT).await {
        tracing::debug!(
            service = "ingress",
            stage = "admin",
            last,
            applied = state.index.applied(),
            "conversation index behind the stream"
        );
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default)]
    pub channel_id: Option<String>,
}

pub(crate) fn parse_limit(raw: Option<&str>) -> Result<usize, AdminError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => {
                Err(AdminError::invalid("invalid_limit", format!("limit must be a whole number from 1 to {MAX_LIMIT}")))
            }
        },
    }
}

/// One conversation, oldest entry first.
#[derive(Debug, Serialize)]
pub struct Conversation {
    pub channel_id: String,
    pub peer: String,
    /// Entries stored for this conversation (the answer holds the last `limit`).
    pub total: u64,
    /// Inbound plus outbound messages stored.
    pub messages: u64,
    /// When the oldest stored entry was written.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// Set while an operator has paused the bot for this conversation.
    #[serde(with = "time::serde::rfc3339::option")]
    pub paused_until: Option<OffsetDateTime>,
    /// What the whole conversation cost so far (every stored entry, not
    /// only those shown): Twilio's prices where known, else estimates.
    pub cost: CostSum,
    pub entries: Vec<EntryView>,
}

/// A history entry as the API shows it: the stored event plus its stream
/// sequence and, for outbound messages, the delivery state.
#[derive(Debug, Serialize)]
pub struct EntryView {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub event: EventView,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventView {
    Inbound {
        message_sid: MessageSid,
        body: String,
        media: Vec<Media>,
    },
    Outbound {
        id: String,
        body: String,
        in_reply_to: Option<MessageSid>,
        origin: Origin,
        delivery: String,
        /// The least advanced piece's state (a failed piece wins).
        state: String,
        pieces: Vec<PieceView>,
        /// Media URLs sent with the first piece (an MMS).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        media: Vec<String>,
    },
    Status {
        sid: String,
        status: String,
        error_code: Option<String>,
    },
    Note {
        reason: NoteReason,
        message_sid: Option<MessageSid>,
        outbound_id: Option<String>,
        detail: String,
    },
    Call {
        call_sid: String,
        status: String,
        direction: String,
        duration_secs: Option<u64>,
        detail: Option<String>,
    },
    CallTurn {
        call_sid: String,
        turn: u32,
        heard: String,
        said: String,
        origin: Origin,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        interrupted: bool,
    },
    Cost {
        item: Item,
        reference: String,
        units: u64,
        usd: Option<f64>,
        basis: Basis,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

#[derive(Debug, Serialize)]
pub struct PieceView {
    pub index: usize,
    pub body: String,
    pub segments: u32,
    pub encoding: String,
    pub sid: Option<String>,
    /// `logged` (delivery "log"), Twilio's latest status for the piece's SID,
    /// `queued` (sent to Twilio, no callback yet), `pending` or `failed`.
    pub state: String,
    pub error_code: Option<String>,
}

/// Statuses per Twilio SID and failure notes per outbound id, gathered from
/// the whole log so that a piece shows its latest state.
#[derive(Default)]
struct DeliveryIndex {
    by_sid: HashMap<String, (String, Option<String>)>,
    failed: HashMap<String, String>,
}

impl DeliveryIndex {
    fn add(&mut self, event: &HistoryEvent) {
        match event {
            HistoryEvent::Status { sid, status, error_code } => {
                let newer = self
                    .by_sid
                    .get(sid)
                    .is_none_or(|(old, _)| MessageStatus::parse(status).rank() >= MessageStatus::parse(old).rank());
                if newer {
                    self.by_sid.insert(sid.clone(), (status.clone(), error_code.clone()));
                }
            }
            HistoryEvent::Note { reason: NoteReason::SendFailed, outbound_id: Some(id), detail, .. } => {
                self.failed.insert(id.clone(), detail.clone());
            }
            _ => {}
        }
    }

    fn view(&self, seq: u64, entry: HistoryEntry) -> EntryView {
        let event = match entry.event {
            HistoryEvent::Inbound { message_sid, body, media } => EventView::Inbound { message_sid, body, media },
            HistoryEvent::Outbound { id, body, in_reply_to, origin, pieces, delivery, media } => {
                let failed = self.failed.contains_key(&id);
                let pieces: Vec<PieceView> = pieces
                    .into_iter()
                    .map(|p| {
                        let (state, error_code) = match (&p.sid, delivery.as_str()) {
                            (_, "log") => ("logged".to_owned(), None),
                            (Some(sid), _) => {
                                self.by_sid.get(sid).cloned().unwrap_or_else(|| ("queued".to_owned(), None))
                            }
                            (None, _) if failed => ("failed".to_owned(), None),
                            (None, _) => ("pending".to_owned(), None),
                        };
                        PieceView {
                            index: p.index,
                            body: p.body,
                            segments: p.segments,
                            encoding: p.encoding,
                            sid: p.sid,
                            state,
                            error_code,
                        }
                    })
                    .collect();
                let state = overall_state(&pieces, failed);
                EventView::Outbound { id, body, in_reply_to, origin, delivery, state, pieces, media }
            }
            HistoryEvent::Status { sid, status, error_code } => EventView::Status { sid, status, error_code },
            HistoryEvent::Note { reason, message_sid, outbound_id, detail } => {
                EventView::Note { reason, message_sid, outbound_id, detail }
            }
            HistoryEvent::Call { call_sid, status, direction, duration_secs, detail } => {
                EventView::Call { call_sid, status, direction, duration_secs, detail }
            }
            HistoryEvent::CallTurn { call_sid, turn, heard, said, origin, interrupted } => {
                EventView::CallTurn { call_sid, turn, heard, said, origin, interrupted }
            }
            HistoryEvent::Cost { item, reference, units, usd, basis, detail } => {
                EventView::Cost { item, reference, units, usd, basis, detail }
            }
        };
        EntryView { seq, at: entry.at, event }
    }
}

fn overall_state(pieces: &[PieceView], failed: bool) -> String {
    let is_failure = |s: &str| MessageStatus::parse(s).is_failure();
    if let Some(p) = pieces.iter().find(|p| is_failure(&p.state)) {
        return p.state.clone();
    }
    if failed {
        return "failed".to_owned();
    }
    // "logged" and "pending" are not Twilio statuses: rank them by hand.
    let rank = |s: &str| match s {
        "pending" => 0,
        "logged" => u8::MAX,
        other => MessageStatus::parse(other).rank(),
    };
    pieces.iter().min_by_key(|p| rank(&p.state)).map_or_else(|| "pending".to_owned(), |p| p.state.clone())
}

pub(crate) async fn read_conversation(
    State(state): State<AdminState>,
    Path((channel_id, peer)): Path<(String, String)>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<Conversation>, AdminError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let channel = state.known_channel(&channel_id)?;
    let peer = peer_of_path(&peer)?;
    let paused_until = state.paused_until(&channel, &peer).await?;
    let stream = state.stream(state.topology.history_stream()).await?;
    let subject = state.topology.history_subject(&channel, &peer);
    let mut index = DeliveryIndex::default();
    let mut window: VecDeque<(u64, HistoryEntry)> = VecDeque::with_capacity(limit.min(1024));
    let (mut total, mut messages, mut started_at) = (0u64, 0u64, None);
    let mut costs = Vec::new();
    for (seq, published, payload) in read_all(&stream, subject, None).await? {
        total += 1;
        started_at.get_or_insert(published);
        let Ok(entry) = envelope::decode::<HistoryEntry>(&payload) else {
            tracing::warn!(
                service = "ingress",
                stage = "admin",
                seq,
                outcome = "undecodable",
                "skipping a history entry this build cannot read"
            );
            continue;
        };
        if matches!(entry.event, HistoryEvent::Inbound { .. } | HistoryEvent::Outbound { .. }) {
            messages += 1;
        }
        index.add(&entry.event);
        if matches!(entry.event, HistoryEvent::Cost { .. }) {
            costs.push(entry.event.clone());
        }
        if window.len() == limit {
            window.pop_front();
        }
        window.push_back((seq, entry));
    }
    let entries = window.into_iter().map(|(seq, e)| index.view(seq, e)).collect();
    Ok(Json(Conversation {
        channel_id: channel.to_string(),
        peer: peer.to_string(),
        total,
        messages,
        started_at,
        paused_until,
        cost: CostSum::of(&costs),
        entries,
    }))
}

/// A number in a URL path, with or without its '+' (a '+' in a URL is easy to lose).
pub(crate) fn peer_of_path(peer: &str) -> Result<E164, AdminError> {
    let text = peer.trim();
    if text.starts_with('+') { E164::parse(text) } else { E164::parse(&format!("+{text}")) }
        .map_err(|e| AdminError::invalid("invalid_number", e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("3")).unwrap(), 3);
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("x")).is_err());
        assert!(parse_limit(Some("10001")).is_err());
    }

    fn piece(state: &str) -> PieceView {
        PieceView {
            index: 0,
            body: String::new(),
            segments: 1,
            encoding: "GSM-7".to_owned(),
            sid: None,
            state: state.to_owned(),
            error_code: None,
        }
    }

    #[test]
    fn the_least_advanced_piece_sets_the_state_and_failures_win() {
        assert_eq!(overall_state(&[piece("delivered"), piece("sent")], false), "sent");
        assert_eq!(overall_state(&[piece("delivered"), piece("undelivered")], false), "undelivered");
        assert_eq!(overall_state(&[piece("logged")], false), "logged");
        assert_eq!(overall_state(&[], true), "failed");
        assert_eq!(overall_state(&[], false), "pending");
    }

    #[test]
    fn statuses_never_move_a_piece_backwards() {
        let mut index = DeliveryIndex::default();
        for status in ["sent", "delivered", "sent", "queued"] {
            index.add(&HistoryEvent::Status { sid: "SM1".to_owned(), status: status.to_owned(), error_code: None });
        }
        assert_eq!(index.by_sid["SM1"].0, "delivered");
    }
}
