//! The consumer runtime of the worker and the sender: one durable pull
//! consumer, per-conversation order, concurrency across conversations, and
//! no message left behind.
//!
//! # How a message moves
//!
//! One dispatcher task owns all state. It pulls from the consumer, asks the
//! [`Handler`] for the message's [`Key`] (a conversation: channel and peer),
//! and puts the message in that key's queue, kept in stream order. A key
//! runs one message at a time; different keys run concurrently, up to
//! [`Limits::max_in_flight`] handler tasks. The dispatcher never waits for a
//! handler, so one slow conversation holds up nobody else:
//!
//! - a message whose key is busy, or that waits for a free slot, is *held*
//!   and kept alive with `Progress` acks (so is every running one), so
//!   JetStream never redelivers work that is merely queued;
//! - a key holding more than [`Limits::key_backlog`] messages hands its
//!   newest back to JetStream with a delay (`Nak`; about the time the key
//!   needs for what it holds), so one flooding sender cannot fill
//!   `max_ack_pending` for everyone;
//! - a message handed back (a handler's [`Disposition::Retry`], or the
//!   backlog rule) is remembered as *awaited*: the key's later messages wait
//!   for it to come back (or for a timeout, in case another replica took it),
//!   so a reply never overtakes an earlier one. The same holds across
//!   replicas (a message is awaited when a later one of its key arrives
//!   here while it is still in the work queue, delivered elsewhere) and for
//!   what a crashed predecessor held: on start, the messages delivered but not
//!   acked are read from the stream and awaited by key. An awaited message
//!   stops being awaited when it comes back, when it is gone from the work
//!   queue (acked by another replica), or after twice the ack wait.
//!
//! # Nothing stranded
//!
//! - Each [`Delivery`] knows whether it is the last one JetStream will make
//!   ([`Delivery::is_last`]); handlers finish such a delivery for good
//!   (fallback reply, failed state). If a handler still asks for a retry on
//!   the last delivery, the runtime dead-letters it and acks.
//! - A panicking handler is caught: the message is dead-lettered with the
//!   panic's text and acked, the panic is counted, the runtime goes on.
//! - JetStream's max-deliveries advisory is watched (queue group, so one
//!   replica acts): whatever ran out of deliveries anyway (a process killed
//!   during its last delivery, NATS failing throughout) is read by its
//!   stream sequence, dead-lettered and removed from the work queue.
//!
//! # Shutdown
//!
//! Pulling stops at once. For the first half of the grace period held
//! messages still start, in order; then what waits goes back to JetStream
//! (`Nak` without delay; a running key's held messages only once it has
//! finished, so another replica cannot overtake it). Running handlers get the
//! rest of the grace period, then are aborted (their messages come back
//! after `ack_wait`, their keys' held ones are handed back with that delay).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, AckKind, Message};
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// A conversation: messages with one key are handled one at a time, in
/// stream order.
pub type Key = u64;

/// Whether a runtime's dispatcher is still turning: it beats on every loop
/// and every tick, and `/api/health` reports failure when it has been silent
/// for too long (a dispatcher that stopped must not look healthy).
#[derive(Debug, Clone)]
pub struct Liveness {
    name: &'static str,
    started: std::time::Instant,
    last_ms: Arc<AtomicU64>,
    max_silence: Duration,
}

impl Liveness {
    pub fn new(name: &'static str, max_silence: Duration) -> Self {
        Self { name, started: std::time::Instant::now(), last_ms: Arc::new(AtomicU64::new(0)), max_silence }
    }

