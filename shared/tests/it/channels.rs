//! Channels connected at run time against a real nats-server: stored
//! sealed, picked up by every registry through the bucket's watch,
//! disconnected the same way; file channels stay read-only.

#![allow(clippy::unwrap_used)] // test scaffolding panics on setup failures by design

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use smsgate_shared::channels::{self, ConnectError, DisconnectError, Registry, RuntimeSource, Source};
use smsgate_shared::domain::ChannelId;
use smsgate_shared::topology::{Topology, connect};
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

const RUNTIME_TOKEN: &str = "runtime-path-token-0123456789abcdefghij";

async fn registry(
    nats: &NatsServer,
    prefix: &str,
    key: Option<Arc<smsgate_shared::secret_key::SecretKey>>,
) -> (Registry<String>, async_nats::jetstream::kv::Store) {
    let js = jetstream::new(connect(&nats.url(), "test").await.unwrap());
    let bus = Topology::new(prefix).ensure(&js).await.unwrap();
    let registry = Registry::new("test", vec![testkit::channel("")], |c| format!("built for {}", c.id));
    registry.attach(RuntimeSource { store: bus.channels.clone(), key, public_base_url: None });
    registry.reload().await.unwrap();
    (registry, bus.channels)
}

#[tokio::test]
async fn a_connected_channel_reaches_every_watching_registry_sealed_and_leaves_on_disconnect() {
    let nats = NatsServer::start();
    let key = testkit::secret_key();
    let (admin, store) = registry(&nats, "rt1", Some(key.clone())).await;
    let (service, _) = registry(&nats, "rt1", Some(key.clone())).await;
    let stop = CancellationToken::new();
    tokio::spawn(service.clone().watch(stop.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let id = ChannelId::parse("rt").unwrap();
    let started = Instant::now();
    let connected =
        channels::connect(&admin, testkit::channel_json("rt", RUNTIME_TOKEN, r#""bogus_key": 1"#)).await.unwrap();
    assert_eq!(connected.channel.unknown_keys, ["config.bogus_key"]);
    // The process that connected serves it at once.
    assert_eq!(admin.get(&id).unwrap().source, Source::Runtime);
    let live = testkit::eventually(Duration::from_secs(3), "the watching registry picks the channel up", || async {
        service.get(&id)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(live.local, "built for rt");
    assert!(service.find_token(RUNTIME_TOKEN).is_some());

    // At rest: no secret in the clear, nothing unknown kept.
    let raw = String::from_utf8(store.get("rt").await.unwrap().unwrap().to_vec()).unwrap();
    for secret in [testkit::AUTH_TOKEN, RUNTIME_TOKEN] {
        assert!(!raw.contains(secret), "{raw}");
    }
    assert!(raw.contains(r#""enc":"A256GCM""#) && !raw.contains("bogus_key"), "{raw}");

    // The same id, or the same path token, cannot be connected twice; a
    // file channel's id cannot be taken.
    let again = channels::connect(&admin, testkit::channel_json("rt", "another-token-0123456789abcdefghijklmn", ""));
    assert!(matches!(again.await, Err(ConnectError::Exists { from: Source::Runtime, .. })));
    let file_id =
        channels::connect(&admin, testkit::channel_json("test", "another-token-0123456789abcdefghijklmn", ""));
    assert!(matches!(file_id.await, Err(ConnectError::Exists { from: Source::File, .. })));
    let token = channels::connect(&admin, testkit::channel_json("rt2", testkit::PATH_TOKEN, ""));
    assert!(matches!(token.await, Err(ConnectError::TokenInUse { .. })));
    let invalid = channels::connect(&admin, testkit::channel_json("rt3", "short", "")).await;
    match invalid {
        Err(ConnectError::Invalid(e)) => assert_eq!(e.0[0].key, "config.webhook_path_token", "{e}"),
        other => panic!("{other:?}"),
    }

    assert!(matches!(channels::disconnect(&admin, "test").await, Err(DisconnectError::FileChannel(_))));
    assert!(matches!(channels::disconnect(&admin, "nope").await, Err(DisconnectError::NotFound(_))));
    let started = Instant::now();
    channels::disconnect(&admin, "rt").await.unwrap();
    assert!(admin.get(&id).is_none());
    testkit::eventually(Duration::from_secs(3), "the watching registry drops the channel", || async {
        service.get(&id).is_none().then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(store.get("rt").await.unwrap().is_none());
    assert!(service.get(&ChannelId::parse("test").unwrap()).is_some());

    // Replaced: the same id again with another path token and chat.
    let replaced = "replaced-path-token-0123456789abcdefghij";
    channels::connect(&admin, testkit::channel_json("rt", replaced, r#""chat": {"kind": "static", "reply": "hi"}"#))
        .await
        .unwrap();
    let live = testkit::eventually(Duration::from_secs(3), "the watching registry takes the new one", || async {
        service.find_token(replaced)
    })
    .await;
    assert_eq!(live.channel.chat.kind(), "static");
    assert!(service.find_token(RUNTIME_TOKEN).is_none());
    stop.cancel();
}

#[tokio::test]
async fn without_the_key_connecting_is_refused_and_sealed_channels_are_skipped() {
    let nats = NatsServer::start();
    let (keyless, _) = registry(&nats, "rt2", None).await;
    let refused = channels::connect(&keyless, testkit::channel_json("rt", RUNTIME_TOKEN, "")).await.unwrap_err();
    assert!(matches!(refused, ConnectError::NoKey));
    assert!(refused.to_string().contains("SMSGATE_SECRET_KEY is not set"), "{refused}");

    let (admin, _) = registry(&nats, "rt2", Some(testkit::secret_key())).await;
    channels::connect(&admin, testkit::channel_json("rt", RUNTIME_TOKEN, "")).await.unwrap();
    // A process without the key, or with another one, skips it and keeps
    // serving the file's channels.
    keyless.reload().await.unwrap();
    assert_eq!(keyless.snapshot().len(), 1);
    let (other_key, _) = registry(&nats, "rt2", Some(testkit::secret_key())).await;
    assert_eq!(other_key.snapshot().len(), 1);
    assert!(other_key.get_fresh(&ChannelId::parse("rt").unwrap()).await.is_none());
}

#[tokio::test]
async fn an_entry_whose_settings_were_changed_without_the_key_is_refused_by_every_registry() {
    let nats = NatsServer::start();
    let key = testkit::secret_key();
    let (admin, store) = registry(&nats, "rt3", Some(key.clone())).await;
    let extra = r#""twilio_api_base": "https://api.twilio.com""#;
    channels::connect(&admin, testkit::channel_json("rt", RUNTIME_TOKEN, extra)).await.unwrap();
    let id = ChannelId::parse("rt").unwrap();
    let (service, _) = registry(&nats, "rt3", Some(key.clone())).await;
    assert!(service.get(&id).is_some(), "unchanged, it is served");

    let mut entry: serde_json::Value = serde_json::from_slice(&store.get("rt").await.unwrap().unwrap()).unwrap();
    entry["config"]["twilio_api_base"] = serde_json::json!("https://collector.example");
    store.put("rt", serde_json::to_vec(&entry).unwrap().into()).await.unwrap();
    // A sender (or any service) asking for the channel does not get it.
    service.reload().await.unwrap();
    assert!(service.get_fresh(&id).await.is_none());
    admin.reload().await.unwrap();
    assert!(admin.get(&id).is_none());
    assert_eq!(service.snapshot().len(), 1, "the file's channel is still served");
}
