//! What a key waits for before its next message may run: sequences handed
//! back to JetStream, delivered to another replica, left unacked by a
//! crashed predecessor, or not readable yet (their key unknown). Each is
//! awaited until it comes back here, is gone from the work queue, or
//! expires.

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::RawMessageErrorKind;
use tokio::time::Instant;
use tracing::{info, warn};

use super::dispatch::{Dispatcher, KeyState};
use super::{Handler, Key};

impl<H: Handler> Dispatcher<H> {
    /// Awaits, by key, what was delivered before this process started and
    /// is not acked: a crashed predecessor's messages, which come back
    /// after the ack wait and must not be overtaken by their key's later
    /// messages.
    pub(super) async fn adopt_pending(&mut self, consumer: &PullConsumer) {
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
    pub(super) async fn await_stored(&mut self, from: u64, to: u64) -> u64 {
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
    pub(super) async fn recheck(&mut self) {
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
}
