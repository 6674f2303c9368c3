//! smsgate's sender: delivers replies through Twilio's Messages API as
//! proper SMS pieces (paced, retried, never sent twice) and records Twilio's
//! status callbacks.
//!
//! # Layout
//!
//! - [`sms`]: pure text work: [`sms::normalize`] (markdown, GSM-7
//!   look-alikes), [`sms::split`] (sentence then word boundaries, `(i/n)`
//!   markers, `max_parts`), [`sms::gsm`] (segments as carriers count them).
//! - [`twilio`]: the Messages API client; [`twilio::TwilioError::kind`] is
//!   the one place that decides retry behaviour.
//! - [`pacer`]: next-slot pacing per sending number at the channel's `mps`.
//! - [`lanes`]: a pull consumer feeding ordered lanes (one recipient always
//!   lands in the same lane), stopping and draining on shutdown.
//! - [`deliver`]: an `Outbound` from `P_OUTBOUND`: opt-out check → pieces →
//!   per piece: `P_sent` check, pace, create with retries, `P_sent` put →
//!   history entry → ack; failures → dead letter + history note.
//! - [`status`]: a `StatusUpdate` from `P_STATUS`: compare-and-set of the
//!   piece's state in `P_sent` (never backwards) → history entry → ack.
//! - [`record`]: history entries and dead letters on the bus.
//!
//! A message's path: `P.outbound.<channel>` → [`lanes`] (lane by
//! hash(channel, to)) → [`deliver`] → [`sms::prepare`] → [`pacer`] →
//! [`twilio`] → `P_sent` and `P.history.<channel>.<peer>` → ack.

pub mod deliver;
pub mod lanes;
pub mod pacer;
pub mod record;
pub mod sms;
pub mod status;
pub mod twilio;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::PullConsumer, consumer::pull};
use smsgate_shared::config::{Channel, Config, Delivery};
use smsgate_shared::domain::ChannelId;
use smsgate_shared::ops::OpsServer;
use smsgate_shared::topology::{self, Bus, Topology};
use tokio_util::sync::CancellationToken;

use crate::pacer::Pacer;
use crate::twilio::{ClientTimeouts, TwilioClient};

/// The durable consumer on `P_OUTBOUND`.
pub const OUTBOUND_CONSUMER: &str = "sender";
/// The durable consumer on `P_STATUS`.
pub const STATUS_CONSUMER: &str = "sender-status";

/// Knobs with production defaults; tests shorten the delays.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Parallel lanes per consumer (recipients in parallel, each in order).
    pub lanes: usize,
    /// JetStream's ack wait: a message not acked by then is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    /// In-process attempts per piece for 429 and connection errors.
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The pause before the one retry after a 5xx or timeout.
    pub unknown_outcome_delay: Duration,
    /// The base of the redelivery delay (× delivery count) once in-process
    /// retries are used up.
    pub redelivery_delay: Duration,
    /// How often a message waiting in-process tells JetStream it is alive.
    pub progress_every: Duration,
    /// How long in-flight messages may take to finish after shutdown.
    pub grace: Duration,
    pub timeouts: ClientTimeouts,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            lanes: 8,
            ack_wait: Duration::from_secs(60),
            max_deliver: 8,
            max_ack_pending: 256,
            attempts: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            unknown_outcome_delay: Duration::from_secs(2),
            redelivery_delay: Duration::from_secs(15),
            progress_every: Duration::from_secs(10),
            grace: Duration::from_secs(20),
            timeouts: ClientTimeouts::default(),
        }
    }
}

/// The consumer on `P_OUTBOUND` (public so that tests can pre-create it
/// with a short ack wait before starting the binary).
pub fn outbound_consumer_config(topology: &Topology, tuning: &Tuning) -> pull::Config {
    consumer_config(OUTBOUND_CONSUMER, "replies to deliver", format!("{}.outbound.>", topology.prefix()), tuning)
}

/// The consumer on `P_STATUS`.
pub fn status_consumer_config(topology: &Topology, tuning: &Tuning) -> pull::Config {
    consumer_config(STATUS_CONSUMER, "Twilio status callbacks", format!("{}.status.>", topology.prefix()), tuning)
}

