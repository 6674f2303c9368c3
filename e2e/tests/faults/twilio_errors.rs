//! The Twilio stub answers 429 (`Retry-After: 1`) to 20% and 500 (message
//! not created) to 5% of calls: 429s are retried with backoff, a 500 is
//! retried once (its outcome is unknown) and a second 500 on the same piece
//! is dead-lettered rather than risk more copies. Every acked MessageSid
//! still ends as a delivered reply or a dead letter, and no piece is created
//! twice.

use std::time::Instant;

use smsgate_e2e::harness::{Expect, Stack, StackConfig};
use smsgate_testkit::twilio::Chaos;

use crate::common::{self, hook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_429s_and_500s_are_retried_without_losing_or_doubling() {
    let stack = Stack::start(StackConfig::new("twerr")).await.unwrap();
    let started = Instant::now();
    stack.twilio.set_chaos(Chaos { rate_limited: 0.20, server_error: 0.05, ..Chaos::default() });
    let run = common::run_id();
    let hooks: Vec<_> = (0..500).map(|i| hook(&stack, run, i, 60)).collect();
    let mut expect = Expect::default();
    common::post(&stack, &mut expect, &hooks).await;

    let report = common::settle_and_check(&stack, &expect, started).await;
    assert_eq!(report.distinct_acked, 500);
    assert_eq!(report.replied + report.dead, 500, "{report}");
    assert!(report.twilio_status.get(&429).copied().unwrap_or(0) > 50, "{report}");
    assert!(report.twilio_status.get(&500).copied().unwrap_or(0) > 10, "{report}");
    // Two 500s in a row on one piece (p ≈ 0.25%) are the only way to a dead letter here.
    assert!(report.dead <= 10, "{report}");
}
