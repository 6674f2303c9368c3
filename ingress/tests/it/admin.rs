//! The admin API of the real ingress (`App::build`, admin listener on port
//! 0, bearer token set) against a real nats-server: auth, each route, the
//! validation errors and the NATS-down answer.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use smsgate_ingress::App;
use smsgate_shared::config::{Channel, Config, Settings};
use smsgate_shared::cost::{Basis, Item};
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{
    self, DeadLetter, HistoryEntry, HistoryEvent, NoteReason, Origin, Outbound, Piece, VERSION,
};
use smsgate_shared::topology::{self, Stage, Topology};
use smsgate_testkit::{self as testkit, nats::NatsServer};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::helpers::unique_prefix;

pub(crate) const TOKEN: &str = "admin-test-token-0123456789";
pub(crate) const PEER: &str = "+14155550100";
const OTHER_PEER: &str = "+14155550199";

pub(crate) struct Admin {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) topology: Topology,
    shutdown: CancellationToken,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn channels() -> Vec<Channel> {
    let mut off = testkit::channel_with_id("off", "off-path-token-abcdefghijklmnopqrstuvwxyz", "");
    off.enabled = false;
    vec![testkit::channel(""), off]
}

impl Admin {
    pub(crate) async fn start(nats: &NatsServer) -> Self {
        Self::start_with(nats, channels()).await
    }

    pub(crate) async fn start_with(nats: &NatsServer, channels: Vec<Channel>) -> Self {
        let prefix = unique_prefix();
        let mut settings = Settings::for_tests(&nats.url(), &prefix);
        settings.admin_token = Some(TOKEN.into());
        let app = App::build(Config { settings, channels }).await.expect("ingress builds");
        let (public, admin) = (app.local_addr(), app.admin_addr());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { app.run_until_stopped(stop).await.expect("ingress runs") });
        let js = jetstream::new(topology::connect(&nats.url(), "test").await.unwrap());
        let http = reqwest::Client::new();
        let ready = format!("http://{public}/api/ready");
        testkit::eventually(Duration::from_secs(20), "ingress ready", || async {
            http.get(&ready).send().await.ok()?.status().is_success().then_some(())
        })
        .await;
        Self { base: format!("http://{admin}"), http, js, topology: Topology::new(&prefix), shutdown }
    }

    /// Adds `usd` to channel `test`'s spend today (`P_budget`).
    pub(crate) async fn spend(&self, usd: f64) {
        let bucket = self.js.get_key_value(self.topology.budget_bucket()).await.unwrap();
        let spend = smsgate_shared::cost::DailySpend::new(std::sync::Arc::new(smsgate_shared::cas::Cas::new(bucket)));
        spend.add(&channel_id(), usd, std::time::SystemTime::now()).await.unwrap();
    }

    /// Records `peer`'s express consent on channel `test`, so that the guard
    /// lets the operator's texts to a number that never texted through.
    pub(crate) async fn consent(&self, peer: &str) {
        let body = json!({"channel_id": "test", "to": peer, "kind": "express", "source": "test"});
        let (status, answer) = self.post("/api/v1/consent", &body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(TOKEN).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let r = self.http.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).json(body).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn history(&self, peer: &str, at: OffsetDateTime, event: HistoryEvent) {
        let entry = HistoryEntry { v: VERSION, channel_id: channel_id(), peer: E164::parse(peer).unwrap(), at, event };
        let subject = self.topology.history_subject(&entry.channel_id, &entry.peer);
        self.js.publish(subject, envelope::encode(&entry)).await.unwrap().await.unwrap();
    }

    async fn dead_letter(&self, subject: String, msg_id: Option<&str>, payload: String) -> u64 {
        let letter = DeadLetter {
            v: VERSION,
            stage: "sender".to_owned(),
            channel_id: "test".to_owned(),
            reason: "Twilio refused: 21211 invalid To".to_owned(),
            code: Some(21211),
            subject,
            msg_id: msg_id.map(str::to_owned),
            payload,
            at: OffsetDateTime::now_utc(),
        };
        let dead = self.topology.dead_subject(Stage::Sender, &channel_id());
        self.js.publish(dead, envelope::encode(&letter)).await.unwrap().await.unwrap().sequence
    }

    pub(crate) async fn stream_count(&self, name: String) -> u64 {
        self.js.get_stream(name).await.unwrap().info().await.unwrap().state.messages
    }
}

fn channel_id() -> ChannelId {
    ChannelId::parse("test").unwrap()
}

