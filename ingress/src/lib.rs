//! smsgate's ingress: Twilio's webhooks in, JetStream out, in milliseconds.
//!
//! # Layout
//!
//! - [`App`] (this file): binds the public and admin listeners, connects
//!   NATS, makes sure the topology exists (retrying in the background while
//!   NATS is down), and serves until the shutdown token is cancelled.
//! - [`webhook`]: the two Twilio routes. A request goes: path token →
//!   channel (the live [`webhook::Channels`] registry, file and runtime
//!   channels, constant time) → content type →
//!   body size → `X-Twilio-Signature` over the channel's public URL →
//!   required fields → publish to `P_INBOUND` / `P_STATUS` with
//!   `Nats-Msg-Id`, waiting for the stream's ack (bounded) → `200 <Response/>`.
//!   Every rejection is a [`webhook::Rejection`] with its status code and a
//!   logged reason.
//! - [`voice`]: the voice routes (`/api/channels/voice/twilio/…`), through
//!   the same checks ([`webhook`]'s `checked`): an incoming call answered
//!   with TwiML at once, each speech turn published to `P_INBOUND` and its
//!   reply read from `P_calls` across short `<Pause>`/`<Redirect>` cycles,
//!   voicemail and forwarding, call status callbacks.
//! - the private admin API (`/api/v1/...`, `/metrics`, the console) is the
//!   crate `smsgate_admin`, served here on the second listener.
//! - [`serve`]: the HTTP server of both listeners: header, request and idle
//!   timeouts, a connection cap, a shutdown bounded by its grace period.
//!
//! The handler does nothing else on the hot path: no chat call, no history
//! read. Everything after the ack is the worker's and the sender's.

pub mod relay;
pub mod serve;
pub mod voice;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use smsgate_shared::channels::RuntimeSource;
use smsgate_shared::config::{Config, Settings};
use smsgate_shared::topology::Topology;
use smsgate_shared::{ops, telemetry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

/// How long ingress waits for one JetStream ack. Twilio waits 15 s; we
/// answer long before that.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long ingress keeps trying to store a webhook while it is connected
/// but the stream cannot take it: a NATS cluster electing a new leader
/// after a node died (a few seconds), or an ack that never came. Twilio
/// does not retry a 503 by default, so waiting here saves the text; it stays
/// below the 10 s request timeout and Twilio's 15 s.
pub const STORE_WAIT: Duration = Duration::from_secs(8);
/// How long a readiness answer is reused: each fresh one costs a JetStream
/// API call per stream, and `/api/ready` needs no authentication.
pub const READY_CACHE: Duration = Duration::from_millis(1500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS")]
    Nats(#[source] smsgate_shared::nats::ConnectError),
    /// Nowhere to keep the admin token (a configuration problem: exit 64).
    #[error("refusing to start: {0}")]
    AdminToken(String),
    #[error("server failed")]
    Serve(#[source] std::io::Error),
}

impl Error {
    /// The configuration is what is wrong (exit 64, as for a bad channel file).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::AdminToken(_))
    }
}

/// Shared by every handler.
pub struct Shared {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
    /// The live channels (file and runtime), shared with the admin API.
    pub channels: webhook::Channels,
    /// For reading runtime channels once NATS is there
    /// (`SMSGATE_SECRET_KEY`, `SMSGATE_PUBLIC_BASE_URL`).
    pub settings: Settings,
    pub metrics: webhook::Metrics,
    /// Set once every stream exists.
    pub topology_ready: AtomicBool,
    pub publish_timeout: Duration,
    /// [`STORE_WAIT`]; shorter in tests.
    pub store_wait: Duration,
    /// When the streams were last found present (or not).
    ready_cache: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// How the voice reply route waits ([`voice::VoiceTiming`]).
    pub voice_timing: voice::VoiceTiming,
    /// `P_calls`, opened on first use (the topology may not exist at start).
    calls: tokio::sync::OnceCell<async_nats::jetstream::kv::Store>,
    /// The live ConversationRelay sockets, one per CallSid.
    pub relay: Arc<relay::Sessions>,
}

impl Shared {
    /// The `P_calls` bucket, or None while it cannot be opened.
    pub async fn calls(&self) -> Option<async_nats::jetstream::kv::Store> {
        let open = || async {
            self.js.get_key_value(self.topology.calls_bucket()).await.inspect_err(|e| {
                tracing::warn!(error = e as &dyn std::error::Error, "cannot open the calls bucket");
            })
        };
        self.calls.get_or_try_init(open).await.ok().cloned()
    }
}

pub struct App {
    public: TcpListener,
    admin: TcpListener,
    shared: Arc<Shared>,
    admin_state: smsgate_admin::AdminState,
    guard: Arc<smsgate_admin::guard::Guard>,
    limits: serve::Limits,
}

impl App {
    /// Binds both listeners and connects NATS. Never reads the environment:
    /// everything comes in `config`.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let Config { settings, channels } = config;
        let admin_token = smsgate_admin::guard::admin_token(&settings).map_err(Error::AdminToken)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
        };
        let public = bind(settings.ingress_addr).await?;
        let admin_listener = bind(settings.admin_addr).await?;

        for c in &channels {
            if c.insecure_skip_signature {
                tracing::warn!(channel_id = %c.id, "insecure_skip_signature is on: this channel accepts unsigned webhooks");
            }
            if c.compliance.quiet_hours.is_none() {
                tracing::warn!(
                    channel_id = %c.id,
                    "compliance.quiet_hours is null: texts the agent starts go out at any hour of the recipient's day (the operator's responsibility)"
                );
            }
            if c.public_base_url.is_none() {
                tracing::warn!(
                    channel_id = %c.id,
                    "no public_base_url: signatures are checked against the URL built from Host/X-Forwarded-* headers"
                );
            }
        }

        let client = smsgate_shared::nats::connect(&settings.nats, "ingress").await.map_err(Error::Nats)?;
        let js = jetstream::new(client.clone());
        let topology = Topology::from_settings(&settings);
        let channels = webhook::channels(channels, &topology);
        // The recorder before any metric handle: a handle made earlier
        // belongs to the no-op recorder and never shows in /metrics.
        telemetry::metrics_handle();
        let shared = Arc::new(Shared {
            client,
            js: js.clone(),
            topology: topology.clone(),
            channels: channels.clone(),
            settings: settings.clone(),
            metrics: webhook::Metrics::new(),
            topology_ready: AtomicBool::new(false),
            publish_timeout: PUBLISH_TIMEOUT,
            store_wait: STORE_WAIT,
            ready_cache: tokio::sync::Mutex::new(None),
            voice_timing: voice::VoiceTiming::default(),
            calls: tokio::sync::OnceCell::new(),
            relay: Arc::default(),
        });
        let admin_at =
            admin_listener.local_addr().map_err(|source| Error::Bind { addr: settings.admin_addr, source })?;
        let guard = smsgate_admin::guard::Guard::new(&admin_token, admin_at);
        let mut admin_state = smsgate_admin::AdminState::new(js, topology, channels);
        admin_state.mcp_default_channel = settings.mcp_default_channel.clone();
        Ok(Self { public, admin: admin_listener, shared, admin_state, guard, limits: serve::Limits::default() })
    }

    /// Other limits for both listeners (tests shorten them).
    pub fn with_limits(mut self, limits: serve::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Another wait for the voice reply route (tests shorten it).
    pub fn with_voice_timing(mut self, timing: voice::VoiceTiming) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.voice_timing = timing;
        }
        self
    }

    /// The public listener's address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.public.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, finishes
    /// the requests in flight and flushes what NATS still holds.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self { public, admin, shared, mut admin_state, guard, limits } = self;
        admin_state.start(shutdown.clone());
        tokio::spawn(ensure_topology(shared.clone(), shutdown.clone()));
        tokio::spawn(telemetry::upkeep(shutdown.clone()));
        tracing::info!(
            addr = %public.local_addr().map_err(Error::Serve)?,
            admin_addr = %admin.local_addr().map_err(Error::Serve)?,
            channels = shared.channels.snapshot().len(),
            max_connections = limits.max_connections,
            "ingress listening"
        );
        let public_app = public_router(shared.clone())
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout));
        let admin_app = smsgate_admin::router(admin_state, guard);
        tokio::join!(
            serve::serve(public, public_app, limits, shutdown.clone()),
            serve::serve(admin, admin_app, limits, shutdown),
        );
        // Bounded: with NATS gone a flush would wait for a reconnect forever.
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.client.flush()).await;
        Ok(())
    }
}

