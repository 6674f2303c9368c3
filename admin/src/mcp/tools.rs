//! The tools. Each one calls what the matching admin route calls, and turns
//! an [`AdminError`] into a tool error ([`ToolError`]) carrying the admin
//! API's machine-readable `code`, so a client sees the same words an
//! operator's script would, and never a transport failure.

use axum::Json as AxumJson;
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResponse, CallToolResult};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use smsgate_shared::bus::{OutboundId, SentKey};
use smsgate_shared::guard::Initiator;

use super::Smsgate;
use crate::calls::{CallRequest, CallState, is_call_sid};
use crate::channels::ChannelStatus;
use crate::compliance::{self, SendAccepted};
use crate::conversations::{ConversationList, ConversationsQuery, LimitQuery};
use crate::error::ErrorBody;
use crate::messages::SendRequest;
use crate::scheduled::{CanceledView, ScheduledList, ScheduledQuery};
use crate::takeover::TakeoverState;
use crate::{AdminError, AdminState, bounded};

/// A tool's failure: the admin API's error body (`code`, `detail`, and for
/// the guard `error` and `next_allowed_at`) as the structured content of
/// a tool result with `isError: true`.
#[derive(Debug)]
pub struct ToolError(pub ErrorBody);

impl From<AdminError> for ToolError {
    fn from(e: AdminError) -> Self {
        Self(e.into_parts().1)
    }
}

impl ToolError {
    fn invalid(code: &'static str, detail: impl Into<String>) -> Self {
        Self(ErrorBody { code: code.to_owned(), detail: detail.into(), error: None, next_allowed_at: None })
    }
}

impl IntoCallToolResult for ToolError {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        let value = serde_json::to_value(&self.0).unwrap_or_else(|_| json!({"code": self.0.code}));
        let mut result = CallToolResult::structured_error(value);
        // The words first, for clients that show only the text.
        result.content = vec![rmcp::model::ContentBlock::text(format!("{}: {}", self.0.code, self.0.detail))];
        Ok(result.into())
    }
}

/// The guard's verdict on a text or a call, as data.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SendOutcome {
    /// `sent` (on its way now), `scheduled` (goes out at `send_at`, through
    /// the guard again then) or `refused` (the guard said no: `reason`).
    pub outcome: String,
    /// The message's id (`api.<idempotency_key>` or a generated one);
    /// absent when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When a scheduled message goes out (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<String>,
    /// The purpose the guard checked it for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// True when this idempotency key was accepted before: nothing new is sent.
    #[serde(default)]
    pub duplicate: bool,
    /// Why it was refused: `opted_out`, `no_consent`, `country_not_allowed`,
    /// `paused`, `recipient_cap`, `budget`, `quiet_hours`, `blocked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When a refused send would be allowed, if the guard knows (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_allowed_at: Option<String>,
    /// The refusal in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<SendAccepted> for SendOutcome {
    fn from(a: SendAccepted) -> Self {
        let outcome = if a.status == "scheduled" { "scheduled" } else { "sent" };
        Self {
            outcome: outcome.to_owned(),
            id: Some(a.id),
            send_at: a.send_at,
            purpose: a.purpose,
            duplicate: a.duplicate,
            reason: None,
            next_allowed_at: None,
            detail: None,
        }
    }
}

