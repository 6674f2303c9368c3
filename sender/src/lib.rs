//! smsgate's sender: delivers replies through Twilio's Messages API as
//! proper SMS pieces (paced, retried, never sent twice) and records Twilio's
//! status callbacks.
//!
//! # Layout
//!
//! - [`sms`]: pure text work: [`sms::normalize`] (markdown, GSM-7
//!   look-alikes), [`sms::split`] (sentence then word boundaries, `(i/n)`
//!   markers, `max_parts`), [`sms::gsm`] (segments as carriers count them).
//! - [`twilio`]: the Messages and Calls API client; [`twilio::TwilioError::kind`] is
//!   the one place that decides retry behaviour.
//! - [`pacer`]: next-slot pacing per sending number at the channel's `mps`,
//!   shared by every sender through the `P_budget` bucket.
//! - the consumer runtime ([`smsgate_shared::consume`]) runs both consumers:
//!   one recipient's messages in order, recipients concurrently up to
//!   `SMSGATE_SENDER_MAX_IN_FLIGHT`, stopping and draining on shutdown.
//! - [`deliver`]: an `Outbound` from `P_OUTBOUND`: opt-out check → pieces →
//!   per piece: `P_sent` check, pace, create with retries, `P_sent` put →
//!   history entry → ack; failures → dead letter + history note.
//! - `guarded`: the guard again for a message that is not a direct reply
//!   (`Outbound.guard`): refuse, defer to `P_schedule`, or count it against
//!   the recipient's cap and send.
//! - the scheduler ([`smsgate_shared::schedule::Scheduler`]): fires due
//!   entries of `P_schedule` onto `P_OUTBOUND`, once across senders.
//! - [`call`]: an `Outbound` that is a call: the same checks, pacing,
//!   retries and `P_sent` bookkeeping, through Twilio's Calls API.
//! - [`status`]: a `StatusUpdate` from `P_STATUS`: compare-and-set of the
//!   piece's state in `P_sent` (never backwards) → history entry → ack.
//! - `cost`: each piece's estimate at send, Twilio's price fetched after
//!   its final status, the channel's spend today.
//! - history entries and dead letters go through `smsgate_shared::bus`.
//! - the channels: a live [`smsgate_shared::channels::Registry`] (the
//!   file's plus those connected at run time, followed in `P_channels`); an
//!   outbound for a channel not known yet re-reads the bucket first.
//!
//! A message's path: `P.outbound.<channel>` → the runtime (queue by
//! (channel, to)) → [`deliver::Replies`] → [`sms::prepare`] → [`pacer`] →
//! [`twilio`] → `P_sent` and `P.history.<channel>.<peer>` → ack.

pub mod call;
mod cost;
pub mod deliver;
mod guarded;
pub mod pacer;
pub mod sms;
pub mod status;
pub mod twilio;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use smsgate_shared::channels::{Registry, RuntimeSource};
use smsgate_shared::config::{Config, Delivery, Settings};
use smsgate_shared::consume::{self, Limits, Runtime};
use smsgate_shared::ops::OpsServer;
use smsgate_shared::retry::RetryPolicy;
use smsgate_shared::topology::{self, Bus, Topology};
use tokio_util::sync::CancellationToken;

use crate::pacer::Pacer;
use crate::twilio::{ClientTimeouts, TwilioClient};

/// The durable consumer on `P_OUTBOUND`.
pub const OUTBOUND_CONSUMER: &str = "sender";
/// The durable consumer on `P_STATUS`.
pub const STATUS_CONSUMER: &str = "sender-status";
/// How often the texts' cost estimates are written to the day's spend.
const SPEND_EVERY: Duration = Duration::from_secs(1);

