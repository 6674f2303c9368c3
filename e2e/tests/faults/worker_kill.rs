//! The worker SIGKILLed and restarted 3 times during a run of 500: what it
//! held comes back after the consumer's ack wait, and `P_seen` (claim,
//! stored reply, done) plus the reply's `Nats-Msg-Id` keep it to one reply.

use std::time::{Duration, Instant};

use smsgate_e2e::harness::{Expect, Service, Stack, StackConfig};

use crate::common::{self, hook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_three_times_loses_and_doubles_nothing() {
    let mut stack = Stack::start(StackConfig::new("wkill")).await.unwrap();
    let started = Instant::now();
    // A little slow, so that kills find messages in the middle of a chat call.
    stack.chat.set_delay(Duration::from_millis(20));
    let run = common::run_id();
    let hooks: Vec<_> = (0..500).map(|i| hook(&stack, run, i, 60)).collect();
    let posting = common::post_in_background(&stack, hooks, 100.0);

    for round in 1..=3 {
        let at = round * 120;
        let chat = &stack.chat;
        common::until(&format!("{at} chat calls"), || chat.requests().len() >= at).await;
        stack.kill(Service::Worker(0)).unwrap();
        stack.restart(Service::Worker(0)).await.unwrap();
    }

    let mut expect = Expect::default();
    common::record_all(&mut expect, &posting.await.unwrap());
    let report = common::settle_and_check(&stack, &expect, started).await;
    assert_eq!(report.distinct_acked, 500);
    assert_eq!(report.replied, 500, "{report}");
    assert!(stack.log_count(Service::Worker(0), "e2e harness: start #4") == 1, "restarted three times");
}
