//! A sender started exactly as `main` starts it (`App::build_with` on port
//! 0), against a real nats-server with its own prefix and a Twilio stub.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use smsgate_sender::{App, Tuning};
use smsgate_shared::config::{Channel, Config, Settings};
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{self, DeadLetter, HistoryEntry, HistoryEvent, Origin, Outbound, StatusUpdate};
use smsgate_shared::topology::{Bus, Topology};
use smsgate_testkit::nats::NatsServer;
use smsgate_testkit::twilio::TwilioStub;
use smsgate_testkit::{self as testkit, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(30);

/// Delays short enough for tests, same logic as production.
pub fn fast_tuning() -> Tuning {
    Tuning {
        max_in_flight: Some(4),
        ack_wait: Some(Duration::from_secs(10)),
        max_deliver: 4,
        attempts: 3,
        retry: smsgate_shared::retry::RetryPolicy::doubling(Duration::from_millis(50), Duration::from_millis(400)),
        unknown_outcome_delay: Duration::from_millis(300),
        redelivery_delay: Duration::from_millis(300),
        progress_every: Duration::from_secs(1),
        grace: Duration::from_secs(5),
        ..Tuning::default()
    }
}

pub struct TestSender {
    /// Held so that the server lives as long as the test.
    _nats: NatsServer,
    pub twilio: TwilioStub,
    pub bus: Bus,
    pub channel: Channel,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), smsgate_sender::Error>>>,
}

impl TestSender {
    /// `extra`: channel config keys (JSON without braces) on top of the
    /// test channel pointed at the stub, unpaced unless given.
    pub async fn start(extra: &str) -> Self {
        Self::start_with(extra, fast_tuning()).await
    }

