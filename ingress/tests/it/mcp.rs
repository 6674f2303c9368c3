//! The MCP server at `/mcp` on the admin listener, driven by rmcp's own
//! client over Streamable HTTP against the real ingress and a real sender
//! (in-process, as their mains build them), a real nats-server and the
//! Twilio stub: the tool list and its schemas, a text delivered, a text
//! outside the recipient's hours scheduled, an opted-out number refused
//! with nothing sent, the conversation showing it all, a handoff, a call's
//! state, and the requests the admin guard refuses (no token, another
//! origin).

use std::time::Duration;

use reqwest::StatusCode;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, ReadResourceRequestParams, ResourceContents};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use smsgate_shared::config::{Config, Settings};
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{HistoryEntry, HistoryEvent, Origin, VERSION};
use smsgate_shared::topology::{self, Topology};
use smsgate_testkit::twilio::TwilioStub;
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

use crate::helpers::unique_prefix;

const TOKEN: &str = "mcp-test-token-0123456789abcdef";
/// Texts here are delivered at once (quiet hours off on channel `test`).
const PEER: &str = "+14155550100";
/// A London number: one time zone, no US state rows.
const LONDON: &str = "+442079460123";
const CALL_SID: &str = "CA0123456789abcdef0123456789abcdef";

struct Stack {
    admin: String,
    http: reqwest::Client,
    js: async_nats::jetstream::Context,
    topology: Topology,
    twilio: TwilioStub,
    shutdown: CancellationToken,
    _nats: NatsServer,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A quiet-hours window that is closed in London now: the afternoon while
/// it is morning there, else the small hours.
fn closed_window() -> &'static str {
    let tz = jiff::tz::TimeZone::get("Europe/London").unwrap();
    let hour = tz.to_datetime(jiff::Timestamp::now()).hour();
    if hour < 12 { r#"{"start": "13:00", "end": "14:00"}"# } else { r#"{"start": "02:00", "end": "03:00"}"# }
}

impl Stack {
    async fn start() -> Self {
        let nats = NatsServer::start();
        let twilio = TwilioStub::start().await;
        let prefix = unique_prefix();
        let api = twilio.base_url();
        let test = testkit::channel(&format!(r#""twilio_api_base": "{api}", "mps": 0"#));
        let night = testkit::channel_with_id(
            "night",
            "night-path-token-abcdefghijklmnopqrstuvwxyz",
            &format!(
                r#""twilio_api_base": "{api}", "mps": 0, "reply_countries": ["*"], "compliance": {{"quiet_hours": {}}}"#,
                closed_window()
            ),
        );
        let mut settings = Settings::for_tests(&nats.url(), &prefix);
        settings.admin_token = Some(TOKEN.into());
        // Two channels: tools that name none use this one.
        settings.mcp_default_channel = Some("test".to_owned());
        let config = Config { settings, channels: vec![test, night] };
        let ingress = smsgate_ingress::App::build(config.clone()).await.expect("ingress builds");
        let sender = smsgate_sender::App::build(config).await.expect("sender builds");
        let (public, admin) = (ingress.local_addr(), ingress.admin_addr());
        let shutdown = CancellationToken::new();
        let (s1, s2) = (shutdown.clone(), shutdown.clone());
        tokio::spawn(async move { ingress.run_until_stopped(s1).await.expect("ingress runs") });
        tokio::spawn(async move { sender.run_until_stopped(s2).await.expect("sender runs") });
        let http = reqwest::Client::new();
        let ready = format!("http://{public}/api/ready");
        testkit::eventually(Duration::from_secs(20), "ingress ready", || async {
            http.get(&ready).send().await.ok()?.status().is_success().then_some(())
        })
        .await;
        let js = async_nats::jetstream::new(topology::connect(&nats.url(), "test").await.unwrap());
        Self {
            admin: format!("http://{admin}"),
            http,
            js,
            topology: Topology::new(&prefix),
            twilio,
            shutdown,
            _nats: nats,
        }
    }

    async fn client(&self) -> RunningService<rmcp::RoleClient, ClientConfig> {
        let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", self.admin)).auth_header(TOKEN);
        let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
        ClientConfig::default().serve(transport).await.expect("an MCP session starts")
    }

    async fn consent(&self, channel: &str, to: &str) {
        let body = json!({"channel_id": channel, "to": to, "kind": "express", "source": "test"});
        let r = self.http.post(format!("{}/api/v1/consent", self.admin)).bearer_auth(TOKEN).json(&body);
        assert_eq!(r.send().await.unwrap().status(), StatusCode::OK);
    }

    async fn history(&self, channel: &str, peer: &str, event: HistoryEvent) {
        let entry = HistoryEntry {
            v: VERSION,
            channel_id: ChannelId::parse(channel).unwrap(),
            peer: E164::parse(peer).unwrap(),
            at: time::OffsetDateTime::now_utc(),
            event,
        };
        let subject = self.topology.history_subject(&entry.channel_id, &entry.peer);
        self.js.publish(subject, smsgate_shared::envelope::encode(&entry)).await.unwrap().await.unwrap();
    }
}

/// Calls a tool; answers (structured content, is_error).
pub(crate) async fn call(client: &rmcp::Peer<rmcp::RoleClient>, tool: &str, args: Value) -> (Value, bool) {
    let Value::Object(args) = args else { panic!("arguments are an object") };
    let result: CallToolResult =
        client.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args)).await.unwrap();
    (result.structured_content.clone().unwrap_or(Value::Null), result.is_error == Some(true))
}

pub(crate) const TOOLS: [&str; 10] = [
    "call_state",
    "cancel_scheduled",
    "channel_status",
    "get_conversation",
    "handoff_to_human",
    "list_conversations",
    "list_scheduled",
    "place_call",
    "resume_agent",
    "send_text",
];

/// Every tool is listed with an object schema for its input and output,
/// each required property defined, and annotations saying what it does.
pub(crate) fn check_tools(tools: &[rmcp::model::Tool]) {
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(names, TOOLS);
    for tool in tools {
        for (which, schema) in [("input", Some(&tool.input_schema)), ("output", tool.output_schema.as_ref())] {
            let schema =
                Value::Object(schema.unwrap_or_else(|| panic!("{} has an {which} schema", tool.name)).as_ref().clone());
            assert_eq!(schema["type"], "object", "{} {which}: {schema}", tool.name);
            let properties = schema["properties"].as_object().unwrap_or_else(|| panic!("{}: {schema}", tool.name));
            for required in schema["required"].as_array().into_iter().flatten() {
                assert!(
                    properties.contains_key(required.as_str().unwrap()),
                    "{} {which} requires {required}",
                    tool.name
                );
            }
        }
        assert!(tool.description.as_ref().is_some_and(|d| d.len() > 20), "{} is described", tool.name);
        let annotations = tool.annotations.as_ref().unwrap_or_else(|| panic!("{} has annotations", tool.name));
        let read_only = ["call_state", "channel_status", "get_conversation", "list_conversations", "list_scheduled"]
            .contains(&tool.name.as_ref());
        assert_eq!(annotations.read_only_hint, Some(read_only), "{}", tool.name);
    }
    let send = tools.iter().find(|t| t.name == "send_text").unwrap();
    let text = send.description.as_deref().unwrap_or_default();
    assert!(text.contains("Never resend") && text.contains("idempotency_key"), "{text}");
    let cancel = tools.iter().find(|t| t.name == "cancel_scheduled").unwrap();
    assert_eq!(cancel.annotations.as_ref().unwrap().destructive_hint, Some(true));
    let input = Value::Object(send.input_schema.as_ref().clone());
    assert_eq!(input["required"], json!(["to", "body"]), "{input}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_texts_through_the_guard_and_reads_what_happened() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().map(|s| s.name.as_str()), Some("smsgate"));
    assert!(info.instructions.as_deref().is_some_and(|i| i.contains("guard")));
    check_tools(&client.list_all_tools().await.unwrap());

    // Sent: on the default channel, delivered to Twilio.
    stack.consent("test", PEER).await;
    let (sent, error) =
        call(&client, "send_text", json!({"to": PEER, "body": "Your order shipped", "idempotency_key": "ship-1"}))
            .await;
    assert!(!error, "{sent}");
    assert_eq!((sent["outcome"].as_str(), sent["id"].as_str()), (Some("sent"), Some("api.ship-1")), "{sent}");
    let calls = stack.twilio.wait_for_calls(1, Duration::from_secs(20)).await;
    assert_eq!((calls[0].get("To"), calls[0].get("Body")), (Some(PEER), Some("Your order shipped")));
    // The same key again: answered as the first, nothing new sent.
    let (again, _) =
        call(&client, "send_text", json!({"to": PEER, "body": "Your order shipped", "idempotency_key": "ship-1"}))
            .await;
    assert_eq!((again["outcome"].as_str(), again["duplicate"].as_bool()), (Some("sent"), Some(true)), "{again}");

    // Scheduled: outside the recipient's hours, with the time it goes out.
    stack.consent("night", LONDON).await;
    let (scheduled, error) =
        call(&client, "send_text", json!({"channel_id": "night", "to": LONDON, "body": "Good morning"})).await;
    assert!(!error, "{scheduled}");
    assert_eq!(scheduled["outcome"], "scheduled", "{scheduled}");
    let send_at = time::OffsetDateTime::parse(
        scheduled["send_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(send_at > time::OffsetDateTime::now_utc(), "{scheduled}");
    let (listed, _) = call(&client, "list_scheduled", json!({"channel_id": "night"})).await;
    assert_eq!(listed["scheduled"][0]["id"], scheduled["id"], "{listed}");
    assert_eq!(listed["scheduled"][0]["why"], "quiet_hours", "{listed}");

    // Refused: an opted-out number, and nothing sent.
    let optout = stack.js.get_key_value(stack.topology.optout_bucket()).await.unwrap();
    let test = ChannelId::parse("test").unwrap();
    optout.put(Topology::optout_key(&test, &E164::parse(PEER).unwrap()), "{}".into()).await.unwrap();
    let (refused, error) = call(&client, "send_text", json!({"to": PEER, "body": "One more thing"})).await;
    assert!(!error, "a refusal is the guard's answer, not a failure: {refused}");
    assert_eq!((refused["outcome"].as_str(), refused["reason"].as_str()), (Some("refused"), Some("opted_out")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.twilio.calls().len(), 1, "nothing more sent");

    // The conversation shows the delivered text and the refusal.
    let (conversation, error) = call(&client, "get_conversation", json!({"number": PEER})).await;
    assert!(!error, "{conversation}");
    let entries = conversation["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["kind"] == "outbound" && e["body"] == "Your order shipped"), "{conversation}");
    assert!(entries.iter().any(|e| e["kind"] == "note" && e["reason"] == "refused"), "{conversation}");
    // And the scheduled one, in its own conversation.
    let (night, _) = call(&client, "get_conversation", json!({"channel_id": "night", "number": LONDON})).await;
    assert!(night["entries"].as_array().unwrap().iter().any(|e| e["reason"] == "scheduled"), "{night}");
    // The same conversation as a resource.
    let read = client
        .read_resource(ReadResourceRequestParams::new(format!("smsgate://conversations/test/{PEER}")))
        .await
        .unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else { panic!("text contents") };
    assert!(text.contains("Your order shipped"), "{text}");
    let (list, _) = call(&client, "list_conversations", json!({"channel_id": "test"})).await;
    assert_eq!(list["conversations"][0]["peer"], PEER, "{list}");

    // Cancel the scheduled one.
    let (canceled, error) = call(&client, "cancel_scheduled", json!({"id": scheduled["id"]})).await;
    assert!(!error, "{canceled}");
    assert_eq!(canceled["status"], "canceled");

    // Bad input: clear, with the admin API's code, as a tool error.
    let long = "x".repeat(1601);
    for (args, code) in [
        (json!({"to": "5550100", "body": "hi"}), "invalid_number"),
        (json!({"channel_id": "nope", "to": PEER, "body": "hi"}), "unknown_channel"),
        (json!({"to": PEER, "body": long}), "body_too_long"),
    ] {
        let (answer, error) = call(&client, "send_text", args.clone()).await;
        assert!(error, "{args}: {answer}");
        assert_eq!(answer["code"], code, "{args}: {answer}");
        assert!(answer["detail"].as_str().is_some_and(|d| !d.is_empty()), "{answer}");
    }
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_pauses_the_agent_and_a_call_shows_its_turns() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    stack.consent("test", PEER).await;

    let (paused, error) =
        call(&client, "handoff_to_human", json!({"number": PEER, "reason": "asks for a refund", "minutes": 30})).await;
    assert!(!error, "{paused}");
    assert_eq!(paused["paused"], true, "{paused}");
    // Paused: the agent's own texts are refused.
    let (refused, _) = call(&client, "send_text", json!({"to": PEER, "body": "Still there?"})).await;
    assert_eq!(refused["reason"], "paused", "{refused}");
    let (conversation, _) = call(&client, "get_conversation", json!({"number": PEER})).await;
    assert!(conversation["paused_until"].is_string(), "{conversation}");
    let entries = conversation["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["reason"] == "handoff" && e["detail"].as_str().unwrap().contains("refund")),
        "{conversation}"
    );
    let (resumed, _) = call(&client, "resume_agent", json!({"number": PEER})).await;
    assert_eq!(resumed["paused"], false, "{resumed}");
    let (empty_reason, error) = call(&client, "handoff_to_human", json!({"number": PEER, "reason": " "})).await;
    assert!(error && empty_reason["code"] == "invalid_reason", "{empty_reason}");

    // A call's state from its history, by Call SID, also over plain HTTP.
    let status = |status: &str, duration_secs| HistoryEvent::Call {
        call_sid: CALL_SID.to_owned(),
        status: status.to_owned(),
        direction: "inbound".to_owned(),
        duration_secs,
        detail: None,
    };
    stack.history("test", PEER, status("answered", None)).await;
    let turn = HistoryEvent::CallTurn {
        call_sid: CALL_SID.to_owned(),
        turn: 1,
        heard: "when are you open".to_owned(),
        said: "From nine to five.".to_owned(),
        origin: Origin::Chat,
        interrupted: false,
    };
    stack.history("test", PEER, turn).await;
    let (call_state, error) = call(&client, "call_state", json!({"call_sid": CALL_SID})).await;
    assert!(!error, "{call_state}");
    assert_eq!((call_state["status"].as_str(), call_state["ended"].as_bool()), (Some("answered"), Some(false)));
    assert_eq!(call_state["turns"][0]["heard"], "when are you open", "{call_state}");
    stack.history("test", PEER, status("completed", Some(42))).await;
    let r = stack.http.get(format!("{}/api/v1/calls/{CALL_SID}", stack.admin)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let state: Value = r.json().await.unwrap();
    assert_eq!((state["status"].as_str(), state["ended"].as_bool()), (Some("completed"), Some(true)), "{state}");
    assert_eq!((state["duration_secs"].as_u64(), state["peer"].as_str()), (Some(42), Some(PEER)), "{state}");
    for (sid, want) in
        [("CAnope", StatusCode::BAD_REQUEST), ("CAffffffffffffffffffffffffffffffff", StatusCode::NOT_FOUND)]
    {
        let r = stack.http.get(format!("{}/api/v1/calls/{sid}", stack.admin)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), want, "{sid}");
    }
    let (unknown, error) = call(&client, "call_state", json!({"call_sid": "api.never-placed"})).await;
    assert!(error && unknown["code"] == "call_not_placed", "{unknown}");

    // A call placed through the guard (consent on record), then canceled
    // before Twilio: the id comes back at once.
    let (placed, error) = call(
        &client,
        "place_call",
        json!({"to": PEER, "say": "Your table is ready", "send_at": "2099-01-01T09:00:00Z"}),
    )
    .await;
    assert!(error, "over a year ahead is bad input: {placed}");
    assert_eq!(placed["code"], "invalid_send_at");
    let (placed, error) = call(&client, "place_call", json!({"to": "+14155550111", "say": "Hello"})).await;
    assert!(!error, "{placed}");
    assert_eq!((placed["outcome"].as_str(), placed["reason"].as_str()), (Some("refused"), Some("no_consent")));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn mcp_requests_without_the_token_or_from_another_origin_are_refused() {
    let stack = Stack::start().await;
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    });
    let post = || {
        stack
            .http
            .post(format!("{}/mcp", stack.admin))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
    };
    // No token, a wrong one: 401 with the admin API's code.
    for request in [post(), post().bearer_auth("wrong-token")] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
    // A page of another origin, with the token: 403.
    for (header, value) in
        [("origin", "http://evil.example"), ("origin", "http://localhost:3000"), ("sec-fetch-site", "cross-site")]
    {
        let r = post().bearer_auth(TOKEN).header(header, value).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{header}: {value}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "cross_origin");
    }
    // A rebinding host name: 421.
    let r = post().bearer_auth(TOKEN).header("host", "rebind.example").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    // The same request with the token from our own origin starts a session.
    let own = stack.admin.clone();
    let r = post().bearer_auth(TOKEN).header("origin", own).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let session = r.headers()["mcp-session-id"].clone();
    // Ending it is a bodiless DELETE, the one write without JSON the guard
    // lets through; still not without the token.
    let end = || stack.http.delete(format!("{}/mcp", stack.admin)).header("mcp-session-id", session.clone());
    assert_eq!(end().send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let r = end().bearer_auth(TOKEN).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // rmcp's client without the token cannot start a session.
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", stack.admin));
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    assert!(ClientConfig::default().serve(transport).await.is_err());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_conversation_is_told_of_each_new_entry() {
    let stack = Stack::start().await;
    let updates = Updates::default();
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", stack.admin)).auth_header(TOKEN);
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let client = updates.clone().serve(transport).await.unwrap();
    let uri = format!("smsgate://conversations/test/{PEER}");
    #[allow(deprecated)] // resources/subscribe: the form of revisions before 2026-07-28
    client.subscribe(rmcp::model::SubscribeRequestParams::new(uri.clone())).await.unwrap();
    // Someone else's conversation says nothing here; this one does.
    stack
        .history(
            "test",
            "+14155550199",
            HistoryEvent::Note {
                reason: smsgate_shared::envelope::NoteReason::Consent,
                message_sid: None,
                outbound_id: None,
                detail: "elsewhere".to_owned(),
            },
        )
        .await;
    stack.consent("test", PEER).await;
    let seen = testkit::eventually(Duration::from_secs(10), "a resource update", || async {
        let seen = updates.0.lock().await.clone();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    assert!(seen.iter().all(|u| *u == uri), "{seen:?}");
    #[allow(deprecated)]
    client.unsubscribe(rmcp::model::UnsubscribeRequestParams::new(uri.clone())).await.unwrap();
    let before = updates.0.lock().await.len();
    stack.consent("test", PEER).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(updates.0.lock().await.len(), before, "nothing after unsubscribing");
    // Not a conversation: a clear refusal.
    #[allow(deprecated)]
    let refused = client.subscribe(rmcp::model::SubscribeRequestParams::new("smsgate://other")).await;
    assert!(refused.is_err());
    client.cancel().await.unwrap();
}
