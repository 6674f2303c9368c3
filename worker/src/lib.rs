//! smsgate's worker: a durable pull consumer on `P_INBOUND` that turns each
//! inbound SMS into at most one reply on `P_OUTBOUND`, recording everything
//! in `P_HISTORY`.
//!
//! # Layout
//!
//! A message's path: the consumer runtime ([`smsgate_shared::consume`])
//! pulls it from the durable consumer `worker` and queues it by sender (one
//! message per sender at a time, up to `SMSGATE_WORKER_MAX_IN_FLIGHT` senders
//! at once) → [`process`] (the runtime's [`consume::Handler`]) decides: [`seen`] claims
//! the MessageSid (dedupe beyond the stream window, crash-safe progress),
//! [`history`] records the inbound and reads recent turns, [`keywords`]
//! (STOP/START/HELP), the opt-out bucket, allow/block lists, [`limiter`]
//! (per-sender rate limit) → [`media`] fetches the message's MMS media
//! (only this message's Twilio media, bounded, described when it cannot be
//! loaded) → [`cost`] checks the channel's day budget → [`chat`] asks the channel's pipeline (openai,
//! webhook, static, echo) → the reply is stored in `P_seen`, published to
//! `P_OUTBOUND` with `Nats-Msg-Id: reply.<sid>`, and the inbound is acked. Failures go to `P_DEAD` with the fallback text sent.
//!
//! [`process`] keeps the orchestration in `process/mod.rs` and its steps in
//! `steps.rs` (the decisions before the chat call), `answer.rs` (media and
//! the chat call) and `reply.rs` (storing and publishing the reply).
//! [`chat`] keeps the common types and the dispatch in `chat/mod.rs`, and
//! each kind with code of its own in a file: `openai.rs`, `webhook.rs`
//! (`static` and `echo` are one line each in the dispatch).
//!
//! The channels are a live [`smsgate_shared::channels::Registry`] (the
//! file's plus those connected at run time, followed in `P_channels`), each
//! with its chat backend built once; a message for a channel this worker
//! does not know yet re-reads the bucket before it is dead-lettered.
//!
//! A voice call's parts arrive on the same stream ([`call`]): a turn is
//! answered through the same chat pipeline into `P_calls` (ingress speaks
//! it), a call's progress becomes history, a voicemail is a text whose reply
//! is an SMS.
//!
//! [`App`] is the one seam for `main` and the tests: it binds the ops
//! listener (`/api/health`, `/metrics`), connects NATS, ensures the topology,
//! and runs until its cancellation token is cancelled. `main` uses the
//! default [`Tuning`]; built with the cargo feature `fault-hooks` (tests
//! only, never a release build) it also reads the crash tests' pause hook.

pub mod budget;
pub mod call;
pub mod chat;
pub mod cost;
pub mod history;
pub mod keywords;
pub mod limiter;
pub mod media;
pub mod process;
pub mod seen;
pub mod stream;
pub mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{PullConsumer, pull},
};
use smsgate_shared::channels::{Registry, RuntimeSource};
use smsgate_shared::config::Config;
use smsgate_shared::consume::{self, Limits, Runtime};
use smsgate_shared::ops::OpsServer;
use smsgate_shared::retry::RetryPolicy;
use smsgate_shared::topology::{self, Topology};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::process::Processor;

