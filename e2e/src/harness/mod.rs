//! The whole pipeline on one machine: a real nats-server, the three real
//! service binaries as child processes, a Twilio Messages API stub and an
//! OpenAI-compatible chat stub, wired together by a generated channel file.
//!
//! [`Stack::start`] brings it all up on free ports and waits until every
//! service answers its health (ingress: readiness) check; dropping the
//! [`Stack`] kills every process, also when a test panics, and then prints
//! the tail of each service's log so a failure can be read. Processes can be
//! SIGKILLed and restarted on the same ports ([`Stack::kill`],
//! [`Stack::restart`]), more workers and senders added ([`Stack::add`]), and
//! NATS stopped and started on the same port and store.
//!
//! - [`binaries`]: finds (and if needed builds) `smsgate-ingress`,
//!   `smsgate-worker` and `smsgate-sender`.
//! - [`ledger`]: reads back what the pipeline did (history, dead letters,
//!   `P_sent`, the stub's calls) and checks invariants 1 and 2 (docs/ARCHITECTURE.md §4).
//!
//! Only one stack runs at a time per test process (a process-wide semaphore
//! taken by [`Stack::start`]): the machine has two cores, and two stacks
//! side by side would turn timing into noise.

pub mod binaries;
pub mod calls;
pub mod ledger;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use smsgate_shared::topology::{self, Topology};
use smsgate_testkit::chat::OpenAiStub;
use smsgate_testkit::nats::{NatsCluster, NatsServer, free_port};
use smsgate_testkit::twilio::TwilioStub;
use smsgate_testkit::{ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, PATH_TOKEN};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::webhook::{self, SignedWebhook, Target};

pub use ledger::{Expect, Ledger, Report};

/// The public base URL the channel is configured with (the signature covers it).
pub const PUBLIC_BASE_URL: &str = "https://sms.example.test";
/// The admin token every stack's ingress takes.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";
/// `SMSGATE_SECRET_KEY` of every stack (32 bytes, hex).
pub const SECRET_KEY: &str = "5e2e5e2e00112233445566778899aabbccddeeff00112233445566778899aabb";
/// The channel id of the generated channel file.
pub const CHANNEL_ID: &str = "e2e";

/// One heavy stack at a time per process.
static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

/// What to start.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// A tag for the NATS prefix and the temporary directory.
    pub name: String,
    /// `sms_max_len` of the channel: small values make multi-piece replies.
    pub sms_max_len: usize,
    /// `max_parts` of the channel.
    pub max_parts: usize,
    /// `SMSGATE_DUPLICATE_WINDOW_SECS` (JetStream's publish dedupe window).
    pub duplicate_window: Duration,
    /// Ack wait of the durable consumers (`SMSGATE_WORKER_ACK_WAIT_SECS`,
    /// `SMSGATE_SENDER_ACK_WAIT_SECS`). Production uses 30 s (worker) and
    /// 60 s (sender); shorter ones only bring a killed process's messages
    /// back sooner (the services keep what they hold alive every third of it).
    pub worker_ack_wait: Duration,
    pub sender_ack_wait: Duration,
    /// `history_turns` of the chat config (0: the worker reads no history).
    pub history_turns: usize,
    /// Extra keys merged into the channel's `config` object.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// `RUST_LOG` of the services.
    pub rust_log: String,
    /// Run on a three-node JetStream cluster with `SMSGATE_NATS_REPLICAS=3`
    /// instead of one nats-server.
    pub cluster: bool,
}

impl StackConfig {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            sms_max_len: 480,
            max_parts: 4,
            duplicate_window: Duration::from_secs(600),
            worker_ack_wait: Duration::from_secs(20),
            sender_ack_wait: Duration::from_secs(20),
            history_turns: 0,
            extra: serde_json::Map::new(),
            rust_log: "info".to_owned(),
            cluster: false,
        }
    }
}

/// The stack's NATS: one server, or a three-node cluster.
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// What the services get as `SMSGATE_NATS_URL`.
    pub fn url(&self) -> String {
        match self {
            Self::Single(s) => s.url(),
            Self::Cluster(c) => c.urls(),
        }
    }

    fn replicas(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster(_) => 3,
        }
    }
}