    fn beat(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// The runtime's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `Some(silence)` when the dispatcher has not beaten for too long.
    pub fn stalled(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let silence = self.started.elapsed().saturating_sub(last);
        (silence > self.max_silence).then_some(silence)
    }
}

/// A stable key from parts (FNV-1a, no per-process seed, so two replicas
/// and two runs agree).
pub fn key_of(parts: &[&str]) -> Key {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// What the runtime does with a message once its handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Finished (done, skipped or dead-lettered): ack it.
    Ack,
    /// Try again after this delay (nak with delay); the key's later
    /// messages wait for it.
    Retry(Duration),
    /// Shutting down: hand it back at once.
    Release,
}

/// The bounds of one consumer. `max_ack_pending` and the timings of the
/// durable consumer follow from these ([`Limits::pull_config`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Handler tasks running at once (model or Twilio calls in flight).
    pub max_in_flight: usize,
    /// Messages one key may hold beyond the running one before its newest
    /// are handed back to JetStream.
    pub key_backlog: usize,
    /// Messages pulled but not acked at most: running, held and awaited.
    pub max_ack_pending: i64,
    /// JetStream redelivers a message not acked (or kept alive) by then; it
    /// is how long a crashed process's messages wait for another replica.
    pub ack_wait: Duration,
    /// Deliveries of one message; the last one must finish it.
    pub max_deliver: i64,
    /// How long a message handed back for the backlog rule stays away at
    /// most; it is about the time the key needs for what it holds (its
    /// recent handling time × its queue), at least half a second (unless
    /// this is shorter).
    pub backlog_delay: Duration,
    /// How long running handlers may take to finish after shutdown.
    pub grace: Duration,
}

impl Limits {
    /// Limits for `max_in_flight` handlers: up to four times as many
    /// messages pending (so the slots stay busy while keys wait on each
    /// other), 32 held per key (a burst from one person is held, a flood
    /// does not take every pending slot).
    pub fn for_in_flight(max_in_flight: usize, ack_wait: Duration, max_deliver: i64, grace: Duration) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            max_in_flight,
            key_backlog: 32,
            max_ack_pending: i64::try_from(max_in_flight.saturating_mul(4).max(64)).unwrap_or(i64::MAX),
            ack_wait,
            max_deliver,
            backlog_delay: Duration::from_secs(30),
            grace,
        }
    }

    /// The durable pull consumer these limits need.
    pub fn pull_config(&self, durable: &str, description: String, filter_subject: String) -> pull::Config {
        pull::Config {
            durable_name: Some(durable.to_owned()),
            description: Some(description),
            filter_subject,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }

    /// How often held and running messages are kept alive.
    fn progress_every(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(50))
    }

    /// A liveness check for a runtime with these limits: silent for three
    /// ticks (and at least 30 s) is stalled.
    pub fn liveness(&self, name: &'static str) -> Liveness {
        Liveness::new(name, (self.progress_every() * 3).max(Duration::from_secs(30)))
    }
}

/// One delivery of a message, with what the handler made of it once
/// ([`Handler::prepare`]).
pub struct Delivery<T> {
    pub msg: Message,
    pub item: T,
    /// The message's stream sequence (stable across redeliveries).
    pub seq: u64,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub delivered: i64,
    max_deliver: i64,
}

impl<T> Delivery<T> {
    /// JetStream will not deliver this message again: finish it now.
    pub fn is_last(&self) -> bool {
        self.max_deliver > 0 && self.delivered >= self.max_deliver
    }
}

/// A message that cannot be processed, for [`Handler::dead_letter`]: either
/// a delivery in hand (panic, retries exhausted) or one read back from the
/// stream after JetStream gave up on it.
pub struct Stranded<'a> {
    pub subject: &'a str,
    pub payload: &'a [u8],
    pub msg_id: Option<String>,
    pub seq: u64,
    pub reason: String,
}

