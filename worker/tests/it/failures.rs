//! The chat backend failing: retried through redelivery, then the fallback
//! text and a dead letter; bad payloads dead-lettered without a panic.

use smsgate_shared::config::DEFAULT_FALLBACK_TEXT;
use smsgate_shared::envelope::{NoteReason, Origin};
use smsgate_testkit::channel;
use smsgate_testkit::chat::OpenAiStub;

use crate::helpers::{TestWorker, WAIT, inbound, kinds};

const DAN: &str = "+14155550104";

#[tokio::test]
async fn transient_failures_are_retried_and_the_reply_still_comes_once() {
    let model = OpenAiStub::start().await;
    let mut w = TestWorker::start(vec![channel(&model.chat_config(""))]).await;
    model.fail_next(2, 429);
    w.bus.send(&inbound("test", "SMflaky", DAN, "are you ok?")).await;
    let out = w.bus.wait_outbound(1).await;
    w.bus.wait_drained().await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].origin, Origin::Chat);
    assert_eq!(out[0].body, "reply to: are you ok?");
    assert_eq!(model.requests().len(), 3, "two failures (429), then the answer");
    assert!(w.bus.dead().await.is_empty());
    assert_eq!(kinds(&w.bus.history("test", DAN).await), ["inbound"], "recorded once across redeliveries");
    w.stop().await;
}

#[tokio::test]
async fn a_backend_that_stays_down_gets_the_fallback_reply_and_a_dead_letter() {
    let model = OpenAiStub::start().await;
    let mut w = TestWorker::start(vec![channel(&model.chat_config(""))]).await;
    model.down();
    w.bus.send(&inbound("test", "SMdown", DAN, "anyone?")).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].id, "reply.SMdown");
    assert_eq!(out[0].origin, Origin::Fallback);
    assert_eq!(out[0].body, DEFAULT_FALLBACK_TEXT);
    let note = w.bus.wait_note("test", DAN, "SMdown", NoteReason::ChatError).await;
    let dead =
        smsgate_testkit::eventually(WAIT, "a dead letter", || async { w.bus.dead().await.into_iter().next() }).await;
    assert_eq!(dead.stage, "worker");
    assert_eq!(dead.channel_id, "test");
    assert_eq!(dead.msg_id.as_deref(), Some("SMdown"));
    assert!(dead.reason.contains("retries exhausted"), "{}", dead.reason);
    assert!(dead.reason.contains("attempt 3"), "{}", dead.reason);
    assert!(dead.payload.contains("anyone?"));
    assert_eq!(
        dead.subject,
        w.bus.topology.inbound_subject(&smsgate_shared::domain::ChannelId::parse("test").unwrap())
    );
    assert!(format!("{note:?}").contains("retries exhausted"));
    w.bus.wait_drained().await;

    // Back up: the next message is answered normally.
    model.up().await;
    w.bus.send(&inbound("test", "SMup", DAN, "now?")).await;
    let out = w.bus.wait_outbound(2).await;
    assert_eq!(out[1].origin, Origin::Chat);
    assert_eq!(w.bus.dead().await.len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_permanent_error_goes_straight_to_the_fallback_with_a_configured_text() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config("");
    let mut w =
        TestWorker::start(vec![channel(&format!(r#"{chat}, "fallback_text": "We'll get back to you.""#))]).await;
    model.fail_next(5, 400);
    w.bus.send(&inbound("test", "SMbad", DAN, "hi")).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].origin, Origin::Fallback);
    assert_eq!(out[0].body, "We'll get back to you.");
    w.bus.wait_drained().await;
    assert_eq!(model.requests().len(), 1, "a 400 is not retried");
    let dead = w.bus.dead().await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("permanent") && dead[0].reason.contains("400"), "{}", dead[0].reason);

    // Replaying that dead letter later gives no second reply: the fallback was
    // this MessageSid's one reply.
    let payload = bytes::Bytes::from(dead[0].payload.clone());
    w.bus.js.publish(dead[0].subject.clone(), payload).await.unwrap().await.unwrap();
    w.bus.wait_note("test", DAN, "SMbad", NoteReason::Duplicate).await;
    w.bus.wait_drained().await;
    assert_eq!(w.bus.outbound().await.len(), 1);
    assert_eq!(model.requests().len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn unreadable_payloads_are_dead_lettered_and_the_worker_carries_on() {
    let mut w = TestWorker::start(vec![channel("")]).await;
    w.bus.send_raw("test", br#"{"v": 2, "something": "new"}"#).await;
    w.bus.send_raw("test", b"not json").await;
    w.bus.send(&inbound("nochannel", "SMnowhere", DAN, "hi")).await;
    w.bus.send(&inbound("test", "SMafter", DAN, "still there?")).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].id, "reply.SMafter");
    w.bus.wait_drained().await;
    let dead = w.bus.dead().await;
    assert_eq!(dead.len(), 3, "{dead:#?}");
    assert!(dead.iter().any(|d| d.reason.contains("version 2")));
    assert!(dead.iter().any(|d| d.reason.contains("not JSON")));
    assert!(dead.iter().any(|d| d.reason.contains("nochannel") && d.channel_id == "nochannel"));
    w.stop().await;
}
