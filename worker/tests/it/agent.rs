//! What lets the agent act, not only answer: the "on it" text before a slow
//! model's reply, and the model's tools (`handoff` pauses the conversation
//! for a person; `followup` schedules a later text through the guard).

use std::time::Duration;

use serde_json::json;
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, ConversationState, HistoryEvent, NoteReason, Origin};
use smsgate_shared::schedule::{Scheduled, Why};
use smsgate_shared::topology::Topology;
use smsgate_testkit::channel;
use smsgate_testkit::chat::OpenAiStub;
use time::OffsetDateTime;

use crate::helpers::{TestWorker, inbound, kinds, test_tuning};

const PEER: &str = "+14155550401";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_text_goes_before_a_slow_models_reply_and_not_before_a_fast_one() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config(r#""ack_after_ms": 300, "ack_text": "On it!""#);
    let w = TestWorker::start_with(vec![channel(&chat)], test_tuning()).await;
    model.set_delay_when("slow", Duration::from_millis(1500));

    w.bus.send(&inbound("test", "SMslow", PEER, "a slow question")).await;
    let out = w.bus.wait_outbound(2).await;
    let origins: Vec<(Origin, &str)> = out.iter().map(|o| (o.origin, o.body.as_str())).collect();
    assert_eq!(origins, [(Origin::Ack, "On it!"), (Origin::Chat, "reply to: a slow question")], "{out:#?}");
    assert_eq!(out[0].id.as_str(), "ack.SMslow");
    assert_eq!(out[0].in_reply_to.as_ref().map(|s| s.as_str()), Some("SMslow"));

    w.bus.send(&inbound("test", "SMfast", PEER, "a fast question")).await;
    w.bus.wait_drained().await;
    let out = w.bus.outbound().await;
    assert_eq!(out.len(), 3, "no ack before a reply that came in time: {out:#?}");
    assert_eq!(out[2].origin, Origin::Chat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_pauses_the_conversation_and_the_next_text_does_not_reach_the_model() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config(r#""tools": ["handoff", "followup"]"#);
    let w = TestWorker::start_with(vec![channel(&chat)], test_tuning()).await;
    model.push_tool_call("handoff", json!({"reason": "disputes a charge"}));
    model.push_message(json!({"role": "assistant", "content": "A person will text you shortly."}));

    w.bus.send(&inbound("test", "SMbill", PEER, "you charged me twice")).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].body, "A person will text you shortly.");
    let requests = model.requests();
    assert_eq!(requests.len(), 2, "the tool's result went back to the model");
    assert!(requests[0].body["tools"].as_array().is_some_and(|t| t.len() == 2), "{}", requests[0].body);
    let tool_result = requests[1].messages().last().cloned().unwrap();
    assert_eq!(tool_result["role"], "tool");
    assert!(tool_result["content"].as_str().unwrap().contains("handed_off"), "{tool_result}");

    let store = w.bus.js.get_key_value(w.bus.topology.conversations_bucket()).await.unwrap();
    let key = Topology::conversation_key(&ChannelId::parse("test").unwrap(), &E164::parse(PEER).unwrap());
    let state: ConversationState = envelope::decode(&store.get(&key).await.unwrap().unwrap()).unwrap();
    assert!(state.paused(OffsetDateTime::now_utc()));
    let history = w.bus.history("test", PEER).await;
    let handoff = history.iter().find_map(|e| match &e.event {
        HistoryEvent::Note { reason: NoteReason::Handoff, detail, .. } => Some(detail.clone()),
        _ => None,
    });
    assert!(handoff.as_deref().is_some_and(|d| d.contains("disputes a charge")), "{:?}", kinds(&history));

    w.bus.send(&inbound("test", "SMafter", PEER, "hello?")).await;
    w.bus.wait_note("test", PEER, "SMafter", NoteReason::Paused).await;
    assert_eq!(model.requests().len(), 2, "the next text did not reach the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followup_schedules_a_text_through_the_guard_and_tells_the_model() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config(r#""tools": ["followup"]"#);
    let w = TestWorker::start_with(vec![channel(&chat)], test_tuning()).await;
    model.push_tool_call("followup", json!({"text": "Your report is ready.", "in_minutes": 90}));
    model.push_message(json!({"role": "assistant", "content": "I'll text you when it's done."}));
    // A tool the channel does not have, and bad arguments, are answered as errors.
    model.push_tool_call("handoff", json!({"reason": "x"}));
    model.push_tool_call("followup", json!({"text": ""}));
    model.push_message(json!({"role": "assistant", "content": "ok"}));

    let before = OffsetDateTime::now_utc();
    w.bus.send(&inbound("test", "SMreport", PEER, "make me a report")).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].body, "I'll text you when it's done.");
    let tool_result = model.requests()[1].messages().last().cloned().unwrap();
    assert!(tool_result["content"].as_str().unwrap().contains("\"scheduled\""), "{tool_result}");

    let schedule = w.bus.js.get_key_value(w.bus.topology.schedule_bucket()).await.unwrap();
    let entry: Scheduled = envelope::decode(&schedule.get("followup.SMreport.1").await.unwrap().unwrap()).unwrap();
    assert_eq!(entry.why, Why::Requested);
    assert_eq!(entry.outbound.body, "Your report is ready.");
    assert_eq!(entry.outbound.origin, Origin::Agent);
    assert_eq!(entry.outbound.in_reply_to.as_ref().map(|s| s.as_str()), Some("SMreport"));
    let guard = entry.outbound.guard.unwrap();
    assert_eq!(guard.initiator, smsgate_shared::guard::Initiator::Agent);
    let ahead = entry.send_at - before;
    assert!(ahead >= time::Duration::minutes(89) && ahead <= time::Duration::minutes(91), "{ahead}");
    let history = w.bus.history("test", PEER).await;
    assert!(
        history.iter().any(|e| matches!(&e.event, HistoryEvent::Note { reason: NoteReason::Scheduled, .. })),
        "{:?}",
        kinds(&history)
    );

    w.bus.send(&inbound("test", "SMagain", PEER, "and another")).await;
    w.bus.wait_outbound(2).await;
    let requests = model.requests();
    let results: Vec<String> = requests[3..]
        .iter()
        .flat_map(|r| r.messages())
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(results.iter().any(|r| r.contains("not enabled")), "{results:?}");
    assert!(results.iter().any(|r| r.contains("1 to 1600")), "{results:?}");
}
