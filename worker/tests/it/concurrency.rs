//! The consumer runtime in the worker: a slow model is called for many
//! people at once, one slow person holds up nobody, and what cannot be
//! finished normally ends in the fallback and a dead letter.

use std::time::{Duration, Instant};

use smsgate_shared::envelope::Origin;
use smsgate_testkit::channel;
use smsgate_testkit::chat::OpenAiStub;
use smsgate_worker::Tuning;

use crate::helpers::{TestWorker, inbound, test_tuning};

fn openai(model: &OpenAiStub, timeout_ms: u64) -> String {
    format!(
        r#""chat": {{"kind": "openai", "base_url": "{}", "model": "stub", "timeout_ms": {timeout_ms}}}"#,
        model.base_url()
    )
}

#[tokio::test]
async fn two_hundred_people_with_a_two_second_model_are_answered_in_about_one_model_call() {
    let model = OpenAiStub::start().await;
    // Two seconds: long enough that all 200 reach the model while the first
    // calls are still running, even on a busy machine (each message takes
    // a few bucket round trips first).
    model.set_delay(Duration::from_secs(2));
    // The production bound (SMSGATE_WORKER_MAX_IN_FLIGHT's default).
    let tuning = Tuning { max_in_flight: None, ..test_tuning() };
    let mut w = TestWorker::start_with(vec![channel(&openai(&model, 20_000))], tuning).await;
    let started = Instant::now();
    for n in 0..200 {
        w.bus.send(&inbound("test", &format!("SMmany{n}"), &format!("+1415556{n:04}"), "hello")).await;
    }
    w.bus.wait_outbound(200).await;
    let took = started.elapsed();
    let most = model.max_concurrency();
    // Sixteen fixed lanes made this 200/16 model calls long (25 s).
    assert!(most >= 150, "only {most} model calls ran at once");
    assert!(took < Duration::from_secs(12), "200 replies took {took:?}");
    w.bus.wait_drained().await;
    w.stop().await;
}

#[tokio::test]
async fn a_person_whose_model_calls_take_ten_seconds_delays_nobody_else() {
    let model = OpenAiStub::start().await;
    model.set_delay(Duration::from_millis(50));
    model.set_delay_when("slow", Duration::from_secs(10));
    let mut w = TestWorker::start(vec![channel(&openai(&model, 30_000))]).await;
    let slow = "+14155550900";
    w.bus.send(&inbound("test", "SMslow1", slow, "slow one")).await;
    w.bus.send(&inbound("test", "SMslow2", slow, "slow two")).await;
    model.wait_for_requests(1, Duration::from_secs(10)).await;
    let started = Instant::now();
    for n in 0..20 {
        w.bus.send(&inbound("test", &format!("SMquick{n}"), &format!("+1415557{n:04}"), "quick")).await;
    }
    let out = w.bus.wait_outbound(20).await;
    let took = started.elapsed();
    assert!(out.iter().all(|o| o.id.starts_with("reply.SMquick")), "a slow reply came first: {out:#?}");
    assert!(took < Duration::from_secs(5), "the others waited {took:?} for the slow person");
    let out = w.bus.wait_outbound(22).await;
    let slow_ids: Vec<&str> = out.iter().filter(|o| o.to.to_string() == slow).map(|o| o.id.as_str()).collect();
    assert_eq!(slow_ids, ["reply.SMslow1", "reply.SMslow2"], "the slow person's replies kept their order");
    w.stop().await;
}

#[tokio::test]
async fn a_reply_over_the_size_cap_is_cut_sent_once_and_dead_lettered_once() {
    let model = OpenAiStub::start().await;
    model.set_reply(&"All work and no play. ".repeat(5_000));
    let mut w = TestWorker::start(vec![channel(&openai(&model, 20_000))]).await;
    let from = "+14155550910";
    w.bus.send(&inbound("test", "SMhuge", from, "tell me everything")).await;
    let out = w.bus.wait_outbound(1).await;
    w.bus.wait_drained().await;
    assert_eq!(out[0].id, "reply.SMhuge");
    // sms_max_len 480 × max_parts 4: what the sender can carry.
    assert_eq!(out[0].body.chars().count(), 480 * 4);
    let dead = w.bus.dead().await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(dead[0].reason.contains("over the 65536-byte cap"), "{}", dead[0].reason);
    assert_eq!(model.requests().len(), 1, "not retried");

    // The service goes on serving.
    model.set_reply("short and sweet");
    w.bus.send(&inbound("test", "SMafter", from, "and now?")).await;
    let out = w.bus.wait_outbound(2).await;
    assert_eq!(out[1].body, "short and sweet");
    w.stop().await;
}

#[tokio::test]
async fn a_message_that_runs_out_of_deliveries_ends_in_the_fallback_and_a_dead_letter() {
    let model = OpenAiStub::start().await;
    model.fail_next(100, 503);
    // Chat retries would allow six attempts; JetStream delivers only twice.
    let tuning = Tuning {
        max_deliver: Some(2),
        retry: smsgate_shared::retry::RetryPolicy::fixed(vec![Duration::from_millis(100); 5]),
        ..test_tuning()
    };
    let mut w = TestWorker::start_with(vec![channel(&openai(&model, 20_000))], tuning).await;
    w.bus.send(&inbound("test", "SMlast", "+14155550920", "anyone?")).await;
    let out = w.bus.wait_outbound(1).await;
    w.bus.wait_drained().await;
    assert_eq!(out[0].origin, Origin::Fallback);
    let dead = w.bus.dead().await;
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(dead[0].reason.contains("last delivery"), "{}", dead[0].reason);
    assert_eq!(model.requests().len(), 2);
    w.stop().await;
}