impl<'a> Stranded<'a> {
    /// A delivery in hand.
    pub fn of(msg: &'a jetstream::Message, reason: String) -> Self {
        Self {
            subject: msg.subject.as_str(),
            payload: &msg.payload,
            msg_id: crate::bus::msg_id_of(msg.headers.as_ref()),
            seq: msg.info().map(|i| i.stream_sequence).unwrap_or_default(),
            reason,
        }
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a service plugs into the runtime.
pub trait Handler: Send + Sync + 'static {
    /// The decoded message, made once per delivery.
    type Item: Send + Sync + 'static;

    /// The key of a stored message; `None` runs it on its own.
    fn key(&self, payload: &[u8]) -> Option<Key>;

    /// Decodes a message once per delivery.
    fn decode(&self, msg: &Message) -> Self::Item;

    /// Both at once (a handler may do it with one decode).
    fn prepare(&self, msg: &Message) -> (Option<Key>, Self::Item) {
        (self.key(&msg.payload), self.decode(msg))
    }

    /// Handles one delivery. The runtime acks or naks as the result says
    /// and keeps the message alive meanwhile.
    fn handle(&self, delivery: &Delivery<Self::Item>) -> impl Future<Output = Disposition> + Send;

    /// Records a dead letter for a message that cannot be processed. It must
    /// be idempotent by `seq` (two replicas may both try).
    fn dead_letter(&self, stranded: Stranded<'_>) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The consumer's config on the server compared with what the code wants:
/// fields that differ are updated; those JetStream cannot change on an
/// existing consumer are named in a warning.
pub async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    wanted: pull::Config,
) -> Result<PullConsumer, BoxError> {
    let name = wanted.durable_name.clone().unwrap_or_default();
    let mut consumer: PullConsumer = stream.get_or_create_consumer(&name, wanted.clone()).await?;
    let have = consumer.info().await?.config.clone();
    let differs = [
        ("ack_wait", have.ack_wait != wanted.ack_wait, true),
        ("max_deliver", have.max_deliver != wanted.max_deliver, true),
        ("max_ack_pending", have.max_ack_pending != wanted.max_ack_pending, true),
        ("description", have.description != wanted.description, true),
        ("filter_subject", have.filter_subject != wanted.filter_subject, false),
        ("ack_policy", have.ack_policy != wanted.ack_policy, false),
    ];
    let pick = |updatable: bool| -> Vec<&str> {
        differs.iter().filter(|(_, d, u)| *d && *u == updatable).map(|(name, _, _)| *name).collect()
    };
    let (changed, fixed) = (pick(true), pick(false));
    if !fixed.is_empty() {
        warn!(
            consumer = %name,
            fields = ?fixed,
            "the durable consumer on the server differs in fields JetStream cannot change; delete it (nats consumer rm) \
             while the service is stopped so that it is created anew"
        );
    }
    if !changed.is_empty() {
        // Creating a durable that exists with a changed config updates it
        // (nats-server 2.9 and later, for the fields JetStream lets change).
        match stream.create_consumer(wanted).await {
            Ok(updated) => {
                info!(consumer = %name, fields = ?changed, outcome = "updated", "durable consumer config brought up to date");
                consumer = updated;
            }
            Err(e) => warn!(
                consumer = %name,
                fields = ?changed,
                error = &e as &dyn std::error::Error,
                "cannot update the durable consumer's config; running with the server's"
            ),
        }
    }
    Ok(consumer)
}

struct KeyState<T> {
    running: Option<Arc<Delivery<T>>>,
    /// Held messages, in stream order.
    queue: VecDeque<Arc<Delivery<T>>>,
    /// Sequences handed back to JetStream that must come back before any
    /// later message of this key runs, with when to stop waiting.
    awaited: BTreeMap<u64, Instant>,
    in_ready: bool,
    /// Moving average of how long this key's handler calls take.
    handling: Option<Duration>,
}

impl<T> KeyState<T> {
    fn new() -> Self {
        Self { running: None, queue: VecDeque::new(), awaited: BTreeMap::new(), in_ready: false, handling: None }
    }

    fn runnable(&self) -> bool {
        let Some(front) = self.queue.front() else { return false };
        self.running.is_none() && self.awaited.first_key_value().is_none_or(|(seq, _)| *seq > front.seq)
    }

    fn idle(&self) -> bool {
        self.running.is_none() && self.queue.is_empty() && self.awaited.is_empty()
    }
}

/// Runs a consumer until `shutdown`: the pull loop, the handlers and the
/// max-deliveries advisory listener.
pub struct Runtime<H: Handler> {
    pub name: &'static str,
    pub handler: Arc<H>,
    pub consumer: PullConsumer,
    pub limits: Limits,
    /// For the advisory listener (`None` in tests that don't need it).
    pub client: Option<async_nats::Client>,
    /// Beaten by the dispatcher; read by `/api/health`.
    pub liveness: Liveness,
}

impl<H: Handler> Runtime<H> {
    pub async fn run(self, shutdown: CancellationToken) {
        let advisories = match &self.client {
            Some(client) => Some(tokio::spawn(watch_advisories(
                client.clone(),
                self.consumer.clone(),
                self.handler.clone(),
                self.name,
                shutdown.clone(),
            ))),
            None => None,
        };
        let stream = match (&self.client, self.consumer.cached_info()) {
            (Some(client), info) => jetstream::new(client.clone()).get_stream(&info.stream_name).await.ok(),
            (None, _) => None,
        };
        let mut d = Dispatcher {
            stream,
            name: self.name,
            handler: self.handler,
            limits: self.limits,
            keys: HashMap::new(),
            ready: VecDeque::new(),
            tasks: JoinSet::new(),
            held: 0,
            stopping: false,
            scanned: 0,
            unresolved: BTreeMap::new(),
            liveness: self.liveness,
        };
        d.adopt_pending(&self.consumer).await;
        d.pull(&self.consumer, &shutdown).await;
        d.drain().await;
        if let Some(task) = advisories {
            let _ = task.await;
        }
        info!(consumer = self.name, outcome = "drained", "consumer stopped");
    }
}

struct Done {
    key: Key,
    seq: u64,
    disposition: Disposition,
    took: Duration,
}

struct Dispatcher<H: Handler> {
    /// The consumer's stream, to look messages up by sequence.
    stream: Option<jetstream::stream::Stream>,
    name: &'static str,
    handler: Arc<H>,
    limits: Limits,
    keys: HashMap<Key, KeyState<H::Item>>,
    /// Keys that could run but wait for a free slot, oldest first.
    ready: VecDeque<Key>,
    tasks: JoinSet<Done>,
    /// Messages held (queued, not running).
    held: usize,
    /// Shutdown passed the point where new work may start.
    stopping: bool,
    /// The highest stream sequence seen (delivered here or looked up).
    scanned: u64,
    /// Sequences in a gap whose stored message could not be read (the
    /// stream had no leader, NATS was away), so their key is unknown: no
    /// message after one of them starts until it is read, found gone, or
    /// expires. Without this a leader's failover could let a conversation's
    /// later message overtake an earlier one held by another replica.
    unresolved: BTreeMap<u64, Instant>,
    liveness: Liveness,
}

impl<H: Handler> Dispatcher<H> {
    async fn pull(&mut self, consumer: &PullConsumer, shutdown: &CancellationToken) {
        let mut ticks = tokio::time::interval(self.limits.progress_every());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let batch = self.limits.max_in_flight.clamp(8, 256);
        let mut rechecks = tokio::time::interval(Duration::from_millis(250));
        rechecks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'pull: while !shutdown.is_cancelled() {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                s = consumer
                    .stream()
                    .max_messages_per_batch(batch)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(10))
                    .messages() => s,
            };
            let mut messages = match stream {
                Ok(m) => m,
                Err(e) => {
                    warn!(consumer = self.name, error = &e as &dyn std::error::Error, "cannot pull; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                self.liveness.beat();
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break 'pull,
                    Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => self.finished(done),
                    _ = ticks.tick() => self.tick().await,
                    _ = rechecks.tick() => self.recheck().await,
                    next = messages.next() => match next {
                        Some(Ok(msg)) => self.arrived(msg).await,
                        // Missed heartbeats after a NATS restart and the like:
                        // the stream recovers by itself.
                        Some(Err(e)) => debug!(consumer = self.name, error = &e as &dyn std::error::Error, "pull error"),
                        None => continue 'pull,
                    },
                }
            }
        }
    }