/// Both consumers differ only in name and subject.
fn consumer_config(name: &str, what: &str, filter_subject: String, tuning: &Tuning) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(format!("smsgate sender: {what}")),
        filter_subject,
        ack_policy: AckPolicy::Explicit,
        ack_wait: tuning.ack_wait,
        max_deliver: tuning.max_deliver,
        max_ack_pending: tuning.max_ack_pending,
        ..Default::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the ops listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot set up the JetStream topology")]
    Topology(#[from] topology::TopologyError),
    #[error("cannot open consumer {name} on stream {stream}")]
    Consumer {
        name: &'static str,
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("the ops listener failed")]
    Serve(#[source] std::io::Error),
}

/// What every handler shares.
pub struct Ctx {
    pub bus: Bus,
    pub channels: HashMap<ChannelId, Arc<Channel>>,
    pub twilio: TwilioClient,
    pub pacer: Pacer,
    pub tuning: Tuning,
    pub shutdown: CancellationToken,
}

/// The sender, bound and connected, ready to run.
pub struct App {
    ops: OpsServer,
    local_addr: SocketAddr,
    bus: Bus,
    channels: HashMap<ChannelId, Arc<Channel>>,
    twilio: TwilioClient,
    tuning: Tuning,
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
        let client = topology::connect(&settings.nats_url, "sender")
            .await
            .map_err(|source| Error::Connect { url: settings.nats_url.clone(), source })?;
        let js = jetstream::new(client);
        let topology = Topology::from_settings(settings);
        let bus = topology.ensure(&js).await?;
        let outbound = consumer(&js, topology.outbound_stream(), outbound_consumer_config(&topology, &tuning)).await?;
        let status = consumer(&js, topology.status_stream(), status_consumer_config(&topology, &tuning)).await?;
        let twilio = TwilioClient::new(tuning.timeouts).map_err(Error::Http)?;
        for c in &config.channels {
            if c.delivery == Delivery::Twilio && c.status_url().is_none() {
                tracing::warn!(
                    channel_id = %c.id,
                    "no public_base_url: replies go without a StatusCallback, so no delivery statuses"
                );
            }
        }
        let channels = config.channels.into_iter().map(|c| (c.id.clone(), Arc::new(c))).collect();
        Ok(Self { ops, local_addr, bus, channels, twilio, tuning, outbound, status })
    }

    /// The ops listener's address (`/api/health`, `/metrics`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs both consumers and the ops listener until `shutdown`, then stops
    /// pulling and lets in-flight messages finish within the grace period.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let ctx = Arc::new(Ctx {
            bus: self.bus,
            channels: self.channels,
            twilio: self.twilio,
            pacer: Pacer::new(),
            tuning: self.tuning,
            shutdown: shutdown.clone(),
        });
        tracing::info!(addr = %self.local_addr, channels = ctx.channels.len(), outcome = "started", "sender running");
        let ops = tokio::spawn(self.ops.serve(shutdown.clone()));
        let outbound = {
            let ctx = ctx.clone();
            lanes::run("outbound", self.outbound, ctx.clone(), deliver::lane_of, move |msg| {
                deliver::handle(ctx.clone(), msg)
            })
        };
        let status = {
            let ctx = ctx.clone();
            lanes::run("status", self.status, ctx.clone(), status::lane_of, move |msg| status::handle(ctx.clone(), msg))
        };
        tokio::join!(outbound, status);
        let served = ops.await;
        tracing::info!(outcome = "stopped", "sender stopped");
        match served {
            Ok(r) => r.map_err(Error::Serve),
            Err(_) => Ok(()),
        }
    }
}

async fn consumer(js: &jetstream::Context, stream: String, config: pull::Config) -> Result<PullConsumer, Error> {
    let name =
        if config.durable_name.as_deref() == Some(OUTBOUND_CONSUMER) { OUTBOUND_CONSUMER } else { STATUS_CONSUMER };
    let s = js.get_stream(&stream).await.map_err(|e| Error::Consumer {
        name,
        stream: stream.clone(),
        source: Box::new(e),
    })?;
    s.get_or_create_consumer(name, config).await.map_err(|e| Error::Consumer { name, stream, source: Box::new(e) })
}
