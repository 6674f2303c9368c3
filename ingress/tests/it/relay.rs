//! ConversationRelay calls (`voice.mode: "relay"`) played from Twilio's
//! side: the incoming call's TwiML, then the WebSocket with the testkit's
//! simulator (signed upgrade, setup, prompts, interrupts, key presses),
//! against the real ingress and the real worker on a real nats-server, the
//! model being the testkit's streaming stub (first token after a set delay,
//! then tokens at a set rate).

use std::time::{Duration, Instant};

use smsgate_shared::config::{Channel, Config, Settings};
use smsgate_shared::envelope::{self, HistoryEvent, Origin};
use smsgate_shared::voice::{DEFAULT_FILLER, OPERATOR_WILL_ANSWER, RELAY_FALLBACK};
use smsgate_testkit::relay::{ConnectError, RelaySim, spoken};
use smsgate_testkit::stream_chat::StreamingStub;
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

use crate::helpers::TestApp;
use crate::voice::history;

const CALLER: &str = "+14155550100";
const WAIT: Duration = Duration::from_secs(30);

fn call_sid(i: u32) -> String {
    format!("CA0123456789abcdef0123456789ab{i:04}")
}

fn relay_channel(chat: &str, voice: &str) -> Channel {
    testkit::channel(&format!(r#"{chat}, "voice": {{"enabled": true, "mode": "relay" {voice}}}"#))
}

/// A worker on its own runtime, so that a test can kill it outright
/// (`shutdown_background`: every task dropped, nothing acked, no goodbye).
struct Worker {
    runtime: Option<tokio::runtime::Runtime>,
    _stop: CancellationToken,
}

impl Worker {
    fn start(nats: &NatsServer, app: &TestApp) -> Self {
        let mut settings = Settings::for_tests(&nats.url(), app.topology.prefix());
        settings.worker_ack_wait = Duration::from_secs(3);
        let config = Config { settings, channels: vec![app.channel.clone()] };
        let tuning = smsgate_worker::Tuning {
            max_in_flight: Some(64),
            retry: smsgate_shared::retry::RetryPolicy::fixed(vec![Duration::from_millis(200)]),
            error_delay: Duration::from_millis(200),
            ..smsgate_worker::Tuning::default()
        };
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("worker runtime");
        let stop = CancellationToken::new();
        let token = stop.clone();
        runtime.spawn(async move {
            let worker = smsgate_worker::App::build_with(config, tuning).await.expect("worker builds");
            let _ = worker.run_until_stopped(token).await;
        });
        Self { runtime: Some(runtime), _stop: stop }
    }

    /// Killed mid-flight: no drain, no ack.
    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn start(nats: &NatsServer, channel: Channel) -> (TestApp, Worker) {
    let app = TestApp::start_with(nats, channel).await;
    let worker = Worker::start(nats, &app);
    (app, worker)
}

async fn connect(app: &TestApp, sid: &str) -> RelaySim {
    connect_from(app, sid, CALLER).await
}

async fn connect_from(app: &TestApp, sid: &str, from: &str) -> RelaySim {
    let base = app.channel.public_base_url.clone().expect("public base");
    let sim = RelaySim::connect(app.addr, &base, testkit::PATH_TOKEN, testkit::AUTH_TOKEN)
        .await
        .unwrap_or_else(|e| panic!("relay upgrade refused: {e:?}"));
    sim.setup(testkit::ACCOUNT_SID, sid, from, testkit::FROM_NUMBER).await;
    sim
}

/// (turn, heard, said, origin, interrupted) of the call turns in history.
type TurnRow = (u32, String, String, Origin, bool);

async fn wait_turns(app: &TestApp, n: usize) -> Vec<TurnRow> {
    testkit::eventually(WAIT, "call turns in history", || async {
        let rows: Vec<TurnRow> = history(app)
            .await
            .into_iter()
            .filter_map(|e| match e.event {
                HistoryEvent::CallTurn { turn, heard, said, origin, interrupted, .. } => {
                    Some((turn, heard, said, origin, interrupted))
                }
                _ => None,
            })
            .collect();
        (rows.len() >= n).then_some(rows)
    })
    .await
}

#[tokio::test]
async fn a_relay_call_is_connected_and_its_second_turn_knows_the_first() {
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_millis(20), Duration::from_millis(5)).await;
    let (app, _worker) =
        start(&nats, relay_channel(&stub.chat_config(""), r#", "hints": ["Ada"], "voice": "Polly.Joanna""#)).await;

    // The incoming call: <Connect action><ConversationRelay url=ws(s)://…>.
    let sid = call_sid(1);
    let params: Vec<(String, String)> = [
        ("AccountSid", testkit::ACCOUNT_SID),
        ("CallSid", sid.as_str()),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", CALLER),
        ("To", testkit::FROM_NUMBER),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let r = app.post_signed(&format!("/api/channels/voice/twilio/call/{}", testkit::PATH_TOKEN), &params).await;
    assert_eq!(r.status(), 200);
    let xml = r.text().await.unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let connect_verb = doc.root_element().first_element_child().unwrap();
    assert_eq!(connect_verb.tag_name().name(), "Connect", "{xml}");
    assert!(connect_verb.attribute("action").unwrap().contains("/api/channels/voice/twilio/relayed/"));
    let relay = connect_verb.first_element_child().unwrap();
    assert_eq!(relay.tag_name().name(), "ConversationRelay");
    assert_eq!(
        relay.attribute("url"),
        Some(RelaySim::signed_url("http://127.0.0.1:8000", testkit::PATH_TOKEN).as_str()),
        "the socket URL carries no query"
    );
    assert_eq!(relay.attribute("hints"), Some("Ada"));
    assert_eq!(relay.attribute("voice"), Some("Polly.Joanna"));
    assert_eq!(relay.attribute("dtmfDetection"), Some("true"));
    assert_eq!(relay.attribute("interruptible"), Some("any"));

    let sim = connect(&app, &sid).await;
    sim.prompt("my name is **Ada**").await;
    let one = sim.wait_cycle(WAIT, 0).await;
    assert_eq!(spoken(&one), "reply to: my name is Ada", "markdown flattened token by token");
    assert!(one.len() > 2, "streamed as several tokens: {one:?}");
    let seen = sim.received().len();
    sim.prompt("what is my name").await;
    let two = sim.wait_cycle(WAIT, seen).await;
    assert_eq!(spoken(&two), "reply to: what is my name");
    let calls = stub.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].body["stream"], true);
    let context = calls[1].body.to_string();
    assert!(context.contains("my name is **Ada**") && context.contains("reply to: my name is Ada"), "{context}");

    let turns = wait_turns(&app, 2).await;
    assert_eq!(
        turns[0],
        (1, "my name is **Ada**".to_owned(), "reply to: my name is Ada".to_owned(), Origin::Chat, false)
    );
    assert_eq!(turns[1].2, "reply to: what is my name");
    sim.hang_up().await;
    testkit::eventually(WAIT, "the stream's start and end in history", || async {
        let statuses: Vec<String> = history(&app)
            .await
            .into_iter()
            .filter_map(|e| match e.event {
                HistoryEvent::Call { status, .. } => Some(status),
                _ => None,
            })
            .collect();
        (statuses.iter().any(|s| s == "stream-started") && statuses.iter().any(|s| s == "stream-ended")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn tokens_reach_the_caller_while_the_model_still_streams() {
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_millis(300), Duration::from_millis(100)).await;
    stub.set_tokens(&["One", " two", " three", " four", " five", " six"]);
    let (app, _worker) = start(&nats, relay_channel(&stub.chat_config(""), "")).await;
    let sim = connect(&app, &call_sid(2)).await;
    let mut added = Vec::new();
    for i in 0..3 {
        let seen = sim.received().len();
        sim.prompt(&format!("question {i}")).await;
        let cycle = sim.wait_cycle(WAIT, seen).await;
        assert_eq!(spoken(&cycle), "One two three four five six");
        let call = stub.calls().pop().unwrap();
        let stub_first = call.first_token_at().unwrap();
        let stub_last = *call.token_times.last().unwrap();
        let caller_first = cycle.iter().find(|m| !m.token().is_empty()).unwrap().at;
        assert!(caller_first < stub_last, "the first token was heard before the model finished");
        added.push(caller_first.saturating_duration_since(stub_first));
    }
    println!("relay first-token latency added by smsgate: {added:?}");
    // The target is 50 ms; the bound is loose so a loaded 2-core machine cannot flake.
    assert!(added.iter().all(|d| *d < Duration::from_millis(1000)), "{added:?}");
}

#[tokio::test]
async fn an_interrupt_stops_the_model_stream_and_history_keeps_what_was_heard() {
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_millis(20), Duration::from_millis(150)).await;
    let words: Vec<String> = (0..40).map(|i| format!(" word{i}")).collect();
    let tokens: Vec<&str> = std::iter::once("Sure,").chain(words.iter().map(String::as_str)).collect();
    stub.set_tokens(&tokens);
    let (app, _worker) = start(&nats, relay_channel(&stub.chat_config(""), "")).await;
    let sim = connect(&app, &call_sid(3)).await;
    sim.prompt("tell me everything").await;
    sim.wait_for(WAIT, "two tokens", |r| (r.iter().filter(|m| m.kind() == "text").count() >= 2).then_some(())).await;
    sim.interrupt("Sure, word0", 400).await;
    let call = stub.wait_for(WAIT, "the model stream abandoned", |c| c.first().filter(|c| c.abandoned).cloned()).await;
    assert!(!call.finished && call.tokens.len() < 20, "the stream stopped early: {} tokens", call.tokens.len());
    let turns = wait_turns(&app, 1).await;
    assert_eq!(turns[0], (1, "tell me everything".to_owned(), "Sure, word0".to_owned(), Origin::Chat, true));

    // A model faster than speech: the stream has ended, Twilio is still
    // speaking, and the caller talks over the rest.
    stub.set_tokens(&["Our", " hours", " are", " nine", " to", " five", " on", " weekdays."]);
    stub.set_interval(Duration::from_millis(5));
    let seen = sim.received().len();
    sim.prompt("when are you open").await;
    sim.wait_cycle(WAIT, seen).await;
    sim.interrupt("Our hours are", 900).await;
    let turns = wait_turns(&app, 2).await;
    assert_eq!(turns[1], (2, "when are you open".to_owned(), "Our hours are".to_owned(), Origin::Chat, true));
    assert_eq!(stub.calls()[1].tokens.len(), 8, "that stream had ended");

    // A new prompt goes on normally.
    stub.set_tokens(&["Fine."]);
    let seen = sim.received().len();
    sim.prompt("ok").await;
    sim.wait_for(WAIT, "the next turn's answer", |r| r.get(seen..)?.iter().find(|m| m.token() == "Fine.").map(|_| ()))
        .await;
}

#[tokio::test]
async fn a_stalled_model_gets_the_filler_then_the_fallback_and_the_call_goes_on() {
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_secs(30), Duration::from_millis(10)).await;
    let voice = r#", "first_token_timeout_ms": 400, "turn_timeout_ms": 1500"#;
    let (app, _worker) = start(&nats, relay_channel(&stub.chat_config(""), voice)).await;
    let sim = connect(&app, &call_sid(4)).await;
    let asked = sim.prompt("are you there").await;
    let cycle = sim.wait_cycle(WAIT, 0).await;
    assert_eq!(cycle.len(), 2, "{cycle:?}");
    assert_eq!((cycle[0].token(), cycle[0].last()), (DEFAULT_FILLER, false));
    assert!(cycle[1].token().contains(RELAY_FALLBACK) && cycle[1].last());
    let filler_after = cycle[0].at - asked;
    let fallback_after = cycle[1].at - asked;
    assert!(
        filler_after >= Duration::from_millis(380) && filler_after < Duration::from_millis(1400),
        "{filler_after:?}"
    );
    assert!(
        fallback_after >= Duration::from_millis(1450) && fallback_after < Duration::from_secs(5),
        "{fallback_after:?}"
    );
    stub.wait_for(WAIT, "the stalled stream abandoned", |c| c.first().filter(|c| c.abandoned).map(|_| ())).await;

    stub.set_first_delay(Duration::from_millis(10));
    let seen = sim.received().len();
    sim.prompt("hello again").await;
    let next = sim.wait_cycle(WAIT, seen).await;
    assert_eq!(spoken(&next), "reply to: hello again");
    let turns = wait_turns(&app, 2).await;
    assert_eq!((turns[0].0, turns[0].3), (1, Origin::Timeout));
    assert!(turns[0].2.contains(RELAY_FALLBACK));
    assert_eq!((turns[1].0, turns[1].3), (2, Origin::Chat));
}

#[tokio::test]
async fn a_worker_killed_mid_turn_gives_the_fallback_in_time_and_the_next_turn_works() {
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_millis(20), Duration::from_millis(300)).await;
    let words: Vec<String> = (0..30).map(|i| format!(" w{i}")).collect();
    let tokens: Vec<&str> = std::iter::once("Start").chain(words.iter().map(String::as_str)).collect();
    stub.set_tokens(&tokens);
    let voice = r#", "first_token_timeout_ms": 1000, "turn_timeout_ms": 3000"#;
    let (app, mut worker) = start(&nats, relay_channel(&stub.chat_config(""), voice)).await;
    let sim = connect(&app, &call_sid(5)).await;
    let asked = sim.prompt("long story please").await;
    sim.wait_for(WAIT, "the first token", |r| r.iter().any(|m| m.token() == "Start").then_some(())).await;
    worker.kill();
    let cycle = sim.wait_cycle(WAIT, 0).await;
    let last = cycle.last().unwrap();
    assert!(last.token().contains(RELAY_FALLBACK), "{cycle:?}");
    assert!(last.at - asked < Duration::from_millis(4500), "fallback after {:?}", last.at - asked);

    let _worker = Worker::start(&nats, &app);
    stub.set_tokens(&["Back", " again."]);
    let seen = sim.received().len();
    sim.prompt("are you back").await;
    let next = sim.wait_cycle(WAIT, seen).await;
    assert_eq!(spoken(&next), "Back again.");
    // The killed turn is redelivered and recorded with what the caller heard.
    let turns = wait_turns(&app, 2).await;
    let first = turns.iter().find(|t| t.0 == 1).unwrap();
    assert_eq!(first.3, Origin::Timeout);
    assert!(first.2.starts_with("Start") && first.2.contains(RELAY_FALLBACK), "{first:?}");
}

#[tokio::test]
async fn forged_unsigned_and_unknown_upgrades_are_refused_before_the_upgrade() {
    let nats = NatsServer::start();
    let app = TestApp::start_with(&nats, relay_channel(r#""chat": {"kind": "echo"}"#, "")).await;
    let token = testkit::PATH_TOKEN;
    let refused = |r: Result<RelaySim, ConnectError>| match r {
        Err(ConnectError::Refused(status)) => status,
        Err(ConnectError::Other(e)) => panic!("not refused with a status: {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    };
    assert_eq!(refused(RelaySim::connect_with(app.addr, token, None).await), 403);
    let forged = RelaySim::sign("not-the-auth-token", &RelaySim::signed_url("http://127.0.0.1:8000", token));
    assert_eq!(refused(RelaySim::connect_with(app.addr, token, Some(&forged)).await), 403);
    // Signed over the https:// URL instead of the socket's: refused too.
    let http_url = format!("http://127.0.0.1:8000/api/channels/voice/twilio/relay/{token}");
    let wrong_url = RelaySim::sign(testkit::AUTH_TOKEN, &http_url);
    assert_eq!(refused(RelaySim::connect_with(app.addr, token, Some(&wrong_url)).await), 403);
    let other = "x".repeat(40);
    assert_eq!(refused(RelaySim::connect(app.addr, "http://127.0.0.1:8000", &other, testkit::AUTH_TOKEN).await), 404);
    // A plain GET with a valid signature but no upgrade is not a socket either.
    let sig = RelaySim::sign(testkit::AUTH_TOKEN, &RelaySim::signed_url("http://127.0.0.1:8000", token));
    let r = app
        .http
        .get(format!("http://{}/api/channels/voice/twilio/relay/{token}", app.addr))
        .header("X-Twilio-Signature", sig)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    // Signed: accepted; ten malformed messages close it with 1007.
    let sim = connect(&app, &call_sid(6)).await;
    for _ in 0..10 {
        sim.send_raw("{not json").await;
    }
    assert_eq!(sim.wait_closed(WAIT).await.0, 1007);
    // One live socket per CallSid.
    let first = connect(&app, &call_sid(7)).await;
    let second = connect(&app, &call_sid(7)).await;
    assert_eq!(second.wait_closed(WAIT).await.0, 1008);
    assert!(first.closed().is_none());
}

#[tokio::test]
async fn a_hostile_model_answer_goes_out_as_text_tokens_never_as_twiml() {
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_millis(10), Duration::from_millis(5)).await;
    stub.set_tokens(&["<Say>", "Dial +1900", "</Say>", " ]]>", " \u{7}bell\u{0}", " \"q\"", " &amp;"]);
    let (app, _worker) = start(&nats, relay_channel(&stub.chat_config(""), "")).await;
    let sim = connect(&app, &call_sid(8)).await;
    sim.prompt("say something nasty").await;
    let cycle = sim.wait_cycle(WAIT, 0).await;
    assert!(cycle.iter().all(|m| m.kind() == "text"), "{cycle:?}");
    assert_eq!(spoken(&cycle), "<Say>Dial +1900</Say> ]]> bell \"q\" &amp;");
    let turns = wait_turns(&app, 1).await;
    assert_eq!(turns[0].2, "<Say>Dial +1900</Say> ]]> bell \"q\" &amp;");
}

#[tokio::test]
async fn pressing_zero_hands_the_call_to_forward_to_through_the_action_route() {
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_millis(10), Duration::from_millis(5)).await;
    let (app, _worker) = start(&nats, relay_channel(&stub.chat_config(""), r#", "forward_to": "+14155550199""#)).await;
    let sid = call_sid(9);
    let sim = connect(&app, &sid).await;
    // Another digit reaches the model as text.
    sim.dtmf("5").await;
    let cycle = sim.wait_cycle(WAIT, 0).await;
    assert!(spoken(&cycle).contains("pressed 5"), "{cycle:?}");
    sim.dtmf("0").await;
    let end = sim.wait_for(WAIT, "the end message", |r| r.iter().find(|m| m.kind() == "end").cloned()).await;
    let data = end.value["handoffData"].as_str().unwrap().to_owned();
    assert!(data.contains("pressed 0"), "{data}");

    // Twilio then asks the action URL, which dials forward_to.
    let params: Vec<(String, String)> = [
        ("AccountSid", testkit::ACCOUNT_SID),
        ("CallSid", sid.as_str()),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
        ("From", CALLER),
        ("To", testkit::FROM_NUMBER),
        ("SessionStatus", "ended"),
        ("SessionDuration", "12"),
        ("HandoffData", data.as_str()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let path = format!("/api/channels/voice/twilio/relayed/{}", testkit::PATH_TOKEN);
    let r = app.post_signed(&path, &params).await;
    assert_eq!(r.status(), 200);
    let xml = r.text().await.unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let dial = doc.descendants().find(|n| n.has_tag_name("Dial")).unwrap_or_else(|| panic!("no Dial: {xml}"));
    assert_eq!(dial.text(), Some("+14155550199"));

    // A failed session with the caller still there goes on in Gather mode.
    let failed: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "HandoffData")
        .map(|(k, v)| if k == "SessionStatus" { (k.clone(), "failed".to_owned()) } else { (k.clone(), v.clone()) })
        .collect();
    let xml = app.post_signed(&path, &failed).await.text().await.unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let gather = doc.descendants().find(|n| n.has_tag_name("Gather")).unwrap_or_else(|| panic!("no Gather: {xml}"));
    assert!(gather.attribute("action").unwrap().ends_with("?n=51"));
}

/// Also the voice bench (deploy/bench-voice.sh): `RELAY_BENCH_CALLS`
/// concurrent calls [50], `RELAY_BENCH_ROUNDS` prompts each [1].
#[tokio::test]
async fn fifty_concurrent_relay_calls_each_with_a_300ms_model() {
    let env = |name: &str, default: u32| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (n, rounds) = (env("RELAY_BENCH_CALLS", 50).max(2), env("RELAY_BENCH_ROUNDS", 1).max(1));
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_millis(300), Duration::from_millis(20)).await;
    let (app, _worker) = start(&nats, relay_channel(&stub.chat_config(""), "")).await;
    let started = Instant::now();
    let calls = (0..n).map(|i| {
        let app = &app;
        async move {
            // Each its own caller: one conversation's turns run in order.
            let sim = connect_from(app, &call_sid(100 + i), &format!("+1415555{:04}", 1000 + i)).await;
            let mut heard = Vec::new();
            for r in 0..rounds {
                let seen = sim.received().len();
                let words = format!("caller {i} round {r}");
                let asked = sim.prompt(&words).await;
                let cycle = sim.wait_cycle(WAIT, seen).await;
                assert_eq!(spoken(&cycle), format!("reply to: {words}"));
                heard.push((words, asked, cycle.iter().find(|m| !m.token().is_empty()).unwrap().at));
            }
            heard
        }
    });
    let heard: Vec<(String, Instant, Instant)> = futures::future::join_all(calls).await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    let stub_calls = stub.calls();
    let (mut added, mut to_model): (Vec<Duration>, Vec<Duration>) = heard
        .iter()
        .map(|(words, asked, first)| {
            let call = stub_calls.iter().find(|c| &c.last_user_text() == words).unwrap();
            (
                first.saturating_duration_since(call.first_token_at().unwrap()),
                call.received.saturating_duration_since(*asked),
            )
        })
        .unzip();
    added.sort();
    to_model.sort();
    let at = |v: &[Duration], q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "{n} concurrent relay calls x {rounds} turns in {elapsed:?}; first-token latency added by smsgate \
         (caller's first token - stub's first token): p50 {:?} p99 {:?} max {:?}; prompt sent -> model request: \
         p50 {:?} p99 {:?}",
        at(&added, 0.50),
        at(&added, 0.99),
        added[added.len() - 1],
        at(&to_model, 0.50),
        at(&to_model, 0.99)
    );
    assert!(elapsed < Duration::from_secs(20) * rounds, "{elapsed:?}");
    assert!(added[added.len() - 1] < Duration::from_secs(3), "{added:?}");
}

#[tokio::test]
async fn a_webhook_agent_may_stream_server_sent_events_or_answer_whole() {
    use axum::response::IntoResponse;
    let nats = NatsServer::start();
    // An agent streaming `data: {"token": …}` events.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/agent",
        axum::routing::post(|| async {
            let events =
                ["data: {\"token\": \"Hel\"}\n\n", "data: {\"token\": \"lo **there**\"}\n\n", "data: [DONE]\n\n"];
            let body = futures::stream::iter(events.map(|e| Ok::<_, std::io::Error>(axum::body::Bytes::from(e))));
            ([("content-type", "text/event-stream")], axum::body::Body::from_stream(body)).into_response()
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let chat = format!(r#""chat": {{"kind": "webhook", "url": "http://{addr}/agent", "timeout_ms": 5000}}"#);
    let (app, _worker) = start(&nats, relay_channel(&chat, "")).await;
    let sim = connect(&app, &call_sid(10)).await;
    sim.prompt("hi agent").await;
    let cycle = sim.wait_cycle(WAIT, 0).await;
    assert_eq!(spoken(&cycle), "Hello there");
    drop(sim);

    // An agent answering JSON as for a text: one piece.
    let nats2 = NatsServer::start();
    let agent = testkit::chat::AgentStub::start("agent-secret").await;
    let (app2, _worker2) = start(&nats2, relay_channel(&agent.chat_config("agent-secret"), "")).await;
    let sim = connect(&app2, &call_sid(11)).await;
    sim.prompt("whole please").await;
    let cycle = sim.wait_cycle(WAIT, 0).await;
    assert_eq!(spoken(&cycle), "reply to: whole please");
    let turns = wait_turns(&app2, 1).await;
    assert_eq!(turns[0].2, "reply to: whole please");
}

#[tokio::test]
async fn an_operator_takeover_hands_the_relay_call_to_a_person() {
    let nats = NatsServer::start();
    let stub = StreamingStub::start(Duration::from_millis(10), Duration::from_millis(5)).await;
    let (app, _worker) = start(&nats, relay_channel(&stub.chat_config(""), r#", "forward_to": "+14155550199""#)).await;
    let sim = connect(&app, &call_sid(12)).await;
    sim.prompt("first question").await;
    sim.wait_cycle(WAIT, 0).await;

    // The operator takes the conversation over during the call: handed off at once.
    let conversations = app.js.get_key_value(app.topology.conversations_bucket()).await.unwrap();
    let state = envelope::ConversationState::pause(time::OffsetDateTime::now_utc(), 60.0);
    let key = smsgate_shared::topology::Topology::conversation_key(
        &smsgate_shared::domain::ChannelId::parse("test").unwrap(),
        &smsgate_shared::domain::E164::parse(CALLER).unwrap(),
    );
    let seen = sim.received().len();
    conversations.put(key, envelope::encode(&state)).await.unwrap();
    let end =
        sim.wait_for(WAIT, "the end message", |r| r.get(seen..)?.iter().find(|m| m.kind() == "end").cloned()).await;
    assert!(end.value["handoffData"].as_str().unwrap().contains("human takeover"), "{end:?}");
    assert_eq!(spoken(&sim.received()[seen..]), OPERATOR_WILL_ANSWER);

    // A call while the conversation is paused: its first turn is handed off
    // by the worker, the model not asked.
    let sim = connect(&app, &call_sid(13)).await;
    sim.prompt("second question").await;
    let end = sim.wait_for(WAIT, "the end message", |r| r.iter().find(|m| m.kind() == "end").cloned()).await;
    assert!(end.value["handoffData"].as_str().unwrap().contains("human takeover"), "{end:?}");
    assert_eq!(spoken(&sim.received()), OPERATOR_WILL_ANSWER);
    assert_eq!(stub.calls().len(), 1, "the model is not asked while an operator has the conversation");
}
