//! The real `smsgate-sender` binary, killed with SIGKILL between two pieces
//! of a message and started again: every piece reaches Twilio exactly once.

use smsgate_shared::bus::SentKey;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use smsgate_shared::topology::Topology;
use smsgate_testkit::nats::NatsServer;
use smsgate_testkit::twilio::TwilioStub;
use smsgate_testkit::{self as testkit, eventually};

use crate::helpers::*;

const PREFIX: &str = "crash";

#[tokio::test]
async fn a_sender_killed_between_pieces_resumes_at_the_first_unsent_piece() {
    let nats = NatsServer::start();
    let twilio = TwilioStub::start().await;
    let js = jetstream::new(smsgate_shared::topology::connect(&nats.url(), "test").await.unwrap());
    let topology = Topology::new(PREFIX);
    let bus = topology.ensure(&js).await.unwrap();
    // mps 0.5: two seconds between pieces, the window to kill it in.
    let dir = tempfile::tempdir().unwrap();
    let channels = dir.path().join("channels.json");
    let file = serde_json::json!({
        "channel_id": "test",
        "config": {
            "twilio_account_sid": testkit::ACCOUNT_SID,
            "twilio_auth_token": testkit::AUTH_TOKEN,
            "twilio_from_number": testkit::FROM_NUMBER,
            "webhook_path_token": testkit::PATH_TOKEN,
            "public_base_url": "http://127.0.0.1:8000",
            "twilio_api_base": twilio.base_url(),
            "sms_max_len": 40,
            "chat": {"kind": "echo"},
            "mps": 0.5
        }
    });
    std::fs::write(&channels, file.to_string()).unwrap();

    let mut first = spawn_sender(&nats, PREFIX, &channels);
    let to = peer(70);
    let out = outbound("reply.SMcrash", &to, "Piece one is here. Piece two is here. Piece three is here.");
    publish_outbound(&bus, &out, &out.id).await;

    // Piece 1 is sent and recorded; piece 2 waits for its slot. Kill now.
    eventually(WAIT, "piece 1 recorded in P_sent", || async {
        bus.sent.get(SentKey::Piece { outbound: &out.id, index: 0 }.to_string()).await.unwrap()
    })
    .await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert_eq!(twilio.created().len(), 1, "killed before piece 2");

    let mut second = spawn_sender(&nats, PREFIX, &channels);
    let history = eventually(WAIT, "the outbound entry after restart", || async {
        let h = history(&bus, &out.channel_id, &to).await;
        (!h.is_empty()).then_some(h)
    })
    .await;
    let pieces = outbound_pieces(&history);
    let created = twilio.created();
    let bodies: Vec<&str> = created.iter().map(|c| c.get("Body").unwrap()).collect();
    assert_eq!(
        bodies,
        vec!["Piece one is here. (1/3)", "Piece two is here. (2/3)", "Piece three is here. (3/3)"],
        "each piece exactly once, in order"
    );
    for (i, (piece, call)) in pieces.iter().zip(&created).enumerate() {
        assert_eq!(piece.sid, call.sid);
        assert_eq!(
            bus.sent.get(SentKey::Piece { outbound: &out.id, index: i }.to_string()).await.unwrap().map(|b| b.to_vec()),
            call.sid.clone().map(String::into_bytes)
        );
    }

    // SIGTERM: a graceful stop with status 0.
    let pid = second.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sender did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
