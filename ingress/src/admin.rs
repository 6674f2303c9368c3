//! The admin API on the private listener (`SMSGATE_ADMIN_ADDR`), bearer
//! `SMSGATE_ADMIN_TOKEN` (docs/ARCHITECTURE.md §6, "HTTP (contract)").
//!
//! # Layout
//!
//! - [`router`]: the routes, behind [`crate::guard`] (host, origin, token, JSON).
//! - handlers: `send_message` publishes an [`Outbound`] to `P.outbound.<channel>`
//!   (the sender takes it from there); `list_conversations` reads only the
//!   history stream's per-subject counts and each subject's last message;
//!   `read_conversation` replays one subject with an ordered consumer and
//!   folds the Status entries into each outbound piece's delivery state;
//!   `list_channels` answers from the config plus NATS health; `list_dead`
//!   and `replay_dead` work on `P_DEAD`.
//! - [`AdminError`]: every failure, mapped to a status and a JSON
//!   `{code, detail}` body in one `IntoResponse`.
//!
//! Every NATS call is bounded by [`NATS_TIMEOUT`] and answers 503 when NATS
//! is down, so an operator's command never hangs.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::Stream as JsStream};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::config::{Channel, TWILIO_MAX_BODY, WEBHOOK_PATH};
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{
    self, ConversationState, DeadLetter, HistoryEntry, HistoryEvent, Media, MessageStatus, NoteReason, Origin, Outbound,
};
use smsgate_shared::redact::clip;
use smsgate_shared::topology::Topology;
use time::OffsetDateTime;

/// The longest any single NATS operation of an admin request may take.
pub const NATS_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries a conversation answer holds unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 10_000;
/// The most attachments Twilio takes on one message.
const MAX_MEDIA: usize = 10;
/// Admin request bodies are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the admin routes need. The JetStream context works before NATS is
/// reachable (calls then fail and answer 503); open key-value buckets
/// lazily with `js.get_key_value(topology.optout_bucket())` when needed.
#[derive(Clone)]
pub struct AdminState {
    pub js: jetstream::Context,
    pub topology: Topology,
    pub channels: Arc<Vec<Channel>>,
}

/// The admin routes (`/api/v1/...` and `/metrics`), all behind the
/// [`crate::guard`] (host, origin, bearer token, JSON writes).
pub fn router(state: AdminState, guard: Arc<crate::guard::Guard>) -> Router {
    Router::new()
        .route("/api/v1/messages", post(send_message))
        .route("/api/v1/conversations", get(list_conversations))
        .route("/api/v1/conversations/{channel_id}/{peer}", get(read_conversation))
        .route("/api/v1/conversations/{channel_id}/{peer}/pause", post(pause_conversation))
        .route("/api/v1/conversations/{channel_id}/{peer}/resume", post(resume_conversation))
        .route("/api/v1/channels", get(list_channels))
        .route("/api/v1/dead", get(list_dead))
        .route("/api/v1/dead/{seq}/replay", post(replay_dead))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(guard, crate::guard::check))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Errors