/// The durable consumer's name on `P_INBOUND`.
pub const CONSUMER: &str = "worker";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the ops listener")]
    Bind(#[source] std::io::Error),
    #[error("cannot connect to NATS")]
    Connect(#[source] smsgate_shared::nats::ConnectError),
    #[error("cannot set up the JetStream topology")]
    Topology(#[source] topology::TopologyError),
    #[error("cannot create the inbound consumer")]
    Consumer(#[source] consume::BoxError),
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("cannot publish the {what}")]
    Publish {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read or write the seen bucket")]
    Seen(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot read the conversations bucket")]
    Conversations(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot read or write the opt-out bucket")]
    OptOut(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot read or advance the channel's reply counters or the sender's rate limit")]
    Budget(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot read or write the calls bucket")]
    Calls(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot read the conversation history")]
    HistoryRead(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("unexpected JetStream message: {0}")]
    Protocol(String),
}

/// Knobs of the worker that are not part of the public configuration: the
/// defaults are what production runs; tests shorten the delays. The bounds
/// that operators set (`SMSGATE_WORKER_MAX_IN_FLIGHT`,
/// `SMSGATE_WORKER_ACK_WAIT_SECS`) come from [`Settings`](smsgate_shared::config::Settings).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Overrides `SMSGATE_WORKER_MAX_IN_FLIGHT` (tests).
    pub max_in_flight: Option<usize>,
    /// Overrides `SMSGATE_WORKER_ACK_WAIT_SECS` (tests).
    pub ack_wait: Option<Duration>,
    /// Deliveries of one inbound message; `None`: the chat attempts plus
    /// slack for messages whose worker was killed mid-way.
    pub max_deliver: Option<i64>,
    /// Delay before attempt 2, 3, ... after a transient chat (or media)
    /// failure, a fixed schedule; the attempt after the last one gets the
    /// fallback text.
    pub retry: RetryPolicy,
    /// Delay before retrying after NATS itself failed mid-way.
    pub error_delay: Duration,
    /// How long in-flight messages may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Test hook for crash tests: sleep after a reply is published, before
    /// the inbound is acked.
    pub pause_after_publish: Option<Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            ack_wait: None,
            max_deliver: None,
            retry: RetryPolicy::fixed([2, 10, 30, 60, 120].map(Duration::from_secs).to_vec()),
            error_delay: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(25),
            pause_after_publish: None,
        }
    }
}

impl Tuning {
    /// Attempts at the chat call before the fallback.
    pub fn max_attempts(&self) -> i64 {
        i64::try_from(self.retry.steps()).unwrap_or(i64::MAX).saturating_add(1)
    }

    /// The consumer's `max_deliver`.
    pub fn max_deliver(&self) -> i64 {
        self.max_deliver.unwrap_or_else(|| self.max_attempts().saturating_add(5))
    }

    /// The consumer runtime's bounds, from the settings and this tuning.
    pub fn limits(&self, settings: &smsgate_shared::config::Settings) -> Limits {
        Limits::for_in_flight(
            self.max_in_flight.unwrap_or(settings.worker_max_in_flight),
            self.ack_wait.unwrap_or(settings.worker_ack_wait),
            self.max_deliver(),
            self.shutdown_grace,
        )
    }

    /// The durable consumer `worker` on `P_INBOUND`.
    pub fn consumer_config(&self, settings: &smsgate_shared::config::Settings, topology: &Topology) -> pull::Config {
        self.limits(settings).pull_config(
            CONSUMER,
            "smsgate worker: inbound SMS → chat → reply".to_owned(),
            topology.work_filter(smsgate_shared::topology::WorkQueue::Inbound),
        )
    }

    /// The delay after failed attempt `delivered` (1-based): the policy's
    /// schedule, jittered, at least what the backend asked for.
    pub fn retry_delay(&self, delivered: i64, retry_after: Option<Duration>) -> Duration {
        self.retry.delay(u32::try_from(delivered).unwrap_or(u32::MAX), retry_after)
    }
}

pub struct App {
    ops: OpsServer,
    local_addr: SocketAddr,
    processor: Arc<Processor>,
    consumer: PullConsumer,
    limits: Limits,
    client: async_nats::Client,
}

impl App {
    pub async fn build(config: Config) -> Result<Self, Error> {
        Self::build_with(config, Tuning::default()).await
    }

    pub async fn build_with(config: Config, tuning: Tuning) -> Result<Self, Error> {
        let ops = OpsServer::bind(config.settings.worker_addr).await.map_err(Error::Bind)?;
        let local_addr = ops.local_addr().map_err(Error::Bind)?;
        let client = smsgate_shared::nats::connect(&config.settings.nats, "worker").await.map_err(Error::Connect)?;
        let js = jetstream::new(client.clone());
        let topology = Topology::from_settings(&config.settings);
        let bus = topology.ensure(&js).await.map_err(Error::Topology)?;

        let stream = js.get_stream(topology.inbound_stream()).await.map_err(|e| Error::Consumer(Box::new(e)))?;
        let limits = tuning.limits(&config.settings);
        let consumer = consume::ensure_consumer(&stream, tuning.consumer_config(&config.settings, &topology))
            .await
            .map_err(Error::Consumer)?;

        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A burst opens up to max-in-flight connections to the model;
            // afterwards keep a few warm, not all of them with their buffers.
            .pool_max_idle_per_host(32)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("smsgate-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Http)?;
        for channel in &config.channels {
            if channel.enabled {
                info!(channel_id = %channel.id, chat = channel.chat.kind(), "channel ready");
            } else {
                warn!(channel_id = %channel.id, "channel is disabled; its messages go to dead-letter");
            }
        }
        let channels = Registry::new("worker", config.channels, move |c| chat::ChatBackend::new(&c.chat, &http));
        channels.load(RuntimeSource::new(bus.channels.clone(), &config.settings)).await;
        // The budget counters and the rate-limit state share one bucket and one cache.
        let guard = smsgate_shared::guard::GuardStore::new(&bus);
        let schedule = smsgate_shared::schedule::Schedule::new(bus.schedule.clone());
        let cells = Arc::new(smsgate_shared::cas::Cas::new(bus.budget));
        let spend = cost::Spend {
            spend: smsgate_shared::cost::DailySpend::new(cells.clone()),
            js: bus.js.clone(),
            topology: topology.clone(),
        };
        let processor = Arc::new(Processor {
            guard,
            schedule,
            js: bus.js.clone(),
            history: history::History::open(bus.js.clone(), topology.clone(), config.settings.worker_history_cache)
                .await?,
            topology,
            channels,
            seen: seen::Seen::new(bus.seen),
            optout: bus.optout,
            consent: bus.consent,
            conversations: smsgate_shared::mirror::Mirror::new(bus.conversations, client.clone()),
            calls: bus.calls,
            limiter: limiter::Limiter::new(cells.clone()),
            spend,
            budget: budget::Budget::new(cells),
            media: media::Fetcher::new().map_err(Error::Http)?,
            tuning,
        });
        Ok(Self { ops, local_addr, processor, consumer, limits, client })
    }

    /// The ops listener's address (port 0 in tests gets a real one).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until `shutdown` is cancelled, then stops pulling, finishes or
    /// naks what is in flight and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        info!(addr = %self.local_addr, outcome = "started", "worker running");
        let ops_stop = CancellationToken::new();
        let liveness = self.limits.liveness("worker");
        let ops = tokio::spawn(self.ops.serve(ops_stop.clone(), vec![liveness.clone()]));
        let watch = tokio::spawn(self.processor.channels.clone().watch(shutdown.clone()));
        let mirror = tokio::spawn(self.processor.conversations.clone().follow(shutdown.clone()));
        let runtime = Runtime {
            name: "worker",
            handler: self.processor,
            consumer: self.consumer,
            limits: self.limits,
            client: Some(self.client),
            liveness,
        };
        runtime.run(shutdown).await;
        watch.abort();
        mirror.abort();
        ops_stop.cancel();
        match ops.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Bind(e)),
            Err(e) => {
                warn!(error = %e, "ops listener task failed");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter_and_honour_retry_after() {
        let t = Tuning {
            retry: RetryPolicy::fixed(vec![Duration::from_secs(2), Duration::from_secs(10)]),
            ..Tuning::default()
        };
        assert_eq!(t.max_attempts(), 3);
        let first = t.retry_delay(1, None);
        assert!(first >= Duration::from_millis(1600) && first <= Duration::from_millis(2400), "{first:?}");
        assert!(t.retry_delay(1, Some(Duration::from_secs(60))) >= Duration::from_secs(60));
    }
}
