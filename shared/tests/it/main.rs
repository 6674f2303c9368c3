//! The topology against a real nats-server (Debian's 2.9 in CI).

use async_nats::jetstream;
use smsgate_shared::topology::{Topology, connect};
use smsgate_testkit::nats::NatsServer;

#[tokio::test]
async fn ensure_creates_every_stream_and_bucket_and_is_idempotent() {
    let nats = NatsServer::start();
    let client = connect(&nats.url(), "test").await.unwrap();
    let js = jetstream::new(client);
    let topology = Topology::new("t1");
    assert!(!topology.present(&js).await);
    let bus = topology.ensure(&js).await.unwrap();
    topology.ensure(&js).await.unwrap();
    assert!(topology.present(&js).await);

    // The key-value buckets work on this server: create is create-if-absent.
    bus.seen.create("SM1", "x".into()).await.unwrap();
    assert!(bus.seen.create("SM1", "x".into()).await.is_err());
    assert!(bus.optout.get("nobody").await.unwrap().is_none());

    // Two prefixes share one server without touching each other.
    let other = Topology::new("t2");
    other.ensure(&js).await.unwrap();
    assert!(other.present(&js).await);
}

#[tokio::test]
async fn inbound_publish_dedupes_on_message_id() {
    let nats = NatsServer::start();
    let js = jetstream::new(connect(&nats.url(), "test").await.unwrap());
    let t = Topology::new("dedupe");
    t.ensure(&js).await.unwrap();
    let channel = smsgate_shared::domain::ChannelId::parse("c").unwrap();
    let publish = || {
        js.send_publish(
            t.inbound_subject(&channel),
            jetstream::message::PublishMessage::build().payload("{}".into()).message_id("SM42"),
        )
    };
    let first = publish().await.unwrap().await.unwrap();
    let second = publish().await.unwrap().await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
}
mod channels;
mod consume;
mod mirror;
mod secured;
mod spend;
