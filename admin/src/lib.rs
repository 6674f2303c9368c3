//! The admin API on the private listener (`SMSGATE_ADMIN_ADDR`), bearer
//! `SMSGATE_ADMIN_TOKEN` (docs/ARCHITECTURE.md §6, "HTTP (contract)").
//! ingress serves it on its second listener; it never runs on the public one.
//!
//! # Layout
//!
//! - [`console`]: the web console's page and files at `/`, and its
//!   sign-in (`/api/v1/session`, an HttpOnly SameSite=Strict cookie).
//! - [`router`] (this file): the routes, behind [`guard`] (host, origin,
//!   token, JSON writes), and [`AdminState`], what every handler reads.
//! - `messages`: `POST /api/v1/messages` publishes an `Outbound` to
//!   `P.outbound.<channel>` (the sender takes it from there).
//! - `calls`: `POST /api/v1/calls` publishes an `Outbound` with `call` set
//!   (the sender places it through Twilio's Calls API).
//! - [`compliance`]: both go through the guard first: queued, scheduled
//!   (KV `P_schedule`), or refused (403/409), the verdict noted in the
//!   conversation.
//! - `scheduled`: list and cancel what waits in `P_schedule`.
//! - `consent`: consent on record (KV `P_consent`): add, show, revoke.
//! - `conversations`: the list (a page of [`index`]) and one conversation (an ordered replay of its subject, each outbound
//!   piece folded with its delivery statuses).
//! - `takeover`: pause and resume the bot for one conversation (KV
//!   `P_conversations`, a note in the conversation's history).
//! - `channels`: the channels (file and runtime) with their health;
//!   connecting and disconnecting at run time (`smsgate_shared::channels`),
//!   and each channel's status as Twilio has it, through [`twilio`]; its
//!   whole webhook URLs and a signed simulated webhook (`smsgate
//!   webhook-url` and `simulate` for channels connected at run time).
//! - `dead`: list and replay `P_DEAD`.
//! - [`mcp`]: the MCP server at `/mcp` (Streamable HTTP), whose tools call
//!   the same functions as these routes (sends through [`compliance`] as
//!   the agent's).
//! - [`index`]: the conversation list's read model, kept in memory from the
//!   history stream (one follower task per process).
//! - [`events`]: `GET /api/v1/events`, Server-Sent Events read from the
//!   history and dead-letter streams, resumable with `Last-Event-ID`.
//! - `reader`: reads a subject's messages with an ordered consumer.
//! - [`AdminError`] (`error`): every failure, mapped to a status and a JSON
//!   `{code, detail}` body in one `IntoResponse`.
//!
//! Every NATS call is bounded by [`NATS_TIMEOUT`] and answers 503 when NATS
//! is down, so an operator's command never hangs.

mod calls;
mod channels;
pub mod compliance;
mod consent;
pub mod console;
mod conversations;
mod dead;
mod error;
pub mod events;
pub mod guard;
pub mod index;
pub mod mcp;
mod messages;
mod reader;
mod scheduled;
mod takeover;
pub mod twilio;

use std::sync::Arc;

use async_nats::jetstream::{self, stream::Stream as JsStream};
use axum::Router;
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::channels::Registry;
use smsgate_shared::config::Channel;
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{ConversationState, HistoryEvent, NoteReason};
use smsgate_shared::redact::clip;
use smsgate_shared::topology::{ChannelSubjects, Topology};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use calls::{CallRequest, CallState, CallStatusView, CallTurnView};
pub use channels::{ChannelStatus, ChannelView, ChannelsView, ConnectQuery, Disconnected, NatsHealth, WebhookView};
pub use compliance::SendAccepted;
pub use consent::ConsentView;
pub use conversations::{Conversation, ConversationList, EntryView, EventView, PieceView};
pub use dead::{DeadList, DeadView, Replayed};
pub use error::{AdminError, ErrorBody, NATS_TIMEOUT};
pub use index::{ConversationIndex, ConversationSummary, LastMessage};
pub use messages::SendRequest;
pub use scheduled::{ScheduledList, ScheduledView};
pub use takeover::TakeoverState;

use error::bounded;

/// Entries a conversation answer holds unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 10_000;
/// Admin request bodies are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the admin routes need. The JetStream context works before NATS is
/// reachable (calls then fail and answer 503); open key-value buckets
/// lazily with `js.get_key_value(topology.optout_bucket())` when needed.
#[derive(Clone)]
pub struct AdminState {
    pub js: jetstream::Context,
    pub topology: Topology,
    /// The live channels (file and runtime), shared with ingress's webhook routes.
    pub channels: Registry<ChannelSubjects>,
    /// The conversation list, kept by [`AdminState::start`].
    pub index: Arc<ConversationIndex>,
    /// Ends the long-lived answers (the event stream) at shutdown.
    pub shutdown: CancellationToken,
    /// Twilio's Account and IncomingPhoneNumbers resources (channel status,
    /// `set_webhook`).
    pub twilio: twilio::Twilio,
    /// The compliance guard's buckets, opened at first use.
    guard: Arc<tokio::sync::OnceCell<smsgate_shared::guard::GuardStore>>,
    /// The slots of the event streams open at once ([`events::MAX_EVENT_STREAMS`]).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// `SMSGATE_MCP_DEFAULT_CHANNEL`: the channel MCP tools use when a call
    /// names none (else the only channel).
    pub mcp_default_channel: Option<String>,
}