fn outbound_json(id: &str) -> String {
    let o = Outbound {
        v: VERSION,
        id: smsgate_shared::bus::OutboundId::parse(id).unwrap(),
        channel_id: channel_id(),
        to: E164::parse(PEER).unwrap(),
        body: "hello again".to_owned(),
        media_urls: vec![],
        in_reply_to: None,
        origin: Origin::Chat,
        created_at: OffsetDateTime::now_utc(),
        call: None,
        guard: None,
    };
    String::from_utf8(envelope::encode(&o).to_vec()).unwrap()
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

#[tokio::test]
async fn every_route_needs_the_bearer_token() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    for (method, path) in [
        ("GET", "/api/v1/channels"),
        ("GET", "/api/v1/conversations"),
        ("GET", "/api/v1/conversations/test/+14155550100"),
        ("GET", "/api/v1/dead"),
        ("POST", "/api/v1/dead/1/replay"),
        ("POST", "/api/v1/messages"),
        ("GET", "/metrics"),
    ] {
        let url = format!("{}{path}", admin.base);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for auth in [None, Some("Bearer wrong-token"), Some(TOKEN), Some("Basic YWRtaW46cGFzcw==")] {
            let mut request = admin.http.request(method.clone(), &url);
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body: Value = r.json().await.unwrap();
            assert_error(StatusCode::UNAUTHORIZED, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        let r = admin.http.request(method, &url).bearer_auth(TOKEN).send().await.unwrap();
        assert_ne!(r.status(), StatusCode::UNAUTHORIZED, "{path} with the right token");
    }
}

#[tokio::test]
async fn without_a_configured_token_one_is_generated_into_a_private_file_and_required() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state/smsgate/admin-token");
    let mut settings = Settings::for_tests(&nats.url(), &unique_prefix());
    settings.admin_token = None;
    settings.admin_token_file = Some(file.clone());
    let app = App::build(Config { settings: settings.clone(), channels: channels() }).await.expect("ingress builds");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(token.len() >= 32, "{token}");
    let base = format!("http://{}", app.admin_addr());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { app.run_until_stopped(stop).await.expect("ingress runs") });
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/channels");
    assert_eq!(http.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(http.get(&url).bearer_auth(&token).send().await.unwrap().status(), StatusCode::OK);
    shutdown.cancel();
    // The next start keeps the same token.
    drop(App::build(Config { settings: settings.clone(), channels: channels() }).await.expect("builds again"));
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    // No token and nowhere to keep one: refuse to start, naming the variable.
    settings.admin_token_file = None;
    let Err(err) = App::build(Config { settings, channels: channels() }).await else {
        panic!("an admin API without a token must not start");
    };
    assert!(format!("{err}").contains("SMSGATE_ADMIN_TOKEN"), "{err}");
}

#[tokio::test]
async fn cross_site_and_rebinding_requests_are_refused_and_a_plain_client_with_the_token_works() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let send = json!({"channel_id": "test", "to": PEER, "body": "from a web page"});
    let messages = format!("{}/api/v1/messages", admin.base);
    let conversations = format!("{}/api/v1/conversations", admin.base);
    let port = admin.base.rsplit(':').next().unwrap().to_owned();
    // A page of another origin, with or without the token (a page may have guessed it).
    for (name, value) in [
        ("origin", "http://evil.example".to_owned()),
        ("origin", "http://localhost:3000".to_owned()),
        ("origin", "null".to_owned()),
        ("sec-fetch-site", "cross-site".to_owned()),
        ("sec-fetch-site", "same-site".to_owned()),
    ] {
        let r = admin.http.post(&messages).bearer_auth(TOKEN).header(name, &value).json(&send).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        let r = admin.http.get(&conversations).bearer_auth(TOKEN).header(name, &value).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "GET with {name}: {value}");
    }
    // DNS rebinding: the page's own name pointed at 127.0.0.1.
    for host in [format!("rebind.evil.example:{port}"), "10.1.2.3".to_owned(), format!("localhost.evil:{port}")] {
        let r = admin.http.get(&conversations).bearer_auth(TOKEN).header("host", &host).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    // The "simple request" a form or fetch() can send without a preflight.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let r = admin
            .http
            .post(&messages)
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(send.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
    }
    let r = admin.http.post(&messages).bearer_auth(TOKEN).body(send.to_string()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "no content type");
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 0, "nothing was sent");

    // What curl or the CLI sends: the token, JSON, the listener's own host
    // (or localhost), and the same origin when a browser adds one.
    admin.consent(PEER).await;
    let (status, body) = admin.post("/api/v1/messages", &send).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let r = admin
        .http
        .post(&messages)
        .bearer_auth(TOKEN)
        .header("host", format!("localhost:{port}"))
        .header("origin", format!("http://localhost:{port}"))
        .header("sec-fetch-site", "same-origin")
        .header("content-type", "application/json; charset=utf-8")
        .body(send.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(admin.get("/api/v1/conversations").await.0, StatusCode::OK);
}