/// Why an admin request failed. Each variant has one status code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong: 400.
    #[error("{detail}")]
    Invalid { code: &'static str, detail: String },
    /// No such channel, conversation or dead letter: 404.
    #[error("{detail}")]
    NotFound { code: &'static str, detail: String },
    /// Missing or wrong bearer token: 401.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// Refused before any handler ([`crate::guard`]): wrong host (421),
    /// another origin (403), not JSON (415).
    #[error("{detail}")]
    Refused { status: StatusCode, code: &'static str, detail: &'static str },
    /// NATS is down or did not answer in time: 503.
    #[error("NATS is unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Anything else: logged with its cause chain, answered as an opaque 500.
    #[error("{what}")]
    Internal {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl AdminError {
    fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid { code, detail: detail.into() }
    }

    fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::NotFound { code, detail: detail.into() }
    }

    fn nats(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Unavailable { what: what.into(), source: Some(Box::new(e)) }
    }

    pub(crate) fn refused(status: StatusCode, code: &'static str, detail: &'static str) -> Self {
        Self::Refused { status, code, detail }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Refused { status, .. } => *status,
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Invalid { code, .. } | Self::NotFound { code, .. } | Self::Refused { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Unavailable { .. } => "nats_unavailable",
            Self::Internal { .. } => "internal",
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub detail: String,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal { .. } => {
                tracing::error!(
                    service = "ingress",
                    stage = "admin",
                    outcome = "error",
                    error = &self as &dyn std::error::Error,
                    "admin request failed"
                );
                "internal error (see the ingress log)".to_owned()
            }
            Self::Unavailable { .. } => {
                tracing::warn!(
                    service = "ingress",
                    stage = "admin",
                    outcome = "nats_unavailable",
                    error = &self as &dyn std::error::Error,
                    "admin request failed"
                );
                let mut text = self.to_string();
                let mut source = std::error::Error::source(&self);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                text
            }
            _ => self.to_string(),
        };
        let mut response = (status, Json(ErrorBody { code: self.code().to_owned(), detail })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Runs a NATS operation with [`NATS_TIMEOUT`]; a timeout is a 503.
async fn bounded<T, E, F>(what: &str, f: F) -> Result<T, AdminError>
where
    F: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(NATS_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(AdminError::nats(what, e)),
        Err(_) => {
            Err(AdminError::Unavailable { what: format!("{what}: no answer within {NATS_TIMEOUT:?}"), source: None })
        }
    }
}

impl AdminState {
    fn nats_connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }

    /// Fails fast (503) instead of waiting for a request timeout when the
    /// client knows it is disconnected.
    fn require_nats(&self) -> Result<(), AdminError> {
        if self.nats_connected() {
            Ok(())
        } else {
            Err(AdminError::Unavailable { what: "not connected".to_owned(), source: None })
        }
    }

    async fn stream(&self, name: String) -> Result<JsStream, AdminError> {
        self.require_nats()?;
        bounded(&format!("cannot open stream {name}"), self.js.get_stream(name.clone())).await
    }

    /// The `P_conversations` bucket (human takeover).
    async fn conversations(&self) -> Result<jetstream::kv::Store, AdminError> {
        self.require_nats()?;
        bounded("open the conversations bucket", self.js.get_key_value(self.topology.conversations_bucket())).await
    }

    /// When the bot's pause for this conversation ends, if it is paused now.
    async fn paused_until(&self, channel: &ChannelId, peer: &E164) -> Result<Option<OffsetDateTime>, AdminError> {
        let store = self.conversations().await?;
        let key = Topology::conversation_key(channel, peer);
        let value = bounded("read the conversation's state", store.get(&key)).await?;
        let now = OffsetDateTime::now_utc();
        Ok(value.and_then(|v| ConversationState::paused_until(&v, now).ok().flatten()))
    }

    /// Records a pause or a resume in the conversation, so that it shows
    /// who had the conversation when.
    async fn takeover_note(
        &self,
        channel: &ChannelId,
        peer: &E164,
        key: &str,
        reason: NoteReason,
        detail: String,
    ) -> Result<(), AdminError> {
        let event = HistoryEvent::Note { reason, message_sid: None, outbound_id: None, detail };
        let id = MsgId::Takeover { conversation: key, reason, at_ns: OffsetDateTime::now_utc().unix_timestamp_nanos() };
        bounded(
            "record it in the conversation",
            bus::append_history(&self.js, &self.topology, (channel, peer), id, event),
        )
        .await
    }

    fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.id.as_str() == id)
    }

    fn known_channel(&self, id: &str) -> Result<ChannelId, AdminError> {
        self.channel(id).map(|c| c.id.clone()).ok_or_else(|| {
            AdminError::not_found("unknown_channel", format!("no channel {:?} is configured", clip(id, 64)))
        })
    }
}

// ---------------------------------------------------------------------------
// Auth

async fn not_found() -> AdminError {
    AdminError::not_found("no_route", "no such admin route (see docs/ARCHITECTURE.md §6)")
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        smsgate_shared::telemetry::metrics_handle().render(),
    )
}

// ---------------------------------------------------------------------------
// POST /api/v1/messages

/// The body of `POST /api/v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub channel_id: String,
    pub to: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub media_urls: Vec<String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The answer to `POST /api/v1/messages` (202).
#[derive(Debug, Serialize, Deserialize)]
pub struct SendAccepted {
    /// The outbound id: `api.<idempotency key>`, or a generated `api.<random>`.
    pub id: String,
    /// True when the same id was accepted before within the duplicate window
    /// (nothing new is sent).
    pub duplicate: bool,
}

