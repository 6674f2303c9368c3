//! Voice calls played from Twilio's side with signed requests, against the
//! real ingress and the real worker (in-process) on a real nats-server,
//! with the OpenAI-compatible chat stub: every TwiML answer is parsed as
//! XML and followed the way Twilio follows it (`<Redirect>`, `<Gather>`'s
//! action, `<Record>`'s callbacks, `<Dial>`'s action).

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use smsgate_ingress::voice::VoiceTiming;
use smsgate_shared::config::{Channel, Config, Settings};
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, HistoryEntry, HistoryEvent, Origin, Outbound};
use smsgate_shared::signature;
use smsgate_shared::voice::{GOODBYE, OPERATOR_WILL_ANSWER, TOO_SLOW, VOICEMAIL_PROMPT};
use smsgate_testkit::{self as testkit, chat::OpenAiStub, nats::NatsServer};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, inbound_params};

const CALLER: &str = "+14155550100";
const CALL_SID: &str = "CA0123456789abcdef0123456789abcd01";
const WAIT: Duration = Duration::from_secs(30);

/// One TwiML verb as Twilio would read it.
#[derive(Debug, Clone)]
struct Verb {
    name: String,
    text: String,
    attrs: HashMap<String, String>,
    children: Vec<Verb>,
}

fn parse(xml: &str) -> Vec<Verb> {
    fn verb(n: roxmltree::Node<'_, '_>) -> Verb {
        Verb {
            name: n.tag_name().name().to_owned(),
            text: n.text().unwrap_or_default().to_owned(),
            attrs: n.attributes().map(|a| (a.name().to_owned(), a.value().to_owned())).collect(),
            children: n.children().filter(|c| c.is_element()).map(verb).collect(),
        }
    }
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("TwiML is not XML ({e}): {xml}"));
    assert_eq!(doc.root_element().tag_name().name(), "Response", "{xml}");
    doc.root_element().children().filter(|c| c.is_element()).map(verb).collect()
}

fn names(verbs: &[Verb]) -> Vec<&str> {
    verbs.iter().map(|v| v.name.as_str()).collect()
}

/// Twilio's side of one call.
struct Caller<'a> {
    app: &'a TestApp,
    call_sid: String,
    from: String,
}

impl<'a> Caller<'a> {
    fn new(app: &'a TestApp, call_sid: &str) -> Self {
        Self { app, call_sid: call_sid.to_owned(), from: CALLER.to_owned() }
    }

    fn params(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = [
            ("AccountSid", testkit::ACCOUNT_SID),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", self.call_sid.as_str()),
            ("CallStatus", "in-progress"),
            ("Called", testkit::FROM_NUMBER),
            ("Caller", self.from.as_str()),
            ("Direction", "inbound"),
            ("From", self.from.as_str()),
            ("To", testkit::FROM_NUMBER),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            p.push(((*k).to_owned(), (*v).to_owned()));
        }
        p
    }

    /// POSTs to one of our URLs (absolute, as the TwiML names it, or a path),
    /// signed over the public URL with its query.
    async fn post(&self, url: &str, extra: &[(&str, &str)]) -> (StatusCode, String) {
        let base = self.app.channel.public_base_url.clone().unwrap();
        let path = url.strip_prefix(&base).unwrap_or(url);
        let r = self.app.post_signed(path, &self.params(extra)).await;
        (r.status(), r.text().await.unwrap())
    }

    async fn twiml(&self, url: &str, extra: &[(&str, &str)]) -> Vec<Verb> {
        let (status, xml) = self.post(url, extra).await;
        assert_eq!(status, StatusCode::OK, "{url}: {xml}");
        parse(&xml)
    }

    async fn ring(&self) -> Vec<Verb> {
        let path = format!("/api/channels/voice/twilio/call/{}", testkit::PATH_TOKEN);
        self.twiml(&path, &[("CallStatus", "ringing")]).await
    }

    /// Says `words` to the `<Gather>` in `verbs`, then follows `<Redirect>`s
    /// until something is said; returns that answer and how many redirects
    /// it took.
    async fn say(&self, verbs: &[Verb], words: &str) -> (Vec<Verb>, usize) {
        let action = gather_action(verbs);
        let mut answer = self.twiml(&action, &[("SpeechResult", words), ("Confidence", "0.9")]).await;
        let mut redirects = 0;
        while let Some(r) = answer.iter().find(|v| v.name == "Redirect") {
            assert_eq!(names(&answer), ["Pause", "Redirect"]);
            redirects += 1;
            assert!(redirects < 200, "endless redirects");
            let url = r.text.clone();
            answer = self.twiml(&url, &[]).await;
        }
        (answer, redirects)
    }
}

