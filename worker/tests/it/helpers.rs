//! Starts the real worker (`App::build_with`, ops on port 0) against a real
//! nats-server, publishes inbound envelopes as ingress does, and reads what
//! the worker wrote to `P_OUTBOUND`, `P_HISTORY` and `P_DEAD`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use smsgate_shared::config::{Channel, Config, Settings};
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{self, DeadLetter, HistoryEntry, HistoryEvent, Inbound, Media, NoteReason, Outbound};
use smsgate_shared::topology::{Topology, connect};
use smsgate_testkit::{self as testkit, nats::NatsServer};
use smsgate_worker::{App, Tuning};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous: the machine may be loaded.
pub const WAIT: Duration = Duration::from_secs(30);

/// Short delays so retries happen within a test.
pub fn test_tuning() -> Tuning {
    Tuning {
        max_in_flight: Some(4),
        retry: smsgate_shared::retry::RetryPolicy::fixed(vec![Duration::from_millis(200), Duration::from_millis(300)]),
        error_delay: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(10),
        ..Tuning::default()
    }
}

pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{tag}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The bus as a test sees it: publish like ingress, read like the sender.
pub struct Bus {
    pub js: jetstream::Context,
    pub topology: Topology,
    pub optout: kv::Store,
    pub seen: kv::Store,
}

impl Bus {
    pub async fn connect(nats_url: &str, prefix: &str) -> Self {
        let js = jetstream::new(connect(nats_url, "test").await.unwrap());
        let topology = Topology::new(prefix);
        let bus = topology.ensure(&js).await.unwrap();
        Self { js, topology, optout: bus.optout, seen: bus.seen }
    }

    /// Publishes an inbound message as ingress does (`Nats-Msg-Id` = sid);
    /// returns its stream sequence.
    pub async fn send(&self, inbound: &Inbound) -> u64 {
        self.send_with_id(inbound, Some(inbound.message_sid.as_str())).await
    }

    /// Publishes with another `Nats-Msg-Id` (or none): a copy that
    /// JetStream's duplicate window did not catch.
    pub async fn send_with_id(&self, inbound: &Inbound, msg_id: Option<&str>) -> u64 {
        let mut message = jetstream::message::PublishMessage::build().payload(envelope::encode(inbound));
        if let Some(id) = msg_id {
            message = message.message_id(id);
        }
        let ack = self
            .js
            .send_publish(self.topology.inbound_subject(&inbound.channel_id), message)
            .await
            .unwrap()
            .await
            .unwrap();
        ack.sequence
    }

    pub async fn send_raw(&self, channel: &str, payload: &'static [u8]) {
        let subject = self.topology.inbound_subject(&ChannelId::parse(channel).unwrap());
        self.js.publish(subject, payload.into()).await.unwrap().await.unwrap();
    }

    async fn all(&self, stream: String) -> Vec<jetstream::message::StreamMessage> {
        let mut s = self.js.get_stream(&stream).await.unwrap();
        let state = s.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push(m);
            }
        }
        out
    }

    /// Everything on `P_OUTBOUND`, in publish order.
    pub async fn outbound(&self) -> Vec<Outbound> {
        self.all(self.topology.outbound_stream()).await.iter().map(|m| envelope::decode(&m.payload).unwrap()).collect()
    }

    /// The conversation with `peer`, oldest first.
    pub async fn history(&self, channel: &str, peer: &str) -> Vec<HistoryEntry> {
        let subject = self.topology.history_subject(&ChannelId::parse(channel).unwrap(), &E164::parse(peer).unwrap());
        self.all(self.topology.history_stream())
            .await
            .iter()
            .filter(|m| m.subject.as_str() == subject)
            .map(|m| envelope::decode(&m.payload).unwrap())
            .collect()
    }

    pub async fn dead(&self) -> Vec<DeadLetter> {
        self.all(self.topology.dead_stream()).await.iter().map(|m| envelope::decode(&m.payload).unwrap()).collect()
    }

    /// Messages still in `P_INBOUND` (acked ones are gone: work queue).
    pub async fn inbound_left(&self) -> u64 {
        let mut s = self.js.get_stream(self.topology.inbound_stream()).await.unwrap();
        s.info().await.unwrap().state.messages
    }

    /// Appends a history entry as the sender would.
    pub async fn append_history(&self, entry: &HistoryEntry) {
        let subject = self.topology.history_subject(&entry.channel_id, &entry.peer);
        self.js.publish(subject, envelope::encode(entry)).await.unwrap().await.unwrap();
    }

    /// Waits until the note `reason` for `sid` is in the conversation.
    pub async fn wait_note(&self, channel: &str, peer: &str, sid: &str, reason: NoteReason) -> HistoryEntry {
        testkit::eventually(WAIT, &format!("note {reason:?} for {sid}"), || async {
            self.history(channel, peer).await.into_iter().find(|e| {
                matches!(&e.event, HistoryEvent::Note { reason: r, message_sid: Some(s), .. }
                    if *r == reason && s.as_str() == sid)
            })
        })
        .await
    }

    /// Waits until `n` messages are on `P_OUTBOUND`.
    pub async fn wait_outbound(&self, n: usize) -> Vec<Outbound> {
        testkit::eventually(WAIT, &format!("{n} outbound messages"), || async {
            let out = self.outbound().await;
            (out.len() >= n).then_some(out)
        })
        .await
    }

    /// Waits until the worker acked everything it was given.
    pub async fn wait_drained(&self) {
        testkit::eventually(WAIT, "P_INBOUND drained", || async { (self.inbound_left().await == 0).then_some(()) })
            .await;
    }
}

