//! Per-sender rate limit (channel + From), and the "one notice per minute"
//! rule for senders over it, for the whole deployment.
//!
//! The limit is a GCRA (the generic cell rate algorithm, as governor and
//! most API gateways use): each sender has a theoretical arrival time `tat`.
//! A message at `now` passes when `tat - now` is within the burst
//! tolerance, and moves `tat` on by one emission interval (`60 s /
//! per_minute`); the tolerance is `burst - 1` intervals. So a sender may
//! send `burst` at once, then one every interval.
//!
//! The state of a sender is one key in the `P_budget` bucket
//! ([`Topology::rate_key`]): `"<tat> <last notice>"`, both in microseconds
//! since the Unix epoch, changed with compare-and-set
//! ([`smsgate_shared::cas`]). Every worker therefore sees the same count,
//! however many there are. A key left alone expires with the bucket's
//! max age (two days), long after its `tat` has passed. The clock is each
//! worker's wall clock: workers on several machines need NTP, as the UTC
//! windows of [`crate::budget`] do.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smsgate_shared::cas::{Cas, CasError, Write};
use smsgate_shared::config::RateLimit;
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::topology::Topology;

/// One notice per sender per minute, whatever the channel's quota.
const NOTICE_EVERY: Duration = Duration::from_secs(60);

/// What the limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; `notify` is true for the first such message in a window.
    Limited {
        notify: bool,
    },
}

pub struct Limiter {
    cells: Arc<Cas>,
}

impl Limiter {
    pub fn new(cells: Arc<Cas>) -> Self {
        Self { cells }
    }

    /// Counts one message from `from` on `channel` against `limit`.
    pub async fn check(&self, channel: &ChannelId, from: &E164, limit: RateLimit) -> Result<Verdict, CasError> {
        let now = micros(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        let key = Topology::rate_key(channel, from);
        self.cells.update(&key, |state| gcra(state, now, limit)).await
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The limiter's decision for a message at `now` (µs) given the stored
/// state, and the state to store.
fn gcra(state: Option<&[u8]>, now: u64, limit: RateLimit) -> (Write, Verdict) {
    let (tat, noticed) = parse(state);
    let interval = micros(Duration::from_secs(60)) / u64::from(limit.per_minute.max(1));
    let tolerance = interval.saturating_mul(u64::from(limit.burst.max(1) - 1));
    let tat = tat.max(now);
    if tat - now <= tolerance {
        return (store(tat.saturating_add(interval), noticed), Verdict::Allowed);
    }
    if noticed.is_none_or(|at| now >= at.saturating_add(micros(NOTICE_EVERY))) {
        return (store(tat, Some(now)), Verdict::Limited { notify: true });
    }
    (Write::Keep, Verdict::Limited { notify: false })
}

fn parse(state: Option<&[u8]>) -> (u64, Option<u64>) {
    let text = state.and_then(|s| std::str::from_utf8(s).ok()).unwrap_or("");
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<u64>().ok());
    let tat = fields.next().flatten().unwrap_or(0);
    let noticed = fields.next().flatten().filter(|&n| n > 0);
    (tat, noticed)
}

fn store(tat: u64, noticed: Option<u64>) -> Write {
    Write::Put(Bytes::from(format!("{tat} {}", noticed.unwrap_or(0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `gcra` as the bucket would: the state carries over.
    struct Sender {
        state: Option<Vec<u8>>,
        limit: RateLimit,
    }

    impl Sender {
        fn new(per_minute: u32, burst: u32) -> Self {
            Self { state: None, limit: RateLimit { per_minute, burst } }
        }

        fn at(&mut self, secs: u64) -> Verdict {
            let (write, verdict) = gcra(self.state.as_deref(), secs * 1_000_000 + 1_700_000_000_000_000, self.limit);
            if let Write::Put(v) = write {
                self.state = Some(v.to_vec());
            }
            verdict
        }
    }

    #[test]
    fn allows_the_burst_then_limits_with_one_notice_per_minute() {
        let mut me = Sender::new(2, 2);
        assert_eq!(me.at(0), Verdict::Allowed);
        assert_eq!(me.at(0), Verdict::Allowed);
        assert_eq!(me.at(0), Verdict::Limited { notify: true });
        assert_eq!(me.at(0), Verdict::Limited { notify: false });
        // 2 per minute: one message is allowed again after 30 s.
        assert_eq!(me.at(30), Verdict::Allowed);
        assert_eq!(me.at(30), Verdict::Limited { notify: false });
        // A new minute since the notice: a new notice.
        assert_eq!(me.at(61), Verdict::Allowed);
        assert_eq!(me.at(61), Verdict::Limited { notify: true });
    }

    #[test]
    fn a_burst_of_one_spaces_every_message() {
        let mut me = Sender::new(3, 1);
        assert_eq!(me.at(0), Verdict::Allowed);
        assert_eq!(me.at(19), Verdict::Limited { notify: true });
        assert_eq!(me.at(20), Verdict::Allowed);
        assert_eq!(me.at(40), Verdict::Allowed);
        assert_eq!(me.at(41), Verdict::Limited { notify: false });
    }

    #[test]
    fn an_idle_sender_gets_its_whole_burst_back() {
        let mut me = Sender::new(60, 3);
        for _ in 0..3 {
            assert_eq!(me.at(0), Verdict::Allowed);
        }
        assert!(matches!(me.at(0), Verdict::Limited { .. }));
        for _ in 0..3 {
            assert_eq!(me.at(600), Verdict::Allowed);
        }
    }

    #[test]
    fn unreadable_state_starts_afresh() {
        let mut me = Sender::new(1, 1);
        me.state = Some(b"garbage".to_vec());
        assert_eq!(me.at(0), Verdict::Allowed);
        assert!(matches!(me.at(1), Verdict::Limited { notify: true }));
    }
}