/// A service process of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Ingress,
    /// The n-th worker (0 is started by [`Stack::start`]).
    Worker(usize),
    /// The n-th sender (0 is started by [`Stack::start`]).
    Sender(usize),
}

impl Service {
    fn binary(self) -> &'static str {
        match self {
            Service::Ingress => "smsgate-ingress",
            Service::Worker(_) => "smsgate-worker",
            Service::Sender(_) => "smsgate-sender",
        }
    }

    fn label(self) -> String {
        match self {
            Service::Ingress => "ingress".to_owned(),
            Service::Worker(n) => format!("worker-{n}"),
            Service::Sender(n) => format!("sender-{n}"),
        }
    }
}

/// One service: its ports, log file, and the running child (if any).
struct Proc {
    binary: PathBuf,
    env: Vec<(String, String)>,
    /// Where readiness is polled.
    ready_url: String,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

/// The running pipeline. Dropping it kills everything.
pub struct Stack {
    pub config: StackConfig,
    pub nats: Nats,
    pub twilio: TwilioStub,
    pub chat: OpenAiStub,
    pub prefix: String,
    pub topology: Topology,
    /// A client of the test's own, for reading the streams back.
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    /// The admin listener (`http://127.0.0.1:<port>`), token [`ADMIN_TOKEN`].
    pub admin_url: String,
    target: Target,
    ingress_url: String,
    procs: BTreeMap<Service, Proc>,
    dir: tempfile::TempDir,
    _turn: SemaphorePermit<'static>,
}

impl Stack {
    /// Starts nats-server, the stubs, the channel file, creates the
    /// topology, then ingress, one worker and one sender, and waits
    /// until all three are ready.
    pub async fn start(config: StackConfig) -> anyhow::Result<Self> {
        let turn = ONE_AT_A_TIME.acquire().await.context("the stack semaphore is closed")?;
        let bins = binaries::locate()?;
        let dir = tempfile::Builder::new().prefix(&format!("smsgate-e2e-{}-", config.name)).tempdir()?;
        let nats = if config.cluster { Nats::Cluster(NatsCluster::start()) } else { Nats::Single(NatsServer::start()) };
        let twilio = TwilioStub::start().await;
        // Any MMS of the load gets a real (tiny) picture.
        twilio.serve_any_media("image/png", &smsgate_testkit::media::TINY_PNG);
        let chat = OpenAiStub::start().await;
        let prefix = unique_prefix(&config.name);

        let channels = dir.path().join("channels.json");
        std::fs::write(&channels, channel_file(&config, &twilio, &chat).to_string())?;

        let mut topology = Topology::new(&prefix).with_replicas(nats.replicas());
        topology.duplicate_window = config.duplicate_window;
        let client = topology::connect(&nats.url(), "e2e").await?;
        let js = jetstream::new(client);
        // A fresh cluster elects its JetStream meta leader first.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = topology.ensure(&js).await {
            if tokio::time::Instant::now() >= deadline {
                return Err(e.into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        let ingress_port = free_port();
        let target = Target {
            public_url: format!("{PUBLIC_BASE_URL}{}{PATH_TOKEN}", smsgate_shared::config::WEBHOOK_PATH),
            auth_token: AUTH_TOKEN.to_owned(),
            account_sid: ACCOUNT_SID.to_owned(),
            to: FROM_NUMBER.to_owned(),
        };
        let ingress_url =
            format!("http://127.0.0.1:{ingress_port}{}{PATH_TOKEN}", smsgate_shared::config::WEBHOOK_PATH);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(16)
            .build()
            .context("cannot build the HTTP client")?;

        let mut stack = Self {
            nats,
            twilio,
            chat,
            topology,
            js,
            http,
            admin_url: String::new(),
            target,
            ingress_url,
            procs: BTreeMap::new(),
            dir,
            _turn: turn,
            prefix,
            config,
        };
        let common = stack.common_env(&channels);
        let mut port = ingress_port;
        for attempt in 1..=3 {
            let mut ingress_env = common.clone();
            let admin_port = free_port();
            ingress_env.push(("SMSGATE_INGRESS_ADDR".to_owned(), format!("127.0.0.1:{port}")));
            ingress_env.push(("SMSGATE_ADMIN_ADDR".to_owned(), format!("127.0.0.1:{admin_port}")));
            stack.define(Service::Ingress, ingress_env, format!("http://127.0.0.1:{port}/api/ready"), &bins);
            stack.ingress_url = format!("http://127.0.0.1:{port}{}{PATH_TOKEN}", smsgate_shared::config::WEBHOOK_PATH);
            stack.admin_url = format!("http://127.0.0.1:{admin_port}");
            match stack.restart(Service::Ingress).await {
                Ok(()) => break,
                // A free port taken by someone else in the meantime: take another.
                Err(e) if attempt < 3 && stack.exited(Service::Ingress) => {
                    eprintln!("e2e harness: ingress did not start ({e:#}); trying other ports");
                    port = free_port();
                }
                Err(e) => return Err(e),
            }
        }
        stack.start_fresh(Service::Worker(0), &bins).await?;
        stack.start_fresh(Service::Sender(0), &bins).await?;
        Ok(stack)
    }

    /// Whether the service's process has exited (it is then forgotten).
    fn exited(&mut self, service: Service) -> bool {
        let Some(proc) = self.procs.get_mut(&service) else { return false };
        let gone = proc.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some());
        if gone {
            proc.child = None;
        }
        gone
    }

    /// Defines a worker or sender on a fresh ops port and starts it,
    /// retrying with another port if it exits during start-up.
    async fn start_fresh(&mut self, service: Service, bins: &binaries::Binaries) -> anyhow::Result<()> {
        for attempt in 1..=3 {
            self.define_next(service, bins);
            match self.restart(service).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 && self.exited(service) => {
                    eprintln!("e2e harness: {} did not start ({e:#}); trying another port", service.label());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn common_env(&self, channels: &Path) -> Vec<(String, String)> {
        [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("SMSGATE_NATS_URL", self.nats.url()),
            ("SMSGATE_NATS_REPLICAS", self.nats.replicas().to_string()),
            ("SMSGATE_NATS_PREFIX", self.prefix.clone()),
            ("SMSGATE_CHANNELS", channels.display().to_string()),
            ("SMSGATE_DUPLICATE_WINDOW_SECS", self.config.duplicate_window.as_secs().max(1).to_string()),
            ("SMSGATE_WORKER_ACK_WAIT_SECS", self.config.worker_ack_wait.as_secs().max(1).to_string()),
            ("SMSGATE_SENDER_ACK_WAIT_SECS", self.config.sender_ack_wait.as_secs().max(1).to_string()),
            ("SMSGATE_LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", self.config.rust_log.clone()),
            ("SMSGATE_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            // Channels connected at run time are sealed with it.
            ("SMSGATE_SECRET_KEY", SECRET_KEY.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn define(&mut self, service: Service, env: Vec<(String, String)>, ready_url: String, bins: &binaries::Binaries) {
        let binary = bins.path(service.binary());
        let log = self.dir.path().join(format!("{}.log", service.label()));
        self.procs.insert(service, Proc { binary, env, ready_url, log, child: None, starts: 0 });
    }

    /// Defines a worker or sender with its own ops port.
    fn define_next(&mut self, service: Service, bins: &binaries::Binaries) {
        let channels = self.dir.path().join("channels.json");
        let mut env = self.common_env(&channels);
        let port = free_port();
        let key = match service {
            Service::Worker(_) => "SMSGATE_WORKER_ADDR",
            _ => "SMSGATE_SENDER_ADDR",
        };
        env.push((key.to_owned(), format!("127.0.0.1:{port}")));
        // Not used by workers and senders, but never the defaults (8000/8001).
        env.push(("SMSGATE_INGRESS_ADDR".to_owned(), "127.0.0.1:0".to_owned()));
        env.push(("SMSGATE_ADMIN_ADDR".to_owned(), "127.0.0.1:0".to_owned()));
        self.define(service, env, format!("http://127.0.0.1:{port}/api/health"), bins);
    }

    fn spawn(&mut self, service: Service) -> anyhow::Result<()> {
        let proc = self.procs.get_mut(&service).with_context(|| format!("{service:?} is not part of the stack"))?;
        if proc.child.is_some() {
            bail!("{service:?} is already running");
        }
        let binary = proc.binary.clone();
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&proc.log)?;
        proc.starts += 1;
        use std::io::Write as _;
        writeln!(log, "==== e2e harness: start #{} of {}", proc.starts, service.label())?;
        let child = Command::new(&binary)
            .env_clear()
            .envs(proc.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        proc.child = Some(child);
        Ok(())
    }

    /// Polls the service's health (ingress: readiness) URL until 200.
    pub async fn wait_ready(&mut self, service: Service) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let proc = self.procs.get_mut(&service).context("unknown service")?;
            let url = proc.ready_url.clone();
            if let Some(child) = proc.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{} exited during start-up with {status}; log:\n{}", service.label(), tail(&proc.log, 30));
            }
            let ok = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} not ready within 60 s at {url}", service.label());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs a service (no graceful shutdown: what it held is in flight).
    pub fn kill(&mut self, service: Service) -> anyhow::Result<()> {
        let proc = self.procs.get_mut(&service).context("unknown service")?;
        let mut child = proc.child.take().with_context(|| format!("{} is not running", service.label()))?;
        child.kill()?; // SIGKILL on Unix
        child.wait()?;
        Ok(())
    }

    /// Starts a killed service again on the same ports and waits until ready.
    pub async fn restart(&mut self, service: Service) -> anyhow::Result<()> {
        self.spawn(service)?;
        self.wait_ready(service).await
    }

    /// Starts one more worker or sender (`Service::Worker(_)` or
    /// `Service::Sender(_)`; the index is ignored) on the same streams and
    /// returns it once ready.
    pub async fn add(&mut self, kind: Service) -> anyhow::Result<Service> {
        let bins = binaries::locate()?;
        let n = self.procs.keys().filter(|s| std::mem::discriminant(*s) == std::mem::discriminant(&kind)).count();
        let service = match kind {
            Service::Worker(_) => Service::Worker(n),
            Service::Sender(_) => Service::Sender(n),
            Service::Ingress => bail!("there is one ingress"),
        };
        self.start_fresh(service, &bins).await?;
        Ok(service)
    }

    /// Kills nats-server (the store stays): ingress answers 503 meanwhile.
    /// On a cluster, kills every node.
    pub fn stop_nats(&mut self) {
        match &mut self.nats {
            Nats::Single(s) => s.stop(),
            Nats::Cluster(c) => (0..3).for_each(|i| c.kill(i)),
        }
    }

    /// Starts nats-server (every node) again on the same ports and stores.
    pub fn start_nats(&mut self) {
        match &mut self.nats {
            Nats::Single(s) => s.start_again(),
            Nats::Cluster(c) => (0..3).for_each(|i| c.restart(i)),
        }
    }

    /// SIGKILLs node `i` of the cluster (its store stays).
    pub fn kill_nats_node(&mut self, i: usize) -> anyhow::Result<()> {
        match &mut self.nats {
            Nats::Cluster(c) => {
                c.kill(i);
                Ok(())
            }
            Nats::Single(_) => bail!("this stack runs one nats-server, not a cluster"),
        }
    }

    /// Which cluster node (0-based) leads `stream` now.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        let info = self.js.get_stream(stream).await?.info().await?.clone();
        let leader = info.cluster.and_then(|c| c.leader).ok_or_else(|| anyhow::anyhow!("{stream} has no leader"))?;
        // The test kit names the nodes n1, n2, n3.
        leader
            .strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| n.checked_sub(1))
            .ok_or_else(|| anyhow::anyhow!("leader {leader:?} is not a test kit node"))
    }

    /// Whether every replica of `stream` is current (none offline or
    /// behind the leader), and what each one reports.
    pub async fn replicas_current(&self, stream: &str) -> anyhow::Result<(bool, String)> {
        let info = self.js.get_stream(stream).await?.info().await?.clone();
        let cluster = info.cluster.ok_or_else(|| anyhow::anyhow!("{stream} has no cluster info"))?;
        let peers: Vec<String> =
            cluster.replicas.iter().map(|p| format!("{} current={} lag={:?}", p.name, p.current, p.lag)).collect();
        let current = cluster.leader.is_some()
            && cluster.replicas.len() + 1 >= info.config.num_replicas
            && cluster.replicas.iter().all(|p| p.current && !p.offline);
        Ok((current, format!("leader {:?}; {}", cluster.leader, peers.join(", "))))
    }

    /// Starts node `i` again; it rejoins the cluster and catches up.
    pub fn restart_nats_node(&mut self, i: usize) -> anyhow::Result<()> {
        match &mut self.nats {
            Nats::Cluster(c) => {
                c.restart(i);
                Ok(())
            }
            Nats::Single(_) => bail!("this stack runs one nats-server, not a cluster"),
        }
    }

    /// A webhook for message `i` of this run, signed as Twilio signs it.
    pub fn webhook(&self, sid: &str, from: &str, body: &str) -> SignedWebhook {
        webhook::signed(&self.target, sid, from, body)
    }

    /// The same with one picture attached: a `MediaUrl0` on the Twilio
    /// stub, which serves a small PNG for any media (the worker fetches it).
    pub fn webhook_with_picture(&self, sid: &str, from: &str, body: &str) -> SignedWebhook {
        let media_sid = format!("ME{:0>32}", sid.get(sid.len().saturating_sub(32)..).unwrap_or(sid));
        let media = [(self.twilio.media_url(sid, &media_sid), "image/png".to_owned())];
        webhook::signed_with_media(&self.target, sid, from, body, &media)
    }

    /// Posts a webhook to ingress as Twilio does; returns the HTTP status
    /// (0 when no answer came at all).
    pub async fn post(&self, hook: &SignedWebhook) -> u16 {
        self.poster().post(hook).await.0
    }

    /// Posts `hooks` with `concurrency` connections; returns each one's status, in order.
    pub async fn post_all(&self, hooks: &[SignedWebhook], concurrency: usize) -> Vec<u16> {
        self.poster().post_all(hooks, concurrency).await.into_iter().map(|(s, _)| s).collect()
    }

    /// `http://127.0.0.1:<port>` of ingress's public listener.
    pub fn ingress_base(&self) -> String {
        let suffix = format!("{}{PATH_TOKEN}", smsgate_shared::config::WEBHOOK_PATH);
        self.ingress_url.strip_suffix(&suffix).unwrap_or(&self.ingress_url).to_owned()
    }

    /// A handle that posts webhooks from another task while the test
    /// kills and restarts things.
    pub fn poster(&self) -> Poster {
        Poster { http: self.http.clone(), url: self.ingress_url.clone() }
    }

    /// Posts to another channel's webhook path on this stack's ingress
    /// (a channel connected at run time).
    pub fn poster_for(&self, path_token: &str) -> Poster {
        let base = self.ingress_url.strip_suffix(PATH_TOKEN).unwrap_or(&self.ingress_url);
        Poster { http: self.http.clone(), url: format!("{base}{path_token}") }
    }

    /// Messages still stored in a work-queue stream (acked ones are gone).
    pub async fn queued(&self, stream: &str) -> anyhow::Result<u64> {
        let mut s = self.js.get_stream(stream).await?;
        Ok(s.info().await?.state.messages)
    }

    /// Waits until the worker's and the sender's durable consumers have
    /// nothing left to deliver and nothing awaiting an ack (a nak with a
    /// delay stays pending): every message was processed to the end, twice
    /// in a row a moment apart. Returns what the work queues still store
    /// then ([`Leftovers`]): normally nothing, as an ack deletes a message.
    pub async fn wait_drained(&self, timeout: Duration) -> anyhow::Result<Leftovers> {
        let deadline = Instant::now() + timeout;
        let mut quiet = 0;
        loop {
            let state = self.queue_state().await.ok();
            quiet = if state.as_ref().is_some_and(|s| s.idle()) { quiet + 1 } else { 0 };
            if quiet >= 2
                && let Some(s) = state
            {
                return Ok(Leftovers { inbound: s.inbound.0, outbound: s.outbound.0 });
            }
            if Instant::now() > deadline {
                let detail = self.describe_queues().await;
                bail!("the pipeline did not drain within {timeout:?}: {state:?}\n{detail}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn queue_state(&self) -> anyhow::Result<QueueState> {
        let one = |stream: String, consumer: &'static str| async move {
            let mut s = self.js.get_stream(&stream).await?;
            let messages = s.info().await?.state.messages;
            let mut c: consumer::PullConsumer = s.get_consumer(consumer).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let info = c.info().await?;
            anyhow::Ok((messages, info.num_pending, info.num_ack_pending))
        };
        Ok(QueueState {
            inbound: one(self.topology.inbound_stream(), smsgate_worker::CONSUMER).await?,
            outbound: one(self.topology.outbound_stream(), smsgate_sender::OUTBOUND_CONSUMER).await?,
        })
    }

    /// What is left in the work queues and what their consumers think, for
    /// a failure message.
    pub async fn describe_queues(&self) -> String {
        let mut out = String::new();
        let queues = [
            (self.topology.inbound_stream(), smsgate_worker::CONSUMER),
            (self.topology.outbound_stream(), smsgate_sender::OUTBOUND_CONSUMER),
        ];
        for (stream, consumer) in queues {
            out.push_str(&self.peek(&stream, 10).await);
            let info = match self.js.get_stream(&stream).await {
                Ok(s) => {
                    let state = s.cached_info().state.clone();
                    let c: Result<consumer::PullConsumer, _> = s.get_consumer(consumer).await;
                    match c {
                        Ok(mut c) => match c.info().await {
                            Ok(i) => format!(
                                "stream first {} last {} messages {}; consumer {consumer}: delivered {} ack floor {} \
                                 pending {} ack pending {} redelivered {}",
                                state.first_sequence,
                                state.last_sequence,
                                state.messages,
                                i.delivered.stream_sequence,
                                i.ack_floor.stream_sequence,
                                i.num_pending,
                                i.num_ack_pending,
                                i.num_redelivered
                            ),
                            Err(e) => format!("consumer info: {e}"),
                        },
                        Err(e) => format!("consumer: {e}"),
                    }
                }
                Err(e) => format!("stream: {e}"),
            };
            out.push_str(&format!("{stream}: {info}\n"));
        }
        out
    }

    /// The first `n` messages a work queue still stores (an ordered
    /// consumer cannot read a work queue: read them by sequence).
    pub async fn peek(&self, stream: &str, n: usize) -> String {
        let mut out = String::new();
        let Ok(mut s) = self.js.get_stream(stream).await else { return out };
        let Ok(info) = s.info().await else { return out };
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut found = 0;
        for seq in first..=last {
            if found >= n {
                break;
            }
            if let Ok(m) = s.get_raw_message(seq).await {
                found += 1;
                let text = String::from_utf8_lossy(&m.payload);
                out.push_str(&format!("{stream}: left seq {seq} {} {}\n", m.subject, &text[..text.len().min(160)]));
            }
        }
        out
    }

    /// Reads back everything the pipeline recorded.
    pub async fn ledger(&self) -> anyhow::Result<Ledger> {
        Ledger::read(self).await
    }

    /// The last `lines` lines of every service's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (service, proc) in &self.procs {
            out.push_str(&format!("---- {} ({})\n{}\n", service.label(), proc.log.display(), tail(&proc.log, lines)));
        }
        out
    }

    /// Counts log lines of `service` (all its runs) containing `needle`.
    pub fn log_count(&self, service: Service, needle: &str) -> usize {
        self.procs
            .get(&service)
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .map(|t| t.lines().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// Directory of the channel file and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for proc in self.procs.values_mut() {
            if let Some(mut child) = proc.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("==== e2e stack {} failed; service logs (last 40 lines each):", self.config.name);
            eprintln!("{}", self.log_tails(40));
            // The temporary directory goes; the whole logs are kept for a post-mortem.
            let kept = std::env::temp_dir().join(format!("smsgate-e2e-failed-{}", self.prefix));
            if std::fs::create_dir_all(&kept).is_ok() {
                for proc in self.procs.values() {
                    if let Some(name) = proc.log.file_name() {
                        let _ = std::fs::copy(&proc.log, kept.join(name));
                    }
                }
                eprintln!("==== full logs kept in {}", kept.display());
            }
        }
        // The NATS server and the stubs stop in their own Drop.
    }
}

/// Messages the work queues still store once their consumers are idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    pub inbound: u64,
    pub outbound: u64,
}

/// Per work queue: (messages stored, consumer's pending, consumer's ack pending).
#[derive(Debug)]
struct QueueState {
    inbound: (u64, u64, usize),
    outbound: (u64, u64, usize),
}

impl QueueState {
    fn idle(&self) -> bool {
        let idle = |(_, pending, ack_pending): (u64, u64, usize)| pending == 0 && ack_pending == 0;
        idle(self.inbound) && idle(self.outbound)
    }
}

/// Posts signed webhooks to ingress, as Twilio does.
#[derive(Clone)]
pub struct Poster {
    http: reqwest::Client,
    url: String,
}

impl Poster {
    /// Posts one webhook; returns the HTTP status (0 when no answer came at
    /// all) and how long the answer took.
    pub async fn post(&self, hook: &SignedWebhook) -> (u16, Duration) {
        let started = Instant::now();
        let sent = self
            .http
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &hook.signature)
            .body(hook.body.clone())
            .send()
            .await;
        let status = match sent {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        (status, started.elapsed())
    }

    /// Posts `hooks` with `concurrency` connections; each one's status and
    /// latency, in order.
    pub async fn post_all(&self, hooks: &[SignedWebhook], concurrency: usize) -> Vec<(u16, Duration)> {
        futures::stream::iter(hooks.iter().map(|h| self.post(h))).buffered(concurrency.max(1)).collect().await
    }

    /// Posts `hook` until ingress answers 200 (as a Twilio that retried would),
    /// pausing `pause` between attempts; every attempt.
    pub async fn post_until_acked(&self, hook: &SignedWebhook, pause: Duration, timeout: Duration) -> Vec<Attempt> {
        let deadline = Instant::now() + timeout;
        let mut attempts = Vec::new();
        loop {
            let at = Instant::now();
            let (status, latency) = self.post(hook).await;
            attempts.push(Attempt { status, latency, at });
            if status == 200 || Instant::now() > deadline {
                return attempts;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// One post of a webhook: what ingress answered, how fast, and when.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The HTTP status (0 when no answer came at all).
    pub status: u16,
    pub latency: Duration,
    /// When the post started.
    pub at: Instant,
}

/// A NATS prefix no other test (or earlier run) uses.
pub fn unique_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let clean: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("e2e{clean}{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn channel_file(config: &StackConfig, twilio: &TwilioStub, chat: &OpenAiStub) -> serde_json::Value {
    let mut inner = serde_json::json!({
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_from_number": FROM_NUMBER,
        "webhook_path_token": PATH_TOKEN,
        "public_base_url": PUBLIC_BASE_URL,
        "twilio_api_base": twilio.base_url(),
        "sms_max_len": config.sms_max_len,
        "max_parts": config.max_parts,
        "mps": 0,
        // Load must not be rate-limited unless a test wants it.
        "rate_limit": {"per_minute": 100_000, "burst": 100_000},
        "limits": {"replies_per_minute": 1_000_000, "replies_per_day": 1_000_000},
        "chat": {
            "kind": "openai",
            "base_url": chat.base_url(),
            "model": "stub-model",
            "api_key": "sk-test",
            "timeout_ms": 5000,
            "history_turns": config.history_turns,
        },
    });
    if let Some(obj) = inner.as_object_mut() {
        for (k, v) in &config.extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({"channel_id": CHANNEL_ID, "config": inner})
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