impl SendRequest {
    fn validate(self, state: &AdminState) -> Result<Outbound, AdminError> {
        let channel = state.channel(&self.channel_id).ok_or_else(|| {
            AdminError::invalid("unknown_channel", format!("no channel {:?} is configured", clip(&self.channel_id, 64)))
        })?;
        if !channel.enabled {
            return Err(AdminError::invalid("channel_disabled", format!("channel {} is disabled", channel.id)));
        }
        let to = E164::parse(self.to.trim())
            .map_err(|e| AdminError::invalid("invalid_number", format!("to: {}", e.reason)))?;
        if self.body.trim().is_empty() && self.media_urls.is_empty() {
            return Err(AdminError::invalid("empty_body", "body is empty (and there are no media_urls)"));
        }
        let chars = self.body.chars().count();
        if chars > TWILIO_MAX_BODY {
            return Err(AdminError::invalid(
                "body_too_long",
                format!("body has {chars} characters; Twilio takes at most {TWILIO_MAX_BODY}"),
            ));
        }
        if self.media_urls.len() > MAX_MEDIA {
            return Err(AdminError::invalid(
                "too_many_media",
                format!("{} media_urls; Twilio takes at most {MAX_MEDIA}", self.media_urls.len()),
            ));
        }
        for (i, u) in self.media_urls.iter().enumerate() {
            let ok = (u.starts_with("https://") || u.starts_with("http://")) && !u.contains(char::is_whitespace);
            if !ok {
                return Err(AdminError::invalid("invalid_media_url", format!("media_urls[{i}] is not an http(s) URL")));
            }
        }
        // Caller keys and generated ids alike live under `api.`.
        let id = match self.idempotency_key {
            Some(key) if !Outbound::valid_id(&key) || !Outbound::valid_id(&Outbound::api_id(&key)) => {
                return Err(AdminError::invalid(
                    "invalid_idempotency_key",
                    "idempotency_key must be 1-124 letters, digits, '_', '-' or '.', not starting or ending with '.'",
                ));
            }
            Some(key) => Outbound::api_id(&key),
            None => Outbound::api_id(&smsgate_shared::config::generate_token()[..24]),
        };
        Ok(Outbound {
            v: envelope::VERSION,
            id,
            channel_id: channel.id.clone(),
            to,
            body: self.body,
            media_urls: self.media_urls,
            in_reply_to: None,
            origin: Origin::Api,
            created_at: OffsetDateTime::now_utc(),
        })
    }
}

async fn send_message(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<(StatusCode, Json<SendAccepted>), AdminError> {
    let invalid = |e: serde_json::Error| {
        AdminError::invalid("invalid_json", format!("the body is not a valid message request: {e}"))
    };
    // An object only: serde would also read a struct from a JSON array.
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(invalid)?;
    if !value.is_object() {
        return Err(AdminError::invalid("invalid_json", "the body must be a JSON object"));
    }
    let request: SendRequest = serde_json::from_value(value).map_err(invalid)?;
    let outbound = request.validate(&state)?;
    state.require_nats()?;
    let subject = state.topology.outbound_subject(&outbound.channel_id);
    let id = MsgId::Outbound(&outbound.id);
    let ack =
        bounded("publish to the outbound stream", bus::publish(&state.js, subject, id, envelope::encode(&outbound)))
            .await?;
    metrics::counter!("smsgate_admin_messages_total", "channel_id" => outbound.channel_id.to_string(), "outcome" => if ack.duplicate { "duplicate" } else { "accepted" }).increment(1);
    tracing::info!(
        service = "ingress",
        stage = "admin",
        channel_id = %outbound.channel_id,
        peer = %outbound.to.masked(),
        outbound_id = %outbound.id,
        outcome = if ack.duplicate { "duplicate" } else { "accepted" },
        "message accepted for sending"
    );
    Ok((StatusCode::ACCEPTED, Json(SendAccepted { id: outbound.id, duplicate: ack.duplicate })))
}

// ---------------------------------------------------------------------------
// GET /api/v1/conversations

#[derive(Debug, Deserialize)]
pub struct ConversationsQuery {
    #[serde(default)]
    pub channel_id: Option<String>,
}

/// One conversation in the list.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub channel_id: String,
    pub peer: String,
    /// Entries in the conversation's history (messages, delivery statuses and
    /// notes): counted by the server per subject, without reading them.
    pub count: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_at: Option<OffsetDateTime>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
}