    /// Awaits, by key, what was delivered before this process started and
    /// is not acked: a crashed predecessor's messages, which come back
    /// after the ack wait and must not be overtaken by their key's later
    /// messages.
    async fn adopt_pending(&mut self, consumer: &PullConsumer) {
        if self.stream.is_none() {
            return;
        }
        let mut consumer = consumer.clone();
        let Ok(info) = consumer.info().await else { return };
        let (floor, delivered) = (info.ack_floor.stream_sequence, info.delivered.stream_sequence);
        self.scanned = delivered;
        if info.num_ack_pending == 0 || delivered <= floor {
            return;
        }
        let adopted = self.await_stored(floor + 1, delivered + 1).await;
        if adopted > 0 {
            info!(
                consumer = self.name,
                messages = adopted,
                "messages delivered before start and not acked are awaited in order"
            );
        }
    }

    /// Awaits, by key, every message still in the stream with a sequence in
    /// `from..to` (bounded by `max_ack_pending`: no more can be pending).
    /// Returns how many there were.
    async fn await_stored(&mut self, from: u64, to: u64) -> u64 {
        let Some(stream) = &self.stream else { return 0 };
        let from = from.max(to.saturating_sub(u64::try_from(self.limits.max_ack_pending).unwrap_or(u64::MAX)));
        let until = Instant::now() + self.limits.ack_wait * 2;
        let mut found = 0;
        for seq in from..to {
            match stream.get_raw_message(seq).await {
                Ok(stored) => {
                    let key = self.handler.key(&stored.payload).unwrap_or(seq ^ 0x9e37_79b9_7f4a_7c15);
                    self.keys.entry(key).or_insert_with(KeyState::new).awaited.insert(seq, until);
                }
                // Acked and removed already: nothing to wait for.
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => continue,
                Err(e) => {
                    if self.unresolved.is_empty() {
                        warn!(consumer = self.name, seq, error = %e, "cannot read a message of a gap; later messages wait until it can be read");
                    }
                    self.unresolved.insert(seq, until);
                }
            }
            found += 1;
        }
        metrics::gauge!("smsgate_consumer_unresolved", "consumer" => self.name).set(self.unresolved.len() as f64);
        found
    }