#[tokio::test]
async fn send_publishes_an_api_outbound_with_the_idempotency_key_as_msg_id() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    admin.consent(PEER).await;
    let request =
        json!({"channel_id": "test", "to": PEER, "body": "Your code is 1234", "idempotency_key": "order-42.sms"});
    let (status, body) = admin.post("/api/v1/messages", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body,
        json!({"id": "api.order-42.sms", "status": "queued", "purpose": "informational", "duplicate": false})
    );

    let stream = admin.js.get_stream(admin.topology.outbound_stream()).await.unwrap();
    let stored = stream.get_last_raw_message_by_subject(&admin.topology.outbound_subject(&channel_id())).await.unwrap();
    assert_eq!(stored.headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("api.order-42.sms"));
    let outbound: Outbound = envelope::decode(&stored.payload).unwrap();
    assert_eq!(outbound.id, "api.order-42.sms");
    assert_eq!(outbound.origin, Origin::Api);
    assert_eq!(outbound.to.as_str(), PEER);
    assert_eq!(outbound.body, "Your code is 1234");
    assert_eq!(outbound.in_reply_to, None);

    // The same key again: accepted, flagged, and nothing new to send.
    let (status, body) = admin.post("/api/v1/messages", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        body,
        json!({"id": "api.order-42.sms", "status": "queued", "purpose": "informational", "duplicate": true})
    );
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 1);

    // Without a key each request gets its own id.
    let plain = json!({"channel_id": "test", "to": PEER, "body": "hi", "media_urls": ["https://example.com/a.jpg"]});
    let (_, a) = admin.post("/api/v1/messages", &plain).await;
    let (_, b) = admin.post("/api/v1/messages", &plain).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    assert!(a.starts_with("api.") && smsgate_shared::bus::OutboundId::parse(a).is_some(), "{a}");
    assert_ne!(a, b);
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 3);
}

#[tokio::test]
async fn send_validation_errors_are_400_with_a_code() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    admin.consent(PEER).await;
    let long = "x".repeat(1601);
    let ok_1600 = "x".repeat(1600);
    let cases = [
        (json!({"channel_id": "nope", "to": PEER, "body": "hi"}), "unknown_channel"),
        (json!({"channel_id": "off", "to": PEER, "body": "hi"}), "channel_disabled"),
        (json!({"channel_id": "test", "to": "4155550100", "body": "hi"}), "invalid_number"),
        (json!({"channel_id": "test", "to": "+1415abc", "body": "hi"}), "invalid_number"),
        (json!({"channel_id": "test", "to": PEER, "body": "  "}), "empty_body"),
        (json!({"channel_id": "test", "to": PEER}), "empty_body"),
        (json!({"channel_id": "test", "to": PEER, "body": long}), "body_too_long"),
        (
            json!({"channel_id": "test", "to": PEER, "body": "hi", "idempotency_key": "has space"}),
            "invalid_idempotency_key",
        ),
        (json!({"channel_id": "test", "to": PEER, "body": "hi", "idempotency_key": ".dot"}), "invalid_idempotency_key"),
        (json!({"channel_id": "test", "to": PEER, "body": "hi", "media_urls": ["ftp://x/y"]}), "invalid_media_url"),
        (
            json!({"channel_id": "test", "to": PEER, "media_urls": ["http://cdn.example.com/a.png"]}),
            "invalid_media_url",
        ),
        (
            json!({"channel_id": "test", "to": PEER, "body": "hi", "media_urls": ["https://cdn.example.com/a", "https://127.0.0.1/b"]}),
            "invalid_media_url",
        ),
        (json!({"channel_id": "test", "to": PEER, "media_urls": ["https://localhost/a.png"]}), "invalid_media_url"),
        (json!({"channel_id": "test", "to": PEER, "media_urls": ["https://[fe80::1]/a.png"]}), "invalid_media_url"),
        (json!({"channel_id": "test", "to": PEER, "media_urls": ["https://printer.local/a.png"]}), "invalid_media_url"),
        (
            json!({"channel_id": "test", "to": PEER, "media_urls": vec!["https://cdn.example.com/a.png"; 11]}),
            "too_many_media",
        ),
        (json!({"channel_id": "test", "to": PEER, "body": "hi", "colour": "red"}), "invalid_json"),
        (json!(["not", "an", "object"]), "invalid_json"),
    ];
    for (request, code) in cases {
        let (status, body) = admin.post("/api/v1/messages", &request).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, code);
    }
    // The 400 names the problem and the URL's place.
    for (urls, detail) in [
        (json!(["http://cdn.example.com/a.png"]), "media_urls[0] must be an https:// URL"),
        (
            json!(["https://cdn.example.com/a", "https://10.1.2.3/b"]),
            "media_urls[1] must name a host, not an IP address",
        ),
        (json!(["https://localhost/a.png"]), "media_urls[0] must be on a public host"),
        (json!(vec!["https://cdn.example.com/a.png"; 11]), "media_urls has 11 URLs; at most 10"),
    ] {
        let request = json!({"channel_id": "test", "to": PEER, "body": "hi", "media_urls": urls});
        let (_, body) = admin.post("/api/v1/messages", &request).await;
        assert!(body["detail"].as_str().is_some_and(|d| d.contains(detail)), "{detail} in {body}");
    }
    let r = admin
        .http
        .post(format!("{}/api/v1/messages", admin.base))
        .bearer_auth(TOKEN)
        .body("channel_id=test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "writes take JSON only");
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 0, "nothing invalid is published");

    let (status, _) = admin.post("/api/v1/messages", &json!({"channel_id": "test", "to": PEER, "body": ok_1600})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "1600 characters is Twilio's limit, not over it");
}

