//! Whether a runtime's dispatcher is still turning, for `/api/health`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

    pub(super) fn beat(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