/// Submits through the guard and answers its verdict: a refusal is an
/// outcome, any other failure a tool error.
async fn guarded(
    state: &AdminState,
    validated: Result<
        (smsgate_shared::config::Channel, smsgate_shared::envelope::Outbound, compliance::Request),
        AdminError,
    >,
    what: &'static str,
) -> Result<Json<SendOutcome>, ToolError> {
    let (channel, outbound, mut request) = validated?;
    request.initiator = Initiator::Agent;
    match compliance::submit(state, &channel, outbound, request, what).await {
        Ok((_, AxumJson(accepted))) => Ok(Json(accepted.into())),
        Err(AdminError::Guard { code, detail, next_allowed_at, .. }) => Ok(Json(SendOutcome {
            outcome: "refused".to_owned(),
            id: None,
            send_at: None,
            purpose: None,
            duplicate: false,
            reason: Some(code.to_owned()),
            next_allowed_at,
            detail: Some(detail.to_owned()),
        })),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendTextArgs {
    /// The channel to send through. Optional when the server has one
    /// channel or a default one (SMSGATE_MCP_DEFAULT_CHANNEL).
    #[serde(default)]
    pub channel_id: Option<String>,
    /// The recipient in E.164, e.g. +14155550100.
    pub to: String,
    /// The text, at most 1600 characters.
    pub body: String,
    /// Pictures to attach (MMS): https URLs on public hosts, at most 10.
    #[serde(default)]
    pub media_urls: Vec<String>,
    /// `conversational` (answers the person, who texted recently),
    /// `informational` (needs their consent) or `marketing` (needs written
    /// consent). Default: conversational when they texted within the
    /// channel's window, else informational.
    #[serde(default)]
    pub purpose: Option<String>,
    /// Send later, at this RFC 3339 time (it passes the guard again then).
    #[serde(default)]
    pub send_at: Option<String>,
    /// A key of your own (letters, digits, '_', '-', '.'; up to 124): a
    /// second send with the same key sends nothing new and answers the
    /// first one's id. Use one on every send.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListConversationsArgs {
    /// Only this channel's conversations.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// Only numbers containing these digits.
    #[serde(default)]
    pub query: Option<String>,
    /// How many, 1 to 200 [20].
    #[serde(default)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetConversationArgs {
    /// The channel; optional when the server has one channel or a default one.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// The other party's number, E.164.
    pub number: String,
    /// The newest this many entries, 1 to 500 [50].
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One conversation, oldest entry first.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ConversationView {
    pub channel_id: String,
    /// The other party (E.164).
    pub peer: String,
    /// Entries stored for this conversation (the answer holds the newest `limit`).
    pub total: u64,
    /// Texts in and out stored.
    pub messages: u64,
    /// When the oldest stored entry was written (RFC 3339).
    pub started_at: Option<String>,
    /// Set while a person has the conversation: the agent is not called
    /// and agent texts are refused until then (RFC 3339).
    pub paused_until: Option<String>,
    /// The entries, each with `seq`, `at` and `kind`: `inbound` (body,
    /// media), `outbound` (body, `state`: the delivery state, pieces,
    /// media), `status`, `note` (`reason`: opted_out, refused, scheduled,
    /// handoff, ...; `detail`), `call` (status, duration_secs), `call_turn`
    /// (heard, said).
    pub entries: Vec<Value>,
}

/// A conversation, as `GET /api/v1/conversations/{channel}/{number}` has it.
pub(crate) async fn read_conversation(
    state: &AdminState,
    channel: &str,
    number: &str,
    limit: Option<u32>,
) -> Result<ConversationView, AdminError> {
    let query = LimitQuery { limit: limit.map(|l| l.to_string()), channel_id: None };
    let AxumJson(conversation) = crate::conversations::read_conversation(
        State(state.clone()),
        Path((channel.to_owned(), number.to_owned())),
        Query(query),
    )
    .await?;
    let value = serde_json::to_value(&conversation)
        .map_err(|e| AdminError::Internal { what: "encode a conversation".to_owned(), source: Some(Box::new(e)) })?;
    serde_json::from_value(value)
        .map_err(|e| AdminError::Internal { what: "encode a conversation".to_owned(), source: Some(Box::new(e)) })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListScheduledArgs {
    /// Only this channel's.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// Only those to this number (E.164).
    #[serde(default)]
    pub to: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelScheduledArgs {
    /// The id `send_text` or `list_scheduled` gave.
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoffArgs {
    /// The channel; optional when the server has one channel or a default one.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// The other party's number, E.164.
    pub number: String,
    /// How long the person has it, in minutes [the channel's pause_minutes].
    #[serde(default)]
    pub minutes: Option<f64>,
    /// Why a person should take over (shown to the operator; up to 500 characters).
    pub reason: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationArgs {
    /// The channel; optional when the server has one channel or a default one.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// The other party's number, E.164.
    pub number: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceCallArgs {
    /// The channel whose number calls; optional when the server has one
    /// channel or a default one.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// The number to call, E.164.
    pub to: String,
    /// What the call says when answered (up to 4000 characters).
    pub say: String,
    /// `informational` or `marketing` (an AI voice needs consent either way).
    #[serde(default)]
    pub purpose: Option<String>,
    /// Call later, at this RFC 3339 time.
    #[serde(default)]
    pub send_at: Option<String>,
    /// As for send_text: the same key never calls twice.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallStateArgs {
    /// The Call SID (CA + 32 hex digits), or the id place_call answered.
    pub call_sid: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelArgs {
    /// The channel; optional when the server has one channel or a default one.
    #[serde(default)]
    pub channel_id: Option<String>,
}

impl Smsgate {
    /// The channel a call names, else the default one: `SMSGATE_MCP_DEFAULT_CHANNEL`,
    /// or the only channel there is.
    fn channel_of(&self, given: Option<String>) -> Result<String, ToolError> {
        if let Some(c) = given.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()) {
            return Ok(c);
        }
        if let Some(c) = &self.state.mcp_default_channel {
            return Ok(c.clone());
        }
        let snapshot = self.state.channels.snapshot();
        let ids: Vec<String> = snapshot.iter().map(|l| l.channel.id.to_string()).collect();
        match ids.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ToolError::invalid("no_channel", "no channel is configured")),
            _ => Err(ToolError::invalid(
                "channel_required",
                format!(
                    "this server has several channels ({}): name one as channel_id (or set SMSGATE_MCP_DEFAULT_CHANNEL)",
                    ids.join(", ")
                ),
            )),
        }
    }
}

#[tool_router(vis = "pub(super)")]
impl Smsgate {
    #[tool(
        description = "Send a text (SMS, or MMS with media_urls) through the compliance guard. The answer is the \
                       guard's verdict: sent (id), scheduled (id, send_at: outside the recipient's allowed hours, \
                       or when send_at was given) or refused (reason, next_allowed_at). A refusal is final for \
                       now: do not retry it. Never resend a text whose outcome you do not know (a timeout, a lost \
                       answer): send it again with the same idempotency_key, which makes the resend harmless (it \
                       answers the first send's id and sends nothing new). Give an idempotency_key on every send.",
        annotations(
            title = "Send a text",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn send_text(&self, Parameters(args): Parameters<SendTextArgs>) -> Result<Json<SendOutcome>, ToolError> {
        let request = SendRequest {
            channel_id: self.channel_of(args.channel_id)?,
            to: args.to,
            body: args.body,
            media_urls: args.media_urls,
            idempotency_key: args.idempotency_key,
            purpose: args.purpose,
            send_at: args.send_at,
            defer: None,
            in_reply_to: None,
        };
        guarded(&self.state, request.validate(&self.state), "message").await
    }

    #[tool(
        description = "List conversations, most recent first, one page at a time (next_cursor for the next). \
                       Each: channel_id, peer, message count, last time and last message.",
        annotations(title = "List conversations", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_conversations(
        &self,
        Parameters(args): Parameters<ListConversationsArgs>,
    ) -> Result<Json<ConversationList>, ToolError> {
        let limit = args.limit.unwrap_or(20);
        if !(1..=200).contains(&limit) {
            return Err(ToolError::invalid("invalid_limit", "limit must be from 1 to 200"));
        }
        let query = ConversationsQuery {
            channel_id: args.channel_id,
            q: args.query.filter(|q| !q.trim().is_empty()),
            limit: Some(limit.to_string()),
            cursor: args.cursor,
        };
        let AxumJson(list) = crate::conversations::list_conversations(State(self.state.clone()), Query(query)).await?;
        Ok(Json(list))
    }

    #[tool(
        description = "Read one conversation, oldest entry first: texts in and out with their delivery states \
                       (queued, sent, delivered, failed, ...), media, call turns, and notes (opt-outs, refusals, \
                       scheduled texts, handoffs). paused_until is set while a person has it.",
        annotations(title = "Read a conversation", read_only_hint = true, open_world_hint = false)
    )]
    async fn get_conversation(
        &self,
        Parameters(args): Parameters<GetConversationArgs>,
    ) -> Result<Json<ConversationView>, ToolError> {
        if args.limit.is_some_and(|l| !(1..=500).contains(&l)) {
            return Err(ToolError::invalid("invalid_limit", "limit must be from 1 to 500"));
        }
        let channel = self.channel_of(args.channel_id)?;
        Ok(Json(read_conversation(&self.state, &channel, &args.number, args.limit.or(Some(50))).await?))
    }

    #[tool(
        description = "List the texts and calls waiting to go out: scheduled with send_at, or deferred by the \
                       guard to the recipient's allowed hours.",
        annotations(title = "List scheduled texts", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_scheduled(
        &self,
        Parameters(args): Parameters<ListScheduledArgs>,
    ) -> Result<Json<ScheduledList>, ToolError> {
        let query = ScheduledQuery { channel_id: args.channel_id, to: args.to };
        let AxumJson(list) = crate::scheduled::list_scheduled(State(self.state.clone()), Query(query)).await?;
        Ok(Json(list))
    }

    #[tool(
        description = "Cancel a scheduled text or call before it goes out (by the id send_text or list_scheduled \
                       gave). Fails with code firing when it is being sent right now.",
        annotations(
            title = "Cancel a scheduled text",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn cancel_scheduled(
        &self,
        Parameters(args): Parameters<CancelScheduledArgs>,
    ) -> Result<Json<CanceledView>, ToolError> {
        let AxumJson(canceled) =
            crate::scheduled::cancel_scheduled(State(self.state.clone()), Path(args.id.trim().to_owned())).await?;
        Ok(Json(canceled))
    }

    #[tool(
        description = "Hand a conversation to a person: the agent is not called for it and agent texts to the \
                       number are refused until the pause ends (or resume_agent). The reason is shown to the \
                       operator. Use it when the person asks for a human, or when you cannot help.",
        annotations(
            title = "Hand off to a human",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn handoff_to_human(
        &self,
        Parameters(args): Parameters<HandoffArgs>,
    ) -> Result<Json<TakeoverState>, ToolError> {
        if args.reason.trim().is_empty() {
            return Err(ToolError::invalid("invalid_reason", "reason must say why a person should take over"));
        }
        let channel = self.channel_of(args.channel_id)?;
        let body = json!({"minutes": args.minutes, "reason": args.reason});
        let AxumJson(state) = crate::takeover::pause_conversation(
            State(self.state.clone()),
            Path((channel, args.number)),
            Bytes::from(body.to_string()),
        )
        .await?;
        Ok(Json(state))
    }

    #[tool(
        description = "Give a conversation back to the agent after a handoff (ends the pause).",
        annotations(
            title = "Resume the agent",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn resume_agent(
        &self,
        Parameters(args): Parameters<ConversationArgs>,
    ) -> Result<Json<TakeoverState>, ToolError> {
        let channel = self.channel_of(args.channel_id)?;
        let AxumJson(state) =
            crate::takeover::resume_conversation(State(self.state.clone()), Path((channel, args.number))).await?;
        Ok(Json(state))
    }

    #[tool(
        description = "Call a number and say a text, through the compliance guard (an AI voice needs the person's \
                       consent; quiet hours apply). The answer is the guard's verdict as for send_text; the call's \
                       progress is call_state with the id answered here. Never place a call twice for one \
                       outcome you do not know: use the same idempotency_key.",
        annotations(
            title = "Place a call",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn place_call(&self, Parameters(args): Parameters<PlaceCallArgs>) -> Result<Json<SendOutcome>, ToolError> {
        let request = CallRequest {
            channel_id: self.channel_of(args.channel_id)?,
            to: args.to,
            say: Some(args.say),
            twiml: None,
            idempotency_key: args.idempotency_key,
            purpose: args.purpose,
            send_at: args.send_at,
            defer: None,
        };
        guarded(&self.state, request.validate(&self.state), "call").await
    }

    #[tool(
        description = "A call's state: status (queued, ringing, in-progress, completed, busy, no-answer, failed, \
                       ...), ended, duration, and the turns so far (what the caller said, what was said back). \
                       Takes a Call SID or the id place_call answered.",
        annotations(title = "Call state", read_only_hint = true, open_world_hint = false)
    )]
    async fn call_state(&self, Parameters(args): Parameters<CallStateArgs>) -> Result<Json<CallState>, ToolError> {
        let given = args.call_sid.trim();
        let call_sid = if is_call_sid(given) { given.to_owned() } else { self.placed_call_sid(given).await? };
        let AxumJson(call) = crate::calls::call_state(State(self.state.clone()), Path(call_sid)).await?;
        Ok(Json(call))
    }

    #[tool(
        description = "A channel's status as Twilio has it: credentials valid, number found, its webhook URLs \
                       vs smsgate's, and a one-line verdict (ok, or what is wrong).",
        annotations(title = "Channel status", read_only_hint = true, open_world_hint = true)
    )]
    async fn channel_status(
        &self,
        Parameters(args): Parameters<ChannelArgs>,
    ) -> Result<Json<ChannelStatus>, ToolError> {
        let channel = self.channel_of(args.channel_id)?;
        let AxumJson(status) = crate::channels::channel_status(State(self.state.clone()), Path(channel)).await?;
        Ok(Json(status))
    }
}

impl Smsgate {
    /// The Call SID of a call placed through the API (`place_call`'s id):
    /// the sender keeps it under `<id>.0` in `P_sent`.
    async fn placed_call_sid(&self, id: &str) -> Result<String, ToolError> {
        let Some(id) = OutboundId::parse(id) else {
            return Err(ToolError::invalid(
                "invalid_call_sid",
                "call_sid must be a Call SID (CA + 32 hex digits) or the id place_call answered",
            ));
        };
        self.state.require_nats()?;
        let sent =
            bounded("open the sent bucket", self.state.js.get_key_value(self.state.topology.sent_bucket())).await?;
        let key = SentKey::Piece { outbound: id.as_str(), index: 0 }.to_string();
        match bounded("read the sent bucket", sent.get(&key)).await? {
            Some(sid) if is_call_sid(&String::from_utf8_lossy(&sid)) => Ok(String::from_utf8_lossy(&sid).into_owned()),
            _ => Err(ToolError::invalid(
                "call_not_placed",
                "this call is not placed yet (scheduled, waiting for the sender, or refused): see list_scheduled \
                 and get_conversation",
            )),
        }
    }
}
