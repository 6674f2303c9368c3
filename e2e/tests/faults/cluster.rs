//! A three-node JetStream cluster with every stream and bucket at three
//! replicas, two workers and two senders; the node leading the inbound
//! stream SIGKILLed in the middle of 500 webhooks and restarted. Nothing
//! acked is lost or doubled, each person's replies keep their order, and
//! ingress answers 200 throughout except for a short window of 503s
//! (measured and printed).

use std::time::{Duration, Instant};

use smsgate_e2e::harness::{Expect, Service, Stack, StackConfig};

use crate::common::{self, hook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_in_a_three_node_cluster_loses_and_doubles_nothing() {
    let mut config = StackConfig::new("cluster");
    config.cluster = true;
    let mut stack = Stack::start(config).await.unwrap();
    let started = Instant::now();
    stack.add(Service::Worker(0)).await.unwrap();
    stack.add(Service::Sender(0)).await.unwrap();
    stack.chat.set_delay(Duration::from_millis(20));
    let run = common::run_id();
    let hooks: Vec<_> = (0..500).map(|i| hook(&stack, run, i, 60)).collect();
    let posting = common::post_in_background(&stack, hooks, 100.0);

    let chat = &stack.chat;
    common::until("150 chat calls", || chat.requests().len() >= 150).await;
    // The worst node to lose: the one leading the webhooks' stream.
    let victim = stack.stream_leader(&stack.topology.inbound_stream()).await.unwrap();
    let killed_at = Instant::now();
    stack.kill_nats_node(victim).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack.restart_nats_node(victim).unwrap();

    let results = posting.await.unwrap();
    let mut expect = Expect::default();
    common::record_all(&mut expect, &results);
    let answers = common::answers(&results);
    assert!(answers.statuses.iter().all(|s| *s == 200 || *s == 503), "only 200 and 503: {answers:?}");
    // A new leader is elected within seconds; Twilio gives up after 15 s
    // per attempt but retries, and ingress must never leave it hanging.
    assert!(answers.slowest_refusal < Duration::from_secs(5), "{answers:?}");
    assert!(answers.window < Duration::from_secs(15), "503s for too long: {answers:?}");
    let report = common::settle_and_check(&stack, &expect, started).await;
    eprintln!(
        "cluster: node n{} (leader of the inbound stream) killed at {:.1} s for 5 s; {} posts answered 503 \
         within {:?} (slowest answer {:?}); {report}",
        victim + 1,
        killed_at.duration_since(started).as_secs_f64(),
        answers.refused,
        answers.window,
        answers.slowest_refusal,
    );
    assert_eq!(report.distinct_acked, 500);
    assert_eq!(report.replied, 500, "{report}");
    assert_eq!(common::assert_order_per_person(&stack).await, 500);
}