fn gather_action(verbs: &[Verb]) -> String {
    let g = verbs.iter().find(|v| v.name == "Gather").unwrap_or_else(|| panic!("no Gather in {verbs:?}"));
    assert_eq!(g.attrs["input"], "speech");
    g.attrs["action"].clone()
}

fn said(verbs: &[Verb]) -> String {
    verbs.iter().find(|v| v.name == "Say").map(|v| v.text.clone()).unwrap_or_default()
}

async fn start_worker(nats: &NatsServer, app: &TestApp) -> CancellationToken {
    let config = Config {
        settings: Settings::for_tests(&nats.url(), app.topology.prefix()),
        channels: vec![app.channel.clone()],
    };
    let tuning = smsgate_worker::Tuning {
        max_in_flight: Some(8),
        retry: smsgate_shared::retry::RetryPolicy::fixed(vec![Duration::from_millis(200)]),
        error_delay: Duration::from_millis(200),
        ..smsgate_worker::Tuning::default()
    };
    let worker = smsgate_worker::App::build_with(config, tuning).await.expect("worker builds");
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = worker.run_until_stopped(token).await;
    });
    stop
}

fn voice_channel(chat: &str, voice: &str) -> Channel {
    testkit::channel(&format!(r#"{chat}, "voice": {{"enabled": true, "voice": "Polly.Joanna" {voice}}}"#))
}

async fn start(nats: &NatsServer, channel: Channel, timing: VoiceTiming) -> (TestApp, CancellationToken) {
    let app = TestApp::start_custom(nats, channel, |a| a.with_voice_timing(timing)).await;
    let worker = start_worker(nats, &app).await;
    (app, worker)
}

fn quick() -> VoiceTiming {
    VoiceTiming { poll: Duration::from_millis(300), pause_secs: 1, waits: 60 }
}

/// The caller's conversation history (also the relay tests').
pub(crate) async fn history(app: &TestApp) -> Vec<HistoryEntry> {
    let subject = app.topology.history_subject(&ChannelId::parse("test").unwrap(), &E164::parse(CALLER).unwrap());
    let mut s = app.js.get_stream(app.topology.history_stream()).await.unwrap();
    let state = s.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = s.get_raw_message(seq).await
            && m.subject.as_str() == subject
        {
            out.push(envelope::decode(&m.payload).unwrap());
        }
    }
    out
}

async fn wait_history<T>(app: &TestApp, what: &str, f: impl Fn(&[HistoryEntry]) -> Option<T>) -> T {
    testkit::eventually(WAIT, what, || async { f(&history(app).await) }).await
}

fn turns(entries: &[HistoryEntry]) -> Vec<(u32, String, String, Origin)> {
    entries
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::CallTurn { turn, heard, said, origin, .. } => {
                Some((*turn, heard.clone(), said.clone(), *origin))
            }
            _ => None,
        })
        .collect()
}

