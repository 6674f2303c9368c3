//! Two workers and two senders on the same durable consumers: JetStream
//! hands each message to one of them; `P_seen`, the reply's `Nats-Msg-Id`
//! and `P_sent` keep it to one reply and one send per piece across
//! processes, and each person's replies keep their order although the two
//! workers (and the two senders) each get some of that person's messages.

use std::time::Instant;

use smsgate_e2e::harness::{Expect, Service, Stack, StackConfig};

use crate::common::{self, hook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_and_two_senders_share_the_work_without_doubling() {
    let mut config = StackConfig::new("repl");
    config.sms_max_len = 50;
    let mut stack = Stack::start(config).await.unwrap();
    let started = Instant::now();
    let second_worker = stack.add(Service::Worker(0)).await.unwrap();
    let second_sender = stack.add(Service::Sender(0)).await.unwrap();
    let run = common::run_id();
    let hooks: Vec<_> = (0..500).map(|i| hook(&stack, run, i, 100)).collect();
    let mut expect = Expect::default();
    common::post(&stack, &mut expect, &hooks).await;

    let report = common::settle_and_check(&stack, &expect, started).await;
    assert_eq!(report.distinct_acked, 500);
    assert_eq!(report.replied, 500, "{report}");
    assert_eq!(common::assert_order_per_person(&stack).await, 500);
    for service in [Service::Worker(0), second_worker] {
        assert!(stack.log_count(service, "message processed") > 0, "{service:?} took part");
    }
    for service in [Service::Sender(0), second_sender] {
        assert!(stack.log_count(service, "reply sent") > 0, "{service:?} took part");
    }
}
