//! Channels connected at run time through the admin API of the real
//! ingress, against a real nats-server and the Twilio stub: the new
//! channel's webhook is served at once, its secrets are sealed at rest, file
//! channels stay read-only, and the status check's verdicts.

use std::time::Duration;

use async_nats::jetstream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use smsgate_ingress::App;
use smsgate_shared::config::{Config, Settings};
use smsgate_shared::signature;
use smsgate_shared::topology::{self, Topology};
use smsgate_testkit::{self as testkit, nats::NatsServer, twilio::TwilioStub};
use tokio_util::sync::CancellationToken;

use crate::helpers::{form, inbound_params, unique_prefix};

const TOKEN: &str = "channels-admin-token-0123456789";
const RT_TOKEN: &str = "runtime-path-token-0123456789abcdefghijk";
const PUBLIC: &str = "http://127.0.0.1:8000";

struct Stack {
    public: String,
    admin: String,
    http: reqwest::Client,
    js: jetstream::Context,
    topology: Topology,
    shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Stack {
    async fn start(nats: &NatsServer, with_key: bool) -> Self {
        let prefix = unique_prefix();
        let mut settings = Settings::for_tests(&nats.url(), &prefix);
        settings.admin_token = Some(TOKEN.into());
        settings.secret_key = with_key.then(testkit::secret_key);
        let app = App::build(Config { settings, channels: vec![testkit::channel("")] }).await.expect("ingress builds");
        let (public, admin) = (app.local_addr(), app.admin_addr());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move { app.run_until_stopped(stop).await.expect("ingress runs") });
        let http = reqwest::Client::new();
        let stack = Self {
            public: format!("http://{public}"),
            admin: format!("http://{admin}"),
            http,
            js: jetstream::new(topology::connect(&nats.url(), "test").await.unwrap()),
            topology: Topology::new(&prefix),
            shutdown,
        };
        // Ready, and the runtime channels are being followed (the admin
        // answers a connect with 503 until the bucket is open).
        testkit::eventually(Duration::from_secs(20), "ingress ready", || async {
            let ready = stack.http.get(format!("{}/api/ready", stack.public)).send().await.ok()?;
            ready.status().is_success().then_some(())
        })
        .await;
        stack
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let write = method != reqwest::Method::GET;
        let mut req = self.http.request(method, format!("{}{path}", self.admin)).bearer_auth(TOKEN);
        if let Some(body) = body {
            req = req.json(body);
        } else if write {
            // The guard takes writes as JSON only, a body or not.
            req = req.header("content-type", "application/json");
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Connects, retrying while the bucket is not open yet (503).
    async fn connect(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        testkit::eventually(Duration::from_secs(10), "the channels bucket open", || async {
            let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
            (status != StatusCode::SERVICE_UNAVAILABLE).then_some((status, v))
        })
        .await
    }

    async fn webhook(&self, token: &str, auth_token: &str, sid: &str) -> StatusCode {
        let path = format!("/api/channels/sms/twilio/webhook/{token}");
        let params = inbound_params(sid, "hello runtime");
        let sig = signature::sign(auth_token, &format!("{PUBLIC}{path}"), &params);
        let r = self
            .http
            .post(format!("{}{path}", self.public))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(signature::HEADER, sig)
            .body(form(&params))
            .send()
            .await
            .unwrap();
        r.status()
    }
}

#[tokio::test]
async fn a_connected_channel_is_served_at_once_sealed_at_rest_and_gone_when_disconnected() {
    let nats = NatsServer::start();
    let stack = Stack::start(&nats, true).await;
    let body = testkit::channel_json("rt", RT_TOKEN, r#""help_txt": "typo""#);

    let (status, v) = stack.connect("/api/v1/channels", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["channel"]["source"], "runtime");
    assert_eq!(v["channel"]["channel_id"], "rt");
    assert_eq!(v["ignored_keys"], json!(["config.help_txt (did you mean config.help_text?)"]));
    assert!(!v.to_string().contains(RT_TOKEN) && !v.to_string().contains(testkit::AUTH_TOKEN), "{v}");

    // Served by this ingress at once: a signed webhook lands on P.inbound.rt.
    assert_eq!(
        stack.webhook(RT_TOKEN, testkit::AUTH_TOKEN, "SM00000000000000000000000000000a01").await,
        StatusCode::OK
    );
    let inbound = stack.js.get_stream(stack.topology.inbound_stream()).await.unwrap();
    let msg = inbound.get_last_raw_message_by_subject(&format!("{}.inbound.rt", stack.topology.prefix())).await;
    assert!(msg.is_ok(), "nothing on the runtime channel's subject");

    // At rest: the bucket's raw value holds no secret.
    let raw = stack.js.get_key_value(stack.topology.channels_bucket()).await.unwrap().get("rt").await.unwrap().unwrap();
    let raw = String::from_utf8(raw.to_vec()).unwrap();
    assert!(!raw.contains(RT_TOKEN) && !raw.contains(testkit::AUTH_TOKEN), "{raw}");
    assert!(raw.contains(r#""twilio_auth_token":{"data":"#), "{raw}");

    let (status, list) = stack.call(reqwest::Method::GET, "/api/v1/channels", None).await;
    assert_eq!(status, StatusCode::OK);
    let sources: Vec<(String, String)> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["channel_id"].as_str().unwrap().to_owned(), c["source"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(sources, [("test".to_owned(), "file".to_owned()), ("rt".to_owned(), "runtime".to_owned())]);

    // Refusals: the same id (409), a file channel's id (409), a path token in
    // use (409), an invalid key (400, named), not JSON (400).
    let stack = &stack;
    let post = |b: Value| async move { stack.call(reqwest::Method::POST, "/api/v1/channels", Some(&b)).await };
    let (status, v) = post(testkit::channel_json("rt", "other-path-token-0123456789abcdefghijk", "")).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::CONFLICT, Some("channel_exists")), "{v}");
    let (status, v) = post(testkit::channel_json("test", "other-path-token-0123456789abcdefghijk", "")).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::CONFLICT, Some("channel_exists")), "{v}");
    let (status, v) = post(testkit::channel_json("rt2", testkit::PATH_TOKEN, "")).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::CONFLICT, Some("path_token_in_use")), "{v}");
    let (status, v) =
        post(testkit::channel_json("rt2", "other-path-token-0123456789abcdefghijk", r#""mps": -1"#)).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_channel")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("config.mps"), "{v}");
    let with_var = testkit::channel_json("rt2", "other-path-token-0123456789abcdefghijk", r#""help_text": "${HOME}""#);
    let (status, v) = post(with_var).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("config.help_text"), "{v}");

    // Disconnect: a file channel is refused, the runtime one goes, its
    // webhook answers 404 at once, a second delete is a 404.
    let (status, v) = stack.call(reqwest::Method::DELETE, "/api/v1/channels/test", None).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::CONFLICT, Some("file_channel")), "{v}");
    let (status, v) = stack.call(reqwest::Method::DELETE, "/api/v1/channels/rt", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        stack.webhook(RT_TOKEN, testkit::AUTH_TOKEN, "SM00000000000000000000000000000a02").await,
        StatusCode::NOT_FOUND
    );
    let (status, _) = stack.call(reqwest::Method::DELETE, "/api/v1/channels/rt", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = stack.call(reqwest::Method::GET, "/api/v1/channels/rt/status", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        stack.webhook(testkit::PATH_TOKEN, testkit::AUTH_TOKEN, "SM00000000000000000000000000000a03").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_the_secret_key_connecting_is_refused_with_the_reason() {
    let nats = NatsServer::start();
    let stack = Stack::start(&nats, false).await;
    let (status, v) = stack.connect("/api/v1/channels", &testkit::channel_json("rt", RT_TOKEN, "")).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::PRECONDITION_FAILED, Some("secret_key_missing")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("SMSGATE_SECRET_KEY is not set"), "{v}");
    assert_eq!(
        stack.webhook(RT_TOKEN, testkit::AUTH_TOKEN, "SM00000000000000000000000000000b01").await,
        StatusCode::NOT_FOUND
    );
}

fn ours(token: &str) -> String {
    format!("{PUBLIC}/api/channels/sms/twilio/webhook/{token}")
}

#[tokio::test]
async fn status_tells_in_one_line_what_twilio_has_for_the_number() {
    let nats = NatsServer::start();
    let twilio = TwilioStub::start().await;
    let stack = Stack::start(&nats, true).await;
    let cases = [
        // (id, from number, path token, auth token, number in the account as (url, method))
        ("ok", "+15550002001", Some("POST"), None, "ok"),
        (
            "moved",
            "+15550002002",
            Some("POST"),
            Some("https://old.example/sms"),
            "Twilio sends this number's SMS to https://old.example/sms, not to smsgate",
        ),
        ("get", "+15550002003", Some("GET"), None, "with GET; smsgate needs POST"),
        ("missing", "+15550002004", None, None, "+15550002004 is not a number of Twilio account"),
        ("badauth", "+15550002005", Some("POST"), None, "credentials rejected by Twilio (20003)"),
    ];
    for (i, (id, number, method, url, _)) in cases.iter().enumerate() {
        let token = format!("status-path-token-{i}-0123456789abcdefghijk");
        let auth = if *id == "badauth" { "not-the-auth-token-0000" } else { testkit::AUTH_TOKEN };
        let extra = format!(
            r#""twilio_from_number": "{number}", "twilio_auth_token": "{auth}", "twilio_api_base": "{}""#,
            twilio.base_url()
        );
        if let Some(method) = method {
            twilio.add_number(number, url.unwrap_or(&ours(&token)), method);
        }
        let (status, v) = stack.connect("/api/v1/channels", &testkit::channel_json(id, &token, &extra)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    for (id, _, _, _, verdict) in cases {
        let (status, v) = stack.call(reqwest::Method::GET, &format!("/api/v1/channels/{id}/status"), None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let said = v["verdict"].as_str().unwrap();
        assert!(said.contains(verdict), "{id}: {said}");
        assert_eq!(v["ok"], json!(id == "ok"), "{v}");
        assert!(!v.to_string().contains("status-path-token"), "a whole path token in {v}");
    }
    let (_, ok) = stack.call(reqwest::Method::GET, "/api/v1/channels/ok/status", None).await;
    assert_eq!(ok["credentials_valid"], true);
    assert_eq!(ok["account_status"], "active");
    assert_eq!(ok["number_found"], true);
    assert_eq!(ok["sms"]["method"], "POST");
    let (_, bad) = stack.call(reqwest::Method::GET, "/api/v1/channels/badauth/status", None).await;
    assert_eq!(bad["credentials_valid"], false);

    twilio.set_account_status("suspended");
    let (_, v) = stack.call(reqwest::Method::GET, "/api/v1/channels/ok/status", None).await;
    assert!(v["verdict"].as_str().unwrap().contains("is suspended"), "{v}");
}

#[tokio::test]
async fn connecting_with_set_webhook_points_the_number_at_smsgate() {
    let nats = NatsServer::start();
    let twilio = TwilioStub::start().await;
    let stack = Stack::start(&nats, true).await;
    let number = "+15550003001";
    twilio.add_number(number, "https://old.example/sms", "GET");
    let extra = format!(r#""twilio_from_number": "{number}", "twilio_api_base": "{}""#, twilio.base_url());
    let (status, v) =
        stack.connect("/api/v1/channels?set_webhook=true", &testkit::channel_json("hook", RT_TOKEN, &extra)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["webhook_set"]["method"], "POST", "{v}");
    let held = twilio.number(number).unwrap();
    assert_eq!((held.sms_url.as_str(), held.sms_method.as_str()), (ours(RT_TOKEN).as_str(), "POST"));
    let (sid, form) = twilio.number_updates().remove(0);
    assert_eq!(form, [("SmsUrl".to_owned(), ours(RT_TOKEN)), ("SmsMethod".to_owned(), "POST".to_owned())]);
    // What smsgate posted is valid by Twilio's spec, and what the stub
    // answers has no field Twilio's resources lack.
    let spec = testkit::twilio_spec::load_spec();
    let update = testkit::twilio_spec::check_update_incoming_phone_number(&spec, (testkit::ACCOUNT_SID, &sid), &form);
    assert_eq!(update, Ok(()));
    let base = format!("{}/2010-04-01/Accounts/{}", twilio.base_url(), testkit::ACCOUNT_SID);
    let get = |path: String| {
        let (http, base) = (stack.http.clone(), base.clone());
        async move {
            let url = format!("{base}{path}");
            let r = http.get(url).basic_auth(testkit::ACCOUNT_SID, Some(testkit::AUTH_TOKEN)).send().await.unwrap();
            r.json::<Value>().await.unwrap()
        }
    };
    let account = get(".json".to_owned()).await;
    assert_eq!(testkit::twilio_spec::check_answer_keys(&spec, "api.v2010.account", &account), Ok(()));
    let page = get(format!("/IncomingPhoneNumbers.json?PhoneNumber=%2B{}", &number[1..])).await;
    assert_eq!(page["incoming_phone_numbers"].as_array().map(Vec::len), Some(1), "{page}");
    let entry = &page["incoming_phone_numbers"][0];
    let schema = "api.v2010.account.incoming_phone_number";
    assert_eq!(testkit::twilio_spec::check_answer_keys(&spec, schema, entry), Ok(()));
    let (_, status) = stack.call(reqwest::Method::GET, "/api/v1/channels/hook/status", None).await;
    assert_eq!(status["verdict"], "ok", "{status}");

    // A number the account does not have: refused, nothing stored.
    let extra = format!(r#""twilio_from_number": "+15550003002", "twilio_api_base": "{}""#, twilio.base_url());
    let body = testkit::channel_json("nohook", "other-path-token-0123456789abcdefghijk", &extra);
    let (status, v) = stack.call(reqwest::Method::POST, "/api/v1/channels?set_webhook=true", Some(&body)).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("number_not_in_account")), "{v}");
    let (status, _) = stack.call(reqwest::Method::GET, "/api/v1/channels/nohook/status", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_channel_whose_settings_were_changed_in_the_bucket_without_the_key_is_refused_and_never_called() {
    let nats = NatsServer::start();
    let twilio = TwilioStub::start().await;
    let (elsewhere, connections) = testkit::counting_listener().await;
    let stack = Stack::start(&nats, true).await;
    let number = "+15550004001";
    twilio.add_number(number, &ours(RT_TOKEN), "POST");
    let extra = format!(r#""twilio_from_number": "{number}", "twilio_api_base": "{}""#, twilio.base_url());
    let (status, v) = stack.connect("/api/v1/channels", &testkit::channel_json("bound", RT_TOKEN, &extra)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (_, v) = stack.call(reqwest::Method::GET, "/api/v1/channels/bound/status", None).await;
    assert_eq!(v["verdict"], "ok", "{v}");

    // Someone who can write the bucket, without the key: the clear part
    // of the entry now sends the channel's requests elsewhere.
    let bucket = stack.js.get_key_value(stack.topology.channels_bucket()).await.unwrap();
    let mut entry: Value = serde_json::from_slice(&bucket.get("bound").await.unwrap().unwrap()).unwrap();
    entry["config"]["twilio_api_base"] = json!(elsewhere);
    bucket.put("bound", serde_json::to_vec(&entry).unwrap().into()).await.unwrap();

    testkit::eventually(Duration::from_secs(10), "the altered channel refused", || async {
        let (_, list) = stack.call(reqwest::Method::GET, "/api/v1/channels", None).await;
        let ids: Vec<&str> = list["channels"].as_array()?.iter().filter_map(|c| c["channel_id"].as_str()).collect();
        (!ids.contains(&"bound")).then_some(())
    })
    .await;
    let (status, v) = stack.call(reqwest::Method::GET, "/api/v1/channels/bound/status", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let send = json!({"channel_id": "bound", "to": "+14155550100", "body": "hi"});
    let (status, v) = stack.call(reqwest::Method::POST, "/api/v1/messages", Some(&send)).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_channel")), "{v}");
    assert_eq!(
        stack.webhook(RT_TOKEN, testkit::AUTH_TOKEN, "SM00000000000000000000000000000c01").await,
        StatusCode::NOT_FOUND
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0, "a request went to the new host");
}

#[tokio::test]
async fn the_status_check_shows_the_error_text_of_twilio_hosts_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A host that is not Twilio's, answering every request with an error
    // whose text must not reach the operator's screen.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let body = r#"{"code": 20500, "message": "ami-id instance-id iam/security-credentials/admin"}"#;
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let nats = NatsServer::start();
    let stack = Stack::start(&nats, true).await;
    let extra = format!(r#""twilio_from_number": "+15550005001", "twilio_api_base": "{base}""#);
    let (status, v) = stack.connect("/api/v1/channels", &testkit::channel_json("elsewhere", RT_TOKEN, &extra)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = stack.call(reqwest::Method::GET, "/api/v1/channels/elsewhere/status", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let verdict = v["verdict"].as_str().unwrap();
    assert!(verdict.contains("500") && verdict.contains("20500"), "status and code are shown: {verdict}");
    assert!(verdict.contains("not a Twilio host, is not shown"), "{verdict}");
    assert!(!v.to_string().contains("security-credentials"), "{v}");
}

#[tokio::test]
async fn a_log_only_channel_is_not_checked_at_twilio_and_its_webhook_comes_from_the_admin_api() {
    let nats = NatsServer::start();
    let twilio = TwilioStub::start().await;
    let stack = Stack::start(&nats, true).await;
    let token = "logonly-path-token-0123456789abcdefghijk";
    let extra = format!(r#""delivery": "log", "twilio_api_base": "{}""#, twilio.base_url());
    let (status, v) = stack.connect("/api/v1/channels", &testkit::channel_json("logonly", token, &extra)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    let (status, v) = stack.call(reqwest::Method::GET, "/api/v1/channels/logonly/status", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let verdict = v["verdict"].as_str().unwrap();
    let shown = format!("{PUBLIC}/api/channels/sms/twilio/webhook/logo…");
    assert!(
        verdict.starts_with(&format!("delivery log: Twilio is not used; the webhook URL Twilio would need is {shown}")),
        "{verdict}"
    );
    assert!(!v.to_string().contains(token), "a whole path token in {v}");
    assert_eq!(twilio.requests(), Vec::<String>::new(), "Twilio was asked about a log-only channel");

    // A Twilio channel whose API cannot be reached: the error keeps the URL
    // (its API version is not a phone number to mask).
    let extra = r#""twilio_api_base": "http://127.0.0.1:9""#;
    let other = "unreachable-path-token-0123456789abcdefgh";
    let (status, v) = stack.connect("/api/v1/channels", &testkit::channel_json("offline", other, extra)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (_, v) = stack.call(reqwest::Method::GET, "/api/v1/channels/offline/status", None).await;
    let verdict = v["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("cannot check with Twilio: cannot reach Twilio at http://127.0.0.1:9"), "{verdict}");
    assert!(verdict.contains(&format!("/2010-04-01/Accounts/{}.json", testkit::ACCOUNT_SID)), "{verdict}");

    // The whole URL to paste, and a webhook signed as Twilio would, for a
    // channel only the services hold (issue: simulate and webhook-url on
    // runtime channels).
    let (status, urls) = stack.call(reqwest::Method::GET, "/api/v1/channels/logonly/webhook", None).await;
    assert_eq!(status, StatusCode::OK, "{urls}");
    assert_eq!(urls["webhook_url"], ours(token), "{urls}");
    let request = json!({"from": "+14155550100", "body": "hello log", "url": stack.public});
    let (status, signed) = stack.call(reqwest::Method::POST, "/api/v1/channels/logonly/simulate", Some(&request)).await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let params: Vec<(String, String)> = serde_json::from_value(signed["params"].clone()).unwrap();
    let answer = stack
        .http
        .post(signed["post_url"].as_str().unwrap())
        .header(signature::HEADER, signed["signature"].as_str().unwrap())
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let (status, v) = stack.call(reqwest::Method::POST, "/api/v1/channels/nope/simulate", Some(&request)).await;
    assert_eq!((status, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_channel")), "{v}");
}
