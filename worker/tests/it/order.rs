//! Many messages in flight at once, each sender's replies in order.

use std::collections::HashMap;
use std::time::Duration;

use smsgate_testkit::channel;
use smsgate_testkit::chat::OpenAiStub;

use crate::helpers::{TestWorker, inbound};

#[tokio::test]
async fn each_senders_replies_keep_their_order_while_senders_run_in_parallel() {
    let model = OpenAiStub::start().await;
    // Slow answers: without lanes, later short messages would overtake.
    model.set_delay(Duration::from_millis(150));
    let chat = model.chat_config("");
    let mut w =
        TestWorker::start(vec![channel(&format!(r#"{chat}, "rate_limit": {{"per_minute": 100, "burst": 100}}"#))])
            .await;
    let senders: Vec<String> = (0..6).map(|i| format!("+1415555020{i}")).collect();
    for n in 0..5 {
        for (s, from) in senders.iter().enumerate() {
            w.bus.send(&inbound("test", &format!("SMo{s}m{n}"), from, &format!("{s}:{n}"))).await;
        }
    }
    let out = w.bus.wait_outbound(30).await;
    w.bus.wait_drained().await;
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for o in &out {
        seen.entry(o.to.to_string()).or_default().push(o.id.to_string());
    }
    for (s, from) in senders.iter().enumerate() {
        let expected: Vec<String> = (0..5).map(|n| format!("reply.SMo{s}m{n}")).collect();
        assert_eq!(seen[from], expected, "replies to {from} out of order");
    }
    assert!(model.max_concurrency() >= 2, "senders were served one at a time");
    w.stop().await;
}

#[tokio::test]
async fn a_retried_message_is_not_overtaken_by_the_same_senders_next_one() {
    let model = OpenAiStub::start().await;
    let mut w = TestWorker::start(vec![channel(&model.chat_config(""))]).await;
    model.fail_next(1, 500);
    let from = "+14155550301";
    for n in 1..=3 {
        w.bus.send(&inbound("test", &format!("SMr{n}"), from, &format!("message {n}"))).await;
    }
    let out = w.bus.wait_outbound(3).await;
    w.bus.wait_drained().await;
    let ids: Vec<&str> = out.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["reply.SMr1", "reply.SMr2", "reply.SMr3"]);
    assert_eq!(model.requests().len(), 4, "message 1 was called twice");
    assert_eq!(model.requests()[1].last_user_text(), "message 1", "the retry came before message 2");
    w.stop().await;
}