fn calls(entries: &[HistoryEntry]) -> Vec<(String, Option<u64>)> {
    entries
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::Call { status, duration_secs, .. } => Some((status.clone(), *duration_secs)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_two_turn_call_is_answered_by_the_chat_pipeline_knowing_the_callers_texts() {
    let nats = NatsServer::start();
    let stub = OpenAiStub::start().await;
    let (app, _worker) = start(&nats, voice_channel(&stub.chat_config(""), ""), quick()).await;

    // The caller texted before.
    let r = app.post_signed(&app.webhook_path(), &inbound_params("SMvoice0001", "my name is Ada")).await;
    assert_eq!(r.status(), StatusCode::OK);
    stub.wait_for_requests(1, WAIT).await;

    let call = Caller::new(&app, CALL_SID);
    let greeting = call.ring().await;
    assert_eq!(names(&greeting), ["Gather", "Say", "Hangup"]);
    let gather = &greeting[0];
    assert_eq!(names(&gather.children), ["Say"]);
    assert_eq!(gather.children[0].attrs["voice"], "Polly.Joanna");
    assert!(
        gather.attrs["action"].contains("/api/channels/voice/twilio/turn/") && gather.attrs["action"].ends_with("?n=1")
    );
    assert_eq!(said(&greeting[1..]), GOODBYE, "silence ends the call");

    let (one, _) = call.say(&greeting, "what are your **hours**").await;
    assert_eq!(names(&one), ["Say", "Gather", "Say", "Hangup"]);
    assert_eq!(said(&one), "reply to: what are your hours.");
    assert!(gather_action(&one).ends_with("?n=2"));
    let requests = stub.wait_for_requests(2, WAIT).await;
    assert!(requests[1].body.to_string().contains("my name is Ada"), "the texts are the call's history");

    // A model slower than one redirect cycle (poll 300 ms + a pause).
    stub.set_delay(Duration::from_millis(1800));
    let (two, redirects) = call.say(&one, "and on Sunday?").await;
    assert!(redirects >= 2, "{redirects} redirects");
    assert_eq!(said(&two), "reply to: and on Sunday?");
    let requests = stub.wait_for_requests(3, WAIT).await;
    assert!(requests[2].body.to_string().contains("what are your"), "turn 1 is turn 2's history");

    let (bye, _) = call.say(&two, "Goodbye!").await;
    assert_eq!(names(&bye), ["Say", "Hangup"]);
    let entries = wait_history(&app, "two call turns", |h| (turns(h).len() == 2).then(|| h.to_vec())).await;
    let t = turns(&entries);
    assert_eq!((t[0].0, t[0].1.as_str(), t[0].3), (1, "what are your **hours**", Origin::Chat));
    assert_eq!((t[1].0, t[1].2.as_str()), (2, "reply to: and on Sunday?"));
    assert_eq!(calls(&entries), [("answered".to_owned(), None)]);
    assert_eq!(stub.requests().len(), 3, "one model call per turn");
}

#[tokio::test]
async fn a_caller_who_hangs_up_mid_turn_leaves_the_turn_and_the_end_in_history() {
    let nats = NatsServer::start();
    let stub = OpenAiStub::start().await;
    stub.set_delay(Duration::from_millis(500));
    let (app, _worker) = start(&nats, voice_channel(&stub.chat_config(""), ""), quick()).await;
    let call = Caller::new(&app, CALL_SID);
    let greeting = call.ring().await;
    // The words are taken, then the caller is gone: no redirect follows.
    let answer = call.twiml(&gather_action(&greeting), &[("SpeechResult", "hello?")]).await;
    assert_eq!(names(&answer), ["Pause", "Redirect"]);
    let status = format!("/api/channels/voice/twilio/status/{}", testkit::PATH_TOKEN);
    let (code, _) = call.post(&status, &[("CallStatus", "completed"), ("CallDuration", "7")]).await;
    assert_eq!(code, StatusCode::OK);
    let entries = wait_history(&app, "the turn and the end", |h| {
        (turns(h).len() == 1 && calls(h).len() == 2).then(|| h.to_vec())
    })
    .await;
    assert_eq!(calls(&entries)[1], ("completed".to_owned(), Some(7)));
    // The same callback again is recorded once.
    call.post(&status, &[("CallStatus", "completed"), ("CallDuration", "7")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls(&history(&app).await).len(), 2);
}

#[tokio::test]
async fn a_failing_model_is_answered_with_the_spoken_fallback_and_a_voicemail() {
    let nats = NatsServer::start();
    let stub = OpenAiStub::start().await;
    stub.fail_next(10, 400);
    let (app, _worker) = start(&nats, voice_channel(&stub.chat_config(""), ""), quick()).await;
    let call = Caller::new(&app, CALL_SID);
    let greeting = call.ring().await;
    let (answer, _) = call.say(&greeting, "are you there").await;
    assert_eq!(names(&answer), ["Say", "Say", "Record", "Hangup"]);
    assert_eq!(said(&answer), app.channel.fallback_text);
    assert_eq!(answer[1].text, VOICEMAIL_PROMPT);
    assert!(answer[2].attrs["transcribeCallback"].contains("/api/channels/voice/twilio/transcription/"));
    let entries = wait_history(&app, "the fallback turn", |h| (turns(h).len() == 1).then(|| h.to_vec())).await;
    assert_eq!(turns(&entries)[0].3, Origin::Fallback);
}

#[tokio::test]
async fn while_an_operator_has_the_conversation_the_agent_does_not_answer_the_phone() {
    let nats = NatsServer::start();
    let stub = OpenAiStub::start().await;
    let (app, _worker) = start(&nats, voice_channel(&stub.chat_config(""), ""), quick()).await;
    let conversations = app.js.get_key_value(app.topology.conversations_bucket()).await.unwrap();
    let now = time::OffsetDateTime::now_utc();
    let state = envelope::ConversationState {
        v: envelope::VERSION,
        paused_until: now + time::Duration::hours(1),
        paused_at: now,
    };
    let key = smsgate_shared::topology::Topology::conversation_key(
        &ChannelId::parse("test").unwrap(),
        &E164::parse(CALLER).unwrap(),
    );
    conversations.put(key, envelope::encode(&state)).await.unwrap();
    let call = Caller::new(&app, CALL_SID);
    let greeting = call.ring().await;
    let (answer, _) = call.say(&greeting, "I need help").await;
    assert_eq!(names(&answer), ["Say", "Say", "Record", "Hangup"]);
    assert_eq!(said(&answer), OPERATOR_WILL_ANSWER);
    let entries = wait_history(&app, "the paused turn", |h| (turns(h).len() == 1).then(|| h.to_vec())).await;
    assert_eq!(turns(&entries)[0].3, Origin::Fallback);
    assert!(stub.requests().is_empty(), "the model is not called");
}

#[tokio::test]
async fn a_reply_too_late_is_given_up_once_and_the_fallback_is_what_history_says_was_heard() {
    let nats = NatsServer::start();
    let stub = OpenAiStub::start().await;
    stub.set_delay(Duration::from_secs(3));
    let timing = VoiceTiming { poll: Duration::from_millis(200), pause_secs: 0, waits: 2 };
    let (app, _worker) = start(&nats, voice_channel(&stub.chat_config(""), ""), timing).await;
    let call = Caller::new(&app, CALL_SID);
    let greeting = call.ring().await;
    let (answer, redirects) = call.say(&greeting, "slow question").await;
    assert_eq!(redirects, 2, "given up after `waits` redirects");
    assert!(said(&answer).starts_with(TOO_SLOW), "{answer:?}");
    assert!(names(&answer).contains(&"Record"));
    let entries = wait_history(&app, "the late turn", |h| (turns(h).len() == 1).then(|| h.to_vec())).await;
    let t = &turns(&entries)[0];
    assert_eq!(t.3, Origin::Timeout);
    assert!(t.2.starts_with(TOO_SLOW));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(turns(&history(&app).await).len(), 1, "the late reply is not recorded as heard");
}

#[tokio::test]
async fn a_voicemail_is_transcribed_and_answered_by_sms() {
    let nats = NatsServer::start();
    let stub = OpenAiStub::start().await;
    let (app, _worker) = start(&nats, voice_channel(&stub.chat_config(""), r#", "mode": "voicemail""#), quick()).await;
    let call = Caller::new(&app, CALL_SID);
    let greeting = call.ring().await;
    assert_eq!(names(&greeting), ["Say", "Say", "Record", "Hangup"]);
    let record = &greeting[2];
    assert_eq!(record.attrs["transcribe"], "true");
    let thanks = call.twiml(&record.attrs["action"], &[("RecordingUrl", "https://api.twilio.com/x")]).await;
    assert_eq!(names(&thanks), ["Say", "Hangup"]);
    let (code, _) = call
        .post(
            &record.attrs["transcribeCallback"],
            &[("TranscriptionText", "please call me back about my order"), ("TranscriptionStatus", "completed")],
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let subject = app.topology.outbound_stream();
    let reply: Outbound = testkit::eventually(WAIT, "the SMS reply", || async {
        let mut s = app.js.get_stream(&subject).await.ok()?;
        let last = s.info().await.ok()?.state.last_sequence;
        let m = s.get_raw_message(last).await.ok()?;
        envelope::decode(&m.payload).ok()
    })
    .await;
    assert_eq!(reply.to.as_str(), CALLER);
    assert_eq!(reply.body, "reply to: please call me back about my order");
    assert!(reply.call.is_none(), "a text, not a call");
}

#[tokio::test]
async fn a_forwarded_call_is_dialled_and_recorded() {
    let nats = NatsServer::start();
    let forward = r#", "mode": "forward", "forward_to": "+14155550199""#;
    let (app, _worker) = start(&nats, voice_channel(r#""chat": {"kind": "echo"}"#, forward), quick()).await;
    let call = Caller::new(&app, CALL_SID);
    let answer = call.ring().await;
    assert_eq!(names(&answer), ["Dial"]);
    assert_eq!(answer[0].text, "+14155550199");
    let end =
        call.twiml(&answer[0].attrs["action"], &[("DialCallStatus", "completed"), ("DialCallDuration", "42")]).await;
    assert_eq!(names(&end), ["Hangup"]);
    let entries = wait_history(&app, "the forwarded call", |h| (calls(h).len() == 2).then(|| h.to_vec())).await;
    assert_eq!(calls(&entries), [("forwarded".to_owned(), None), ("completed".to_owned(), Some(42))]);
}

#[tokio::test]
async fn an_outbound_calls_status_lands_in_the_called_numbers_conversation_even_with_voice_off() {
    let nats = NatsServer::start();
    let (app, _worker) = start(&nats, testkit::channel(""), quick()).await;
    let call = Caller::new(&app, CALL_SID);
    let status = format!("/api/channels/voice/twilio/status/{}", testkit::PATH_TOKEN);
    // We called CALLER: From is our number, To theirs.
    let outbound = [("Direction", "outbound-api"), ("From", testkit::FROM_NUMBER), ("To", CALLER)];
    for (s, d) in [("ringing", None), ("completed", Some("12"))] {
        let mut p = outbound.to_vec();
        p.push(("CallStatus", s));
        if let Some(d) = d {
            p.push(("CallDuration", d));
        }
        assert_eq!(call.post(&status, &p).await.0, StatusCode::OK);
    }
    let entries = wait_history(&app, "the call's progress", |h| (calls(h).len() == 2).then(|| h.to_vec())).await;
    assert_eq!(calls(&entries), [("ringing".to_owned(), None), ("completed".to_owned(), Some(12))]);
    // The other routes stay off.
    let ring = format!("/api/channels/voice/twilio/call/{}", testkit::PATH_TOKEN);
    assert_eq!(call.post(&ring, &[]).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_blocked_caller_is_rejected() {
    let nats = NatsServer::start();
    let channel = testkit::channel(&format!(r#""voice": {{"enabled": true}}, "block_from": ["{CALLER}"]"#));
    let (app, _worker) = start(&nats, channel, quick()).await;
    let answer = Caller::new(&app, CALL_SID).ring().await;
    assert_eq!(names(&answer), ["Reject"]);
    let entries = wait_history(&app, "the rejected call", |h| (!calls(h).is_empty()).then(|| h.to_vec())).await;
    assert_eq!(calls(&entries)[0].0, "rejected");
}

#[tokio::test]
async fn forged_unsigned_or_misdirected_voice_requests_are_refused_and_nothing_is_published() {
    let nats = NatsServer::start();
    let app = TestApp::start_with(&nats, testkit::channel(r#""voice": {"enabled": true}"#)).await;
    let call = Caller::new(&app, CALL_SID);
    let token = testkit::PATH_TOKEN;
    let turn = format!("/api/channels/voice/twilio/turn/{token}?n=1");
    let params = call.params(&[("SpeechResult", "transfer all my money")]);
    // Unsigned.
    assert_eq!(app.post(&turn, &params, None).await.status(), StatusCode::FORBIDDEN);
    // Signed with another token.
    let forged = signature::sign("not-the-auth-token", &format!("http://127.0.0.1:8000{turn}"), &params);
    assert_eq!(app.post(&turn, &params, Some(&forged)).await.status(), StatusCode::FORBIDDEN);
    // Signed for another turn: the query is part of what Twilio signs.
    let other = signature::sign(testkit::AUTH_TOKEN, &format!("http://127.0.0.1:8000{turn}"), &params);
    let moved = format!("/api/channels/voice/twilio/turn/{token}?n=2");
    assert_eq!(app.post(&moved, &params, Some(&other)).await.status(), StatusCode::FORBIDDEN);
    // An unknown token, a turn number that is not one, another account.
    let wrong = "/api/channels/voice/twilio/call/not-a-token-0123456789abcdefghijklmn";
    assert_eq!(app.post_signed(wrong, &params).await.status(), StatusCode::NOT_FOUND);
    let bad_turn = format!("/api/channels/voice/twilio/turn/{token}?n=zero");
    assert_eq!(app.post_signed(&bad_turn, &params).await.status(), StatusCode::BAD_REQUEST);
    let (code, _) = call.post(&turn, &[("AccountSid", "AC0000000000000000000000000000000f")]).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(app.count(&app.topology.inbound_stream()).await, 0);

    // Voice off: the call route is not there for this channel.
    let off = TestApp::start_with(&nats, testkit::channel("")).await;
    let (code, _) = Caller::new(&off, CALL_SID)
        .post(&format!("/api/channels/voice/twilio/call/{token}"), &[("CallStatus", "ringing")])
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}
