//! Pacing per sending number (a from number or a messaging service SID) at
//! the channel's `mps`, for every sender process of the deployment.
//!
//! Next-slot scheduling: each send reserves the next free slot of its
//! sending number (`max(now, next)`) and `next` moves on by `1/mps`, then the
//! caller sleeps until its slot. The `next` of a number is one key in the
//! `P_budget` bucket ([`Topology::pace_key`]), in microseconds since the
//! Unix epoch, moved with compare-and-set ([`smsgate_shared::cas`]): two
//! senders on one number take turns instead of each sending at `mps`.
//! Inside a process, reservations of one number queue behind each other, so
//! concurrent sends interleave instead of bursting. A slot whose owner gave
//! up is simply lost (the next send is a little later, never earlier).
//!
//! Times are wall-clock: senders on several machines need NTP (a clock
//! ahead by d sends up to d early once). When NATS cannot be reached the
//! reservation falls back to this process's own pace, with a warning:
//! sending a little fast beats not sending while the bus recovers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smsgate_shared::cas::{Cas, Write, parse_u64};
use smsgate_shared::topology::Topology;
use tokio::time::Instant;

/// The longest gap pacing ever imposes between two sends.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

pub struct Pacer {
    cells: Arc<Cas>,
    /// This process's own pace, used only while the bucket cannot be reached.
    local: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    pub fn new(cells: Arc<Cas>) -> Self {
        Self { cells, local: Mutex::new(HashMap::new()) }
    }

    /// Reserves the next slot for `sender` at `mps` sends per second and
    /// returns when it starts (now for `mps` 0: unpaced).
    pub async fn reserve(&self, sender: &str, mps: f64) -> Instant {
        let Some(interval) = interval(mps) else {
            return Instant::now();
        };
        let key = Topology::pace_key(sender);
        let now_wall = micros(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        let now = Instant::now();
        let step = micros(interval);
        match self.cells.update(&key, |next| next_slot(next, now_wall, step)).await {
            Ok(slot) => now + Duration::from_micros(slot.saturating_sub(now_wall)),
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot reserve a send slot in the shared bucket; pacing this process alone"
                );
                metrics::counter!("smsgate_sender_pacing_fallbacks_total").increment(1);
                let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
                let slot = local.get(&key).copied().map_or(now, |n| n.max(now));
                local.insert(key, slot + interval);
                slot
            }
        }
    }
}

/// The gap between two sends at `mps`; `None` when unpaced.
fn interval(mps: f64) -> Option<Duration> {
    // check-config refuses a tiny mps; never panic on one that slipped through.
    (mps > 0.0 && mps.is_finite())
        .then(|| Duration::try_from_secs_f64(1.0 / mps).unwrap_or(Duration::MAX).min(MAX_INTERVAL))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The slot for a send at `now` given the stored next free slot, and the
/// next free slot to store (all in µs).
fn next_slot(next: Option<&[u8]>, now: u64, step: u64) -> (Write, u64) {
    let slot = next.map_or(0, parse_u64).max(now);
    (Write::Put(Bytes::from(slot.saturating_add(step).to_string())), slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `next_slot` as the bucket would: the state carries over.
    fn slots(times: &[u64], step: u64) -> Vec<u64> {
        let mut state: Option<Bytes> = None;
        times
            .iter()
            .map(|&now| {
                let (write, slot) = next_slot(state.as_deref(), now, step);
                if let Write::Put(v) = write {
                    state = Some(v);
                }
                slot
            })
            .collect()
    }

    #[test]
    fn slots_are_spaced_by_one_over_mps() {
        assert_eq!(slots(&[1000, 1000, 1000, 1000], 500), [1000, 1500, 2000, 2500]);
    }

    #[test]
    fn an_idle_number_sends_at_once() {
        assert_eq!(slots(&[1000, 9000, 9100], 500), [1000, 9000, 9500]);
    }

    #[test]
    fn zero_means_unpaced_and_a_tiny_mps_waits_at_most_an_hour() {
        assert_eq!(interval(0.0), None);
        assert_eq!(interval(f64::NAN), None);
        assert_eq!(interval(2.0), Some(Duration::from_millis(500)));
        assert_eq!(interval(1e-300), Some(MAX_INTERVAL));
    }
}