    /// Reads the unresolved sequences again, oldest first: one that can be
    /// read is awaited by its key like any other, one that is gone or
    /// expired is dropped. Stops at the first that still cannot be read.
    async fn resolve(&mut self) {
        if self.unresolved.is_empty() {
            return;
        }
        let Some(stream) = &self.stream else {
            self.unresolved.clear();
            return;
        };
        let now = Instant::now();
        let pending: Vec<(u64, Instant)> = self.unresolved.iter().map(|(s, u)| (*s, *u)).collect();
        let mut changed = false;
        for (seq, until) in pending {
            if until <= now {
                warn!(consumer = self.name, seq, "a message of a gap could not be read in time; no longer waited for");
                self.unresolved.remove(&seq);
                changed = true;
                continue;
            }
            match stream.get_raw_message(seq).await {
                Ok(stored) => {
                    let key = self.handler.key(&stored.payload).unwrap_or(seq ^ 0x9e37_79b9_7f4a_7c15);
                    self.keys.entry(key).or_insert_with(KeyState::new).awaited.insert(seq, until);
                }
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
                Err(_) => break,
            }
            self.unresolved.remove(&seq);
            changed = true;
        }
        metrics::gauge!("smsgate_consumer_unresolved", "consumer" => self.name).set(self.unresolved.len() as f64);
        if changed {
            let keys: Vec<Key> = self.keys.keys().copied().collect();
            for key in keys {
                self.schedule(key);
            }
        }
    }

    /// Releases awaited messages that are gone from the work queue (acked by
    /// another replica) where they hold up a key's next message; cheap
    /// enough to run often, so a conversation shared with another replica
    /// moves on soon after the other replica's ack.
    async fn recheck(&mut self) {
        self.resolve().await;
        let Some(stream) = &self.stream else { return };
        let mut moved = Vec::new();
        for (key, state) in &mut self.keys {
            let Some(front) = state.queue.front().map(|d| d.seq) else { continue };
            if state.running.is_some() {
                continue;
            }
            let blocking: Vec<u64> = state.awaited.range(..front).map(|(seq, _)| *seq).collect();
            for seq in blocking {
                if let Err(e) = stream.get_raw_message(seq).await
                    && e.kind() == RawMessageErrorKind::NoMessageFound
                {
                    state.awaited.remove(&seq);
                    moved.push(*key);
                }
            }
        }
        for key in moved {
            self.schedule(key);
        }
    }