/// Knobs with production defaults; tests shorten the delays. The bounds
/// operators set (`SMSGATE_SENDER_MAX_IN_FLIGHT`,
/// `SMSGATE_SENDER_ACK_WAIT_SECS`) come from [`Settings`].
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Overrides `SMSGATE_SENDER_MAX_IN_FLIGHT` (tests).
    pub max_in_flight: Option<usize>,
    /// Overrides `SMSGATE_SENDER_ACK_WAIT_SECS` (tests).
    pub ack_wait: Option<Duration>,
    /// Deliveries of one message; the last one ends in the failed state and
    /// a dead letter.
    pub max_deliver: i64,
    /// In-process attempts per piece for 429 and connection errors.
    pub attempts: u32,
    /// The wait between those attempts (doubling, `Retry-After` honoured).
    pub retry: RetryPolicy,
    /// The pause before the one retry after a 5xx or timeout.
    pub unknown_outcome_delay: Duration,
    /// The base of the redelivery delay (× delivery count) once in-process
    /// retries are used up.
    pub redelivery_delay: Duration,
    /// When Twilio's price of a piece is fetched after its final status
    /// (each wait from the one before); empty: never.
    pub price_fetch: Vec<Duration>,
    /// How often a message waiting in-process tells JetStream it is alive.
    pub progress_every: Duration,
    /// How long in-flight messages may take to finish after shutdown.
    pub grace: Duration,
    pub timeouts: ClientTimeouts,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            ack_wait: None,
            max_deliver: 8,
            attempts: 4,
            retry: RetryPolicy::doubling(Duration::from_millis(500), Duration::from_secs(30)),
            unknown_outcome_delay: Duration::from_secs(2),
            redelivery_delay: Duration::from_secs(15),
            // Twilio fills `price` within minutes, sometimes later.
            price_fetch: [30, 120, 600, 1800].map(Duration::from_secs).to_vec(),
            progress_every: Duration::from_secs(10),
            grace: Duration::from_secs(20),
            timeouts: ClientTimeouts::default(),
        }
    }
}

impl Tuning {
    /// The consumer runtime's bounds (both consumers).
    pub fn limits(&self, settings: &Settings) -> Limits {
        Limits::for_in_flight(
            self.max_in_flight.unwrap_or(settings.sender_max_in_flight),
            self.ack_wait.unwrap_or(settings.sender_ack_wait),
            self.max_deliver,
            self.grace,
        )
    }
}

/// The consumer on `P_OUTBOUND`.
pub fn outbound_consumer_config(settings: &Settings, topology: &Topology, tuning: &Tuning) -> pull::Config {
    tuning.limits(settings).pull_config(
        OUTBOUND_CONSUMER,
        "smsgate sender: replies to deliver".to_owned(),
        topology.work_filter(smsgate_shared::topology::WorkQueue::Outbound),
    )
}

