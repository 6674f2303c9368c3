//! The sender SIGKILLed and restarted 3 times during a run of 500
//! multi-piece replies: `P_sent` makes a redelivered message resume at its
//! first unsent piece.
//!
//! The one inherent exception (docs/ARCHITECTURE.md, sender/src/deliver.rs): Twilio has
//! no idempotency key, so a kill between Twilio's 201 and the `P_sent` put
//! sends that piece again after the redelivery. The ledger does not hide
//! it: such a second send is counted and accepted only if its first copy
//! reached the stub within `KILL_WINDOW` before a kill; any other repeat
//! fails the test. Each kill can catch at most one piece per conversation
//! in flight (the sender works on one piece per conversation at a time).

use std::time::Instant;

use smsgate_e2e::harness::{Expect, Service, Stack, StackConfig};

use crate::common::{self, hook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_three_times_resumes_at_the_first_unsent_piece() {
    let mut config = StackConfig::new("skill");
    // "reply to: " + ~100 characters in pieces of at most 50: three pieces.
    config.sms_max_len = 50;
    let mut stack = Stack::start(config).await.unwrap();
    let started = Instant::now();
    let run = common::run_id();
    let hooks: Vec<_> = (0..500).map(|i| hook(&stack, run, i, 100)).collect();
    let posting = common::post_in_background(&stack, hooks, 100.0);

    let mut expect = Expect::default();
    for round in 1..=3 {
        let at = round * 350;
        let twilio = &stack.twilio;
        common::until(&format!("{at} Twilio calls"), || twilio.calls().len() >= at).await;
        stack.kill(Service::Sender(0)).unwrap();
        expect.sender_kills.push(tokio::time::Instant::now());
        stack.restart(Service::Sender(0)).await.unwrap();
    }

    common::record_all(&mut expect, &posting.await.unwrap());
    let report = common::settle_and_check(&stack, &expect, started).await;
    assert_eq!(report.distinct_acked, 500);
    assert_eq!(report.replied, 500, "{report}");
    assert!(report.pieces >= 1400, "multi-piece replies: {report}");
    let most = 3 * usize::try_from(common::SENDERS).unwrap();
    assert!(report.double_sends_in_kill_window <= most, "at most one per conversation per kill: {report}");
}