    async fn arrived(&mut self, msg: Message) {
        let info = match msg.info() {
            Ok(i) => (i.stream_sequence, i.delivered),
            Err(e) => {
                warn!(consumer = self.name, error = %e, "message without JetStream metadata; ignored");
                return;
            }
        };
        let (seq, delivered) = info;
        // Messages between the last one seen here and this one went to other
        // replicas (or are not delivered yet): those still in the stream are
        // awaited by their keys, so a conversation keeps its order across
        // replicas. One replica alone sees no gaps.
        if seq > self.scanned + 1 {
            self.await_stored(self.scanned + 1, seq).await;
        }
        self.scanned = self.scanned.max(seq);
        let (key, item) = self.handler.prepare(&msg);
        // A message without a key runs alone (its own key, from its sequence).
        let key = key.unwrap_or(seq ^ 0x9e37_79b9_7f4a_7c15);
        let delivery = Arc::new(Delivery { msg, item, seq, delivered, max_deliver: self.limits.max_deliver });
        self.unresolved.remove(&seq);
        let state = self.keys.entry(key).or_insert_with(KeyState::new);
        state.awaited.remove(&seq);
        match state.queue.binary_search_by_key(&seq, |d| d.seq) {
            // A redelivery of a message still held (kept alive too late): the
            // new delivery carries the live ack token.
            Ok(at) => state.queue[at] = delivery,
            Err(at) => {
                state.queue.insert(at, delivery);
                self.held += 1;
            }
        }
        // Over the backlog: the newest goes back to JetStream for a while,
        // unless it has few deliveries left (then it stays held).
        if state.queue.len() > self.limits.key_backlog
            && let Some(last) = state.queue.back()
            && last.delivered < self.limits.max_deliver / 2
            && let Some(last) = state.queue.pop_back()
        {
            self.held -= 1;
            // Back about when the key has worked through what it holds.
            let per_message = state.handling.unwrap_or(Duration::from_secs(1));
            let backlog = u32::try_from(state.queue.len()).unwrap_or(u32::MAX);
            let delay =
                per_message.saturating_mul(backlog).max(Duration::from_millis(500)).min(self.limits.backlog_delay);
            state.awaited.insert(last.seq, Instant::now() + delay + self.limits.ack_wait * 2);
            metrics::counter!("smsgate_consumer_deferred_total", "consumer" => self.name).increment(1);
            if let Err(e) = last.msg.ack_with(AckKind::Nak(Some(delay))).await {
                warn!(consumer = self.name, error = %e, "cannot hand a message back; it returns after the ack wait");
            }
        }
        self.schedule(key);
        self.gauges();
    }

    /// Starts `key`'s next message if it may run and a slot is free, or
    /// queues the key for the next free slot.
    fn schedule(&mut self, key: Key) {
        let Some(state) = self.keys.get_mut(&key) else { return };
        if !state.runnable() {
            if state.idle() {
                self.keys.remove(&key);
            }
            return;
        }
        // Behind a message of unknown key: it may be this key's.
        if let (Some((first, _)), Some(front)) = (self.unresolved.first_key_value(), state.queue.front())
            && *first < front.seq
        {
            return;
        }
        if self.stopping {
            return;
        }
        if self.tasks.len() >= self.limits.max_in_flight {
            if !state.in_ready {
                state.in_ready = true;
                self.ready.push_back(key);
            }
            return;
        }
        let Some(delivery) = state.queue.pop_front() else { return };
        self.held -= 1;
        state.running = Some(delivery.clone());
        let handler = self.handler.clone();
        let name = self.name;
        self.tasks.spawn(run_one(name, handler, key, delivery));
    }

    fn finished(&mut self, done: Result<Done, tokio::task::JoinError>) {
        let done = match done {
            Ok(d) => d,
            // Only an abort ends a task without a result (panics are caught
            // inside), and aborts happen only after the pull loop ended.
            Err(e) => {
                error!(consumer = self.name, error = %e, "handler task ended without a result");
                return;
            }
        };
        if let Some(state) = self.keys.get_mut(&done.key) {
            state.running = None;
            state.handling = Some(match state.handling {
                Some(avg) => (avg * 3 + done.took) / 4,
                None => done.took,
            });
            if let Disposition::Retry(delay) = done.disposition {
                state.awaited.insert(done.seq, Instant::now() + delay + self.limits.ack_wait * 2);
            }
        }
        self.schedule(done.key);
        while self.tasks.len() < self.limits.max_in_flight {
            let Some(key) = self.ready.pop_front() else { break };
            if let Some(state) = self.keys.get_mut(&key) {
                state.in_ready = false;
            }
            self.schedule(key);
        }
        self.gauges();
    }

    /// Keeps every held and running message alive; stops awaiting messages
    /// that did not come back in time (another replica may have taken them).
    async fn tick(&mut self) {
        self.liveness.beat();
        let now = Instant::now();
        let mut expired = Vec::new();
        for (key, state) in &mut self.keys {
            for d in state.queue.iter().chain(state.running.iter()) {
                let _ = d.msg.ack_with(AckKind::Progress).await;
            }
            let before = state.awaited.len();
            state.awaited.retain(|_, until| *until > now);
            if let Some(stream) = &self.stream {
                let mut gone = Vec::new();
                for seq in state.awaited.keys() {
                    if let Err(e) = stream.get_raw_message(*seq).await
                        && e.kind() == RawMessageErrorKind::NoMessageFound
                    {
                        gone.push(*seq);
                    }
                }
                for seq in gone {
                    state.awaited.remove(&seq);
                }
            }
            if state.awaited.len() != before {
                expired.push(*key);
            }
        }
        for key in expired {
            self.schedule(key);
        }
    }

