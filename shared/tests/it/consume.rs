//! The consumer runtime against a real nats-server, with a scripted handler:
//! the body of each message says what the handler does with it.

#![allow(clippy::unwrap_used)] // test scaffolding panics on setup failures by design

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy};
use async_nats::jetstream::{self, Message};
use smsgate_shared::consume::{
    BoxError, Delivery, Disposition, Handler, Key, Limits, Runtime, Stranded, ensure_consumer, key_of,
};
use smsgate_shared::topology::connect;
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// `<key>|<action>|<tag>`: `sleep:<ms>`, `panic`, `retry` (always),
/// `release` (always), `ok`.
#[derive(Default)]
struct Scripted {
    /// (key, tag, delivered) in the order handling finished.
    done: Mutex<Vec<(String, String, i64)>>,
    /// (seq, reason) per dead letter.
    dead: Mutex<Vec<(u64, String)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl Scripted {
    fn done(&self) -> Vec<(String, String, i64)> {
        self.done.lock().unwrap().clone()
    }
    fn dead(&self) -> Vec<(u64, String)> {
        self.dead.lock().unwrap().clone()
    }
    fn tags_of(&self, key: &str) -> Vec<String> {
        self.done().into_iter().filter(|(k, _, _)| k == key).map(|(_, t, _)| t).collect()
    }
}

struct Script(Arc<Scripted>);

fn parts(msg: &Message) -> (String, String, String) {
    let text = String::from_utf8_lossy(&msg.payload).into_owned();
    let mut it = text.splitn(3, '|');
    let key = it.next().unwrap_or_default().to_owned();
    let action = it.next().unwrap_or_default().to_owned();
    let tag = it.next().unwrap_or_default().to_owned();
    (key, action, tag)
}

impl Handler for Script {
    type Item = (String, String, String);

    fn key(&self, payload: &[u8]) -> Option<Key> {
        let text = String::from_utf8_lossy(payload);
        Some(key_of(&[text.split('|').next().unwrap_or_default()]))
    }

    fn decode(&self, msg: &Message) -> Self::Item {
        parts(msg)
    }

    async fn handle(&self, d: &Delivery<Self::Item>) -> Disposition {
        let s = &self.0;
        let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_running.fetch_max(now, Ordering::SeqCst);
        let (key, action, tag) = &d.item;
        let disposition = match action.split_once(':') {
            Some(("sleep", ms)) => {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                Disposition::Ack
            }
            _ if action == "panic" => {
                s.running.fetch_sub(1, Ordering::SeqCst);
                panic!("scripted panic for {tag}");
            }
            _ if action == "retry" => Disposition::Retry(Duration::from_millis(50)),
            _ if action == "release" => Disposition::Release,
            _ => Disposition::Ack,
        };
        s.running.fetch_sub(1, Ordering::SeqCst);
        if disposition == Disposition::Ack {
            s.done.lock().unwrap().push((key.clone(), tag.clone(), d.delivered));
        }
        disposition
    }

