//! A channel connected at run time, as the sender serves it: sent through
//! while its entry is as sealed; refused, its credentials sent nowhere,
//! once someone without `SMSGATE_SECRET_KEY` altered it in the bucket.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use smsgate_sender::App;
use smsgate_shared::channels::{self, Registry, RuntimeSource};
use smsgate_shared::config::{Config, Settings};
use smsgate_shared::domain::ChannelId;
use smsgate_shared::envelope::{self, DeadLetter};
use smsgate_shared::topology::Topology;
use smsgate_testkit::nats::NatsServer;
use smsgate_testkit::twilio::TwilioStub;
use smsgate_testkit::{self as testkit, eventually};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

#[tokio::test]
async fn a_runtime_channel_altered_without_the_key_is_refused_and_its_credentials_go_nowhere() {
    let nats = NatsServer::start();
    let twilio = TwilioStub::start().await;
    let (elsewhere, connections) = testkit::counting_listener().await;
    let key = testkit::secret_key();
    let mut settings = Settings::for_tests(&nats.url(), "rt");
    settings.secret_key = Some(key.clone());
    let api = format!(r#""twilio_api_base": "{}", "mps": 0"#, twilio.base_url());
    let app = App::build_with(Config { settings, channels: vec![testkit::channel(&api)] }, fast_tuning())
        .await
        .expect("the sender builds");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let js = jetstream::new(smsgate_shared::topology::connect(&nats.url(), "test").await.unwrap());
    let bus = Topology::new("rt").ensure(&js).await.unwrap();
    // Connected as the admin API does it, with the key.
    let admin = Registry::new("test", vec![], |_| ());
    admin.attach(RuntimeSource { store: bus.channels.clone(), key: Some(key), public_base_url: None });
    let json = testkit::channel_json("rt", "runtime-path-token-0123456789abcdefghij", &api);
    channels::connect(&admin, json).await.unwrap();

    let mut first = outbound("reply.SMrt1", &peer(1), "as sealed");
    first.channel_id = ChannelId::parse("rt").unwrap();
    publish_outbound(&bus, &first, "reply.SMrt1").await;
    eventually(WAIT, "sent through Twilio", || async { (twilio.created().len() == 1).then_some(()) }).await;

    // Someone who can write the bucket, without the key.
    let mut entry: serde_json::Value = serde_json::from_slice(&bus.channels.get("rt").await.unwrap().unwrap()).unwrap();
    entry["config"]["twilio_api_base"] = serde_json::json!(elsewhere);
    bus.channels.put("rt", serde_json::to_vec(&entry).unwrap().into()).await.unwrap();
    // The sender's registry watch picks a change up within a second or so
    // (the shared tests measure it); a message that came before would still
    // go out as sealed, through Twilio.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut second = outbound("reply.SMrt2", &peer(2), "after the edit");
    second.channel_id = ChannelId::parse("rt").unwrap();
    publish_outbound(&bus, &second, "reply.SMrt2").await;
    let filter = format!("{}.dead.>", bus.topology.prefix());
    let dead: Vec<DeadLetter> = eventually(WAIT, "a dead letter", || async {
        let letters: Vec<DeadLetter> = read_all(&bus.js, &bus.topology.dead_stream(), &filter)
            .await
            .iter()
            .map(|p| envelope::decode(p).expect("a dead letter"))
            .collect();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].msg_id.as_deref(), Some("reply.SMrt2"));
    assert!(dead[0].reason.contains("channel rt is not configured"), "{}", dead[0].reason);
    assert_eq!(twilio.created().len(), 1, "nothing more through Twilio");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing to the new host");
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.expect("stops in time").unwrap().unwrap();
}
