//! A pull consumer feeding ordered lanes.
//!
//! Messages are routed by a key hash to one of `lanes` tasks, so different
//! recipients are handled in parallel while one recipient's messages (and
//! one message's pieces) stay strictly in order. Each lane has a short
//! queue; when it is full the puller waits (back-pressure), and
//! `max_ack_pending` bounds what JetStream hands out.
//!
//! Shutdown: the puller stops at once; a lane naks what it has not started
//! (another replica or the restarted process takes it), finishes the
//! message in hand, and anything still running after the grace period is
//! aborted (JetStream redelivers it after `ack_wait`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::Ctx;

/// Messages queued per lane beyond the one in hand.
const LANE_QUEUE: usize = 4;

/// A stable hash for lane routing (FNV-1a: no per-process random seed, so
/// logs of two runs agree on lanes).
pub fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Pulls from `consumer` until shutdown, handing each message to the lane
/// `route(msg) % lanes`.
pub async fn run<H, Fut>(
    name: &'static str,
    consumer: PullConsumer,
    ctx: Arc<Ctx>,
    route: fn(&Message) -> u64,
    handle: H,
) where
    H: Fn(Message) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shutdown = ctx.shutdown.clone();
    let lanes = ctx.tuning.lanes.max(1);
    let mut tasks = JoinSet::new();
    let mut senders = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, mut rx) = mpsc::channel::<Message>(LANE_QUEUE);
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            while let Some(msg) = rx.recv().await {
                if shutdown.is_cancelled() {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    continue;
                }
                // A panic is a bug; it must not take the lane (and with it
                // the puller) down. The message comes back after ack_wait.
                if AssertUnwindSafe(handle(msg)).catch_unwind().await.is_err() {
                    tracing::error!(
                        consumer = name,
                        outcome = "panicked",
                        "handler panicked; message left for redelivery"
                    );
                }
            }
        });
        senders.push(tx);
    }

    'pull: while !shutdown.is_cancelled() {
        // A small batch: what is pulled but not started waits out its ack_wait on shutdown.
        let batch = (lanes * 2).max(4);
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = consumer.stream().max_messages_per_batch(batch).messages() => s,
        };
        let mut messages = match stream {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer = name, error = &e as &dyn std::error::Error, "cannot pull; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'pull,
                n = messages.next() => n,
            };
            let msg = match next {
                None => continue 'pull,
                // Heartbeats missed during a NATS restart and the like: the
                // stream recovers by itself.
                Some(Err(e)) => {
                    tracing::debug!(consumer = name, error = &e as &dyn std::error::Error, "pull stream error");
                    continue;
                }
                Some(Ok(msg)) => msg,
            };
            let lane = (route(&msg) % lanes as u64) as usize;
            let permit = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                    break 'pull;
                }
                p = senders[lane].reserve() => p,
            };
            match permit {
                Ok(permit) => permit.send(msg),
                Err(_) => {
                    tracing::error!(consumer = name, lane, "lane stopped; no longer pulling");
                    break 'pull;
                }
            }
        }
    }

    drop(senders);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(ctx.tuning.grace, drain).await.is_err() {
        tracing::warn!(
            consumer = name,
            outcome = "aborted",
            "in-flight messages did not finish within the grace period"
        );
        tasks.abort_all();
    }
    tracing::info!(consumer = name, outcome = "drained", "consumer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_always_lands_in_the_same_lane() {
        assert_eq!(hash(&["c", "+1555"]), hash(&["c", "+1555"]));
        assert_ne!(hash(&["c", "+1555"]), hash(&["c+", "1555"]));
    }
}