    fn gauges(&self) {
        metrics::gauge!("smsgate_consumer_running", "consumer" => self.name).set(self.tasks.len() as f64);
        metrics::gauge!("smsgate_consumer_held", "consumer" => self.name).set(self.held as f64);
    }

    /// Hands back the held messages of every key that is not running (a
    /// running key's are handed back when it finishes, so that another
    /// replica cannot answer them before the one in hand).
    async fn release_idle(&mut self, delay: Option<Duration>) {
        for state in self.keys.values_mut().filter(|s| s.running.is_none()) {
            for d in state.queue.drain(..) {
                let _ = d.msg.ack_with(AckKind::Nak(delay)).await;
                self.held -= 1;
            }
        }
        self.keys.retain(|_, s| s.running.is_some());
    }

    /// After the pull loop. For the first half of the grace period held
    /// messages still start (in order, nothing new is pulled); then what
    /// waits goes back to JetStream, and running handlers get the rest of
    /// the grace period before they are aborted.
    async fn drain(&mut self) {
        let grace = self.limits.grace;
        let started = Instant::now();
        let mut ticks = tokio::time::interval(self.limits.progress_every());
        while !self.tasks.is_empty() {
            self.liveness.beat();
            tokio::select! {
                Some(done) = self.tasks.join_next() => self.finished(done),
                _ = ticks.tick() => self.tick().await,
                _ = tokio::time::sleep_until(started + grace / 2) => break,
            }
        }
        self.stopping = true;
        self.release_idle(None).await;
        while !self.tasks.is_empty() {
            self.liveness.beat();
            tokio::select! {
                Some(done) = self.tasks.join_next() => {
                    self.finished(done);
                    self.release_idle(None).await;
                }
                _ = ticks.tick() => self.tick().await,
                _ = tokio::time::sleep_until(started + grace) => {
                    warn!(
                        consumer = self.name,
                        running = self.tasks.len(),
                        grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                        outcome = "aborted",
                        "in-flight messages did not finish within the grace period; they come back after the ack wait"
                    );
                    self.tasks.abort_all();
                    while self.tasks.join_next().await.is_some() {}
                    for state in self.keys.values_mut() {
                        state.running = None;
                    }
                    // After the aborted ones, which come back after the ack wait.
                    self.release_idle(Some(self.limits.ack_wait)).await;
                }
            }
        }
        self.gauges();
    }
}

/// One handler call: panics caught, the result settled with JetStream.
async fn run_one<H: Handler>(name: &'static str, handler: Arc<H>, key: Key, d: Arc<Delivery<H::Item>>) -> Done {
    let started = Instant::now();
    let outcome = AssertUnwindSafe(handler.handle(&d)).catch_unwind().await;
    let mut disposition = match outcome {
        Ok(disposition) => disposition,
        Err(panic) => {
            let text = panic_text(panic.as_ref());
            metrics::counter!("smsgate_consumer_panics_total", "consumer" => name).increment(1);
            error!(consumer = name, seq = d.seq, panic = %text, outcome = "panicked", "handler panicked; dead-lettering the message");
            give_up(name, handler.as_ref(), &d, format!("the handler panicked: {text}")).await
        }
    };
    if let Disposition::Retry(_) = disposition
        && d.is_last()
    {
        let reason = format!("deliveries exhausted ({} of {})", d.delivered, d.max_deliver);
        disposition = give_up(name, handler.as_ref(), &d, reason).await;
    }
    let result = match disposition {
        Disposition::Ack => d.msg.double_ack().await,
        Disposition::Retry(delay) => d.msg.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::Release => d.msg.ack_with(AckKind::Nak(None)).await,
    };
    if let Err(e) = result {
        // A lost ack means a redelivery, which the handlers' idempotency
        // makes harmless; a lost nak means a redelivery after the ack wait.
        warn!(consumer = name, seq = d.seq, error = %e, ?disposition, "cannot ack or nak");
    }
    Done { key, seq: d.seq, disposition, took: started.elapsed() }
}

