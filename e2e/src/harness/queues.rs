//! What is still in the work queues: waiting until they drain, describing
//! and peeking at them when a test fails.

use anyhow::bail;
use async_nats::jetstream::consumer;
use std::time::Duration;
use tokio::time::Instant;

use super::*;

impl Stack {
    /// Messages still stored in a work-queue stream (acked ones are gone).
    pub async fn queued(&self, stream: &str) -> anyhow::Result<u64> {
        let mut s = self.js.get_stream(stream).await?;
        Ok(s.info().await?.state.messages)
    }

    /// Waits until the worker's and the sender's durable consumers have
    /// nothing left to deliver and nothing awaiting an ack (a nak with a
    /// delay stays pending): every message was processed to the end, twice
    /// in a row a moment apart. Returns what the work queues still store
    /// then ([`Leftovers`]): normally nothing, as an ack deletes a message.
    pub async fn wait_drained(&self, timeout: Duration) -> anyhow::Result<Leftovers> {
        let deadline = Instant::now() + timeout;
        let mut quiet = 0;
        loop {
            let state = self.queue_state().await.ok();
            quiet = if state.as_ref().is_some_and(|s| s.idle()) { quiet + 1 } else { 0 };
            if quiet >= 2
                && let Some(s) = state
            {
                return Ok(Leftovers { inbound: s.inbound.0, outbound: s.outbound.0 });
            }
            if Instant::now() > deadline {
                let detail = self.describe_queues().await;
                bail!("the pipeline did not drain within {timeout:?}: {state:?}\n{detail}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn queue_state(&self) -> anyhow::Result<QueueState> {
        let one = |stream: String, consumer: &'static str| async move {
            let mut s = self.js.get_stream(&stream).await?;
            let messages = s.info().await?.state.messages;
            let mut c: consumer::PullConsumer = s.get_consumer(consumer).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = c.info().await?;
            anyhow::Ok((messages, info.num_pending, info.num_ack_pending))
        };
        Ok(QueueState {
            inbound: one(self.topology.inbound_stream(), smsgate_worker::CONSUMER).await?,
            outbound: one(self.topology.outbound_stream(), smsgate_sender::OUTBOUND_CONSUMER).await?,
        })
    }

    /// What is left in the work queues and what their consumers think, for
    /// a failure message.
    pub async fn describe_queues(&self) -> String {
        let mut out = String::new();
        let queues = [
            (self.topology.inbound_stream(), smsgate_worker::CONSUMER),
            (self.topology.outbound_stream(), smsgate_sender::OUTBOUND_CONSUMER),
        ];
        for (stream, consumer) in queues {
            out.push_str(&self.peek(&stream, 10).await);
            let info = match self.js.get_stream(&stream).await {
                Ok(s) => {
                    let state = s.cached_info().state.clone();
                    let c: Result<consumer::PullConsumer, _> = s.get_consumer(consumer).await;
                    match c {
                        Ok(mut c) => match c.info().await {
                            Ok(i) => format!(
                                "stream first {} last {} messages {}; consumer {consumer}: delivered {} ack floor {} \
                                 pending {} ack pending {} redelivered {}",
                                state.first_sequence,
                                state.last_sequence,
                                state.messages,
                                i.delivered.stream_sequence,
                                i.ack_floor.stream_sequence,
                                i.num_pending,
                                i.num_ack_pending,
                                i.num_redelivered
                            ),
                            Err(e) => format!("consumer info: {e}"),
                        },
                        Err(e) => format!("consumer: {e}"),
                    }
                }
                Err(e) => format!("stream: {e}"),
            };
            out.push_str(&format!("{stream}: {info}\n"));
        }
        out
    }

    /// The first `n` messages a work queue still stores (an ordered
    /// consumer cannot read a work queue: read them by sequence).
    pub async fn peek(&self, stream: &str, n: usize) -> String {
        let mut out = String::new();
        let Ok(mut s) = self.js.get_stream(stream).await else { return out };
        let Ok(info) = s.info().await else { return out };
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut found = 0;
        for seq in first..=last {
            if found >= n {
                break;
            }
            if let Ok(m) = s.get_raw_message(seq).await {
                found += 1;
                let text = String::from_utf8_lossy(&m.payload);
                out.push_str(&format!("{stream}: left seq {seq} {} {}\n", m.subject, &text[..text.len().min(160)]));
            }
        }
        out
    }
}

/// Messages the work queues still store once their consumers are idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    pub inbound: u64,
    pub outbound: u64,
}

/// Per work queue: (messages stored, consumer's pending, consumer's ack pending).
#[derive(Debug)]
struct QueueState {
    inbound: (u64, u64, usize),
    outbound: (u64, u64, usize),
}

impl QueueState {
    fn idle(&self) -> bool {
        let idle = |(_, pending, ack_pending): (u64, u64, usize)| pending == 0 && ack_pending == 0;
        idle(self.inbound) && idle(self.outbound)
    }
}