#[tokio::test]
async fn conversations_are_listed_with_counts_and_last_time_newest_first() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let (status, body) = admin.get("/api/v1/conversations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"conversations": [], "total": 0}));

    let t0 = OffsetDateTime::now_utc();
    for i in 0..3 {
        let sid = MessageSid::parse(&format!("SM{i}")).unwrap();
        admin.history(PEER, t0, HistoryEvent::Inbound { message_sid: sid, body: format!("m{i}"), media: vec![] }).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let sid = MessageSid::parse("SMo").unwrap();
    admin.history(OTHER_PEER, t0, HistoryEvent::Inbound { message_sid: sid, body: "x".into(), media: vec![] }).await;

    let (status, body) = admin.get("/api/v1/conversations").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list = body["conversations"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    assert_eq!(list[0]["peer"], OTHER_PEER, "the most recent first: {body}");
    assert_eq!(list[0]["count"], 1);
    assert_eq!(list[1]["peer"], PEER);
    assert_eq!(list[1]["count"], 3);
    assert_eq!(list[1]["messages"], 3);
    assert_eq!(list[1]["last_message"]["body"], "m2");
    assert_eq!(list[1]["last_message"]["direction"], "inbound");
    assert_eq!(list[1]["channel_id"], "test");
    let last =
        OffsetDateTime::parse(list[1]["last_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!((last - OffsetDateTime::now_utc()).abs() < time::Duration::minutes(1), "{last}");

    let (_, filtered) = admin.get("/api/v1/conversations?channel_id=test").await;
    assert_eq!(filtered["conversations"].as_array().unwrap().len(), 2);
    let (_, none) = admin.get("/api/v1/conversations?channel_id=off").await;
    assert_eq!(none, json!({"conversations": [], "total": 0}));
    let (status, body) = admin.get("/api/v1/conversations?channel_id=nope").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_channel");
}

#[tokio::test]
async fn a_conversation_reads_oldest_first_with_limit_and_each_piece_s_delivery_state() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let t = OffsetDateTime::now_utc();
    let sid = MessageSid::parse("SMin1").unwrap();
    let piece = |index: usize, sid: &str| Piece {
        index,
        body: format!("part {index}"),
        segments: 1,
        encoding: "GSM-7".to_owned(),
        sid: Some(sid.to_owned()),
    };
    let status = |sid: &str, s: &str, code: Option<&str>| HistoryEvent::Status {
        sid: sid.to_owned(),
        status: s.to_owned(),
        error_code: code.map(str::to_owned),
    };
    admin
        .history(PEER, t, HistoryEvent::Inbound { message_sid: sid.clone(), body: "hello".into(), media: vec![] })
        .await;
    admin
        .history(
            PEER,
            t,
            HistoryEvent::Outbound {
                id: "reply.SMin1".into(),
                body: "part 0 part 1".into(),
                in_reply_to: Some(sid.clone()),
                origin: Origin::Chat,
                pieces: vec![piece(0, "SMp0"), piece(1, "SMp1")],
                delivery: "twilio".into(),
                media: vec!["https://cdn.example.com/a.png".into()],
            },
        )
        .await;
    // Out of order, as Twilio's callbacks may come: "sent" after "delivered".
    admin.history(PEER, t, status("SMp0", "delivered", None)).await;
    admin.history(PEER, t, status("SMp0", "sent", None)).await;
    admin.history(PEER, t, status("SMp1", "sent", None)).await;
    admin
        .history(
            PEER,
            t,
            HistoryEvent::Note {
                reason: NoteReason::RateLimited,
                message_sid: Some(MessageSid::parse("SMin2").unwrap()),
                outbound_id: None,
                detail: "over 10/min".into(),
            },
        )
        .await;

    let (code, body) = admin.get("/api/v1/conversations/test/%2B14155550100").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["peer"], PEER);
    assert_eq!(body["total"], 6);
    assert_eq!(body["messages"], 2);
    assert!(body["started_at"].is_string(), "{body}");
    let entries = body["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["inbound", "outbound", "status", "status", "status", "note"]);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first: {seqs:?}");
    let outbound = &entries[1];
    assert_eq!(outbound["pieces"][0]["state"], "delivered", "a late 'sent' never moves a piece back: {outbound}");
    assert_eq!(outbound["pieces"][1]["state"], "sent");
    assert_eq!(outbound["state"], "sent", "the least advanced piece: {outbound}");
    assert_eq!(outbound["media"], serde_json::json!(["https://cdn.example.com/a.png"]), "an MMS shows its media");
    assert_eq!(entries[0]["body"], "hello");
    assert_eq!(entries[5]["reason"], "rate_limited");

    // The last `limit` entries, still oldest first; with or without the '+'.
    let (_, last2) = admin.get("/api/v1/conversations/test/14155550100?limit=2").await;
    let kinds: Vec<&str> = last2["entries"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["status", "note"]);
    assert_eq!(last2["total"], 6);

    // A failed piece makes the message failed, with Twilio's error code.
    admin.history(PEER, t, status("SMp1", "undelivered", Some("30034"))).await;
    let (_, body) = admin.get("/api/v1/conversations/test/+14155550100").await;
    assert_eq!(body["entries"][1]["state"], "undelivered");
    assert_eq!(body["entries"][1]["pieces"][1]["error_code"], "30034");

    let (_, empty) = admin.get("/api/v1/conversations/test/+14155550111").await;
    assert_eq!(empty["total"], 0);
    assert_eq!(empty["entries"], json!([]));

    for (path, status, code) in [
        ("/api/v1/conversations/test/+1415?limit=5", StatusCode::BAD_REQUEST, "invalid_number"),
        ("/api/v1/conversations/test/+14155550100?limit=0", StatusCode::BAD_REQUEST, "invalid_limit"),
        ("/api/v1/conversations/test/+14155550100?limit=lots", StatusCode::BAD_REQUEST, "invalid_limit"),
        ("/api/v1/conversations/nope/+14155550100", StatusCode::NOT_FOUND, "unknown_channel"),
        ("/api/v1/nothing-here", StatusCode::NOT_FOUND, "no_route"),
    ] {
        let (s, body) = admin.get(path).await;
        assert_error(s, &body, status, code);
    }
}

#[tokio::test]
async fn log_delivery_shows_as_logged() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let piece = Piece { index: 0, body: "hi".into(), segments: 1, encoding: "GSM-7".into(), sid: None };
    let event = HistoryEvent::Outbound {
        id: "api.x".into(),
        body: "hi".into(),
        in_reply_to: None,
        origin: Origin::Api,
        pieces: vec![piece],
        delivery: "log".into(),
        media: vec![],
    };
    admin.history(PEER, OffsetDateTime::now_utc(), event).await;
    let (_, body) = admin.get("/api/v1/conversations/test/+14155550100").await;
    assert_eq!(body["entries"][0]["state"], "logged", "{body}");
    assert_eq!(body["entries"][0]["origin"], "api");
}

#[tokio::test]
async fn channels_show_health_and_dead_letters_but_no_secrets() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let r = admin.http.get(format!("{}/api/v1/channels", admin.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains(testkit::AUTH_TOKEN), "the auth token leaked: {text}");
    assert!(!text.contains(testkit::PATH_TOKEN), "the path token leaked: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["nats"], json!({"connected": true, "streams_present": true}));
    let test = &body["channels"][0];
    assert_eq!(test["channel_id"], "test");
    assert_eq!(test["enabled"], true);
    assert_eq!(test["from_number"], testkit::FROM_NUMBER);
    assert_eq!(test["chat"], "echo");
    assert_eq!(test["delivery"], "twilio");
    assert_eq!(test["dead_letters"], 0);
    assert_eq!(test["health"], "ok", "{test}");
    assert_eq!(body["channels"][1]["health"], "disabled");

    admin.dead_letter(admin.topology.outbound_subject(&channel_id()), None, outbound_json("api.1")).await;
    let (_, body) = admin.get("/api/v1/channels").await;
    assert_eq!(body["channels"][0]["dead_letters"], 1);
    assert_eq!(body["channels"][0]["health"], "degraded");
    assert!(body["channels"][0]["problems"][0].as_str().unwrap().contains("dead letter"), "{body}");
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_to_their_subject_once() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let outbound_subject = admin.topology.outbound_subject(&channel_id());
    let seq = admin.dead_letter(outbound_subject.clone(), Some("reply.SM1"), outbound_json("reply.SM1")).await;
    let history_seq = admin
        .dead_letter(admin.topology.history_subject(&channel_id(), &E164::parse(PEER).unwrap()), None, "{}".to_owned())
        .await;

    let (status, body) = admin.get("/api/v1/dead").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["seq"], seq);
    assert_eq!(entries[0]["stage"], "sender");
    assert_eq!(entries[0]["code"], 21211);
    assert_eq!(entries[0]["subject"], outbound_subject);
    let (_, filtered) = admin.get("/api/v1/dead?channel_id=off").await;
    assert_eq!(filtered["entries"], json!([]));
    let (_, limited) = admin.get("/api/v1/dead?limit=1").await;
    assert_eq!(limited["entries"][0]["seq"], history_seq, "the newest within the limit");

    let (status, body) = admin.post(&format!("/api/v1/dead/{seq}/replay"), &Value::Null).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["subject"], outbound_subject);
    assert_eq!(body["msg_id"], format!("replay.{seq}.reply.SM1"));
    let stream = admin.js.get_stream(admin.topology.outbound_stream()).await.unwrap();
    let replayed = stream.get_last_raw_message_by_subject(&outbound_subject).await.unwrap();
    assert_eq!(
        replayed.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(format!("replay.{seq}.reply.SM1").as_str())
    );
    assert_eq!(envelope::decode::<Outbound>(&replayed.payload).unwrap().id, "reply.SM1");

    let (_, body) = admin.get("/api/v1/dead").await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 1, "the replayed letter is gone: {body}");
    let (status, body) = admin.post(&format!("/api/v1/dead/{seq}/replay"), &Value::Null).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no_such_dead_letter");
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 1);

    let (status, body) = admin.post(&format!("/api/v1/dead/{history_seq}/replay"), &Value::Null).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "not_replayable");
    let (status, body) = admin.post("/api/v1/dead/abc/replay", &Value::Null).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_seq");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    admin.consent(PEER).await;
    admin.post("/api/v1/messages", &json!({"channel_id": "test", "to": PEER, "body": "hi"})).await;
    let r = admin.http.get(format!("{}/metrics", admin.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(text.contains("smsgate_admin_messages_total"), "{text}");
    assert!(text.contains("smsgate_conversation_index_entries"), "the index's size: {text}");
}

#[tokio::test]
async fn nats_down_answers_503_quickly() {
    let mut nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    nats.stop();
    let send = json!({"channel_id": "test", "to": PEER, "body": "hi"});
    // The client notices the lost connection within moments; from then on
    // every NATS-backed route answers 503 at once.
    testkit::eventually(Duration::from_secs(15), "503 from the admin API", || async {
        let (status, body) = admin.post("/api/v1/messages", &send).await;
        (status == StatusCode::SERVICE_UNAVAILABLE && body["code"] == "nats_unavailable").then_some(())
    })
    .await;
    for path in ["/api/v1/conversations", "/api/v1/conversations/test/+14155550100", "/api/v1/dead"] {
        let started = Instant::now();
        let (status, body) = admin.get(path).await;
        assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, "nats_unavailable");
        assert!(started.elapsed() < Duration::from_secs(6), "{path} took {:?}", started.elapsed());
    }
    let (status, body) = admin.get("/api/v1/channels").await;
    assert_eq!(status, StatusCode::OK, "channels answer even with NATS down: {body}");
    assert_eq!(body["nats"]["connected"], false);
    assert_eq!(body["channels"][0]["health"], "down");
}