/// The public routes: webhooks, status callbacks and health, nothing else
/// (invariant 8 (docs/ARCHITECTURE.md §4); `/metrics` is on the admin listener).
pub fn public_router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route(&format!("{}{{path_token}}", smsgate_shared::config::WEBHOOK_PATH), post(webhook::inbound))
        .route(&format!("{}{{path_token}}", smsgate_shared::config::STATUS_PATH), post(webhook::status))
        .route("/api/health", get(ops::health))
        .route("/api/ready", get(ready));
    for (path, handler) in voice::routes() {
        router = router.route(&format!("{path}{{path_token}}"), handler);
    }
    router = router.route(&format!("{}{{path_token}}", smsgate_shared::voice::path::RELAY), get(relay::socket));
    router.with_state(shared)
}

/// Ready: NATS connected and every stream present (looked up at most once
/// per [`READY_CACHE`]; concurrent requests wait for that one look-up).
async fn ready(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    let connected = shared.client.connection_state() == async_nats::connection::State::Connected;
    if connected && streams_present(&shared).await {
        (StatusCode::OK, "{\"status\":\"ready\"}")
    } else if connected {
        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"streams missing\"}")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"nats disconnected\"}")
    }
}

async fn streams_present(shared: &Shared) -> bool {
    let mut cache = shared.ready_cache.lock().await;
    if let Some((at, present)) = *cache
        && at.elapsed() < READY_CACHE
    {
        return present;
    }
    let present = shared.topology.present(&shared.js).await;
    *cache = Some((Instant::now(), present));
    present
}

/// Creates the topology, retrying while NATS is unreachable.
async fn ensure_topology(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(250);
    loop {
        match shared.topology.ensure(&shared.js).await {
            Ok(bus) => {
                shared.topology_ready.store(true, Ordering::Release);
                tracing::info!(outcome = "ready", "JetStream topology in place");
                // Runtime channels from now on: read them, then follow the bucket.
                shared.channels.load(RuntimeSource::new(bus.channels, &shared.settings)).await;
                tokio::spawn(shared.channels.clone().watch(shutdown));
                return;
            }
            Err(e) => {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot create the JetStream topology yet"
                );
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