async fn list_conversations(
    State(state): State<AdminState>,
    Query(query): Query<ConversationsQuery>,
) -> Result<Json<ConversationList>, AdminError> {
    let channel = match query.channel_id.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(state.known_channel(c)?),
        None => None,
    };
    let stream = state.stream(state.topology.history_stream()).await?;
    let filter = state.topology.history_filter(channel.as_ref());
    let subjects: Vec<(String, usize)> = bounded("read history subjects", async {
        stream.info_with_subjects(filter).await?.try_collect::<Vec<_>>().await
    })
    .await?;
    let (stream, topology) = (&stream, &state.topology);
    let mut conversations: Vec<ConversationSummary> = futures::stream::iter(subjects)
        .map(|(subject, count)| async move {
            let (channel_id, peer) = topology.parse_history_subject(&subject)?;
            // Only the last message's time is read, never the whole log.
            let last_at = tokio::time::timeout(NATS_TIMEOUT, stream.direct_get_last_for_subject(subject.clone()))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|m| m.time);
            Some(ConversationSummary {
                channel_id: channel_id.to_string(),
                peer: peer.to_string(),
                count: count as u64,
                last_at,
            })
        })
        .buffer_unordered(16)
        .filter_map(|c| async move { c })
        .collect()
        .await;
    conversations.sort_by(|a, b| b.last_at.cmp(&a.last_at).then_with(|| a.peer.cmp(&b.peer)));
    Ok(Json(ConversationList { conversations }))
}

// ---------------------------------------------------------------------------
// GET /api/v1/conversations/{channel_id}/{peer}

#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    #[serde(default)]
    pub limit: Option<String>,
    #[serde(default)]
    pub channel_id: Option<String>,
}

fn parse_limit(raw: Option<&str>) -> Result<usize, AdminError> {
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
            HistoryEvent::Outbound { id, body, in_reply_to, origin, pieces, delivery } => {
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
                EventView::Outbound { id, body, in_reply_to, origin, delivery, state, pieces }
            }
            HistoryEvent::Status { sid, status, error_code } => EventView::Status { sid, status, error_code },
            HistoryEvent::Note { reason, message_sid, outbound_id, detail } => {
                EventView::Note { reason, message_sid, outbound_id, detail }
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

async fn read_conversation(
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
        entries,
    }))
}

/// A number in a URL path, with or without its '+' (a '+' in a URL is easy to lose).
fn peer_of_path(peer: &str) -> Result<E164, AdminError> {
    let text = peer.trim();
    if text.starts_with('+') { E164::parse(text) } else { E164::parse(&format!("+{text}")) }
        .map_err(|e| AdminError::invalid("invalid_number", e.reason))
}

// ---------------------------------------------------------------------------
// Human takeover: pause and resume the bot for one conversation

/// `POST .../pause` body: `{}` or `{"minutes": N}` (else the channel's
/// `pause_minutes`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseRequest {
    #[serde(default)]
    minutes: Option<f64>,
}

/// The answer of pause and resume.
#[derive(Debug, Serialize)]
pub struct TakeoverState {
    pub channel_id: String,
    pub peer: String,
    pub paused: bool,
    /// When the bot answers again on its own.
    #[serde(with = "time::serde::rfc3339::option")]
    pub paused_until: Option<OffsetDateTime>,
}

