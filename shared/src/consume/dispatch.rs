//! The dispatcher: the one task that owns the runtime's state. It pulls,
//! queues each message by key in stream order, starts a key's next message
//! when the key may run and a slot is free, applies the backlog rule and
//! keeps held and running messages alive.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::task::{Done, run_one};
use super::{Delivery, Disposition, Handler, Key, Limits, Liveness};

pub(super) struct KeyState<T> {
    pub(super) running: Option<Arc<Delivery<T>>>,
    /// Held messages, in stream order.
    pub(super) queue: VecDeque<Arc<Delivery<T>>>,
    /// Sequences handed back to JetStream that must come back before any
    /// later message of this key runs, with when to stop waiting.
    pub(super) awaited: BTreeMap<u64, Instant>,
    pub(super) in_ready: bool,
    /// Moving average of how long this key's handler calls take.
    pub(super) handling: Option<Duration>,
}

impl<T> KeyState<T> {
    pub(super) fn new() -> Self {
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

pub(super) struct Dispatcher<H: Handler> {
    /// The consumer's stream, to look messages up by sequence.
    pub(super) stream: Option<jetstream::stream::Stream>,
    pub(super) name: &'static str,
    pub(super) handler: Arc<H>,
    pub(super) limits: Limits,
    pub(super) keys: HashMap<Key, KeyState<H::Item>>,
    /// Keys that could run but wait for a free slot, oldest first.
    pub(super) ready: VecDeque<Key>,
    pub(super) tasks: JoinSet<Done>,
    /// Messages held (queued, not running).
    pub(super) held: usize,
    /// Shutdown passed the point where new work may start.
    pub(super) stopping: bool,
    /// The highest stream sequence seen (delivered here or looked up).
    pub(super) scanned: u64,
    /// Sequences in a gap whose stored message could not be read (the
    /// stream had no leader, NATS was away), so their key is unknown: no
    /// message after one of them starts until it is read, found gone, or
    /// expires. Without this a leader's failover could let a conversation's
    /// later message overtake an earlier one held by another replica.
    pub(super) unresolved: BTreeMap<u64, Instant>,
    pub(super) liveness: Liveness,
}

impl<H: Handler> Dispatcher<H> {
    pub(super) async fn pull(&mut self, consumer: &PullConsumer, shutdown: &CancellationToken) {
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
    pub(super) fn schedule(&mut self, key: Key) {
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

    pub(super) fn finished(&mut self, done: Result<Done, tokio::task::JoinError>) {
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
    pub(super) async fn tick(&mut self) {
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

    pub(super) fn gauges(&self) {
        metrics::gauge!("smsgate_consumer_running", "consumer" => self.name).set(self.tasks.len() as f64);
        metrics::gauge!("smsgate_consumer_held", "consumer" => self.name).set(self.held as f64);
    }
}
