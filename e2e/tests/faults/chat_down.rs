//! The chat backend down for 10 s in the middle of a run: the worker naks
//! the failed messages with its retry delays (2 s, 10 s, ...), parks each
//! sender's later messages behind them, and answers everything once the
//! backend is back; no fallback, nothing lost, nothing doubled.

use std::time::{Duration, Instant};

use smsgate_e2e::harness::{Expect, Service, Stack, StackConfig};

use crate::common::{self, hook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_backend_down_for_ten_seconds_delays_but_loses_nothing() {
    let stack = Stack::start(StackConfig::new("chatd")).await.unwrap();
    let started = Instant::now();
    let run = common::run_id();
    let hooks: Vec<_> = (0..500).map(|i| hook(&stack, run, i, 60)).collect();
    let posting = common::post_in_background(&stack, hooks, 100.0);

    let chat = &stack.chat;
    common::until("150 chat calls", || chat.requests().len() >= 150).await;
    // Down: new connections refused, and calls on connections the worker
    // kept alive answered 503, so every call fails whichever way it comes.
    stack.chat.down();
    stack.chat.fail_next(usize::MAX, 503);
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack.chat.fail_next(0, 503);
    stack.chat.up().await;

    let mut expect = Expect::default();
    common::record_all(&mut expect, &posting.await.unwrap());
    let report = common::settle_and_check(&stack, &expect, started).await;
    let retried = stack.log_count(Service::Worker(0), "chat backend failed; will retry");
    eprintln!("chatd: {retried} chat calls failed and were retried");
    assert!(retried > 0, "the outage was noticed");
    assert_eq!(report.distinct_acked, 500);
    assert_eq!(report.replied, 500, "{report}");
    assert_eq!(report.dead, 0, "10 s is within the retry schedule: no fallback");
}
