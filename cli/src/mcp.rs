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
//! re-implement them. Nothing but MCP messages goes to stdout; problems go
//! to stderr.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientConfig, ErrorData, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, RoleServer, ServerHandler, ServiceExt};

use crate::error::CliError;

/// The stdio server: every request is the same request to `/mcp`.
struct Bridge {
    upstream: RunningService<RoleClient, ClientConfig>,
    info: ServerConfig,
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
    let upstream = ClientConfig::default().serve(transport).await.map_err(|e| {
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
    server.waiting().await.map_err(|e| CliError::Failed(format!("the stdio session ended badly: {e}")))?;
    Ok(())
}
