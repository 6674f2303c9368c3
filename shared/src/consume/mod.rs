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
//!
//! # Layout
//!
//! - this file: the vocabulary a service uses ([`Handler`], [`Delivery`],
//!   [`Disposition`], [`Key`], [`Stranded`]) and [`Runtime`], which wires
//!   the parts below together;
//! - `limits`: the bounds of one consumer ([`Limits`]) and the durable
//!   consumer on the server that follows from them ([`ensure_consumer`]);
//! - `liveness`: the dispatcher's heartbeat for `/api/health` ([`Liveness`]);
//! - `dispatch`: the dispatcher: pulling, per-key queues, starting handlers
//!   in order, keeping held messages alive;
//! - `awaiting`: the sequences a key waits for (handed back, delivered
//!   elsewhere, left by a crashed predecessor, not readable yet);
//! - `task`: one handler call: panics caught, the result settled with
//!   JetStream, giving up on the last delivery;
//! - `advisories`: the max-deliveries advisory listener;
//! - `shutdown`: draining within the grace period.

mod advisories;
mod awaiting;
mod dispatch;
mod limits;
mod liveness;
mod shutdown;
mod task;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, Message};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use advisories::watch_advisories;
use dispatch::Dispatcher;
pub use limits::{Limits, ensure_consumer};
pub use liveness::Liveness;

/// A conversation: messages with one key are handled one at a time, in
/// stream order.
pub type Key = u64;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_separate_their_parts() {
        assert_eq!(key_of(&["c", "+1555"]), key_of(&["c", "+1555"]));
        assert_ne!(key_of(&["c", "+1555"]), key_of(&["c+", "1555"]));
    }
}
