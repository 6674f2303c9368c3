//! Many messages in flight, each sender's in order: the dispatcher pulls from
//! the durable consumer and routes every message to one of N lanes by a hash
//! of (channel, From); a lane handles its messages one at a time.
//!
//! A message whose chat call failed goes back to JetStream with a delay
//! (nak); meanwhile the lane *parks* that sender's later messages (keeping
//! them alive with `Progress` acks) until the retried one comes back and is
//! finished, so a reply to message 2 never overtakes the reply to message 1.
//! Parking gives up after the retry delay plus the ack wait (say the message
//! went to another worker), so a sender is never stuck.
//!
//! On shutdown the dispatcher stops pulling at once; each lane goes on with
//! the messages it already holds for half the grace period, then naks the
//! rest (queued and parked) for the next worker. Order across such a hand-over
//! is JetStream's redelivery order, so it is best effort: naked messages may
//! first be offered to this worker's expiring pull request and come back only
//! after the ack wait.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{AckKind, consumer::PullConsumer};
use futures::StreamExt;
use smsgate_shared::domain::{ChannelId, MessageSid};
use smsgate_shared::envelope;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::process::{Disposition, Job, Outcome, Processor};

type SenderKey = (ChannelId, String);

/// Pulls until `shutdown`, then lets the lanes drain.
pub async fn run(processor: Arc<Processor>, consumer: PullConsumer, shutdown: CancellationToken) {
    let tuning = processor.tuning.clone();
    let mut lanes = JoinSet::new();
    let stop_by = Arc::new(OnceLock::new());
    let mut senders = Vec::with_capacity(tuning.lanes);
    for _ in 0..tuning.lanes.max(1) {
        let (tx, rx) = mpsc::channel(tuning.lane_depth.max(1));
        senders.push(tx);
        lanes.spawn(lane(processor.clone(), rx, stop_by.clone()));
    }
    let mut shrink = tokio::time::interval(Duration::from_secs(60));
    'pull: while !shutdown.is_cancelled() {
        let stream = consumer
            .stream()
            .max_messages_per_batch(tuning.lanes.max(1) * 2)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(10))
            .messages()
            .await;
        let mut messages = match stream {
            Ok(m) => m,
            Err(e) => {
                warn!(error = &e as &dyn std::error::Error, "cannot pull from the inbound consumer; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break 'pull,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'pull,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'pull,
                _ = shrink.tick() => { processor.limiter.shrink(); continue }
                next = messages.next() => next,
            };
            let msg = match next {
                Some(Ok(msg)) => msg,
                // Non-fatal (missing heartbeat after a server restart, ...): keep going.
                Some(Err(e)) => {
                    warn!(error = &e as &dyn std::error::Error, "pull error");
                    continue;
                }
                None => continue 'pull,
            };
            let inbound = envelope::decode(&msg.payload);
            let job = Job { msg, inbound };
            let index = job.sender_key().map_or(0, |k| lane_of(&k, senders.len()));
            metrics::gauge!("smsgate_worker_in_flight").increment(1.0);
            if senders[index].send(job).await.is_err() {
                error!("a lane stopped unexpectedly");
                break 'pull;
            }
        }
    }
    // Stop pulling: anything the client buffered but did not hand out stays
    // unacked and is redelivered after the ack wait.
    let grace = tuning.shutdown_grace;
    let _ = stop_by.set(Instant::now() + grace / 2);
    drop(senders);
    if tokio::time::timeout(grace, async { while lanes.join_next().await.is_some() {} }).await.is_err() {
        warn!(grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX), "lanes did not drain in time");
        lanes.abort_all();
    }
    info!(outcome = "stopped", "worker stopped pulling and drained");
}

fn lane_of(key: &SenderKey, lanes: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    usize::try_from(h.finish() % lanes as u64).unwrap_or(0)
}

struct Waiting {
    sid: MessageSid,
    until: Instant,
}

struct LaneState {
    p: Arc<Processor>,
    waiting: HashMap<SenderKey, Waiting>,
    parked: HashMap<SenderKey, VecDeque<Job>>,
}

