//! Every path that does not reach the model: recorded, and answered only
//! where the design says so (HELP, the one rate-limit notice).

use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{NoteReason, Origin};
use smsgate_shared::topology::Topology;
use smsgate_testkit::channel;
use smsgate_testkit::chat::OpenAiStub;

use crate::helpers::{TestWorker, inbound, kinds, test_tuning};

const BOB: &str = "+14155550102";
const CAROL: &str = "+14155550103";

fn optout_key(peer: &str) -> String {
    Topology::optout_key(&ChannelId::parse("test").unwrap(), &E164::parse(peer).unwrap())
}

#[tokio::test]
async fn stop_opts_out_until_start_and_help_gets_the_help_text() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config("");
    let mut w =
        TestWorker::start(vec![channel(&format!(r#"{chat}, "help_text": "Acme bot. Reply STOP to stop.""#))]).await;
    let bus = &w.bus;

    bus.send(&inbound("test", "SMstop", BOB, " Stop ")).await;
    bus.wait_note("test", BOB, "SMstop", NoteReason::OptOutKeyword).await;
    assert!(bus.optout.get(optout_key(BOB)).await.unwrap().is_some(), "STOP records the opt-out");

    bus.send(&inbound("test", "SMwhileout", BOB, "are you there?")).await;
    bus.wait_note("test", BOB, "SMwhileout", NoteReason::OptedOut).await;

    bus.send(&inbound("test", "SMstart", BOB, "START")).await;
    bus.wait_note("test", BOB, "SMstart", NoteReason::OptInKeyword).await;
    assert!(bus.optout.get(optout_key(BOB)).await.unwrap().is_none(), "START clears it");

    bus.send(&inbound("test", "SMhelp", CAROL, "help")).await;
    let out = bus.wait_outbound(1).await;
    assert_eq!(out[0].id, "reply.SMhelp");
    assert_eq!(out[0].origin, Origin::Help);
    assert_eq!(out[0].body, "Acme bot. Reply STOP to stop.");
    bus.wait_note("test", CAROL, "SMhelp", NoteReason::HelpKeyword).await;

    bus.send(&inbound("test", "SMback", BOB, "hello again")).await;
    let out = bus.wait_outbound(2).await;
    assert_eq!(out[1].id, "reply.SMback");
    assert_eq!(out[1].origin, Origin::Chat);

    assert_eq!(model.requests().len(), 1, "only the last message reached the model");
    bus.wait_drained().await;
    assert_eq!(
        kinds(&bus.history("test", BOB).await),
        ["inbound", "note:opt_out_keyword", "inbound", "note:opted_out", "inbound", "note:opt_in_keyword", "inbound"]
    );
    assert_eq!(bus.outbound().await.len(), 2);
    w.stop().await;
}

#[tokio::test]
async fn the_opt_out_a_sender_recorded_after_twilio_21610_is_honoured() {
    let model = OpenAiStub::start().await;
    let mut w = TestWorker::start(vec![channel(&model.chat_config(""))]).await;
    // The sender writes the same key when Twilio answers 21610.
    w.bus.optout.put(optout_key(CAROL), "{}".into()).await.unwrap();
    w.bus.send(&inbound("test", "SMout", CAROL, "hello")).await;
    w.bus.wait_note("test", CAROL, "SMout", NoteReason::OptedOut).await;
    w.bus.wait_drained().await;
    assert!(w.bus.outbound().await.is_empty());
    assert!(model.requests().is_empty());
    w.stop().await;
}

#[tokio::test]
async fn blocked_and_not_allowed_senders_are_recorded_not_answered() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config("");
    let blocking = channel(&format!(r#"{chat}, "block_from": ["{BOB}"]"#));
    let allowing = smsgate_testkit::channel_with_id(
        "vip",
        "vip-path-token-abcdefghijklmnopqrstuvwxyz0123",
        &format!(r#"{chat}, "allow_from": ["{CAROL}"]"#),
    );
    let mut w = TestWorker::start(vec![blocking, allowing]).await;
    w.bus.send(&inbound("test", "SMblocked", BOB, "hi")).await;
    w.bus.send(&inbound("vip", "SMnotallowed", BOB, "hi")).await;
    w.bus.send(&inbound("vip", "SMallowed", CAROL, "hi")).await;
    w.bus.wait_note("test", BOB, "SMblocked", NoteReason::Blocked).await;
    w.bus.wait_note("vip", BOB, "SMnotallowed", NoteReason::Blocked).await;
    let out = w.bus.wait_outbound(1).await;
    w.bus.wait_drained().await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].id, "reply.SMallowed");
    assert_eq!(model.requests().len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn over_the_rate_limit_a_sender_gets_one_notice_and_no_model_call() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config("");
    let mut w = TestWorker::start(vec![channel(&format!(
        r#"{chat}, "rate_limit": {{"per_minute": 1, "burst": 1}}, "rate_limit_text": "Slow down please.""#
    ))])
    .await;
    for i in 1..=3 {
        w.bus.send(&inbound("test", &format!("SMrate{i}"), BOB, &format!("message {i}"))).await;
    }
    w.bus.wait_note("test", BOB, "SMrate2", NoteReason::RateLimited).await;
    w.bus.wait_note("test", BOB, "SMrate3", NoteReason::RateLimited).await;
    w.bus.wait_drained().await;
    let out = w.bus.outbound().await;
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!((out[0].id.as_str(), out[0].origin), ("reply.SMrate1", Origin::Chat));
    assert_eq!((out[1].id.as_str(), out[1].origin), ("reply.SMrate2", Origin::RateLimitNotice));
    assert_eq!(out[1].body, "Slow down please.");
    assert_eq!(model.requests().len(), 1);

    // Someone else is not affected.
    w.bus.send(&inbound("test", "SMrateother", CAROL, "hi")).await;
    w.bus.wait_outbound(3).await;
    w.stop().await;
}

#[tokio::test]
async fn a_duplicate_beyond_the_stream_window_is_recorded_not_answered_even_after_a_restart() {
    let model = OpenAiStub::start().await;
    let chat = model.chat_config("");
    let mut w = TestWorker::start(vec![channel(&chat)]).await;
    let first = inbound("test", "SMtwice", BOB, "hello");
    let seq1 = w.bus.send(&first).await;
    w.bus.wait_outbound(1).await;
    w.bus.wait_drained().await;

    // Twilio retried after JetStream's duplicate window: a new stream message.
    let seq2 = w.bus.send_with_id(&first, Some("SMtwice-late")).await;
    assert_ne!(seq1, seq2);
    w.bus.wait_note("test", BOB, "SMtwice", NoteReason::Duplicate).await;

    // A fresh worker (empty local cache) finds it in P_seen.
    w.stop().await;
    w.spawn(vec![channel(&chat)], test_tuning()).await;
    w.bus.send_with_id(&first, None).await;
    w.bus.wait_drained().await;
    let history = w.bus.history("test", BOB).await;
    assert_eq!(kinds(&history), ["inbound", "note:duplicate", "note:duplicate"]);
    assert_eq!(w.bus.outbound().await.len(), 1);
    assert_eq!(model.requests().len(), 1);
    w.stop().await;
}