/// The consumer on `P_STATUS`.
pub fn status_consumer_config(settings: &Settings, topology: &Topology, tuning: &Tuning) -> pull::Config {
    tuning.limits(settings).pull_config(
        STATUS_CONSUMER,
        "smsgate sender: Twilio status callbacks".to_owned(),
        topology.work_filter(smsgate_shared::topology::WorkQueue::Status),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the ops listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS")]
    Connect(#[source] smsgate_shared::nats::ConnectError),
    #[error("cannot set up the JetStream topology")]
    Topology(#[from] topology::TopologyError),
    #[error("cannot open consumer {name} on stream {stream}")]
    Consumer {
        name: &'static str,
        stream: String,
        #[source]
        source: consume::BoxError,
    },
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("the ops listener failed")]
    Serve(#[source] std::io::Error),
}

/// What every handler shares.
pub struct Ctx {
    pub bus: Bus,
    /// The live channels (file and runtime).
    pub channels: Registry<()>,
    pub twilio: TwilioClient,
    pub pacer: Pacer,
    pub tuning: Tuning,
    pub shutdown: CancellationToken,
    /// What the guard reads (opt-out, consent, pause, caps, history).
    pub guard: smsgate_shared::guard::GuardStore,
    /// Deferred and scheduled messages (`P_schedule`).
    pub schedule: smsgate_shared::schedule::Schedule,
    /// The channels' spend today (`limits.usd_per_day`).
    pub spend: smsgate_shared::cost::DailySpend,
    /// `P_optout` in memory, for the check before a direct reply: it is
    /// there for a STOP that came since the worker looked, and reading the
    /// bucket as it was a millisecond ago is no weaker than the STOP coming
    /// a millisecond later (the guard reads the bucket itself).
    pub optout: smsgate_shared::mirror::Mirror,
}

/// The sender, bound and connected, ready to run.
pub struct App {
    ops: OpsServer,
    local_addr: SocketAddr,
    bus: Bus,
    channels: Registry<()>,
    twilio: TwilioClient,
    tuning: Tuning,
    limits: Limits,
    client: async_nats::Client,
    outbound: PullConsumer,
    status: PullConsumer,
}

impl App {
    pub async fn build(config: Config) -> Result<Self, Error> {
        Self::build_with(config, Tuning::default()).await
    }

    /// Binds the ops listener, connects NATS, creates the topology and the
    /// two durable consumers. Never reads the environment.
    pub async fn build_with(config: Config, tuning: Tuning) -> Result<Self, Error> {
        let settings = &config.settings;
        let addr = settings.sender_addr;
        let ops = OpsServer::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        let local_addr = ops.local_addr().map_err(|source| Error::Bind { addr, source })?;
        let client = smsgate_shared::nats::connect(&settings.nats, "sender").await.map_err(Error::Connect)?;
        let js = jetstream::new(client.clone());
        let topology = Topology::from_settings(settings);
        let bus = topology.ensure(&js).await?;
        let outbound = consumer(
            &js,
            OUTBOUND_CONSUMER,
            topology.outbound_stream(),
            outbound_consumer_config(settings, &topology, &tuning),
        )
        .await?;
        let status = consumer(
            &js,
            STATUS_CONSUMER,
            topology.status_stream(),
            status_consumer_config(settings, &topology, &tuning),
        )
        .await?;
        let limits = tuning.limits(settings);
        let twilio = TwilioClient::new(tuning.timeouts).map_err(Error::Http)?;
        for c in &config.channels {
            if c.delivery == Delivery::Twilio && c.status_url().is_none() {
                tracing::warn!(
                    channel_id = %c.id,
                    "no public_base_url: replies go without a StatusCallback, so no delivery statuses"
                );
            }
        }
        let channels = Registry::new("sender", config.channels, |_| ());
        channels.load(RuntimeSource::new(bus.channels.clone(), settings)).await;
        Ok(Self { ops, local_addr, bus, channels, twilio, tuning, limits, client, outbound, status })
    }

    /// The ops listener's address (`/api/health`, `/metrics`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs both consumers and the ops listener until `shutdown`, then stops
    /// pulling and lets in-flight messages finish within the grace period.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let budget = self.bus.budget.clone();
        let guard = smsgate_shared::guard::GuardStore::new(&self.bus);
        let schedule = smsgate_shared::schedule::Schedule::new(self.bus.schedule.clone());
        let scheduler = smsgate_shared::schedule::Scheduler::new(
            schedule.clone(),
            self.bus.js.clone(),
            self.bus.topology.clone(),
            format!("sender-{}", &smsgate_shared::config::generate_token()[..12]),
        );
        let cells = Arc::new(smsgate_shared::cas::Cas::new(budget));
        let optout = smsgate_shared::mirror::Mirror::new(self.bus.optout.clone(), self.client.clone());
        let ctx = Arc::new(Ctx {
            optout,
            guard,
            schedule,
            bus: self.bus,
            channels: self.channels,
            twilio: self.twilio,
            spend: smsgate_shared::cost::DailySpend::new(cells.clone()),
            pacer: Pacer::new(cells),
            tuning: self.tuning,
            shutdown: shutdown.clone(),
        });
        tracing::info!(
            addr = %self.local_addr,
            channels = ctx.channels.snapshot().len(),
            outcome = "started",
            "sender running"
        );
        let watch = tokio::spawn(ctx.channels.clone().watch(shutdown.clone()));
        let mirror = tokio::spawn(ctx.optout.clone().follow(shutdown.clone()));
        // The texts' estimates reach the day's spend once a second; the
        // flusher stops after the consumers have drained, with a last write.
        let spend_stop = CancellationToken::new();
        let spend = tokio::spawn(ctx.spend.clone().follow(SPEND_EVERY, spend_stop.clone()));
        let scheduler = tokio::spawn(scheduler.run(shutdown.clone()));
        let (outbound_alive, status_alive) = (self.limits.liveness("sender"), self.limits.liveness("status"));
        let ops = tokio::spawn(self.ops.serve(shutdown.clone(), vec![outbound_alive.clone(), status_alive.clone()]));
        let outbound = Runtime {
            name: "sender",
            handler: Arc::new(deliver::Replies(ctx.clone())),
            consumer: self.outbound,
            limits: self.limits.clone(),
            client: Some(self.client.clone()),
            liveness: outbound_alive,
        };
        let status = Runtime {
            name: "status",
            handler: Arc::new(status::Status(ctx.clone())),
            consumer: self.status,
            limits: self.limits,
            client: Some(self.client),
            liveness: status_alive,
        };
        let (outbound, status) = (outbound.run(shutdown.clone()), status.run(shutdown.clone()));
        tokio::join!(outbound, status);
        spend_stop.cancel();
        let _ = spend.await;
        watch.abort();
        mirror.abort();
        scheduler.abort();
        let served = ops.await;
        tracing::info!(outcome = "stopped", "sender stopped");
        match served {
            Ok(r) => r.map_err(Error::Serve),
            Err(_) => Ok(()),
        }
    }
}

async fn consumer(
    js: &jetstream::Context,
    name: &'static str,
    stream: String,
    config: pull::Config,
) -> Result<PullConsumer, Error> {
    let s = js.get_stream(&stream).await.map_err(|e| Error::Consumer {
        name,
        stream: stream.clone(),
        source: Box::new(e),
    })?;
    consume::ensure_consumer(&s, config).await.map_err(|source| Error::Consumer { name, stream, source })
}