    async fn dead_letter(&self, stranded: Stranded<'_>) -> Result<(), BoxError> {
        self.0.dead.lock().unwrap().push((stranded.seq, stranded.reason));
        Ok(())
    }
}

/// A work-queue stream `name` on `<prefix>.>`, as the services' streams are.
async fn work_queue(js: &jetstream::Context, name: &str, prefix: &str) -> jetstream::stream::Stream {
    js.get_or_create_stream(StreamConfig {
        name: name.into(),
        subjects: vec![format!("{prefix}.>")],
        retention: RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap()
}

struct Rig {
    _nats: NatsServer,
    js: jetstream::Context,
    script: Arc<Scripted>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    async fn start(limits: Limits) -> Self {
        let nats = NatsServer::start();
        let client = connect(&nats.url(), "test").await.unwrap();
        let js = jetstream::new(client.clone());
        let stream = work_queue(&js, "WORK", "work").await;
        let consumer =
            ensure_consumer(&stream, limits.pull_config("test", "test".into(), "work.>".into())).await.unwrap();
        let script = Arc::new(Scripted::default());
        let stop = CancellationToken::new();
        let runtime = Runtime {
            name: "test",
            handler: Arc::new(Script(script.clone())),
            consumer,
            liveness: limits.liveness("test"),
            limits,
            client: Some(client),
        };
        let task = tokio::spawn(runtime.run(stop.clone()));
        Self { _nats: nats, js, script, stop, task }
    }

    async fn send(&self, key: &str, action: &str, tag: &str) -> u64 {
        let ack = self.js.publish("work.x", format!("{key}|{action}|{tag}").into()).await.unwrap().await.unwrap();
        ack.sequence
    }

    async fn left(&self) -> u64 {
        self.js.get_stream("WORK").await.unwrap().info().await.unwrap().state.messages
    }

    async fn wait_done(&self, n: usize) {
        testkit::eventually(WAIT, &format!("{n} handled"), || async { (self.script.done().len() >= n).then_some(()) })
            .await;
    }

    async fn wait_empty(&self) {
        testkit::eventually(WAIT, "the work queue empty", || async { (self.left().await == 0).then_some(()) }).await;
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task).await.unwrap().unwrap();
    }
}

fn limits(max_in_flight: usize) -> Limits {
    Limits::for_in_flight(max_in_flight, Duration::from_secs(5), 4, Duration::from_secs(5))
}

#[tokio::test]
async fn keys_run_concurrently_and_each_key_in_stream_order() {
    let rig = Rig::start(limits(64)).await;
    for n in 0..4 {
        for k in 0..40 {
            rig.send(&format!("k{k}"), "sleep:200", &n.to_string()).await;
        }
    }
    rig.wait_done(160).await;
    rig.wait_empty().await;
    for k in 0..40 {
        assert_eq!(rig.script.tags_of(&format!("k{k}")), ["0", "1", "2", "3"], "key k{k} out of order");
    }
    let most = rig.script.max_running.load(Ordering::SeqCst);
    assert!(most >= 30, "only {most} ran at once");
    assert!(most <= 64, "{most} ran at once, over the bound");
    rig.stop().await;
}

#[tokio::test]
async fn a_slow_key_holds_up_no_other_key() {
    let rig = Rig::start(limits(8)).await;
    rig.send("slow", "sleep:4000", "1").await;
    rig.send("slow", "sleep:4000", "2").await;
    for k in 0..40 {
        rig.send(&format!("fast{k}"), "sleep:20", "1").await;
    }
    let started = Instant::now();
    rig.wait_done(40).await;
    let fast_done = started.elapsed();
    assert!(rig.script.tags_of("slow").is_empty(), "the slow key finished first?");
    assert!(fast_done < Duration::from_secs(4), "the fast keys waited {fast_done:?} for the slow one");
    rig.wait_done(42).await;
    assert_eq!(rig.script.tags_of("slow"), ["1", "2"]);
    rig.stop().await;
}

#[tokio::test]
async fn a_flooding_key_is_handed_back_in_part_and_still_handled_in_order() {
    let mut l = limits(4);
    l.key_backlog = 3;
    l.backlog_delay = Duration::from_millis(300);
    l.max_deliver = 20;
    let rig = Rig::start(l).await;
    for n in 0..30 {
        rig.send("flood", "sleep:30", &format!("{n:02}")).await;
    }
    rig.send("other", "ok", "x").await;
    rig.wait_done(31).await;
    rig.wait_empty().await;
    let expected: Vec<String> = (0..30).map(|n| format!("{n:02}")).collect();
    assert_eq!(rig.script.tags_of("flood"), expected);
    let deferred = rig.script.done().iter().filter(|(_, _, delivered)| *delivered > 1).count();
    assert!(deferred > 0, "nothing was handed back: the key held everything in memory");
    rig.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_ends_in_one_dead_letter_and_the_runtime_goes_on() {
    let rig = Rig::start(limits(4)).await;
    let seq = rig.send("p", "panic", "boom").await;
    rig.send("p", "ok", "after").await;
    rig.send("q", "ok", "other").await;
    rig.wait_done(2).await;
    rig.wait_empty().await;
    let dead = rig.script.dead();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, seq);
    assert!(dead[0].1.contains("panicked") && dead[0].1.contains("scripted panic for boom"), "{dead:?}");
    assert_eq!(rig.script.tags_of("p"), ["after"]);
    rig.stop().await;
}

#[tokio::test]
async fn a_retry_asked_on_the_last_delivery_is_dead_lettered_not_stranded() {
    let rig = Rig::start(limits(4)).await;
    let seq = rig.send("r", "retry", "never").await;
    rig.send("r", "ok", "next").await;
    rig.wait_done(1).await;
    rig.wait_empty().await;
    let dead = rig.script.dead();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, seq);
    assert!(dead[0].1.contains("deliveries exhausted (4 of 4)"), "{dead:?}");
    rig.stop().await;
}

#[tokio::test]
async fn what_jetstream_stops_delivering_is_dead_lettered_from_its_advisory() {
    // A handler that hands its message back on every delivery (as one
    // interrupted by shutdown does) leaves it to run out of deliveries.
    let rig = Rig::start(limits(4)).await;
    let seq = rig.send("a", "release", "lost").await;
    testkit::eventually(WAIT, "the advisory's dead letter", || async { (!rig.script.dead().is_empty()).then_some(()) })
        .await;
    let dead = rig.script.dead();
    assert_eq!(dead[0].0, seq);
    assert!(dead[0].1.contains("stopped delivering it after 4 deliveries"), "{dead:?}");
    rig.wait_empty().await;
    rig.stop().await;
}

#[tokio::test]
async fn a_changed_ack_wait_and_max_deliver_reach_an_existing_consumer() {
    let nats = NatsServer::start();
    let js = jetstream::new(connect(&nats.url(), "test").await.unwrap());
    let stream = work_queue(&js, "UPD", "upd").await;
    let old = Limits::for_in_flight(4, Duration::from_secs(30), 11, Duration::from_secs(5));
    ensure_consumer(&stream, old.pull_config("c", "old".into(), "upd.>".into())).await.unwrap();
    let new = Limits::for_in_flight(8, Duration::from_secs(45), 7, Duration::from_secs(5));
    let mut consumer = ensure_consumer(&stream, new.pull_config("c", "new".into(), "upd.>".into())).await.unwrap();
    let config = consumer.info().await.unwrap().config.clone();
    assert_eq!(config.ack_wait, Duration::from_secs(45));
    assert_eq!(config.max_deliver, 7);
    assert_eq!(config.max_ack_pending, new.max_ack_pending);
    // Nothing else about it changed: one consumer, same name.
    let names: HashMap<String, ()> = {
        use futures::TryStreamExt;
        stream.consumer_names().map_ok(|n| (n, ())).try_collect().await.unwrap()
    };
    assert_eq!(names.len(), 1);
}

#[tokio::test]
async fn what_a_crashed_predecessor_held_is_not_overtaken_by_its_keys_later_messages() {
    let nats = NatsServer::start();
    let client = connect(&nats.url(), "test").await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = work_queue(&js, "WORK", "work").await;
    let l = Limits::for_in_flight(4, Duration::from_secs(2), 4, Duration::from_secs(5));
    let consumer = ensure_consumer(&stream, l.pull_config("test", "test".into(), "work.>".into())).await.unwrap();
    js.publish("work.x", "k|ok|1".into()).await.unwrap().await.unwrap();
    // The predecessor took message 1 and died holding it.
    {
        use futures::StreamExt;
        let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
        let held = batch.next().await.unwrap().unwrap();
        assert_eq!(&held.payload[..], b"k|ok|1");
    }
    js.publish("work.x", "k|ok|2".into()).await.unwrap().await.unwrap();
    js.publish("work.x", "other|ok|x".into()).await.unwrap().await.unwrap();

    let script = Arc::new(Scripted::default());
    let stop = CancellationToken::new();
    let runtime = Runtime {
        name: "test",
        handler: Arc::new(Script(script.clone())),
        consumer,
        liveness: l.liveness("test"),
        limits: l,
        client: Some(client),
    };
    let task = tokio::spawn(runtime.run(stop.clone()));
    testkit::eventually(WAIT, "three handled", || async { (script.done().len() >= 3).then_some(()) }).await;
    assert_eq!(script.tags_of("k"), ["1", "2"], "message 2 overtook the one its predecessor held");
    assert_eq!(script.done()[0].0, "other", "other keys did not wait");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn two_replicas_on_one_consumer_keep_each_keys_order() {
    let nats = NatsServer::start();
    let client = connect(&nats.url(), "test").await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = work_queue(&js, "WORK", "work").await;
    let l = limits(8);
    let script = Arc::new(Scripted::default());
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for name in ["one", "two"] {
        let consumer = ensure_consumer(&stream, l.pull_config("test", "test".into(), "work.>".into())).await.unwrap();
        let runtime = Runtime {
            name,
            handler: Arc::new(Script(script.clone())),
            consumer,
            liveness: l.liveness(name),
            limits: l.clone(),
            client: Some(connect(&nats.url(), name).await.unwrap()),
        };
        tasks.push(tokio::spawn(runtime.run(stop.clone())));
    }
    for n in 0..10 {
        for k in 0..6 {
            js.publish("work.x", format!("k{k}|sleep:60|{n}").into()).await.unwrap().await.unwrap();
        }
    }
    testkit::eventually(WAIT, "60 handled", || async { (script.done().len() >= 60).then_some(()) }).await;
    let expected: Vec<String> = (0..10).map(|n| n.to_string()).collect();
    for k in 0..6 {
        assert_eq!(script.tags_of(&format!("k{k}")), expected, "key k{k} out of order across replicas");
    }
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}
