//! `smsgate mcp`: the MCP server over stdio, for desktop clients that start
//! their servers as child processes.
//!
//! The tools live in one place, the admin listener's `/mcp` (the admin
//! crate's `mcp` module). This command does not re-implement them: it is a
//! proxy, an MCP client of `/mcp` (Streamable HTTP, with the CLI's token
//! discovery) on one side and an MCP server on stdin/stdout on the other,
//! passing tools and resources through unchanged. Two rmcp endpoints rather
//! than a raw byte pipe because each side negotiates its own protocol
//! revision and the HTTP side needs its own headers (session id, protocol
//! version, bearer token): rmcp does both right, a pipe would have to
//! re-implement them. Resource subscriptions pass through too: the
//! upstream's `notifications/resources/updated` are relayed to the stdio
//! client ([`Relay`]). Nothing but MCP messages goes to stdout; problems go
//! to stderr.

use std::sync::{Arc, OnceLock};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientConfig, ErrorData, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ResourceUpdatedNotificationParam, ServerConfig, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, RoleServer, ServerHandler, ServiceExt};

use crate::error::CliError;

/// The stdio server: every request is the same request to `/mcp`.
struct Bridge {
    upstream: RunningService<RoleClient, Relay>,
    info: ServerConfig,
}

/// The upstream side's client: relays resource updates to the stdio client
/// once its session has started.
#[derive(Clone, Default)]
struct Relay(Arc<OnceLock<Peer<RoleServer>>>);

impl ClientHandler for Relay {
    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(stdio) = self.0.get()
            && let Err(e) = stdio.notify_resource_updated(params).await
        {
            eprintln!("smsgate: cannot pass a resource update on: {e}");
        }
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }
}

/// An upstream failure as the stdio client sees it: the server's own error
/// as it came, anything else (connection lost) as an internal error that
/// says what happened.
fn upstream_error(e: ServiceError) -> ErrorData {
    match e {
        ServiceError::McpError(e) => e,
        other => ErrorData::internal_error(format!("smsgate's admin listener: {other}"), None),
    }
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        self.info.clone()
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.upstream.list_tools(request).await.map_err(upstream_error)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.upstream.call_tool_once(request).await.map_err(upstream_error)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.upstream.list_resources(request).await.map_err(upstream_error)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.upstream.list_resource_templates(request).await.map_err(upstream_error)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.upstream.read_resource_once(request).await.map_err(upstream_error)
    }

    #[allow(deprecated)] // resources/subscribe: what clients before 2026-07-28 send
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.upstream.subscribe(request).await.map_err(upstream_error)
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.upstream.unsubscribe(request).await.map_err(upstream_error)
    }
}

/// Connects to `<admin_url>/mcp`, then serves stdio until the client
/// closes it.
pub async fn serve_stdio(admin_url: &str, token: Option<String>) -> Result<(), CliError> {
    let url = format!("{}/mcp", admin_url.trim_end_matches('/'));
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
    if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
        config = config.auth_header(token);
    }
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let relay = Relay::default();
    let upstream = relay.clone().serve(transport).await.map_err(|e| {
        CliError::Failed(format!(
            "cannot start an MCP session with {url}: {e} (is ingress running? set SMSGATE_ADMIN_URL or \
             --admin-url; the token is SMSGATE_ADMIN_TOKEN, --token, or the file ingress wrote)"
        ))
    })?;
    // What the admin listener serves is what this server serves: its
    // capabilities, name and instructions (the protocol revision is
    // negotiated with the stdio client on its own).
    let peer = upstream.peer_info().ok_or_else(|| CliError::Failed(format!("{url} did not say what it serves")))?;
    let mut info = ServerConfig::new(peer.capabilities.clone());
    if let Some(server) = &peer.server_info {
        info = info.with_server_info(server.clone());
    }
    if let Some(instructions) = &peer.instructions {
        info = info.with_instructions(instructions.clone());
    }
    let bridge = Bridge { upstream, info };
    let server = bridge
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| CliError::Failed(format!("the MCP client on stdin did not start a session: {e}")))?;
    // Set once: this is the only stdio session of the process.
    let _ = relay.0.set(server.peer().clone());
    server.waiting().await.map_err(|e| CliError::Failed(format!("the stdio session ended badly: {e}")))?;
    Ok(())
}
