//! Per-sender rate limit (channel + From) with governor, and the "one notice
//! per window" rule for senders over it.
//!
//! The limit counts within one worker process: several workers each allow
//! the quota (the design accepts this; the quota protects the chat backend's
//! cost, not a hard contract).

use std::collections::HashMap;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use smsgate_shared::config::{Channel, RateLimit};
use smsgate_shared::domain::{ChannelId, E164};

type Keyed<C> = RateLimiter<E164, DashMapStateStore<E164>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// What the limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; `notify` is true for the first such message in a window.
    Limited {
        notify: bool,
    },
}

pub struct Limiter<C: Clock = DefaultClock> {
    per_channel: HashMap<ChannelId, Keyed<C>>,
    /// One notice per sender per minute, whatever the channel's quota.
    notices: HashMap<ChannelId, Keyed<C>>,
}

fn quota(limit: RateLimit) -> Quota {
    let per_minute = NonZeroU32::new(limit.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl Limiter<DefaultClock> {
    pub fn new(channels: &[Channel]) -> Self {
        Self::with_clock(channels, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    pub fn with_clock(channels: &[Channel], clock: &C) -> Self {
        let one_per_minute = Quota::per_minute(NonZeroU32::MIN);
        Self {
            per_channel: channels
                .iter()
                .map(|c| (c.id.clone(), RateLimiter::dashmap_with_clock(quota(c.rate_limit), C::clone(clock))))
                .collect(),
            notices: channels
                .iter()
                .map(|c| (c.id.clone(), RateLimiter::dashmap_with_clock(one_per_minute, C::clone(clock))))
                .collect(),
        }
    }

    /// Counts one message from `from` on `channel`.
    pub fn check(&self, channel: &ChannelId, from: &E164) -> Verdict {
        let Some(limiter) = self.per_channel.get(channel) else {
            return Verdict::Allowed;
        };
        if limiter.check_key(from).is_ok() {
            return Verdict::Allowed;
        }
        let notify = self.notices.get(channel).is_some_and(|n| n.check_key(from).is_ok());
        Verdict::Limited { notify }
    }

    /// Forgets senders whose buckets are full again, so memory stays bounded.
    pub fn shrink(&self) {
        for l in self.per_channel.values().chain(self.notices.values()) {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use smsgate_shared::testkit;

    use super::*;

    #[test]
    fn allows_the_burst_then_limits_with_one_notice_per_minute() {
        let clock = FakeRelativeClock::default();
        let channel = testkit::channel(r#""rate_limit": {"per_minute": 2, "burst": 2}"#);
        let limiter = Limiter::with_clock(std::slice::from_ref(&channel), &clock);
        let me = E164::parse("+14155550100").unwrap();
        let other = E164::parse("+14155550199").unwrap();
        assert_eq!(limiter.check(&channel.id, &me), Verdict::Allowed);
        assert_eq!(limiter.check(&channel.id, &me), Verdict::Allowed);
        assert_eq!(limiter.check(&channel.id, &me), Verdict::Limited { notify: true });
        assert_eq!(limiter.check(&channel.id, &me), Verdict::Limited { notify: false });
        // Someone else has their own bucket.
        assert_eq!(limiter.check(&channel.id, &other), Verdict::Allowed);

        // 2 per minute: one message is allowed again after 30 s.
        clock.advance(Duration::from_secs(30));
        assert_eq!(limiter.check(&channel.id, &me), Verdict::Allowed);
        assert_eq!(limiter.check(&channel.id, &me), Verdict::Limited { notify: false });
        // A new window: a new notice.
        clock.advance(Duration::from_secs(31));
        assert_eq!(limiter.check(&channel.id, &me), Verdict::Allowed);
        assert_eq!(limiter.check(&channel.id, &me), Verdict::Limited { notify: true });
    }

    #[test]
    fn unknown_channels_are_not_limited() {
        let limiter = Limiter::new(&[]);
        let me = E164::parse("+14155550100").unwrap();
        assert_eq!(limiter.check(&ChannelId::parse("x").unwrap(), &me), Verdict::Allowed);
    }
}
