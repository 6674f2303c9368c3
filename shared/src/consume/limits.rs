//! The bounds of one consumer ([`Limits`]) and the durable consumer on the
//! server that follows from them ([`ensure_consumer`]).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, PullConsumer, pull},
};
use tracing::{info, warn};

use super::{BoxError, Liveness};

/// The bounds of one consumer. `max_ack_pending` and the timings of the
/// durable consumer follow from these ([`Limits::pull_config`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Handler tasks running at once (model or Twilio calls in flight).
    pub max_in_flight: usize,
    /// Messages one key may hold beyond the running one before its newest
    /// are handed back to JetStream.
    pub key_backlog: usize,
    /// Messages pulled but not acked at most: running, held and awaited.
    pub max_ack_pending: i64,
    /// JetStream redelivers a message not acked (or kept alive) by then; it
    /// is how long a crashed process's messages wait for another replica.
    pub ack_wait: Duration,
    /// Deliveries of one message; the last one must finish it.
    pub max_deliver: i64,
    /// How long a message handed back for the backlog rule stays away at
    /// most; it is about the time the key needs for what it holds (its
    /// recent handling time × its queue), at least half a second (unless
    /// this is shorter).
    pub backlog_delay: Duration,
    /// How long running handlers may take to finish after shutdown.
    pub grace: Duration,
}

impl Limits {
    /// Limits for `max_in_flight` handlers: up to four times as many
    /// messages pending (so the slots stay busy while keys wait on each
    /// other), 32 held per key (a burst from one person is held, a flood
    /// does not take every pending slot).
    pub fn for_in_flight(max_in_flight: usize, ack_wait: Duration, max_deliver: i64, grace: Duration) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            max_in_flight,
            key_backlog: 32,
            max_ack_pending: i64::try_from(max_in_flight.saturating_mul(4).max(64)).unwrap_or(i64::MAX),
            ack_wait,
            max_deliver,
            backlog_delay: Duration::from_secs(30),
            grace,
        }
    }

    /// The durable pull consumer these limits need.
    pub fn pull_config(&self, durable: &str, description: String, filter_subject: String) -> pull::Config {
        pull::Config {
            durable_name: Some(durable.to_owned()),
            description: Some(description),
            filter_subject,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        }
    }

    /// How often held and running messages are kept alive.
    pub(super) fn progress_every(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(50))
    }

    /// A liveness check for a runtime with these limits: silent for three
    /// ticks (and at least 30 s) is stalled.
    pub fn liveness(&self, name: &'static str) -> Liveness {
        Liveness::new(name, (self.progress_every() * 3).max(Duration::from_secs(30)))
    }
}

/// The consumer's config on the server compared with what the code wants:
/// fields that differ are updated; those JetStream cannot change on an
/// existing consumer are named in a warning.
pub async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    wanted: pull::Config,
) -> Result<PullConsumer, BoxError> {
    let name = wanted.durable_name.clone().unwrap_or_default();
    let mut consumer: PullConsumer = stream.get_or_create_consumer(&name, wanted.clone()).await?;
    let have = consumer.info().await?.config.clone();
    let differs = [
        ("ack_wait", have.ack_wait != wanted.ack_wait, true),
        ("max_deliver", have.max_deliver != wanted.max_deliver, true),
        ("max_ack_pending", have.max_ack_pending != wanted.max_ack_pending, true),
        ("description", have.description != wanted.description, true),
        ("filter_subject", have.filter_subject != wanted.filter_subject, false),
        ("ack_policy", have.ack_policy != wanted.ack_policy, false),
    ];
    let pick = |updatable: bool| -> Vec<&str> {
        differs.iter().filter(|(_, d, u)| *d && *u == updatable).map(|(name, _, _)| *name).collect()
    };
    let (changed, fixed) = (pick(true), pick(false));
    if !fixed.is_empty() {
        warn!(
            consumer = %name,
            fields = ?fixed,
            "the durable consumer on the server differs in fields JetStream cannot change; delete it (nats consumer rm) \
             while the service is stopped so that it is created anew"
        );
    }
    if !changed.is_empty() {
        // Creating a durable that exists with a changed config updates it
        // (nats-server 2.9 and later, for the fields JetStream lets change).
        match stream.create_consumer(wanted).await {
            Ok(updated) => {
                info!(consumer = %name, fields = ?changed, outcome = "updated", "durable consumer config brought up to date");
                consumer = updated;
            }
            Err(e) => warn!(
                consumer = %name,
                fields = ?changed,
                error = &e as &dyn std::error::Error,
                "cannot update the durable consumer's config; running with the server's"
            ),
        }
    }
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_derive_ack_pending_from_the_slots() {
        let l = Limits::for_in_flight(512, Duration::from_secs(30), 10, Duration::from_secs(20));
        assert_eq!(l.max_ack_pending, 2048);
        let small = Limits::for_in_flight(2, Duration::from_secs(30), 10, Duration::from_secs(20));
        assert_eq!(small.max_ack_pending, 64);
    }
}