/// Dead-letters a delivery and acks it; if even that fails, hands it back
/// (the advisory listener is the last resort).
async fn give_up<H: Handler>(name: &'static str, handler: &H, d: &Delivery<H::Item>, reason: String) -> Disposition {
    let stranded = Stranded { seq: d.seq, ..Stranded::of(&d.msg, reason) };
    match AssertUnwindSafe(handler.dead_letter(stranded)).catch_unwind().await {
        Ok(Ok(())) => Disposition::Ack,
        Ok(Err(e)) => {
            warn!(consumer = name, seq = d.seq, error = &*e as &dyn std::error::Error, "cannot dead-letter; retrying");
            Disposition::Retry(Duration::from_secs(2))
        }
        Err(_) => {
            error!(consumer = name, seq = d.seq, "dead-lettering panicked too; retrying");
            Disposition::Retry(Duration::from_secs(2))
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// JetStream's `MAX_DELIVERIES` advisory (the fields used here).
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: i64,
}

/// Dead-letters what JetStream stopped delivering: read by sequence, handed
/// to the handler, deleted from the work queue.
async fn watch_advisories<H: Handler>(
    client: async_nats::Client,
    mut consumer: PullConsumer,
    handler: Arc<H>,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let (stream_name, consumer_name) = match consumer.info().await {
        Ok(i) => (i.stream_name.clone(), i.name.clone()),
        Err(e) => {
            warn!(consumer = name, error = %e, "cannot read the consumer's info; max-deliveries advisories not watched");
            return;
        }
    };
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{consumer_name}");
    let mut sub = match client.queue_subscribe(subject, format!("smsgate-{consumer_name}")).await {
        Ok(s) => s,
        Err(e) => {
            warn!(consumer = name, error = %e, "cannot watch max-deliveries advisories");
            return;
        }
    };
    let js = jetstream::new(client);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&msg.payload) else {
            warn!(consumer = name, "unreadable max-deliveries advisory");
            continue;
        };
        let seq = advisory.stream_seq;
        metrics::counter!("smsgate_consumer_max_deliveries_total", "consumer" => name).increment(1);
        let stream = match js.get_stream(&stream_name).await {
            Ok(s) => s,
            Err(e) => {
                warn!(consumer = name, seq, error = %e, "cannot open the stream for a stranded message");
                continue;
            }
        };
        let raw = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // Already gone: acked late, or another replica dealt with it.
            Err(e) => {
                debug!(consumer = name, seq, error = %e, "stranded message already gone");
                continue;
            }
        };
        let stranded = Stranded {
            subject: raw.subject.as_str(),
            payload: &raw.payload,
            msg_id: crate::bus::msg_id_of(Some(&raw.headers)),
            seq,
            reason: format!("JetStream stopped delivering it after {} deliveries", advisory.deliveries),
        };
        match handler.dead_letter(stranded).await {
            Ok(()) => {
                warn!(consumer = name, seq, outcome = "dead_letter", "message ran out of deliveries; dead-lettered");
                if let Err(e) = stream.delete_message(seq).await {
                    debug!(consumer = name, seq, error = %e, "cannot delete the stranded message (gone already?)");
                }
            }
            Err(e) => error!(
                consumer = name,
                seq,
                error = &*e as &dyn std::error::Error,
                outcome = "stranded",
                "a message ran out of deliveries and cannot be dead-lettered"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_separate_their_parts() {
        assert_eq!(key_of(&["c", "+1555"]), key_of(&["c", "+1555"]));
        assert_ne!(key_of(&["c", "+1555"]), key_of(&["c+", "1555"]));
    }

    #[test]
    fn a_dispatcher_that_stops_beating_is_reported_stalled() {
        let alive = Liveness::new("t", Duration::from_millis(50));
        alive.beat();
        assert!(alive.stalled().is_none());
        std::thread::sleep(Duration::from_millis(120));
        assert!(alive.stalled().is_some_and(|s| s >= Duration::from_millis(50)));
        alive.beat();
        assert!(alive.stalled().is_none());
    }

    #[test]
    fn limits_derive_ack_pending_from_the_slots() {
        let l = Limits::for_in_flight(512, Duration::from_secs(30), 10, Duration::from_secs(20));
        assert_eq!(l.max_ack_pending, 2048);
        let small = Limits::for_in_flight(2, Duration::from_secs(30), 10, Duration::from_secs(20));
        assert_eq!(small.max_ack_pending, 64);
    }
}
