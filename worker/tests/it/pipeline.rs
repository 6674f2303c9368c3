//! The happy paths: a reply from each kind of chat pipeline, with history.

use serde_json::json;
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{HistoryEntry, HistoryEvent, Media, NoteReason, Origin};
use smsgate_testkit::chat::{AGENT_SECRET, AgentAnswer, AgentStub, OpenAiStub};
use smsgate_testkit::{self as testkit, channel};

use crate::helpers::{TestWorker, WAIT, inbound, kinds};

const ALICE: &str = "+14155550101";

#[tokio::test]
async fn a_normal_message_gets_one_reply_from_the_model() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config(r#""system_prompt": "You are terse.""#);
    let mut w = TestWorker::start(vec![channel(&chat)]).await;

    w.bus.send(&inbound("test", "SMnormal1", ALICE, "hello there")).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out.len(), 1);
    let reply = &out[0];
    assert_eq!(reply.id, "reply.SMnormal1");
    assert_eq!(reply.body, "reply to: hello there");
    assert_eq!(reply.origin, Origin::Chat);
    assert_eq!(reply.to.as_str(), ALICE);
    assert_eq!(reply.in_reply_to.as_ref().map(MessageSid::as_str), Some("SMnormal1"));

    let calls = model.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(calls[0].body["model"], "stub-model");
    assert_eq!(calls[0].body["max_tokens"], 300);
    assert_eq!(
        calls[0].messages(),
        vec![json!({"role": "system", "content": "You are terse."}), json!({"role": "user", "content": "hello there"})]
    );

    w.bus.wait_drained().await;
    let history = w.bus.history("test", ALICE).await;
    assert_eq!(kinds(&history), ["inbound"], "the sender, not the worker, records the outbound entry");
    match &history[0].event {
        HistoryEvent::Inbound { message_sid, body, .. } => {
            assert_eq!(message_sid.as_str(), "SMnormal1");
            assert_eq!(body, "hello there");
        }
        other => panic!("{other:?}"),
    }
    w.stop().await;
}

#[tokio::test]
async fn the_last_history_turns_are_sent_to_the_model_and_media_named() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config(r#""history_turns": 3"#);
    let mut w = TestWorker::start(vec![channel(&chat)]).await;
    let (c, peer) = (ChannelId::parse("test").unwrap(), E164::parse(ALICE).unwrap());

    // An earlier conversation, as the worker and the sender recorded it.
    let said = |sid: &str, body: &str| HistoryEvent::Inbound {
        message_sid: MessageSid::parse(sid).unwrap(),
        body: body.into(),
        media: vec![],
    };
    let answered = |sid: &str, body: &str| HistoryEvent::Outbound {
        id: format!("reply.{sid}"),
        body: body.into(),
        in_reply_to: Some(MessageSid::parse(sid).unwrap()),
        origin: Origin::Chat,
        pieces: vec![],
        delivery: "log".into(),
        media: vec![],
    };
    for event in [
        said("SMold1", "first"),
        answered("SMold1", "answer one"),
        said("SMold2", "second"),
        HistoryEvent::Note {
            reason: NoteReason::RateLimited,
            message_sid: None,
            outbound_id: None,
            detail: "not a turn".into(),
        },
        answered("SMold2", "answer two"),
    ] {
        w.bus.append_history(&HistoryEntry::now(c.clone(), peer.clone(), event)).await;
    }

    let mut msg = inbound("test", "SMnow", ALICE, "what is this?");
    msg.media = vec![
        Media { url: "https://api.twilio.com/media/1".into(), content_type: Some("image/png".into()) },
        Media { url: "https://api.twilio.com/media/2".into(), content_type: Some("text/vcard".into()) },
    ];
    w.bus.send(&msg).await;
    w.bus.wait_outbound(1).await;

    let calls = model.requests();
    let messages = calls[0].messages();
    assert_eq!(messages.len(), 4, "3 history turns and the current message, no system prompt: {messages:#?}");
    assert_eq!(messages[0], json!({"role": "assistant", "content": "answer one"}));
    assert_eq!(messages[1], json!({"role": "user", "content": "second"}));
    assert_eq!(messages[2], json!({"role": "assistant", "content": "answer two"}));
    // Not this message's media on the channel's API base: never fetched,
    // described (tests/it/media.rs has the media that is fetched).
    assert_eq!(
        messages[3],
        json!({"role": "user", "content": "what is this?\n[a photo could not be loaded]\n[an attachment (text/vcard) could not be loaded]"})
    );

    // The next message sees the current one once, as a user turn, its media named.
    w.bus.send(&inbound("test", "SMnext", ALICE, "and now?")).await;
    model.wait_for_requests(2, WAIT).await;
    let messages = model.requests()[1].messages();
    assert_eq!(messages.iter().filter(|m| m["role"] == "user" && m["content"] == "and now?").count(), 1);
    let earlier = "what is this?\n[a photo sent earlier]\n[an attachment (text/vcard) sent earlier]";
    assert_eq!(messages.iter().filter(|m| m["content"] == earlier).count(), 1, "{messages:#?}");
    w.stop().await;
}

