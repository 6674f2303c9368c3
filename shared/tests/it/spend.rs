//! The day's spend against a real nats-server: what `add_soon` keeps is
//! counted by this process at once, written by `flush` (or the next `add`,
//! or `follow` within its period and once more when it stops), never lost
//! and never counted twice.

#![allow(clippy::unwrap_used)] // test scaffolding panics on setup failures by design

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use smsgate_shared::cas::Cas;
use smsgate_shared::cost::DailySpend;
use smsgate_shared::domain::ChannelId;
use smsgate_shared::topology::{Topology, connect};
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn estimates_kept_for_a_moment_reach_the_bucket_once() {
    let nats = NatsServer::start();
    let js = jetstream::new(connect(&nats.url(), "test").await.unwrap());
    let budget = Topology::new("spend1").ensure(&js).await.unwrap().budget;
    let here = DailySpend::new(Arc::new(Cas::new(budget.clone())));
    let elsewhere = DailySpend::new(Arc::new(Cas::new(budget)));
    let channel = ChannelId::parse("c").unwrap();
    let now = SystemTime::now();
    let today = |s: &DailySpend| {
        let (s, channel) = (s.clone(), channel.clone());
        async move { s.today(&channel, now).await.unwrap() }
    };

    here.add_soon(&channel, 0.01, now);
    here.add_soon(&channel, 0.0079, now);
    assert!(close(today(&here).await, 0.0179), "this process counts what it keeps");
    assert!(close(today(&elsewhere).await, 0.0), "nothing written yet");
    here.flush().await.unwrap();
    assert!(close(today(&elsewhere).await, 0.0179));
    here.flush().await.unwrap();
    assert!(close(today(&elsewhere).await, 0.0179), "a second flush adds nothing");

    // A correction written at once takes what is kept with it.
    here.add_soon(&channel, 0.02, now);
    let total = here.add(&channel, -0.005, now).await.unwrap();
    assert!(close(total, 0.0329), "{total}");
    assert!(close(today(&elsewhere).await, 0.0329));
    assert!(close(today(&here).await, 0.0329), "nothing left over to count twice");

    // The flusher writes within its period, and once more when stopped.
    let stop = CancellationToken::new();
    let flusher = tokio::spawn(here.clone().follow(Duration::from_millis(100), stop.clone()));
    here.add_soon(&channel, 0.001, now);
    testkit::eventually(Duration::from_secs(3), "the flusher's write", || async {
        close(today(&elsewhere).await, 0.0339).then_some(())
    })
    .await;
    here.add_soon(&channel, 0.002, now);
    stop.cancel();
    flusher.await.unwrap();
    assert!(close(today(&elsewhere).await, 0.0359), "the last write on stopping");
}