#[tokio::test]
async fn pause_and_resume_a_conversation_store_the_takeover_and_record_it() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let path = format!("/api/v1/conversations/test/{}", PEER.trim_start_matches('+'));
    let before = OffsetDateTime::now_utc();

    let (status, body) = admin.post(&format!("{path}/pause"), &json!({"minutes": 30})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true, "{body}");
    let until =
        OffsetDateTime::parse(body["paused_until"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let minutes = (until - before).whole_seconds() as f64 / 60.0;
    assert!((29.9..=30.1).contains(&minutes), "paused for {minutes} minutes");

    // What every worker reads: the bucket entry.
    let store = admin.js.get_key_value(admin.topology.conversations_bucket()).await.unwrap();
    let key = Topology::conversation_key(&channel_id(), &E164::parse(PEER).unwrap());
    let stored: envelope::ConversationState = serde_json::from_slice(&store.get(&key).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored.paused_until.unix_timestamp(), until.unix_timestamp());

    // The conversation shows the pause and the note.
    let (status, view) = admin.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["paused_until"], body["paused_until"], "{view}");
    let notes: Vec<&str> = view["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "note")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(notes, ["paused"], "{view}");

    // Without minutes: the channel's pause_minutes (60 by default).
    let (status, body) = admin.post(&format!("{path}/pause"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let until =
        OffsetDateTime::parse(body["paused_until"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!((until - OffsetDateTime::now_utc()).whole_minutes() >= 59, "{body}");

    for bad in [json!({"minutes": 0}), json!({"minutes": -5}), json!({"minutes": 20000}), json!({"minute": 5})] {
        let (status, body) = admin.post(&format!("{path}/pause"), &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = admin.post("/api/v1/conversations/nope/14155550100/pause", &json!({})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_channel");

    let (status, body) = admin.post(&format!("{path}/resume"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], false, "{body}");
    assert!(store.get(&key).await.unwrap().is_none(), "the pause is gone from the bucket");
    let (_, view) = admin.get(&path).await;
    assert_eq!(view["paused_until"], Value::Null, "{view}");
    let last = view["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "resumed", "{view}");
}

pub(crate) fn inbound(i: usize, body: &str) -> HistoryEvent {
    HistoryEvent::Inbound {
        message_sid: MessageSid::parse(&format!("SMp{i}")).unwrap(),
        body: body.into(),
        media: vec![],
    }
}

#[tokio::test]
async fn the_list_pages_with_a_cursor_and_finds_numbers_by_their_digits() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let now = OffsetDateTime::now_utc();
    for i in 0..23 {
        admin.history(&format!("+1415555{:04}", 1000 + i), now, inbound(i, &format!("hello {i}"))).await;
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/conversations?limit=10".to_owned();
    loop {
        let (status, page) = admin.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total"], 23);
        seen.extend(page["conversations"].as_array().unwrap().iter().map(|c| c["peer"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/conversations?limit=10&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 23, "every conversation once: {seen:?}");
    assert_eq!(seen[0], "+14155551022", "newest first");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 23);

    let (_, found) = admin.get("/api/v1/conversations?q=%2B1415555101").await;
    let peers: Vec<&str> =
        found["conversations"].as_array().unwrap().iter().map(|c| c["peer"].as_str().unwrap()).collect();
    assert_eq!(found["total"], 10, "{found}");
    assert!(peers.iter().all(|p| p.starts_with("+1415555101")), "{peers:?}");
    let (_, one) = admin.get("/api/v1/conversations?q=5551007").await;
    assert_eq!(one["conversations"][0]["peer"], "+14155551007");
    assert_eq!(one["conversations"][0]["last_message"]["body"], "hello 7");

    for (path, code) in [
        ("/api/v1/conversations?cursor=junk", "invalid_cursor"),
        ("/api/v1/conversations?q=abc", "invalid_query"),
        ("/api/v1/conversations?limit=0", "invalid_limit"),
    ] {
        let (status, body) = admin.get(path).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, code);
    }
}

/// Reads server-sent events until `n` have come (or 10 s pass).
pub(crate) async fn read_events(response: &mut reqwest::Response, n: usize) -> Vec<smsgate_shared::sse::SseEvent> {
    let mut parser = smsgate_shared::sse::SseParser::default();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk()).await;
        match chunk {
            Ok(Ok(Some(bytes))) => events.extend(parser.push(&bytes)),
            other => panic!("the event stream ended or stalled after {} events: {other:?}", events.len()),
        }
    }
    events
}

#[tokio::test]
async fn events_stream_what_is_recorded_and_resume_after_the_last_event_id() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let url = format!("{}/api/v1/events", admin.base);
    // Recorded before anyone listened: not sent to a new client.
    admin.history(PEER, OffsetDateTime::now_utc(), inbound(0, "before")).await;

    let mut stream = admin.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let now = OffsetDateTime::now_utc();
    admin.history(PEER, now, inbound(1, "hi")).await;
    admin
        .history(
            PEER,
            now,
            HistoryEvent::Note {
                reason: NoteReason::RateLimited,
                message_sid: Some(MessageSid::parse("SMp2").unwrap()),
                outbound_id: None,
                detail: "over 10 a minute".into(),
            },
        )
        .await;
    let dead_seq = admin
        .dead_letter(admin.topology.outbound_subject(&channel_id()), Some("reply.SMp1"), outbound_json("reply.SMp1"))
        .await;
    let events = read_events(&mut stream, 3).await;
    assert_eq!(events[0].event, "message.received");
    let first: Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(first["body"], "hi");
    assert_eq!(first["peer"], PEER, "the full number: this is the private side");
    assert_eq!(first["message_sid"], "SMp1");
    assert_eq!(first["channel_id"], "test");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(names.contains(&"message.skipped") && names.contains(&"dead.letter"), "{names:?}");
    let dead = events.iter().find(|e| e.event == "dead.letter").unwrap();
    let dead_data: Value = serde_json::from_str(&dead.data).unwrap();
    assert_eq!(dead_data["seq"], dead_seq);
    assert_eq!(dead_data["peer"], PEER);
    drop(stream);

    // Away for a while: what was recorded meanwhile comes first on return.
    let last_id = events[0].id.clone().expect("every event has an id");
    admin.history(OTHER_PEER, OffsetDateTime::now_utc(), inbound(3, "while away")).await;
    let mut again = admin.http.get(&url).bearer_auth(TOKEN).header("last-event-id", &last_id).send().await.unwrap();
    let replayed = read_events(&mut again, 3).await;
    let bodies: Vec<String> = replayed
        .iter()
        .filter(|e| e.event == "message.received")
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["while away"], "after the last id, nothing before it: {replayed:?}");
    assert!(replayed.iter().any(|e| e.event == "message.skipped"), "the events after the id come again: {replayed:?}");

    // Filtered by channel: the other channel's events never come.
    let mut off = admin.http.get(format!("{url}?channel_id=off")).bearer_auth(TOKEN).send().await.unwrap();
    admin.history(PEER, OffsetDateTime::now_utc(), inbound(4, "not for off")).await;
    assert!(tokio::time::timeout(Duration::from_millis(700), read_events(&mut off, 1)).await.is_err());

    let r = admin.http.get(&url).bearer_auth(TOKEN).header("last-event-id", "yesterday").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(admin.http.get(&url).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_console_signs_in_with_the_token_for_an_http_only_strict_cookie() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    // The page itself needs no token and carries a strict policy.
    let page = admin.http.get(format!("{}/", admin.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.text().await.unwrap().contains("/console.js"));

    let session = format!("{}/api/v1/session", admin.base);
    let wrong = admin.http.post(&session).json(&json!({"token": "guess"})).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get("set-cookie").is_none());
    let form = admin
        .http
        .post(&session)
        .body(format!("token={TOKEN}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "a cross-site form cannot sign in");

    let ok = admin.http.post(&session).json(&json!({"token": TOKEN})).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["smsgate_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = |r: reqwest::RequestBuilder| r.header("cookie", pair.clone());
    let r = with_cookie(admin.http.get(format!("{}/api/v1/conversations", admin.base))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the cookie stands for the token");
    let r = with_cookie(admin.http.get(format!("{}/api/v1/conversations", admin.base)))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "not from another origin, cookie or not");
    let r = with_cookie(admin.http.get(format!("{}/api/v1/conversations", admin.base)))
        .header("host", "rebind.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);

    let out = with_cookie(admin.http.delete(&session)).header("content-type", "application/json").send().await.unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let r = with_cookie(admin.http.get(format!("{}/api/v1/conversations", admin.base))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "signed out: the old cookie is worth nothing");
    let r = admin
        .http
        .get(format!("{}/api/v1/conversations", admin.base))
        .header("cookie", "smsgate_session=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn with_nowhere_to_keep_the_admin_token_ingress_exits_64_like_any_bad_configuration() {
    let channels = format!("{}/../deploy/channels.example.json", env!("CARGO_MANIFEST_DIR"));
    // No SMSGATE_ADMIN_TOKEN, no token file, no XDG_STATE_HOME, no HOME.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate-ingress"))
        .env_clear()
        .env("SMSGATE_CHANNELS", channels)
        .env("TWILIO_AUTH_TOKEN", "exit-test-auth-token")
        .env("SMS_WEBHOOK_PATH_TOKEN", "exittestpathtoken0123456789abcdefghijklmn")
        .env("SMSGATE_NATS_URL", "nats://127.0.0.1:1")
        .env("SMSGATE_INGRESS_ADDR", "127.0.0.1:0")
        .env("SMSGATE_ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("SMSGATE_ADMIN_TOKEN is not set and there is no place for a generated one"), "{stderr}");
}

#[tokio::test]
async fn a_spent_day_budget_refuses_texts_with_403_budget_and_the_conversation_shows_its_cost() {
    let nats = NatsServer::start();
    let limits = r#""limits": {"replies_per_minute": 100, "replies_per_day": 100, "usd_per_day": 0.5}"#;
    let admin = Admin::start_with(&nats, vec![testkit::channel(limits)]).await;
    admin.consent(PEER).await;
    let request = json!({"channel_id": "test", "to": PEER, "body": "Your order shipped"});
    let (status, body) = admin.post("/api/v1/messages", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    admin.spend(0.6).await;
    let (status, body) = admin.post("/api/v1/messages", &request).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("budget")), "{body}");
    // For later: it meets the budget of its own day when it goes out.
    let tomorrow = (OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let later = json!({"channel_id": "test", "to": PEER, "body": "Reminder", "send_at": tomorrow});
    let (status, body) = admin.post("/api/v1/messages", &later).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Cost entries: an estimate replaced by Twilio's price, another estimate, a model answer.
    let now = OffsetDateTime::now_utc();
    let cost = |reference: &str, usd: f64, basis: Basis, item: Item| HistoryEvent::Cost {
        item,
        reference: reference.to_owned(),
        units: 1,
        usd: Some(usd),
        basis,
        detail: None,
    };
    admin.history(PEER, now, cost("SMa", 0.0166, Basis::Estimate, Item::Sms)).await;
    admin.history(PEER, now, cost("SMb", 0.0083, Basis::Estimate, Item::Sms)).await;
    admin.history(PEER, now, cost("SMin", 0.0004, Basis::Usage, Item::Model)).await;
    admin.history(PEER, now, cost("SMa", 0.0158, Basis::Twilio, Item::Sms)).await;
    let (status, view) = admin.get(&format!("/api/v1/conversations/test/{PEER}?limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let total = view["cost"]["total_usd"].as_f64().unwrap();
    assert!((total - (0.0158 + 0.0083 + 0.0004)).abs() < 1e-9, "{view}");
    assert_eq!(view["cost"]["estimated"], 1, "{view}");
    assert_eq!(view["entries"].as_array().unwrap().len(), 2, "the sum covers entries beyond the page: {view}");
    assert_eq!(view["entries"][1]["kind"], "cost", "{view}");
}
