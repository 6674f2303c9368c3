//! A model that takes 2 s for every call while the worker is SIGKILLed and
//! restarted twice: many conversations in flight at each kill, each person
//! with several messages queued behind a running call. What the dead worker
//! held comes back after the ack wait and the restarted worker awaits it
//! before the same person's later messages: 0 lost, 0 doubled, order kept.

use std::time::{Duration, Instant};

use smsgate_e2e::harness::{Expect, Service, Stack, StackConfig};

use crate::common::{self, hook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_model_with_the_worker_killed_twice_loses_doubles_and_reorders_nothing() {
    let mut stack = Stack::start(StackConfig::new("slowkill")).await.unwrap();
    let started = Instant::now();
    stack.chat.set_delay(Duration::from_secs(2));
    let run = common::run_id();
    // 50 people, 4 messages each, posted within 2 s.
    let hooks: Vec<_> = (0..200).map(|i| hook(&stack, run, i, 40)).collect();
    let posting = common::post_in_background(&stack, hooks, 100.0);

    for at in [60, 130] {
        let chat = &stack.chat;
        common::until(&format!("{at} chat calls"), || chat.requests().len() >= at).await;
        stack.kill(Service::Worker(0)).unwrap();
        stack.restart(Service::Worker(0)).await.unwrap();
    }

    let mut expect = Expect::default();
    common::record_all(&mut expect, &posting.await.unwrap());
    let report = common::settle_and_check(&stack, &expect, started).await;
    assert_eq!(report.distinct_acked, 200);
    assert_eq!(report.replied, 200, "{report}");
    assert_eq!(common::assert_order_per_person(&stack).await, 200);
    assert!(stack.log_count(Service::Worker(0), "e2e harness: start #3") == 1, "restarted twice");
}