/// `stop_by` is set when shutdown starts: queued messages are still worked
/// on (in order) until then; what is left goes back to JetStream.
async fn lane(p: Arc<Processor>, mut rx: mpsc::Receiver<Job>, stop_by: Arc<OnceLock<Instant>>) {
    let every = (p.tuning.ack_wait / 3).max(Duration::from_millis(100));
    let mut ticks = tokio::time::interval(every);
    let mut state = LaneState { p, waiting: HashMap::new(), parked: HashMap::new() };
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(job) if stop_by.get().is_some_and(|t| Instant::now() >= *t) => release(&job, None).await,
                Some(job) => state.handle(job).await,
                None => break,
            },
            _ = ticks.tick() => state.tick().await,
        }
    }
    // Shutting down: whatever is parked goes back to JetStream now.
    for (_, jobs) in state.parked.drain() {
        for job in jobs {
            release(&job, None).await;
        }
    }
}

impl LaneState {
    async fn handle(&mut self, job: Job) {
        let key = job.sender_key();
        if let Some(key) = &key
            && let Some(w) = self.waiting.get(key)
            && job.sid() != Some(&w.sid)
            && Instant::now() < w.until
        {
            self.parked.entry(key.clone()).or_default().push_back(job);
            return;
        }
        self.run(job).await;
        // Run what this one held back, in order, until one has to wait again.
        if let Some(key) = key {
            while !self.waiting.contains_key(&key) {
                let Some(next) = self.parked.get_mut(&key).and_then(VecDeque::pop_front) else { break };
                self.run(next).await;
            }
            if self.parked.get(&key).is_some_and(VecDeque::is_empty) {
                self.parked.remove(&key);
            }
        }
    }

    async fn run(&mut self, job: Job) {
        let key = job.sender_key();
        let sid = job.sid().cloned();
        let result = self.p.process(&job).await;
        let (disposition, outcome) = match result {
            Ok(r) => r,
            Err(e) => {
                // NATS trouble mid-way: everything done so far is idempotent, so
                // the message simply comes back.
                warn!(error = &e as &dyn std::error::Error, outcome = "error", "processing failed; will retry");
                (Disposition::Retry(self.p.tuning.error_delay), Outcome::Error)
            }
        };
        metrics::counter!("smsgate_worker_messages_total", "outcome" => outcome.as_str()).increment(1);
        match disposition {
            Disposition::Ack => {
                if let Err(e) = job.msg.double_ack().await {
                    // The work is recorded as done in P_seen: a redelivery only acks.
                    warn!(error = %e, "ack not confirmed");
                }
                metrics::gauge!("smsgate_worker_in_flight").decrement(1.0);
                if let Some(key) = key
                    && self.waiting.get(&key).is_some_and(|w| Some(&w.sid) == sid.as_ref())
                {
                    self.waiting.remove(&key);
                }
            }
            Disposition::Retry(delay) => {
                release(&job, Some(delay)).await;
                if let (Some(key), Some(sid)) = (key, sid) {
                    let until = Instant::now() + delay + self.p.tuning.ack_wait * 2;
                    self.waiting.insert(key, Waiting { sid, until });
                }
            }
        }
    }

    /// Keeps parked messages alive, and lets them go once their predecessor
    /// has not come back in time.
    async fn tick(&mut self) {
        for jobs in self.parked.values() {
            for job in jobs {
                let _ = job.msg.ack_with(AckKind::Progress).await;
            }
        }
        let now = Instant::now();
        let expired: Vec<SenderKey> =
            self.waiting.iter().filter(|(_, w)| w.until <= now).map(|(k, _)| k.clone()).collect();
        for key in expired {
            self.waiting.remove(&key);
            while !self.waiting.contains_key(&key) {
                let Some(next) = self.parked.get_mut(&key).and_then(VecDeque::pop_front) else { break };
                self.run(next).await;
            }
            if self.parked.get(&key).is_some_and(VecDeque::is_empty) {
                self.parked.remove(&key);
            }
        }
    }
}

/// Hands a message back to JetStream (nak, with a delay).
async fn release(job: &Job, delay: Option<Duration>) {
    if let Err(e) = job.msg.ack_with(AckKind::Nak(delay)).await {
        warn!(error = %e, "nak failed; the message comes back after the ack wait");
    }
    metrics::gauge!("smsgate_worker_in_flight").decrement(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sender_always_maps_to_one_lane() {
        let key = (ChannelId::parse("c").unwrap(), "+14155550100".to_owned());
        let lane = lane_of(&key, 16);
        assert!(lane < 16);
        for _ in 0..10 {
            assert_eq!(lane_of(&key, 16), lane);
        }
    }
}
