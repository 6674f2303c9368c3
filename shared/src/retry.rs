//! What the services share about retrying a call to another system (the
//! chat backend, Twilio's API, Twilio's media store): [`RetryPolicy`], how
//! long to wait before attempt n, and [`parse_retry_after`], reading the
//! server's `Retry-After`. The worker's chat and media retries and the
//! sender's Twilio retries are policies of this one type; only their
//! schedules differ (a fixed list for the worker, whose waits are
//! JetStream redeliveries; doubling for the sender, which waits in-process).

use std::time::Duration;

/// The base delays of a policy, by attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Attempt n waits the n-th delay; past the end, the last again.
    Fixed(Vec<Duration>),
    /// `base × 2^(n-1)`, at most `max`.
    Doubling { base: Duration, max: Duration },
}

/// How long to wait before retrying after failed attempt `n` (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub schedule: Schedule,
    /// The base delay is multiplied by a factor drawn from
    /// `jitter.0..=jitter.1`, so retries of many callers spread out.
    pub jitter: (f64, f64),
    /// The longest `Retry-After` honoured; what a server asks for, up to
    /// this, is a floor of the wait (plus up to 20 %).
    pub retry_after_cap: Duration,
}

impl RetryPolicy {
    /// A fixed list of delays, ±20 % jitter, `Retry-After` honoured up to
    /// 5 minutes (the worker's chat and media retries).
    pub fn fixed(delays: Vec<Duration>) -> Self {
        Self { schedule: Schedule::Fixed(delays), jitter: (0.8, 1.2), retry_after_cap: Duration::from_secs(300) }
    }

    /// Doubling from `base` up to `max`, drawn from the upper half,
    /// `Retry-After` honoured up to 2 minutes (the sender's Twilio retries).
    pub fn doubling(base: Duration, max: Duration) -> Self {
        Self {
            schedule: Schedule::Doubling { base, max },
            jitter: (0.5, 1.0),
            retry_after_cap: Duration::from_secs(120),
        }
    }

    /// The wait after failed attempt `attempt` (1-based; 0 counts as 1).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let n = attempt.max(1) - 1;
        let base = match &self.schedule {
            Schedule::Fixed(delays) => {
                delays.get(n as usize).or(delays.last()).copied().unwrap_or(Duration::from_secs(1))
            }
            Schedule::Doubling { base, max } => base.saturating_mul(1u32 << n.min(16)).min(*max),
        };
        let (low, high) = self.jitter;
        let jittered = base.mul_f64(rand::random_range(low.min(high)..=high.max(low)));
        match retry_after {
            Some(asked) => {
                let asked = asked.min(self.retry_after_cap);
                jittered.max(asked + asked.mul_f64(rand::random_range(0.0..0.2)))
            }
            None => jittered,
        }
    }

    /// How many base delays a fixed schedule holds (for a doubling one, 0).
    pub fn steps(&self) -> usize {
        match &self.schedule {
            Schedule::Fixed(delays) => delays.len(),
            Schedule::Doubling { .. } => 0,
        }
    }
}

use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// `Retry-After` (RFC 9110 §10.2.3): delay seconds or an HTTP date, capped
/// at `cap` (a date in the past is zero). `None` when it is neither.
pub fn parse_retry_after(value: &str, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = OffsetDateTime::parse(value, &Rfc2822).ok()?;
        Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_schedules_repeat_their_last_delay_and_jitter_stays_in_range() {
        let p = RetryPolicy {
            schedule: Schedule::Fixed(vec![Duration::from_secs(2), Duration::from_secs(10)]),
            jitter: (0.8, 1.2),
            retry_after_cap: Duration::from_secs(300),
        };
        for _ in 0..100 {
            let first = p.delay(1, None);
            assert!(first >= Duration::from_millis(1600) && first <= Duration::from_millis(2400), "{first:?}");
            let later = p.delay(7, None);
            assert!(later >= Duration::from_secs(8) && later <= Duration::from_secs(12), "{later:?}");
        }
        assert!(p.delay(1, Some(Duration::from_secs(60))) >= Duration::from_secs(60));
        assert!(p.delay(1, Some(Duration::from_secs(3600))) <= Duration::from_secs(360));
    }

    #[test]
    fn doubling_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            schedule: Schedule::Doubling { base: Duration::from_millis(500), max: Duration::from_secs(30) },
            jitter: (0.5, 1.0),
            retry_after_cap: Duration::from_secs(60),
        };
        for attempt in 1..12 {
            let d = p.delay(attempt, None);
            let full = Duration::from_millis(500).saturating_mul(1 << (attempt - 1)).min(Duration::from_secs(30));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        let d = p.delay(1, Some(Duration::from_secs(3)));
        assert!(d >= Duration::from_secs(3) && d <= Duration::from_millis(3600), "{d:?}");
    }

    #[test]
    fn seconds_or_a_date_capped() {
        let cap = Duration::from_secs(120);
        assert_eq!(parse_retry_after("3", cap), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 7 ", cap), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("100000", cap), Some(cap));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap), Some(Duration::ZERO));
        let soon = (OffsetDateTime::now_utc() + time::Duration::seconds(60)).format(&Rfc2822).unwrap();
        let d = parse_retry_after(&soon, cap).unwrap();
        assert!(d > Duration::from_secs(55) && d <= Duration::from_secs(60), "{d:?}");
        assert_eq!(parse_retry_after("soon", cap), None);
    }
}
