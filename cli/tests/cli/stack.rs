//! The whole pipeline in-process (ingress, worker, sender, each built from
//! the same `Config` its `main` would load, with the example channel file
//! of deploy/: echo chat, `delivery: "log"`) against a real nats-server,
//! driven by the `smsgate` binary as an operator would.

use std::collections::HashMap;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use smsgate_shared::config::Config;
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

use crate::{example_channels, smsgate, stderr, stdout};

const PEER: &str = "+14155550123";
const ADMIN_TOKEN: &str = "stack-admin-token-0123456789";

struct Stack {
    env: Vec<(String, String)>,
    ingress_url: String,
    shutdown: CancellationToken,
    _nats: NatsServer,
    _state: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(true).await
    }

    /// `admin_token`: set SMSGATE_ADMIN_TOKEN; otherwise ingress generates
    /// one under XDG_STATE_HOME (a temporary directory), as on a fresh machine.
    async fn start_with(admin_token: bool) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let state = tempfile::tempdir().unwrap();
        let nats = NatsServer::start();
        let prefix = format!("cli{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let any = "127.0.0.1:0".to_owned();
        // The example channel as shipped, with quiet hours off: the sends
        // below would otherwise be deferred whenever it is night in
        // California, and these tests are about the CLI, not the guard.
        let mut channels: Value = serde_json::from_str(&std::fs::read_to_string(example_channels()).unwrap()).unwrap();
        for channel in channels["channels"].as_array_mut().unwrap() {
            channel["config"]["compliance"] = json!({"quiet_hours": null});
        }
        let channels_file = state.path().join("channels.json");
        std::fs::write(&channels_file, channels.to_string()).unwrap();
        // The public URL differs from the address posted to, as behind a
        // tunnel: simulate must sign what Twilio would sign.
        let vars: HashMap<String, String> = [
            ("SMSGATE_CHANNELS", channels_file.display().to_string()),
            ("TWILIO_AUTH_TOKEN", "stack-auth-token".to_owned()),
            ("SMS_WEBHOOK_PATH_TOKEN", "stackpathtoken0123456789abcdefghijklmnop".to_owned()),
            ("SMSGATE_PUBLIC_BASE_URL", "https://sms.example.test".to_owned()),
            ("SMSGATE_NATS_URL", nats.url()),
            ("SMSGATE_NATS_PREFIX", prefix),
            ("SMSGATE_INGRESS_ADDR", any.clone()),
            ("SMSGATE_ADMIN_ADDR", any.clone()),
            ("SMSGATE_WORKER_ADDR", any.clone()),
            ("SMSGATE_SENDER_ADDR", any),
            ("XDG_STATE_HOME", state.path().display().to_string()),
            ("SMSGATE_SECRET_KEY", smsgate_shared::secret_key::SecretKey::generate()),
        ]
        .into_iter()
        .chain(admin_token.then(|| ("SMSGATE_ADMIN_TOKEN", ADMIN_TOKEN.to_owned())))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config = Config::from_lookup(&|k| vars.get(k).cloned()).expect("the example config loads");
        let shutdown = CancellationToken::new();
        let ingress = smsgate_ingress::App::build(config.clone()).await.expect("ingress builds");
        let worker = smsgate_worker::App::build(config.clone()).await.expect("worker builds");
        let sender = smsgate_sender::App::build(config).await.expect("sender builds");
        let (public, admin) = (ingress.local_addr(), ingress.admin_addr());
        let (s1, s2, s3) = (shutdown.clone(), shutdown.clone(), shutdown.clone());
        tokio::spawn(async move { ingress.run_until_stopped(s1).await.expect("ingress runs") });
        tokio::spawn(async move { worker.run_until_stopped(s2).await.expect("worker runs") });
        tokio::spawn(async move { sender.run_until_stopped(s3).await.expect("sender runs") });
        let http = reqwest::Client::new();
        let ready = format!("http://{public}/api/ready");
        testkit::eventually(Duration::from_secs(20), "ingress ready", || async {
            http.get(&ready).send().await.ok()?.status().is_success().then_some(())
        })
        .await;
        // The CLI gets the same environment the services were configured
        // from, plus where the admin API is.
        let mut env: Vec<(String, String)> = vars.into_iter().collect();
        env.push(("SMSGATE_ADMIN_URL".to_owned(), format!("http://{admin}")));
        Self { env, ingress_url: format!("http://{public}"), shutdown, _nats: nats, _state: state }
    }

    /// Records PEER's consent: the guard wants it on record before the
    /// operator texts a number that has not texted (an informational text).
    async fn consent(&self) {
        let var = |k: &str| self.env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let token = var("SMSGATE_ADMIN_TOKEN").unwrap_or_else(|| {
            let file = format!("{}/smsgate/admin-token", var("XDG_STATE_HOME").unwrap());
            std::fs::read_to_string(file).unwrap().trim().to_owned()
        });
        let url = format!("{}/api/v1/consent", var("SMSGATE_ADMIN_URL").unwrap());
        let consent = json!({"channel_id": "local", "to": PEER, "kind": "express", "source": "test"});
        let r = reqwest::Client::new().post(url).bearer_auth(token).json(&consent).send().await.unwrap();
        assert!(r.status().is_success(), "consent recorded");
    }

    /// Runs the binary off the runtime's threads (the services keep running).
    async fn run(&self, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let env = self.env.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            smsgate(&args, &env)
        })
        .await
        .unwrap()
    }

    /// Polls `conversation --json` until `done` holds for it.
    async fn conversation_until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(&["conversation", "--channel", "local", PEER, "--json"]).await;
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if done(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn outbound_with(v: &Value, text: &str) -> bool {
    v["entries"].as_array().is_some_and(|entries| {
        entries.iter().any(|e| e["kind"] == "outbound" && e["body"].as_str().is_some_and(|b| b.contains(text)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_sms_gets_a_reply_that_shows_in_the_conversation() {
    let stack = Stack::start().await;

    let out = stack
        .run(&[
            "simulate",
            "--channel",
            "local",
            "--from",
            PEER,
            "--body",
            "hello smsgate",
            "--url",
            &stack.ingress_url,
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("ingress answered 200"), "{text}");
    assert!(text.contains("<Response"), "ingress's TwiML answer is printed: {text}");

    let v = stack.conversation_until("the echo reply", |v| outbound_with(v, "hello smsgate")).await;
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries[0]["kind"], "inbound", "{v}");
    assert_eq!(entries[0]["body"], "hello smsgate");
    let reply = entries.iter().find(|e| e["kind"] == "outbound").unwrap();
    assert_eq!(reply["state"], "logged", "delivery \"log\": {reply}");

    let out = stack.run(&["conversation", "--channel", "local", PEER]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let view = stdout(&out);
    assert!(view.starts_with(&format!("Conversation with {PEER} (channel local)\nStarted ")), "{view}");
    assert!(view.contains("] ← Them: hello smsgate\n"), "{view}");
    let reply_line = view.lines().find(|l| l.contains("→ You:")).unwrap_or_else(|| panic!("no reply line: {view}"));
    assert!(reply_line.contains("hello smsgate") && reply_line.ends_with("(logged)"), "{view}");

    let out = stack.run(&["conversations"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list = stdout(&out);
    assert!(list.starts_with("CHANNEL  PEER"), "{list}");
    assert!(list.contains("local") && list.contains(PEER), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_the_cli_finds_the_one_ingress_generated() {
    let stack = Stack::start_with(false).await;
    let file = stack.env.iter().find(|(k, _)| k == "XDG_STATE_HOME").unwrap().1.clone() + "/smsgate/admin-token";
    assert!(std::fs::read_to_string(&file).unwrap().trim().len() >= 32, "ingress wrote {file}");
    let out = stack.run(&["channels"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stack.consent().await;
    let out = stack.run(&["send", "--channel", "local", "--to", PEER, "--body", "no extra step"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Another token is refused, with a hint where the right one lives.
    let out = stack.run(&["channels", "--token", "not-the-token"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_work_against_the_running_stack() {
    let stack = Stack::start().await;
    stack.consent().await;

    let out = stack.run(&["send", "--channel", "local", "--to", PEER, "--body", "from the operator"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("accepted: api."), "{}", stdout(&out));
    stack.conversation_until("the API message", |v| outbound_with(v, "from the operator")).await;

    let key = ["send", "--channel", "local", "--to", PEER, "--body", "once", "--idempotency-key", "k-1", "--json"];
    let first: Value = serde_json::from_slice(&stack.run(&key).await.stdout).unwrap();
    let second: Value = serde_json::from_slice(&stack.run(&key).await.stdout).unwrap();
    assert_eq!(first["id"], "api.k-1");
    assert_eq!((first["duplicate"].as_bool(), second["duplicate"].as_bool()), (Some(false), Some(true)));

    // A number the operator typed wrong is quoted as typed (masking is for logs).
    let out = stack.run(&["send", "--channel", "local", "--to", "5551230000", "--body", "x"]).await;
    assert_eq!(out.status.code(), Some(2), "a wrong argument is a usage error");
    assert!(stderr(&out).contains(r#"--to: "5551230000" must start with '+'"#), "{}", stderr(&out));
    // A request the admin API refuses is a failed operation.
    let out = stack.run(&["send", "--channel", "nope", "--to", PEER, "--body", "x"]).await;
    assert_eq!(out.status.code(), Some(1), "a refused request is a failed operation");
    assert!(stderr(&out).contains("400") && stderr(&out).contains("unknown_channel"), "{}", stderr(&out));

    // A call on a log-only channel is logged, and the conversation says so.
    let out = stack.run(&["call", "--channel", "local", "--to", PEER, "--say", "your table is ready"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stack
        .conversation_until("the logged call", |v| {
            v["entries"].as_array().is_some_and(|e| {
                e.iter().any(|e| {
                    e["kind"] == "call"
                        && e["status"] == "logged"
                        && e["detail"].as_str().is_some_and(|d| d.contains("not placed (delivery: log)"))
                })
            })
        })
        .await;

    // A log-only channel: nothing to ask Twilio, and the status says so.
    let out = stack.run(&["channels", "status", "local"]).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).starts_with(
            "local: delivery log: Twilio is not used; the webhook URL Twilio would need is \
             https://sms.example.test/api/channels/sms/twilio/webhook/stac…"
        ),
        "{}",
        stdout(&out)
    );

    let out = stack.run(&["channels"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("NATS: connected, streams: present"), "{text}");
    assert!(text.contains("local") && text.contains("echo") && text.contains("ok"), "{text}");

    let out = stack.run(&["dead", "list"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "No dead letters.");
    // Nothing for a channel that does not exist is a typo, not good news.
    let out = stack.run(&["dead", "list", "--channel", "nope"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains(r#"no channel "nope" (channels: local)"#), "{}", stderr(&out));
    let out = stack.run(&["dead", "list", "--channel", "local"]).await;
    assert_eq!(stdout(&out).trim(), "No dead letters.", "{}", stderr(&out));
    let out = stack.run(&["dead", "replay", "99"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no_such_dead_letter"), "{}", stderr(&out));

    // The wrong token is refused, with a hint.
    let mut env = stack.env.clone();
    env.retain(|(k, _)| k != "SMSGATE_ADMIN_TOKEN");
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        smsgate(&["conversations"], &env)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("401") && stderr(&out).contains("SMSGATE_ADMIN_TOKEN"), "{}", stderr(&out));

    // A webhook signed with another token is refused by ingress: simulate says so.
    let mut env: Vec<(String, String)> = stack.env.clone();
    env.retain(|(k, _)| k != "TWILIO_AUTH_TOKEN");
    env.push(("TWILIO_AUTH_TOKEN".to_owned(), "not-the-token".to_owned()));
    let url = stack.ingress_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        smsgate(&["simulate", "--from", PEER, "--body", "forged", "--url", &url], &env)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("403"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_bot_back_until_resume() {
    let stack = Stack::start().await;
    let out = stack.run(&["pause", "--channel", "local", PEER, "--minutes", "15"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("the bot is paused until"), "{}", stdout(&out));

    simulate(&stack, "anyone there").await;
    let v = stack
        .conversation_until("the paused note", |v| {
            v["entries"].as_array().is_some_and(|e| e.iter().filter(|e| e["reason"] == "paused").count() == 2)
        })
        .await;
    assert!(!outbound_with(&v, "anyone there"), "no answer while paused: {v}");
    // The notes give the time to the minute with its zone, like the view's
    // `[10:30]`, not RFC 3339 with nanoseconds.
    for note in v["entries"].as_array().unwrap().iter().filter(|e| e["reason"] == "paused") {
        let detail = note["detail"].as_str().unwrap();
        let until = detail.split(" until ").nth(1).unwrap_or_else(|| panic!("no time in {detail}"));
        let time = &until[..until.find(" UTC").unwrap_or_else(|| panic!("no zone in {detail}"))];
        assert_eq!(time.len(), "2026-12-06 23:58".len(), "{detail}");
    }
    assert!(v["paused_until"].is_string(), "{v}");

    let out = stack.run(&["resume", "--channel", "local", PEER]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("the bot answers again"), "{}", stdout(&out));
    simulate(&stack, "back again").await;
    stack.conversation_until("the echo reply after resume", |v| outbound_with(v, "back again")).await;
}

async fn simulate(stack: &Stack, body: &str) {
    let url = stack.ingress_url.clone();
    let out = stack.run(&["simulate", "--channel", "local", "--from", PEER, "--body", body, "--url", &url]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_pipeline_as_json_lines_and_the_list_pages() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let stack = Stack::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_smsgate"))
        .env_clear()
        .envs(stack.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["events", "--channel", "local"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child_out = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(child_out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The follower connects before the message is sent (events start at "now").
    tokio::time::sleep(Duration::from_millis(800)).await;
    simulate(&stack, "events please").await;
    let mut types = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !types.iter().any(|t| t == "message.sent") {
        let line = tokio::time::timeout_at(deadline, rx.recv()).await.expect("events within 20 s").expect("a line");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert_eq!(v["channel_id"], "local", "{v}");
        assert_eq!(v["peer"], PEER, "{v}");
        assert!(v["event_id"].as_str().is_some_and(|id| id.contains('-')), "each line carries its event id: {v}");
        if v["type"] == "message.sent" {
            // The stream's event id sits beside the event's own ids, never over one.
            assert!(v["id"].as_str().is_some_and(|id| id.starts_with("reply.")), "the outbound id is kept: {v}");
        }
        types.push(v["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(types[0], "message.received", "{types:?}");
    let _ = child.kill();
    let _ = child.wait();

    // A second conversation, then the list a page at a time and by search.
    let other = "+14155550777";
    let url = stack.ingress_url.clone();
    let out = stack.run(&["simulate", "--channel", "local", "--from", other, "--body", "hi", "--url", &url]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = stack.run(&["conversations", "--limit", "1", "--json"]).await;
        let page: Value = serde_json::from_slice(&out.stdout).unwrap();
        if page["total"] == 2 {
            assert_eq!(page["conversations"].as_array().unwrap().len(), 1);
            assert!(page["next_cursor"].is_string(), "{page}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "two conversations: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = stack.run(&["conversations", "--limit", "1"]).await;
    assert!(stdout(&out).contains("1 of 2 shown; next page: smsgate conversations --cursor "), "{}", stdout(&out));
    let out = stack.run(&["conversations", "--limit", "1", "--all"]).await;
    let text = stdout(&out);
    assert!(text.contains(PEER) && text.contains(other), "{text}");
    let out = stack.run(&["conversations", "--search", "0777"]).await;
    let text = stdout(&out);
    assert!(text.contains(other) && !text.contains(PEER), "{text}");
    assert!(text.contains("→ hi") || text.contains("← hi"), "the last message shows: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_connected_at_run_time_is_answered_without_a_restart_and_goes_when_disconnected() {
    let twilio = smsgate_testkit::twilio::TwilioStub::start().await;
    let mut stack = Stack::start().await;
    stack.env.push(("RT_AUTH_TOKEN".to_owned(), testkit::AUTH_TOKEN.to_owned()));
    twilio.add_number(testkit::FROM_NUMBER, "https://old.example/sms", "GET");
    let token = "runtime-stack-token-0123456789abcdefghij";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rt.json");
    let channel = json!({"channel_id": "rt", "config": {
        "twilio_account_sid": testkit::ACCOUNT_SID, "twilio_auth_token": "${RT_AUTH_TOKEN}",
        "twilio_from_number": testkit::FROM_NUMBER, "webhook_path_token": token,
        "twilio_api_base": twilio.base_url(), "chat": {"kind": "echo"}, "mps": 0}});
    std::fs::write(&file, channel.to_string()).unwrap();

    let out = stack.run(&["channels", "connect", file.to_str().unwrap(), "--set-webhook"]).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("connected rt (runtime)"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Twilio now sends this number's SMS to https://sms.example.test/"),
        "{}",
        stdout(&out)
    );
    let out = stack.run(&["channels", "status", "rt"]).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).starts_with("rt: ok\n"), "{}", stdout(&out));

    // A signed webhook to the new channel is taken by ingress and answered
    // by the worker and the sender (through the Twilio stub): no restart.
    let started = std::time::Instant::now();
    let path = format!("/api/channels/sms/twilio/webhook/{token}");
    let params = smsgate_shared::signature::inbound_sms_params(
        testkit::ACCOUNT_SID,
        testkit::FROM_NUMBER,
        "SM0000000000000000000000000000rt01",
        PEER,
        "hello runtime",
        0,
    );
    let signature =
        smsgate_shared::signature::sign(testkit::AUTH_TOKEN, &format!("https://sms.example.test{path}"), &params);
    let post = || async {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params.iter()).finish();
        reqwest::Client::new()
            .post(format!("{}{path}", stack.ingress_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(smsgate_shared::signature::HEADER, &signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(post().await, reqwest::StatusCode::OK);
    let sent = twilio.wait_for_calls(1, Duration::from_secs(10)).await;
    assert_eq!((sent[0].get("To"), sent[0].get("Body")), (Some(PEER), Some("hello runtime")));
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());

    // The runtime channel's whole webhook URL, and simulate on it, through
    // the admin API (the channel file the CLI reads does not have it).
    let out = stack.run(&["webhook-url", "--channel", "rt"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("https://sms.example.test{path}"));
    let out = stack
        .run(&["simulate", "--channel", "rt", "--from", PEER, "--body", "simulated", "--url", &stack.ingress_url])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("ingress answered 200"), "{}", stdout(&out));
    let sent = twilio.wait_for_calls(2, Duration::from_secs(10)).await;
    assert_eq!(sent[1].get("Body"), Some("simulated"));
    let out = stack.run(&["simulate", "--channel", "nope", "--from", PEER, "--body", "x"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(r#"no channel "nope" in the configuration"#), "{}", stderr(&out));
    assert!(stderr(&out).contains("nor in the running ingress"), "{}", stderr(&out));

    let out = stack.run(&["channels"]).await;
    assert!(stdout(&out).contains("runtime"), "{}", stdout(&out));
    // The file's channel is read-only; the runtime one goes.
    let out = stack.run(&["channels", "disconnect", "local"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    let out = stack.run(&["channels", "disconnect", "rt"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(post().await, reqwest::StatusCode::NOT_FOUND);
    let out = stack.run(&["channels", "status", "rt"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
