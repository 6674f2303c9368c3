//! A bucket mirrored in memory against a real nats-server: it catches up,
//! follows other writers, sees its own writes at once, and reads the
//! bucket itself whenever it may be behind (before catching up, and after
//! a disconnect until a new watch has caught up).

#![allow(clippy::unwrap_used)] // test scaffolding panics on setup failures by design

use std::time::Duration;

use async_nats::jetstream;
use smsgate_shared::mirror::Mirror;
use smsgate_shared::topology::{Topology, connect};
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

async fn bucket(nats: &NatsServer, prefix: &str) -> jetstream::kv::Store {
    mirrored(nats, prefix).await.0.store().clone()
}

/// A mirror of `prefix`'s `P_conversations` on a client of its own (not yet following).
async fn mirrored(nats: &NatsServer, prefix: &str) -> (Mirror, async_nats::Client) {
    let client = connect(&nats.url(), "test").await.unwrap();
    let js = jetstream::new(client.clone());
    let store = Topology::new(prefix).ensure(&js).await.unwrap().conversations;
    (Mirror::new(store, client.clone()), client)
}

async fn current(mirror: &Mirror) {
    testkit::eventually(Duration::from_secs(10), "the mirror catches up", || async {
        mirror.is_current().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_mirror_follows_the_bucket_and_its_own_writes() {
    let nats = NatsServer::start();
    let theirs = bucket(&nats, "mirror1").await;
    theirs.put("before", "1".into()).await.unwrap();
    theirs.put("gone", "x".into()).await.unwrap();
    theirs.delete("gone").await.unwrap();

    let (mirror, _client) = mirrored(&nats, "mirror1").await;
    // Not following yet: the bucket answers.
    assert!(!mirror.is_current());
    assert_eq!(mirror.get("before").await.unwrap().as_deref(), Some(&b"1"[..]));

    let stop = CancellationToken::new();
    tokio::spawn(mirror.clone().follow(stop.clone()));
    current(&mirror).await;
    assert_eq!(mirror.get("before").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(mirror.get("gone").await.unwrap(), None);

    // Another writer's put and delete arrive through the watch.
    theirs.put("later", "2".into()).await.unwrap();
    testkit::eventually(Duration::from_secs(3), "another process's put", || async {
        mirror.get("later").await.unwrap().filter(|v| v.as_ref() == b"2")
    })
    .await;
    theirs.delete("before").await.unwrap();
    testkit::eventually(Duration::from_secs(3), "another process's delete", || async {
        mirror.get("before").await.unwrap().is_none().then_some(())
    })
    .await;

    // Its own write is there the moment it returns, and in the bucket.
    mirror.put("mine", "3".into()).await.unwrap();
    assert!(mirror.is_current());
    assert_eq!(mirror.get("mine").await.unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(theirs.get("mine").await.unwrap().as_deref(), Some(&b"3"[..]));
    // A newer write by someone else wins over it; the watch's late copy of
    // the older one does not bring it back.
    theirs.put("mine", "4".into()).await.unwrap();
    testkit::eventually(Duration::from_secs(3), "the newer write", || async {
        mirror.get("mine").await.unwrap().filter(|v| v.as_ref() == b"4")
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn after_a_disconnect_the_mirror_reads_the_bucket_until_it_has_caught_up_again() {
    let mut nats = NatsServer::start();
    let (mirror, _client) = mirrored(&nats, "mirror2").await;
    let stop = CancellationToken::new();
    tokio::spawn(mirror.clone().follow(stop.clone()));
    current(&mirror).await;

    nats.stop();
    testkit::eventually(Duration::from_secs(10), "the disconnect is noticed", || async {
        (!mirror.is_current()).then_some(())
    })
    .await;
    // Nothing stale is answered while NATS is away: the read goes to the bucket and fails.
    assert!(mirror.get("k").await.is_err(), "a read while disconnected must not come from memory");

    nats.start_again();
    let theirs = bucket(&nats, "mirror2").await;
    theirs.put("k", "after".into()).await.unwrap();
    // Read through the bucket or the new watch: either way the new value.
    testkit::eventually(Duration::from_secs(15), "the value written after the restart", || async {
        mirror.get("k").await.ok().flatten().filter(|v| v.as_ref() == b"after")
    })
    .await;
    current(&mirror).await;
    assert_eq!(mirror.get("k").await.unwrap().as_deref(), Some(&b"after"[..]));
    stop.cancel();
}
