//! `smsgate mcp`: the real binary spawned as a desktop client spawns it,
//! driven by rmcp's client over its stdin/stdout, against the real ingress
//! (in-process) and a real nats-server: the same tools as `/mcp`, a text
//! sent through the guard, the conversation read back, a refusal; and a
//! wrong token or an unreachable admin API ends it with a reason on stderr.

use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig, SubscribeRequestParams};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};
use smsgate_shared::config::{Config, Settings};
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "mcp-cli-token-0123456789abcdef";
const PEER: &str = "+14155550100";

async fn ingress(nats: &NatsServer, shutdown: &CancellationToken) -> String {
    let prefix = format!("mcpcli{}", std::process::id());
    let mut settings = Settings::for_tests(&nats.url(), &prefix);
    settings.admin_token = Some(TOKEN.into());
    let app = smsgate_ingress::App::build(Config { settings, channels: vec![testkit::channel("")] })
        .await
        .expect("ingress builds");
    let (public, admin) = (app.local_addr(), app.admin_addr());
    let stop = shutdown.clone();
    tokio::spawn(async move { app.run_until_stopped(stop).await.expect("ingress runs") });
    let http = reqwest::Client::new();
    let ready = format!("http://{public}/api/ready");
    testkit::eventually(Duration::from_secs(20), "ingress ready", || async {
        http.get(&ready).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    format!("http://{admin}")
}

/// `smsgate mcp` with an empty environment plus the admin URL and token.
fn command(admin_url: &str, token: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_smsgate"));
    cmd.env_clear().arg("mcp").env("SMSGATE_ADMIN_URL", admin_url).env("SMSGATE_ADMIN_TOKEN", token);
    cmd
}

/// Records the resources the server says were updated.
#[derive(Clone, Default)]
struct Updates(std::sync::Arc<tokio::sync::Mutex<Vec<String>>>);

impl rmcp::ClientHandler for Updates {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.0.lock().await.push(params.uri);
    }
}

async fn call(client: &rmcp::Peer<rmcp::RoleClient>, tool: &str, args: Value) -> (Value, bool) {
    let Value::Object(args) = args else { panic!("arguments are an object") };
    let result = client.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args)).await.unwrap();
    (result.structured_content.clone().unwrap_or(Value::Null), result.is_error == Some(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stdio_server_serves_the_admin_listeners_tools() {
    let nats = NatsServer::start();
    let shutdown = CancellationToken::new();
    let admin = ingress(&nats, &shutdown).await;
    let consent = json!({"channel_id": "test", "to": PEER, "kind": "express", "source": "test"});
    let r = reqwest::Client::new().post(format!("{admin}/api/v1/consent")).bearer_auth(TOKEN).json(&consent);
    assert!(r.send().await.unwrap().status().is_success());

    let transport = TokioChildProcess::new(command(&admin, TOKEN)).unwrap();
    let updates = Updates::default();
    let client = updates.clone().serve(transport).await.expect("smsgate mcp starts a session");
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().map(|s| s.name.as_str()), Some("smsgate"));
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "call_state",
            "cancel_scheduled",
            "channel_status",
            "get_conversation",
            "handoff_to_human",
            "list_conversations",
            "list_scheduled",
            "place_call",
            "resume_agent",
            "send_text"
        ]
    );
    let send = tools.iter().find(|t| t.name == "send_text").unwrap();
    assert_eq!(Value::Object(send.input_schema.as_ref().clone())["type"], "object");
    assert!(send.output_schema.is_some());

    // One channel: no channel_id needed. Sent, then read back.
    let (sent, error) =
        call(&client, "send_text", json!({"to": PEER, "body": "Hello from stdio", "idempotency_key": "stdio-1"})).await;
    assert!(!error, "{sent}");
    assert_eq!((sent["outcome"].as_str(), sent["id"].as_str()), (Some("sent"), Some("api.stdio-1")));
    let (refused, error) =
        call(&client, "send_text", json!({"to": "+14155550111", "body": "Hi", "purpose": "marketing"})).await;
    assert!(!error, "{refused}");
    assert_eq!((refused["outcome"].as_str(), refused["reason"].as_str()), (Some("refused"), Some("no_consent")));
    let (conversation, error) = call(&client, "get_conversation", json!({"number": PEER})).await;
    assert!(!error, "{conversation}");
    assert!(
        conversation["entries"].as_array().unwrap().iter().any(|e| e["kind"] == "note" && e["reason"] == "consent"),
        "{conversation}"
    );
    let (bad, error) = call(&client, "get_conversation", json!({"number": "hello"})).await;
    assert!(error && bad["code"] == "invalid_number", "{bad}");

    // A subscription through the proxy: an update comes back over stdio.
    #[allow(deprecated)] // resources/subscribe: the form before 2026-07-28
    client.subscribe(SubscribeRequestParams::new(format!("smsgate://conversations/test/{PEER}"))).await.unwrap();
    let r = reqwest::Client::new().post(format!("{admin}/api/v1/consent")).bearer_auth(TOKEN).json(&consent);
    assert!(r.send().await.unwrap().status().is_success());
    testkit::eventually(Duration::from_secs(10), "a resource update over stdio", || async {
        let seen = updates.0.lock().await.clone();
        (!seen.is_empty()).then_some(())
    })
    .await;
    client.cancel().await.unwrap();
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_no_admin_api_ends_it_with_the_reason() {
    let nats = NatsServer::start();
    let shutdown = CancellationToken::new();
    let admin = ingress(&nats, &shutdown).await;
    for (url, token, says) in [
        (admin.as_str(), "wrong-token", "cannot start an MCP session"),
        ("http://127.0.0.1:9", TOKEN, "is ingress running"),
    ] {
        let (transport, stderr) =
            TokioChildProcess::builder(command(url, token)).stderr(std::process::Stdio::piped()).spawn().unwrap();
        assert!(ClientConfig::default().serve(transport).await.is_err(), "{url} {token}");
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            use tokio::io::AsyncReadExt as _;
            let _ = tokio::time::timeout(Duration::from_secs(10), stderr.read_to_string(&mut text)).await;
        }
        assert!(text.contains(says), "{url}: {text}");
    }
    shutdown.cancel();
}
