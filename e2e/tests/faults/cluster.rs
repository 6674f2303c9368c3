//! A three-node JetStream cluster with every stream and bucket at three
//! replicas, two workers and two senders; the node leading the inbound
//! stream SIGKILLed in the middle of 500 webhooks and restarted. Nothing
//! acked is lost or doubled, ingress answers 200 throughout except for a
//! short window of 503s (measured and printed), and the node catches up.
//! Replies out of order across the election are counted and printed.

use std::time::{Duration, Instant};

use smsgate_e2e::harness::{Expect, Service, Stack, StackConfig};

use crate::common::{self, hook};

// Run by deploy/test.sh against nats-server 2.10 (`NATS_SERVER_BIN=...
// cargo test -p smsgate-e2e --test faults cluster -- --ignored`); Debian
// bookworm's 2.9.10 takes longer to elect (more 503s, see OPERATIONS).
#[ignore = "needs nats-server 2.10+ (NATS_SERVER_BIN); deploy/test.sh runs it"]
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
    // While the stream elects a new leader ingress holds webhooks for up to
    // 8 s (STORE_WAIT), then answers 503; never as long as Twilio's 15 s.
    assert!(answers.slowest_refusal < Duration::from_secs(10), "{answers:?}");
    assert!(answers.slowest_accepted < Duration::from_secs(10), "{answers:?}");
    assert!(answers.window < Duration::from_secs(15), "503s for too long: {answers:?}");
    let report = common::settle_and_check(&stack, &expect, started).await;
    eprintln!(
        "cluster: node n{} (leader of the inbound stream) killed at {:.1} s for 5 s; {} posts answered 503 \
         within {:?} (slowest 503 {:?}, slowest 200 {:?}); {report}",
        victim + 1,
        killed_at.duration_since(started).as_secs_f64(),
        answers.refused,
        answers.window,
        answers.slowest_refusal,
        answers.slowest_accepted,
    );
    assert_eq!(report.distinct_acked, 500);
    assert_eq!(report.replied, 500, "{report}");
    // Order across the leader's death is reported, not asserted: in about one
    // run of seven (2.10 and 2.9), a sender's read of a stream or bucket timed
    // out during the election, its reply went back for redelivery, and the
    // other sender's gap scan, whose read of that message also failed, took
    // it as gone and sent the person's next reply first (deploy/OPERATIONS.md).
    let (checked, out_of_order) = common::order_per_person(&stack).await;
    assert_eq!(checked, 500);
    eprintln!("cluster: {} of 500 replies out of order: {out_of_order:?}", out_of_order.len());
    // The restarted node is back in every stream's group and caught up.
    let t = &stack.topology;
    for stream in [t.inbound_stream(), t.outbound_stream(), t.history_stream(), format!("KV_{}", t.sent_bucket())] {
        smsgate_testkit::eventually(Duration::from_secs(30), &format!("{stream} caught up"), || async {
            stack.replicas_current(&stream).await.ok().filter(|(current, _)| *current)
        })
        .await;
    }
}
