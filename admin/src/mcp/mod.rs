//! The MCP server: smsgate as an agent's tool (docs/ARCHITECTURE.md §9).
//!
//! One tool set, served two ways: Streamable HTTP at `/mcp` on the admin
//! listener ([`service`], behind the same [`crate::guard`] as every admin
//! route: host, origin, bearer token), and `smsgate mcp` over stdio, which
//! the CLI bridges to this same endpoint. The tools call the functions the
//! admin routes call (no HTTP round-trip to ourselves), so every text and
//! call an agent asks for goes through [`crate::compliance::submit`] with
//! `Initiator::Agent`: opt-outs, consent, quiet hours, the recipient's cap,
//! a pause for a human.
//!
//! # Layout
//!
//! - this file: [`Smsgate`] (the server), its `ServerHandler` (instructions,
//!   the conversation resources, their subscriptions) and [`service`] (the
//!   HTTP transport).
//!
//! A subscription to a conversation (`resources/subscribe`, the legacy
//! form clients of revisions before 2026-07-28 use) follows the
//! conversation's history subject with an ordered consumer from now on and
//! sends `notifications/resources/updated` for each new entry; it ends on
//! `resources/unsubscribe`, when the session ends, when the client is gone,
//! or at shutdown.
//! - `tools`: the tools, their JSON Schema inputs and structured outputs,
//!   and [`ToolError`] (an admin error as a tool error carrying its code).

mod tools;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream::consumer;
use futures::StreamExt;

use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};
use tokio_util::sync::CancellationToken;

use crate::guard::Guard;
use crate::index::PageQuery;
use crate::{AdminError, AdminState, bounded};

pub use tools::{SendOutcome, ToolError};

/// The URI scheme of a conversation: `smsgate://conversations/{channel_id}/{number}`.
pub const CONVERSATION_URI: &str = "smsgate://conversations/";
/// Conversations `resources/list` names (the most recent ones).
const LISTED_RESOURCES: usize = 50;
/// MCP request bodies are small JSON-RPC messages, like the admin API's.
const MAX_BODY_BYTES: usize = 64 * 1024;

const INSTRUCTIONS: &str = "smsgate puts this agent on a phone number (SMS and voice through Twilio). \
Every text and call you send passes a compliance guard: opt-outs, consent, quiet hours in the recipient's \
local time, a daily cap per recipient, and a pause while a person has the conversation. A refusal is an \
answer, not an error to work around: do not retry a refused text. Texts outside the recipient's allowed \
hours are scheduled for the next allowed time. Numbers are E.164 (+14155550100). When the server has one \
channel (or a default one), channel_id may be left out.";

/// The MCP server over the admin state. Cloned per session (cheap: the
/// state is shared handles).
#[derive(Clone)]
pub struct Smsgate {
    state: AdminState,
    tool_router: rmcp::handler::server::router::tool::ToolRouter<Self>,
    subscriptions: Arc<Subscriptions>,
}

impl Smsgate {
    pub fn new(state: AdminState) -> Self {
        Self { state, tool_router: Self::tool_router(), subscriptions: Arc::default() }
    }
}

/// One session's subscriptions: URI → what ends its follower. Dropped with
/// the session's last handler, which ends them all.
#[derive(Default)]
struct Subscriptions(Mutex<HashMap<String, CancellationToken>>);

