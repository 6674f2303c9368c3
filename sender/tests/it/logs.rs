//! invariant 5 (docs/ARCHITECTURE.md §4) with the real binary: Twilio's error messages
//! quote the number they refuse, and none of it reaches a log line whole.

use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use smsgate_shared::topology::Topology;
use smsgate_testkit::nats::NatsServer;
use smsgate_testkit::twilio::{Reply, TwilioStub};
use smsgate_testkit::{self as testkit, eventually};

use crate::helpers::*;

const PREFIX: &str = "logs";

#[tokio::test]
async fn numbers_inside_twilio_errors_never_reach_the_log_whole() {
    let nats = NatsServer::start();
    let twilio = TwilioStub::start().await;
    let js = jetstream::new(smsgate_shared::topology::connect(&nats.url(), "test").await.unwrap());
    let topology = Topology::new(PREFIX);
    let bus = topology.ensure(&js).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let channels = dir.path().join("channels.json");
    let file = serde_json::json!({"channel_id": "test", "config": {
        "twilio_account_sid": testkit::ACCOUNT_SID, "twilio_auth_token": testkit::AUTH_TOKEN,
        "twilio_from_number": testkit::FROM_NUMBER, "webhook_path_token": testkit::PATH_TOKEN,
        "public_base_url": "http://127.0.0.1:8000", "twilio_api_base": twilio.base_url(),
        "chat": {"kind": "echo"}, "mps": 0}});
    std::fs::write(&channels, file.to_string()).unwrap();
    let log = dir.path().join("sender.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_smsgate-sender"))
        .env_clear()
        .env("SMSGATE_NATS_URL", nats.url())
        .env("SMSGATE_NATS_PREFIX", PREFIX)
        .env("SMSGATE_CHANNELS", &channels)
        .env("SMSGATE_SENDER_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();

    // Permanent refusals whose texts carry the numbers, as Twilio's do,
    // written three ways.
    let (a, b, c) = (peer(71), peer(72), peer(73));
    for (to, text) in [
        (&a, format!("The 'To' number {} is not a valid phone number.", a.as_str())),
        (&b, format!("Cannot route to {} from +1 (555) 000-1111", b.subject_token())),
        (&c, "Number 1-555-000-0173 is unreachable".to_owned()),
    ] {
        twilio.push(Reply::Error { status: 400, code: 21211, message: text });
        let out = outbound(&format!("reply.SMlog{}", &to.subject_token()[8..]), to, "hello there");
        publish_outbound(&bus, &out, &out.id).await;
    }
    eventually(WAIT, "three dead letters", || async {
        let dead = read_all(&js, &topology.dead_stream(), &format!("{PREFIX}.dead.>")).await;
        (dead.len() == 3).then_some(())
    })
    .await;
    // Let the log lines of the last one be written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("21211"), "the refusals are logged: {text}");
    for digits in [a.subject_token(), b.subject_token(), &testkit::FROM_NUMBER[1..], "5550000173", "0001111"] {
        for line in text.lines() {
            assert!(!line.contains(digits), "a full number in the log: {line}");
        }
    }
    // Every line about a message names the inbound message it answers, so
    // `message_sid` follows one message through every service.
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let about_messages: Vec<&serde_json::Value> = lines.iter().filter(|l| l["outbound_id"].is_string()).collect();
    assert!(about_messages.len() >= 3, "{text}");
    for line in about_messages {
        let id = line["outbound_id"].as_str().unwrap();
        assert_eq!(line["message_sid"], format!("SMin{}", id.replace('.', "_")).as_str(), "{line}");
    }
    // Stored where the operator reads them, masked the same way.
    let dead = read_all(&js, &topology.dead_stream(), &format!("{PREFIX}.dead.>")).await;
    for d in dead {
        let d = String::from_utf8_lossy(&d);
        let reason = serde_json::from_str::<serde_json::Value>(&d).unwrap()["reason"].to_string();
        assert!(!reason.contains(a.subject_token()) && !reason.contains(b.subject_token()), "{reason}");
    }
}
