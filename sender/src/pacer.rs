//! Pacing per sending number (a from number or a messaging service SID) at
//! the channel's `mps`, shared by every handler task of the process.
//!
//! Next-slot scheduling: each send reserves the next free slot of its
//! sending number (`max(now, next)`) and `next` moves on by `1/mps`, then the
//! caller sleeps until its slot. Reservations are made under a short lock,
//! so concurrent sends interleave fairly instead of bursting; a slot whose
//! owner gave up is simply lost (the next send is a little later, never
//! earlier). Pacing is per process: several sender replicas each keep their
//! own pace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The longest gap pacing ever imposes between two sends.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub struct Pacer {
    next: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves the next slot for `key` at `mps` sends per second and returns
    /// when it starts (now for `mps` 0: unpaced).
    pub fn reserve(&self, key: &str, mps: f64) -> Instant {
        let now = Instant::now();
        if !(mps > 0.0 && mps.is_finite()) {
            return now;
        }
        // check-config refuses a tiny mps; never panic on one that slipped through.
        let interval = Duration::try_from_secs_f64(1.0 / mps).unwrap_or(Duration::MAX).min(MAX_INTERVAL);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.get(key).copied().map_or(now, |n| n.max(now));
        next.insert(key.to_owned(), slot + interval);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_one_over_mps_per_sending_number() {
        let pacer = Pacer::new();
        let t0 = Instant::now();
        let slots: Vec<Duration> = (0..4).map(|_| pacer.reserve("+15550001111", 2.0) - t0).collect();
        assert_eq!(slots, [0, 500, 1000, 1500].map(Duration::from_millis));
        // Another number has its own pace.
        assert_eq!(pacer.reserve("+15550002222", 2.0), t0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_number_sends_at_once_and_zero_means_unpaced() {
        let pacer = Pacer::new();
        pacer.reserve("a", 1.0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(pacer.reserve("a", 1.0), Instant::now());
        assert_eq!(pacer.reserve("b", 0.0), Instant::now());
        assert_eq!(pacer.reserve("b", 0.0), Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tiny_mps_waits_at_most_an_hour_instead_of_panicking() {
        let pacer = Pacer::new();
        let t0 = Instant::now();
        pacer.reserve("a", 1e-300);
        assert_eq!(pacer.reserve("a", 1e-300) - t0, MAX_INTERVAL);
    }
}