async fn pause_conversation(
    State(state): State<AdminState>,
    Path((channel_id, peer)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<TakeoverState>, AdminError> {
    let channel = state
        .channel(&channel_id)
        .ok_or_else(|| {
            AdminError::not_found("unknown_channel", format!("no channel {:?} is configured", clip(&channel_id, 64)))
        })?
        .clone();
    let peer = peer_of_path(&peer)?;
    let request: PauseRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PauseRequest { minutes: None }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AdminError::invalid("invalid_json", format!("the body is not a valid pause request: {e}")))?
    };
    let minutes = request.minutes.unwrap_or(channel.pause_minutes);
    smsgate_shared::config::check_pause_minutes(minutes)
        .map_err(|m| AdminError::invalid("invalid_minutes", format!("minutes {m}")))?;
    let now = OffsetDateTime::now_utc();
    let until = now + Duration::from_secs_f64(minutes * 60.0);
    let record = ConversationState { v: envelope::VERSION, paused_until: until, paused_at: now };
    let key = Topology::conversation_key(&channel.id, &peer);
    let store = state.conversations().await?;
    bounded("store the pause", store.put(&key, envelope::encode(&record))).await?;
    let until_text = until.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let detail = format!("an operator paused the bot for {minutes} minutes, until {until_text}");
    state.takeover_note(&channel.id, &peer, &key, NoteReason::Paused, detail).await?;
    tracing::info!(service = "ingress", stage = "admin", channel_id = %channel.id, minutes, outcome = "paused", "bot paused for a conversation");
    Ok(Json(TakeoverState {
        channel_id: channel.id.to_string(),
        peer: peer.to_string(),
        paused: true,
        paused_until: Some(until),
    }))
}

async fn resume_conversation(
    State(state): State<AdminState>,
    Path((channel_id, peer)): Path<(String, String)>,
) -> Result<Json<TakeoverState>, AdminError> {
    let channel = state.known_channel(&channel_id)?;
    let peer = peer_of_path(&peer)?;
    let key = Topology::conversation_key(&channel, &peer);
    let store = state.conversations().await?;
    bounded("remove the pause", store.delete(&key)).await?;
    state
        .takeover_note(
            &channel,
            &peer,
            &key,
            NoteReason::Resumed,
            "an operator handed the conversation back to the bot".to_owned(),
        )
        .await?;
    tracing::info!(service = "ingress", stage = "admin", channel_id = %channel, outcome = "resumed", "bot resumed for a conversation");
    Ok(Json(TakeoverState {
        channel_id: channel.to_string(),
        peer: peer.to_string(),
        paused: false,
        paused_until: None,
    }))
}

/// Reads every message on `filter` (oldest first) with an ordered consumer:
/// (stream sequence, time stored, payload). At most `cap` of the newest are
/// kept when a cap is given.
async fn read_all(
    stream: &JsStream,
    filter: String,
    cap: Option<usize>,
) -> Result<Vec<(u64, OffsetDateTime, Bytes)>, AdminError> {
    let consumer = bounded(
        "create a reader",
        stream.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        }),
    )
    .await?;
    let pending = consumer.cached_info().num_pending;
    let mut out: VecDeque<(u64, OffsetDateTime, Bytes)> = VecDeque::new();
    if pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = bounded("read messages", consumer.messages()).await?;
    loop {
        let next = tokio::time::timeout(NATS_TIMEOUT, messages.next()).await;
        let message = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(AdminError::nats("read messages", e)),
            Ok(None) => break,
            Err(_) => {
                return Err(AdminError::Unavailable {
                    what: format!("read messages: no message within {NATS_TIMEOUT:?}"),
                    source: None,
                });
            }
        };
        let info = message.info().map_err(|e| AdminError::Internal {
            what: "a message without JetStream metadata".to_owned(),
            source: Some(e),
        })?;
        let (seq, published, left) = (info.stream_sequence, info.published, info.pending);
        if cap.is_some_and(|c| out.len() == c) {
            out.pop_front();
        }
        out.push_back((seq, published, message.payload.clone()));
        if left == 0 {
            break;
        }
    }
    Ok(out.into())
}

// ---------------------------------------------------------------------------
// GET /api/v1/channels

#[derive(Debug, Serialize)]
pub struct ChannelsView {
    pub nats: NatsHealth,
    pub channels: Vec<ChannelView>,
}

#[derive(Debug, Serialize)]
pub struct NatsHealth {
    pub connected: bool,
    pub streams_present: bool,
}

/// A channel as the API shows it: no auth token, no path token.
#[derive(Debug, Serialize)]
pub struct ChannelView {
    pub channel_id: String,
    pub enabled: bool,
    pub from_number: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub chat: &'static str,
    pub delivery: &'static str,
    pub public_base_url: Option<String>,
    /// The webhook URL with the secret path token elided; the real one comes
    /// from `smsgate webhook-url`, which reads the config.
    pub webhook_url: Option<String>,
    pub insecure_skip_signature: bool,
    /// Entries in `P_DEAD` for this channel (None when NATS did not answer).
    pub dead_letters: Option<u64>,
    /// `ok`, `degraded`, `down` or `disabled`.
    pub health: &'static str,
    pub problems: Vec<String>,
}