pub fn inbound(channel: &str, sid: &str, from: &str, body: &str) -> Inbound {
    Inbound {
        v: 1,
        channel_id: ChannelId::parse(channel).unwrap(),
        message_sid: MessageSid::parse(sid).unwrap(),
        account_sid: testkit::ACCOUNT_SID.to_owned(),
        from: from.to_owned(),
        to: testkit::FROM_NUMBER.to_owned(),
        body: body.to_owned(),
        media: Vec::<Media>::new(),
        received_at: OffsetDateTime::now_utc(),
        params: vec![],
        call: None,
    }
}

/// A running worker plus its bus.
pub struct TestWorker {
    pub nats: NatsServer,
    pub prefix: String,
    pub bus: Bus,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestWorker {
    pub async fn start(channels: Vec<Channel>) -> Self {
        Self::start_with(channels, test_tuning()).await
    }

    pub async fn start_with(channels: Vec<Channel>, tuning: Tuning) -> Self {
        let nats = NatsServer::start();
        let prefix = unique_prefix("w");
        let bus = Bus::connect(&nats.url(), &prefix).await;
        let mut worker = Self {
            nats,
            prefix,
            bus,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown: CancellationToken::new(),
            task: None,
        };
        worker.spawn(channels, tuning).await;
        worker
    }

    /// Starts (again) a worker on this server and prefix.
    pub async fn spawn(&mut self, channels: Vec<Channel>, tuning: Tuning) {
        let config = Config { settings: Settings::for_tests(&self.nats.url(), &self.prefix), channels };
        let app = App::build_with(config, tuning).await.unwrap();
        self.addr = app.local_addr();
        self.shutdown = CancellationToken::new();
        let token = self.shutdown.clone();
        self.task = Some(tokio::spawn(async move { app.run_until_stopped(token).await.unwrap() }));
    }

    /// Cancels the worker and waits until it has stopped.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.expect("worker stops within the grace period").unwrap();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `kind`s of a conversation's entries, with the note reasons
/// (`inbound`, `note:duplicate`, ...), for readable assertions.
pub fn kinds(entries: &[HistoryEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match &e.event {
            HistoryEvent::Inbound { .. } => "inbound".to_owned(),
            HistoryEvent::Outbound { .. } => "outbound".to_owned(),
            HistoryEvent::Status { .. } => "status".to_owned(),
            HistoryEvent::Note { reason, .. } => {
                format!("note:{}", serde_json::to_value(reason).unwrap().as_str().unwrap())
            }
            HistoryEvent::Call { status, .. } => format!("call:{status}"),
            HistoryEvent::CallTurn { .. } => "call_turn".to_owned(),
            HistoryEvent::Cost { item, .. } => format!("cost:{}", item.as_str()),
        })
        .collect()
}

/// A second worker process's App on the same NATS and prefix.
pub struct Second {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Second {
    pub async fn start(w: &TestWorker, channel_extra: &str) -> Self {
        let config = Config {
            settings: Settings::for_tests(&w.nats.url(), &w.prefix),
            channels: vec![testkit::channel(channel_extra)],
        };
        let app = App::build_with(config, test_tuning()).await.unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        Self { stop, task: tokio::spawn(async move { app.run_until_stopped(token).await.unwrap() }) }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task).await.unwrap().unwrap();
    }
}
