//! Graceful shutdown: stop pulling, finish what is in hand, hand the rest
//! back to JetStream for the next worker.

use std::time::Duration;

use smsgate_testkit::channel;
use smsgate_testkit::chat::OpenAiStub;
use smsgate_worker::Tuning;

use crate::helpers::{TestWorker, WAIT, inbound, test_tuning};

async fn start_with_three_queued(model: &OpenAiStub, tuning: Tuning, tag: &str) -> TestWorker {
    let w = TestWorker::start_with(vec![channel(&model.chat_config(""))], tuning).await;
    let from = "+14155550501";
    for n in 1..=3 {
        w.bus.send(&inbound("test", &format!("SM{tag}{n}"), from, &format!("message {n}"))).await;
    }
    model.wait_for_requests(1, WAIT).await;
    w
}

#[tokio::test]
async fn shutdown_stops_pulling_and_finishes_the_messages_in_hand_in_order() {
    let model = OpenAiStub::start().await;
    model.set_delay(Duration::from_millis(800));
    let mut w = start_with_three_queued(&model, test_tuning(), "fin").await;
    w.stop().await;

    let ids: Vec<String> = w.bus.outbound().await.into_iter().map(|o| o.id.into()).collect();
    assert_eq!(ids, ["reply.SMfin1", "reply.SMfin2", "reply.SMfin3"]);
    assert_eq!(w.bus.inbound_left().await, 0);
}

#[tokio::test]
async fn what_cannot_be_finished_within_the_grace_period_goes_back_for_the_next_worker() {
    let model = OpenAiStub::start().await;
    model.set_delay(Duration::from_secs(3));
    // New work may start for 2 s after the signal; the call in hand takes ~3 s.
    let tuning =
        Tuning { ack_wait: Some(Duration::from_secs(5)), shutdown_grace: Duration::from_secs(4), ..test_tuning() };
    let mut w = start_with_three_queued(&model, tuning.clone(), "nak").await;
    w.stop().await;

    let out = w.bus.outbound().await;
    assert_eq!(out.len(), 1, "the message in hand was finished: {out:#?}");
    assert_eq!(out[0].id, "reply.SMnak1");
    assert_eq!(w.bus.inbound_left().await, 2, "the others went back to JetStream");

    model.set_delay(Duration::ZERO);
    w.spawn(vec![channel(&model.chat_config(""))], tuning).await;
    let out = w.bus.wait_outbound(3).await;
    w.bus.wait_drained().await;
    let mut ids: Vec<&str> = out.iter().map(|o| o.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["reply.SMnak1", "reply.SMnak2", "reply.SMnak3"], "each answered once");
    w.stop().await;
}