#[tokio::test]
async fn the_agent_webhook_gets_a_valid_standard_webhooks_signature() {
    let agent = AgentStub::start(AGENT_SECRET).await;
    let mut w = TestWorker::start(vec![channel(&agent.chat_config(AGENT_SECRET))]).await;

    w.bus.send(&inbound("test", "SMhook1", ALICE, "hi agent")).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].body, "reply to: hi agent");
    assert_eq!(out[0].origin, Origin::Chat);

    let calls = agent.requests();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].signature_valid, "{:?}", calls[0]);
    assert_eq!(calls[0].webhook_id.as_deref(), Some("SMhook1"));
    let body = &calls[0].body;
    assert_eq!(body["channel_id"], "test");
    assert_eq!(body["from"], ALICE);
    assert_eq!(body["to"], testkit::FROM_NUMBER);
    assert_eq!(body["body"], "hi agent");
    assert_eq!(body["message_sid"], "SMhook1");
    assert_eq!(body["history"], json!([]));

    // `{"reply": null}` and 204: no reply now, recorded as such.
    agent.set_answer(AgentAnswer::Null);
    w.bus.send(&inbound("test", "SMhook2", ALICE, "later please")).await;
    w.bus.wait_note("test", ALICE, "SMhook2", NoteReason::NoReply).await;
    agent.set_answer(AgentAnswer::NoContent);
    w.bus.send(&inbound("test", "SMhook3", ALICE, "and again")).await;
    w.bus.wait_note("test", ALICE, "SMhook3", NoteReason::NoReply).await;
    let calls = agent.requests();
    assert_eq!(calls.len(), 3);
    let history = calls[2].body["history"].as_array().unwrap().clone();
    assert_eq!(history.len(), 2, "the earlier user turns: {history:#?}");
    assert_eq!(history[0]["role"], "user");
    assert_eq!(history[0]["body"], "hi agent");
    assert_eq!(w.bus.outbound().await.len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_wrong_webhook_secret_is_refused_by_the_agent_and_ends_in_fallback() {
    let agent = AgentStub::start(AGENT_SECRET).await;
    let mut w = TestWorker::start(vec![channel(&agent.chat_config("whsec_c29tZXRoaW5nIGVsc2U="))]).await;
    w.bus.send(&inbound("test", "SMbadsig", ALICE, "hi")).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].origin, Origin::Fallback);
    assert!(!agent.requests()[0].signature_valid);
    w.stop().await;
}

#[tokio::test]
async fn static_and_echo_pipelines_answer_without_a_model() {
    let fixed = smsgate_testkit::channel_with_id(
        "fixed",
        "fixed-path-token-abcdefghijklmnopqrstuvwxyz",
        r#""chat": {"kind": "static", "reply": "Thanks, we got it."}"#,
    );
    let mut w = TestWorker::start(vec![channel(""), fixed]).await;
    w.bus.send(&inbound("test", "SMecho", ALICE, "  ping ")).await;
    w.bus.send(&inbound("fixed", "SMstatic", ALICE, "anything")).await;
    let out = w.bus.wait_outbound(2).await;
    let body_of = |id: &str| out.iter().find(|o| o.id == id).map(|o| o.body.clone());
    assert_eq!(body_of("reply.SMecho").as_deref(), Some("ping"));
    assert_eq!(body_of("reply.SMstatic").as_deref(), Some("Thanks, we got it."));
    w.stop().await;
}

#[tokio::test]
async fn health_and_metrics_are_served_on_the_ops_listener() {
    let mut w = TestWorker::start(vec![channel("")]).await;
    w.bus.send(&inbound("test", "SMops", ALICE, "count me")).await;
    w.bus.wait_outbound(1).await;
    w.bus.wait_drained().await;
    let http = reqwest::Client::new();
    let health = http.get(format!("http://{}/api/health", w.addr)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = http.get(format!("http://{}/metrics", w.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("smsgate_worker_messages_total"), "{metrics}");
    assert!(metrics.contains("outcome=\"replied\""), "{metrics}");
    assert!(metrics.contains("smsgate_worker_chat_seconds"), "{metrics}");
    assert!(metrics.contains("smsgate_consumer_running{consumer=\"worker\"}"), "{metrics}");
    w.stop().await;
}