impl AdminState {
    pub fn new(js: jetstream::Context, topology: Topology, channels: Registry<ChannelSubjects>) -> Self {
        let index = Arc::new(ConversationIndex::new(topology.history_max_age, index::MAX_ENTRIES));
        Self {
            js,
            topology,
            channels,
            index,
            shutdown: CancellationToken::new(),
            twilio: twilio::Twilio::new(),
            guard: Arc::default(),
            event_streams: events::stream_slots(),
            mcp_default_channel: None,
        }
    }

    /// Starts what the admin side keeps up to date in the background (the
    /// conversation index, following the history stream) until `shutdown`.
    pub fn start(&mut self, shutdown: CancellationToken) {
        self.shutdown = shutdown;
        let (js, topology, shutdown) = (self.js.clone(), self.topology.clone(), self.shutdown.clone());
        tokio::spawn(self.index.clone().follow(js, topology, shutdown));
    }
}

/// The admin routes (`/api/v1/...` and `/metrics`), all behind the
/// [`guard`] (host, origin, bearer token, JSON writes).
pub fn router(state: AdminState, guard: Arc<guard::Guard>) -> Router {
    let sessions = Router::new()
        .route(console::SESSION_PATH, post(console::sign_in).get(console::session).delete(console::sign_out))
        .with_state(guard.clone());
    let mcp = mcp::service(state.clone(), &guard);
    Router::new()
        .route("/", get(console::serve_file))
        .route("/console.js", get(console::serve_file))
        .route("/console.css", get(console::serve_file))
        .route("/api/v1/messages", post(messages::send_message))
        .route("/api/v1/calls", post(calls::place_call))
        .route("/api/v1/calls/{call_sid}", get(calls::call_state))
        .nest_service("/mcp", mcp)
        .route("/api/v1/scheduled", get(scheduled::list_scheduled))
        .route("/api/v1/scheduled/{id}", delete(scheduled::cancel_scheduled))
        .route("/api/v1/consent", post(consent::add_consent))
        .route("/api/v1/consent/{channel_id}/{peer}", get(consent::show_consent).delete(consent::revoke_consent))
        .route("/api/v1/conversations", get(conversations::list_conversations))
        .route("/api/v1/conversations/{channel_id}/{peer}", get(conversations::read_conversation))
        .route("/api/v1/conversations/{channel_id}/{peer}/pause", post(takeover::pause_conversation))
        .route("/api/v1/conversations/{channel_id}/{peer}/resume", post(takeover::resume_conversation))
        .route("/api/v1/channels", get(channels::list_channels).post(channels::connect_channel))
        .route("/api/v1/channels/{channel_id}", delete(channels::disconnect_channel))
        .route("/api/v1/channels/{channel_id}/status", get(channels::channel_status))
        .route("/api/v1/channels/{channel_id}/webhook", get(channels::channel_webhook))
        .route("/api/v1/channels/{channel_id}/simulate", post(channels::simulate_webhook))
        .route("/api/v1/events", get(events::events))
        .route("/api/v1/dead", get(dead::list_dead))
        .route("/api/v1/dead/{seq}/replay", post(dead::replay_dead))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(sessions)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(guard, guard::check))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

impl AdminState {
    pub(crate) fn nats_connected(&self) -> bool {
        self.js.client().connection_state() == async_nats::connection::State::Connected
    }

    /// Fails fast (503) instead of waiting for a request timeout when the
    /// client knows it is disconnected.
    pub(crate) fn require_nats(&self) -> Result<(), AdminError> {
        if self.nats_connected() {
            Ok(())
        } else {
            Err(AdminError::Unavailable { what: "not connected".to_owned(), source: None })
        }
    }

    pub(crate) async fn stream(&self, name: String) -> Result<JsStream, AdminError> {
        self.require_nats()?;
        bounded(&format!("cannot open stream {name}"), self.js.get_stream(name.clone())).await
    }

    /// The `P_conversations` bucket (human takeover).
    pub(crate) async fn conversations(&self) -> Result<jetstream::kv::Store, AdminError> {
        self.require_nats()?;
        bounded("open the conversations bucket", self.js.get_key_value(self.topology.conversations_bucket())).await
    }

    /// When the bot's pause for this conversation ends, if it is paused now.
    pub(crate) async fn paused_until(
        &self,
        channel: &ChannelId,
        peer: &E164,
    ) -> Result<Option<OffsetDateTime>, AdminError> {
        let store = self.conversations().await?;
        let key = Topology::conversation_key(channel, peer);
        let value = bounded("read the conversation's state", store.get(&key)).await?;
        let now = OffsetDateTime::now_utc();
        Ok(value.and_then(|v| ConversationState::paused_until(&v, now).ok().flatten()))
    }

    /// Records a pause or a resume in the conversation, so that it shows
    /// who had the conversation when.
    pub(crate) async fn takeover_note(
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

    pub(crate) fn channel(&self, id: &str) -> Option<Channel> {
        self.channels.snapshot().get_str(id).map(|l| l.channel.clone())
    }

    pub(crate) fn known_channel(&self, id: &str) -> Result<ChannelId, AdminError> {
        self.channel(id).map(|c| c.id.clone()).ok_or_else(|| {
            AdminError::not_found("unknown_channel", format!("no channel {:?} is configured", clip(id, 64)))
        })
    }
}

async fn not_found() -> AdminError {
    AdminError::not_found("no_route", "no such admin route (see docs/ARCHITECTURE.md §6)")
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        smsgate_shared::telemetry::render(&smsgate_shared::telemetry::metrics_handle()),
    )
}