    pub async fn start_with(extra: &str, tuning: Tuning) -> Self {
        let nats = NatsServer::start();
        let twilio = TwilioStub::start().await;
        let base = twilio.base_url();
        Self::start_on(nats, twilio, &format!(r#""twilio_api_base": "{base}""#), extra, tuning).await
    }

    /// With `api_base` given as a whole (e.g. a closed port).
    pub async fn start_on(nats: NatsServer, twilio: TwilioStub, api: &str, extra: &str, tuning: Tuning) -> Self {
        let mps = if extra.contains("\"mps\"") { String::new() } else { r#", "mps": 0"#.to_owned() };
        let extra = if extra.trim().is_empty() { String::new() } else { format!(", {extra}") };
        let channel = testkit::channel(&format!("{api}{mps}{extra}"));
        let prefix = "it";
        let config = Config { settings: Settings::for_tests(&nats.url(), prefix), channels: vec![channel.clone()] };
        let app = App::build_with(config, tuning).await.expect("the sender builds");
        let addr = app.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let js = jetstream::new(smsgate_shared::topology::connect(&nats.url(), "test").await.unwrap());
        let bus = Topology::new(prefix).ensure(&js).await.unwrap();
        Self { _nats: nats, twilio, bus, channel, addr, shutdown, task: Some(task) }
    }

    /// A second sender process on the same NATS and prefix whose channel
    /// sends through `twilio` (so the test sees which process sent what).
    pub async fn another(&self, twilio: &TwilioStub, extra: &str, tuning: Tuning) -> Another {
        let base = twilio.base_url();
        let channel = testkit::channel(&format!(r#""twilio_api_base": "{base}", {extra}"#));
        let config = Config { settings: Settings::for_tests(&self._nats.url(), "it"), channels: vec![channel] };
        let app = App::build_with(config, tuning).await.expect("the second sender builds");
        let shutdown = CancellationToken::new();
        Another { task: tokio::spawn(app.run_until_stopped(shutdown.clone())), shutdown }
    }

    /// Stops the sender and waits for it (the graceful path).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.expect("stops in time").unwrap().unwrap();
        }
    }

    pub async fn publish(&self, out: &Outbound) {
        publish_outbound(&self.bus, out, &out.id).await;
    }

    pub async fn publish_status(&self, update: &StatusUpdate) {
        let subject = self.bus.topology.status_subject(&update.channel_id);
        let id = format!("{}.{}", update.message_sid, update.status);
        publish_raw(&self.bus, subject, &id, envelope::encode(update)).await;
    }

    pub async fn history(&self, peer: &E164) -> Vec<HistoryEntry> {
        history(&self.bus, &self.channel.id, peer).await
    }

    /// Waits for a history entry matching `f`.
    pub async fn wait_history<F>(&self, peer: &E164, what: &str, f: F) -> Vec<HistoryEntry>
    where
        F: Fn(&[HistoryEntry]) -> bool,
    {
        eventually(WAIT, what, || async {
            let h = self.history(peer).await;
            f(&h).then_some(h)
        })
        .await
    }

    pub async fn dead(&self) -> Vec<DeadLetter> {
        let filter = format!("{}.dead.>", self.bus.topology.prefix());
        read_all(&self.bus.js, &self.bus.topology.dead_stream(), &filter)
            .await
            .iter()
            .map(|p| envelope::decode(p).expect("a dead letter"))
            .collect()
    }

    pub async fn wait_dead(&self, n: usize) -> Vec<DeadLetter> {
        eventually(WAIT, &format!("{n} dead letters"), || async {
            let d = self.dead().await;
            (d.len() >= n).then_some(d)
        })
        .await
    }

    pub async fn sent(&self, key: &str) -> Option<String> {
        self.bus.sent.get(key).await.unwrap().map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Messages still waiting on `P_OUTBOUND` (0 once everything is acked).
    pub async fn outbound_pending(&self) -> u64 {
        let mut s = self.bus.js.get_stream(self.bus.topology.outbound_stream()).await.unwrap();
        s.info().await.unwrap().state.messages
    }

    pub async fn wait_outbound_empty(&self) {
        eventually(WAIT, "P_OUTBOUND to be empty", || async { (self.outbound_pending().await == 0).then_some(()) })
            .await;
    }
}

impl Drop for TestSender {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A sender started by [`TestSender::another`].
pub struct Another {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), smsgate_sender::Error>>,
}

impl Another {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task).await.expect("stops in time").unwrap().unwrap();
    }
}

pub fn peer(n: u32) -> E164 {
    E164::parse(&format!("+1415555{n:04}")).unwrap()
}

pub fn outbound(id: &str, to: &E164, body: &str) -> Outbound {
    Outbound {
        v: envelope::VERSION,
        // As it would come on the wire: not checked here (the sender checks it).
        id: serde_json::from_value(serde_json::Value::String(id.to_owned())).unwrap(),
        channel_id: ChannelId::parse("test").unwrap(),
        to: to.clone(),
        body: body.to_owned(),
        media_urls: Vec::new(),
        in_reply_to: Some(MessageSid::parse(&format!("SMin{}", id.replace('.', "_"))).unwrap()),
        origin: Origin::Chat,
        created_at: time::OffsetDateTime::now_utc(),
        call: None,
        guard: None,
    }
}

pub fn status_update(sid: &str, status: &str, to: Option<&E164>, code: Option<&str>) -> StatusUpdate {
    StatusUpdate {
        v: envelope::VERSION,
        channel_id: ChannelId::parse("test").unwrap(),
        message_sid: MessageSid::parse(sid).unwrap(),
        status: status.to_owned(),
        error_code: code.map(str::to_owned),
        to: to.map(ToString::to_string),
        received_at: time::OffsetDateTime::now_utc(),
        params: Vec::new(),
    }
}

pub async fn publish_outbound(bus: &Bus, out: &Outbound, msg_id: &str) {
    let subject = bus.topology.outbound_subject(&out.channel_id);
    publish_raw(bus, subject, msg_id, envelope::encode(out)).await;
}

pub async fn publish_raw(bus: &Bus, subject: String, msg_id: &str, payload: bytes::Bytes) {
    bus.js
        .send_publish(subject, PublishMessage::build().payload(payload).message_id(msg_id))
        .await
        .unwrap()
        .await
        .unwrap();
}

pub async fn history(bus: &Bus, channel: &ChannelId, peer: &E164) -> Vec<HistoryEntry> {
    let subject = bus.topology.history_subject(channel, peer);
    read_all(&bus.js, &bus.topology.history_stream(), &subject)
        .await
        .iter()
        .map(|p| envelope::decode(p).expect("a history entry"))
        .collect()
}

/// Every stored message on `filter`, oldest first (an ephemeral consumer).
pub async fn read_all(js: &jetstream::Context, stream: &str, filter: &str) -> Vec<bytes::Bytes> {
    use futures::StreamExt;
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut batch = consumer.batch().max_messages(pending).expires(Duration::from_secs(2)).messages().await.unwrap();
    while let Some(Ok(m)) = batch.next().await {
        out.push(m.payload.clone());
        if out.len() == pending {
            break;
        }
    }
    out
}

/// The pieces of the (only) Outbound history entry.
pub fn outbound_pieces(history: &[HistoryEntry]) -> Vec<smsgate_shared::envelope::Piece> {
    let outs: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::Outbound { pieces, .. } => Some(pieces.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(outs.len(), 1, "exactly one outbound entry: {history:?}");
    outs.into_iter().next().unwrap()
}

pub fn notes(history: &[HistoryEntry]) -> Vec<(smsgate_shared::envelope::NoteReason, String)> {
    history
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::Note { reason, detail, .. } => Some((*reason, detail.clone())),
            _ => None,
        })
        .collect()
}

/// Kills the child if the test fails half-way, so no process outlives it.
pub struct Sender(pub Child);

impl Drop for Sender {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The real sender binary on `nats` under `prefix`, with the channel file `channels`.
pub fn spawn_sender(nats: &NatsServer, prefix: &str, channels: &std::path::Path) -> Sender {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsgate-sender"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SMSGATE_NATS_URL", nats.url())
        .env("SMSGATE_NATS_PREFIX", prefix)
        .env("SMSGATE_CHANNELS", channels)
        .env("SMSGATE_SENDER_ADDR", "127.0.0.1:0")
        // A short ack wait, so that the killed process's message comes back quickly.
        .env("SMSGATE_SENDER_ACK_WAIT_SECS", "3")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    // Set SMSGATE_TEST_CHILD_LOGS to see the child's JSON logs.
    if std::env::var_os("SMSGATE_TEST_CHILD_LOGS").is_some() {
        cmd.stdout(Stdio::inherit());
    } else {
        cmd.stdout(Stdio::null());
    }
    Sender(cmd.spawn().expect("the sender binary starts"))
}