impl Subscriptions {
    fn replace(&self, uri: String, stop: Option<CancellationToken>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let old = match stop {
            Some(stop) => map.insert(uri, stop),
            None => map.remove(&uri),
        };
        if let Some(old) = old {
            old.cancel();
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        let map = self.0.get_mut().unwrap_or_else(PoisonError::into_inner);
        map.values().for_each(CancellationToken::cancel);
    }
}

/// The Streamable HTTP transport for `/mcp`. The admin [`crate::guard`]
/// runs before it (host, origin, token); rmcp's own DNS-rebinding and
/// Origin checks are set from the same facts rather than left at the
/// library's defaults, so neither can let through what the other refuses.
pub fn service(state: AdminState, guard: &Guard) -> StreamableHttpService<Smsgate, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(state.shutdown.child_token())
        .with_max_request_body_bytes(MAX_BODY_BYTES);
    config = match guard.mcp_allowed_hosts() {
        Some(hosts) => config.with_allowed_hosts(hosts),
        // Listening on every address: any IP literal names us, which a list
        // cannot say; the guard (which ran first) checked the host.
        None => config.disable_allowed_hosts(),
    };
    config = match guard.mcp_allowed_origins() {
        Some(origins) => config.with_allowed_origins(origins).enforce_origin_validation(),
        None => config.disable_allowed_origins(),
    };
    StreamableHttpService::new(
        move || Ok(Smsgate::new(state.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// `smsgate://conversations/{channel_id}/{number}` → (channel, number).
fn parse_conversation_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix(CONVERSATION_URI)?;
    let (channel, number) = rest.split_once('/')?;
    (!channel.is_empty() && !number.is_empty() && !number.contains('/')).then_some((channel, number))
}

fn conversation_uri(channel: &str, peer: &str) -> String {
    format!("{CONVERSATION_URI}{channel}/{peer}")
}

/// An admin error as a JSON-RPC error of a resource read (resources have no
/// "tool error"): the code and detail ride in `data`.
fn resource_error(e: AdminError) -> ErrorData {
    let (status, body, _) = e.into_parts();
    let data = serde_json::to_value(&body).ok();
    match status.as_u16() {
        404 => ErrorData::resource_not_found(body.detail, data),
        400..=499 => ErrorData::invalid_params(body.detail, data),
        _ => ErrorData::internal_error(body.detail, data),
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Smsgate {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder().enable_tools().enable_resources().enable_resources_subscribe().build(),
        )
        .with_server_info(rmcp::model::Implementation::new("smsgate", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let page = self.state.index.page(&PageQuery { limit: LISTED_RESOURCES, ..Default::default() });
        let resources = page
            .conversations
            .into_iter()
            .map(|c| {
                Resource::new(conversation_uri(&c.channel_id, &c.peer), c.peer.clone())
                    .with_description(format!("The conversation with {} on channel {}", c.peer, c.channel_id))
                    .with_mime_type("application/json")
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new(format!("{CONVERSATION_URI}{{channel_id}}/{{number}}"), "conversation")
            .with_title("A conversation")
            .with_description(
                "One conversation's log, oldest first: texts in and out with their delivery states, media, \
                 call turns, notes (opt-outs, refusals, handoffs). number is E.164.",
            )
            .with_mime_type("application/json");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.clone();
        let Some((channel, number)) = parse_conversation_uri(&uri) else {
            return Err(ErrorData::resource_not_found(
                format!("unknown resource; conversations are {CONVERSATION_URI}{{channel_id}}/{{number}}"),
                None,
            ));
        };
        let conversation =
            tools::read_conversation(&self.state, channel, number, None).await.map_err(resource_error)?;
        let text = serde_json::to_string(&conversation)
            .map_err(|e| ErrorData::internal_error(format!("cannot encode the conversation: {e}"), None))?;
        let contents = ResourceContents::TextResourceContents {
            uri,
            mime_type: Some("application/json".to_owned()),
            text,
            meta: None,
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let uri = request.uri;
        let Some((channel, number)) = parse_conversation_uri(&uri) else {
            return Err(ErrorData::resource_not_found(
                format!("only conversations can be followed: {CONVERSATION_URI}{{channel_id}}/{{number}}"),
                None,
            ));
        };
        let channel = self.state.known_channel(channel).map_err(resource_error)?;
        let peer = crate::conversations::peer_of_path(number).map_err(resource_error)?;
        let stream = self.state.stream(self.state.topology.history_stream()).await.map_err(resource_error)?;
        let follower = consumer::pull::OrderedConfig {
            filter_subject: self.state.topology.history_subject(&channel, &peer),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        };
        let consumer =
            bounded("follow the conversation", stream.create_consumer(follower)).await.map_err(resource_error)?;
        let mut entries = bounded("follow the conversation", consumer.messages()).await.map_err(resource_error)?;
        let stop = self.state.shutdown.child_token();
        self.subscriptions.replace(uri.clone(), Some(stop.clone()));
        let client = context.peer.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => break,
                    next = entries.next() => next,
                };
                match next {
                    Some(Ok(_)) => {
                        let updated = ResourceUpdatedNotificationParam::new(uri.clone());
                        if client.notify_resource_updated(updated).await.is_err() {
                            break; // the client is gone
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(
                            service = "ingress",
                            stage = "mcp",
                            error = &e as &dyn std::error::Error,
                            outcome = "subscription_ended",
                            "a conversation subscription lost its consumer"
                        );
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions.replace(request.uri, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_uris_name_a_channel_and_a_number() {
        assert_eq!(parse_conversation_uri("smsgate://conversations/test/+14155550100"), Some(("test", "+14155550100")));
        for bad in [
            "smsgate://conversations/test/",
            "smsgate://conversations//+1415",
            "smsgate://conversations/test/+1/x",
            "smsgate://other/test/+1415",
        ] {
            assert_eq!(parse_conversation_uri(bad), None, "{bad}");
        }
    }
}
