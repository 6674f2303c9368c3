//! Shutdown after the pull loop: held messages still start for the first
//! half of the grace period, then what waits is handed back, and running
//! handlers get the rest before they are aborted.

use std::time::Duration;

use async_nats::jetstream::AckKind;
use tokio::time::Instant;
use tracing::warn;

use super::Handler;
use super::dispatch::Dispatcher;

impl<H: Handler> Dispatcher<H> {
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
    pub(super) async fn drain(&mut self) {
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