async fn list_channels(State(state): State<AdminState>) -> Json<ChannelsView> {
    let connected = state.nats_connected();
    let streams_present =
        connected && tokio::time::timeout(NATS_TIMEOUT, state.topology.present(&state.js)).await.unwrap_or(false);
    let dead_counts: Option<HashMap<String, u64>> =
        if streams_present { dead_counts_by_channel(&state).await.ok() } else { None };
    let channels = state
        .channels
        .iter()
        .map(|c| {
            let dead_letters = dead_counts.as_ref().map(|m| m.get(c.id.as_str()).copied().unwrap_or(0));
            let mut problems = Vec::new();
            if !connected {
                problems.push("NATS is not connected".to_owned());
            } else if !streams_present {
                problems.push("the JetStream streams are missing".to_owned());
            }
            if let Some(n) = dead_letters.filter(|n| *n > 0) {
                problems.push(format!("{n} dead letter(s): smsgate dead list"));
            }
            if c.public_base_url.is_none() {
                problems.push("no public base URL: set SMSGATE_PUBLIC_BASE_URL or public_base_url".to_owned());
            }
            if c.insecure_skip_signature {
                problems.push("signature checking is off (insecure_skip_signature)".to_owned());
            }
            let health = if !c.enabled {
                "disabled"
            } else if !streams_present {
                "down"
            } else if problems.is_empty() {
                "ok"
            } else {
                "degraded"
            };
            ChannelView {
                channel_id: c.id.to_string(),
                enabled: c.enabled,
                from_number: c.from_number.as_ref().map(ToString::to_string),
                messaging_service_sid: c.messaging_service_sid.clone(),
                chat: c.chat.kind(),
                delivery: match c.delivery {
                    smsgate_shared::config::Delivery::Twilio => "twilio",
                    smsgate_shared::config::Delivery::Log => "log",
                },
                public_base_url: c.public_base_url.clone(),
                webhook_url: c.public_base_url.as_ref().map(|b| format!("{b}{WEBHOOK_PATH}…")),
                insecure_skip_signature: c.insecure_skip_signature,
                dead_letters,
                health,
                problems,
            }
        })
        .collect();
    Json(ChannelsView { nats: NatsHealth { connected, streams_present }, channels })
}

/// Dead letters per channel from the subject counts (`P.dead.<stage>.<channel>`).
async fn dead_counts_by_channel(state: &AdminState) -> Result<HashMap<String, u64>, AdminError> {
    let stream = state.stream(state.topology.dead_stream()).await?;
    let filter = format!("{}.dead.>", state.topology.prefix());
    let subjects: Vec<(String, usize)> = bounded("read dead-letter subjects", async {
        stream.info_with_subjects(filter).await?.try_collect::<Vec<_>>().await
    })
    .await?;
    let mut counts = HashMap::new();
    for (subject, n) in subjects {
        if let Some(channel) = subject.rsplit('.').next() {
            *counts.entry(channel.to_owned()).or_insert(0) += n as u64;
        }
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------
// GET /api/v1/dead, POST /api/v1/dead/{seq}/replay

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

async fn list_dead(
    State(state): State<AdminState>,
    Query(query): Query<LimitQuery>,
) -> Result<Json<DeadList>, AdminError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let filter = match query.channel_id.as_deref().filter(|c| !c.is_empty()) {
        // Dead letters of a channel that is no longer configured stay listable.
        Some(c) => {
            let c = ChannelId::parse(c).map_err(|e| AdminError::invalid("invalid_channel", e.reason))?;
            format!("{}.dead.*.{c}", state.topology.prefix())
        }
        None => format!("{}.dead.>", state.topology.prefix()),
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

async fn replay_dead(
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
    let p = state.topology.prefix();
    let replayable = ["inbound", "outbound", "status"].iter().any(|what| {
        letter.subject.strip_prefix(&format!("{p}.{what}.")).is_some_and(|rest| ChannelId::parse(rest).is_ok())
    });
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
