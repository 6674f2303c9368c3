//! The real `smsgate-worker` binary killed mid-message (SIGKILL), then
//! restarted: exactly one reply on `P_OUTBOUND` (invariants 1 and 2).
//!
//! JetStream redelivers the unacked message after the consumer's ack wait
//! (30 s), so each test takes a little over that.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use smsgate_shared::domain::MessageSid;
use smsgate_shared::topology::Topology;
use smsgate_testkit::chat::OpenAiStub;
use smsgate_testkit::nats::NatsServer;
use smsgate_testkit::{self as testkit, ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, PATH_TOKEN};
use smsgate_worker::seen::{Record, State};
use tokio::process::{Child, Command};

use crate::helpers::{Bus, inbound, unique_prefix};

/// Ack wait plus room for a loaded machine.
const REDELIVERY: Duration = Duration::from_secs(120);

pub(crate) fn write_channels(dir: &Path, chat: &str) -> std::path::PathBuf {
    let path = dir.join("channels.json");
    let text = format!(
        r#"{{"channel_id": "test", "config": {{
            "twilio_account_sid": "{ACCOUNT_SID}", "twilio_auth_token": "{AUTH_TOKEN}",
            "twilio_from_number": "{FROM_NUMBER}", "webhook_path_token": "{PATH_TOKEN}", {chat} }} }}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn spawn_worker(
    nats: &NatsServer,
    prefix: &str,
    channels: &Path,
    pause_ms: Option<u64>,
    log: &Path,
) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsgate-worker"));
    cmd.env("SMSGATE_NATS_URL", nats.url())
        .env("SMSGATE_NATS_PREFIX", prefix)
        .env("SMSGATE_CHANNELS", channels)
        .env("SMSGATE_WORKER_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env_remove("SMSGATE_WORKER_TEST_PAUSE_AFTER_PUBLISH_MS")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if let Some(ms) = pause_ms {
        cmd.env("SMSGATE_WORKER_TEST_PAUSE_AFTER_PUBLISH_MS", ms.to_string());
    }
    cmd.spawn().unwrap()
}

async fn seen_state(bus: &Bus, sid: &str) -> Option<Record> {
    let value = bus.seen.get(Topology::seen_key(&MessageSid::parse(sid).unwrap())).await.unwrap()?;
    serde_json::from_slice(&value).ok()
}

/// Stops a worker with SIGTERM, as an orchestrator does, and checks it exits cleanly.
async fn terminate(mut child: Child) {
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "worker exited with {exit:?}");
}

async fn wait_drained(bus: &Bus, logs: &Path) {
    let deadline = tokio::time::Instant::now() + REDELIVERY;
    while bus.inbound_left().await > 0 {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "not redelivered and acked in time; worker log:\n{}",
                std::fs::read_to_string(logs).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn killed_after_publishing_the_reply_but_before_the_ack_replies_exactly_once() {
    let nats = NatsServer::start();
    let prefix = unique_prefix("crashA");
    let bus = Bus::connect(&nats.url(), &prefix).await;
    let model = OpenAiStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let channels = write_channels(dir.path(), &model.chat_config(""));
    let logs = dir.path().join("worker.log");

    let first = spawn_worker(&nats, &prefix, &channels, Some(600_000), &logs);
    bus.send(&inbound("test", "SMcrash1", "+14155550401", "survive this")).await;
    bus.wait_outbound(1).await;
    // The worker is now paused between publishing the reply and the ack.
    let record = seen_state(&bus, "SMcrash1").await.unwrap();
    assert_eq!(record.state, State::Replied, "{record:?}");
    drop(first); // SIGKILL (kill_on_drop)
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(bus.inbound_left().await, 1, "the inbound was not acked");

    let second = spawn_worker(&nats, &prefix, &channels, None, &logs);
    wait_drained(&bus, &logs).await;
    let out = bus.outbound().await;
    assert_eq!(out.len(), 1, "exactly one reply: {out:#?}");
    assert_eq!(out[0].id, "reply.SMcrash1");
    assert_eq!(out[0].body, "reply to: survive this");
    assert_eq!(model.requests().len(), 1, "the stored reply was republished without a second chat call");
    // `replied` is final: the resumed run republished it and wrote nothing more.
    assert_eq!(seen_state(&bus, "SMcrash1").await.unwrap().state, State::Replied);
    terminate(second).await;

    // Invariant 5 on the way: JSON lines, the number masked, no body at info.
    let log = std::fs::read_to_string(&logs).unwrap();
    let processed = log.lines().find(|l| l.contains("message processed")).unwrap_or_else(|| panic!("{log}"));
    let line: serde_json::Value = serde_json::from_str(processed).unwrap();
    assert_eq!(line["service"], "worker");
    assert_eq!(line["peer"], "+1415***0401");
    assert_eq!(line["message_sid"], "SMcrash1");
    assert_eq!(line["channel_id"], "test");
    assert!(line["latency_ms"].is_u64() && line["outcome"].is_string(), "{line}");
    assert!(!log.contains("14155550401"), "a full number was logged:\n{log}");
    assert!(!log.contains("survive this"), "a body was logged at info:\n{log}");
}

#[tokio::test]
async fn killed_during_the_chat_call_replies_exactly_once_after_a_restart() {
    let nats = NatsServer::start();
    let prefix = unique_prefix("crashB");
    let bus = Bus::connect(&nats.url(), &prefix).await;
    let model = OpenAiStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let channels =
        write_channels(dir.path(), &model.chat_config(r#""timeout_ms": 600000"#).replace(r#""timeout_ms": 5000,"#, ""));
    let logs = dir.path().join("worker.log");

    model.set_delay(Duration::from_secs(600));
    let first = spawn_worker(&nats, &prefix, &channels, None, &logs);
    bus.send(&inbound("test", "SMcrash2", "+14155550402", "mid-call")).await;
    model.wait_for_requests(1, testkit_wait()).await;
    drop(first); // SIGKILL while the model is still thinking
    model.set_delay(Duration::ZERO);

    let second = spawn_worker(&nats, &prefix, &channels, None, &logs);
    wait_drained(&bus, &logs).await;
    let out = bus.outbound().await;
    assert_eq!(out.len(), 1, "exactly one reply: {out:#?}");
    assert_eq!(out[0].id, "reply.SMcrash2");
    assert_eq!(model.requests().len(), 2, "the chat call was made again after the restart");
    terminate(second).await;
}

fn testkit_wait() -> Duration {
    crate::helpers::WAIT
}

#[test]
fn the_crash_tests_use_the_test_kit_channel_constants() {
    // The file written above must be a channel the real config loader accepts.
    let dir = tempfile::tempdir().unwrap();
    let path = write_channels(dir.path(), r#""chat": {"kind": "echo"}"#);
    let text = std::fs::read_to_string(path).unwrap();
    let channels = smsgate_shared::config::parse_channels(&text, "channels.json", &|_| None, None).unwrap();
    assert_eq!(channels[0].id.as_str(), "test");
    let _ = testkit::channel("");
}
