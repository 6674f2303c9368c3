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
//! - this file: [`StackConfig`], [`Stack`] and its start (stubs, channel
//!   file, topology, the three services).
//! - `processes`: each service process ([`Service`]): kill, restart, add;
//!   NATS stopped, started, a cluster node killed; the logs.
//! - `poster`: signed webhooks posted to ingress ([`Poster`], [`Attempt`]).
//! - `queues`: what is left in the work queues ([`Leftovers`]).
//! - [`binaries`]: finds (and if needed builds) `smsgate-ingress`,
//!   `smsgate-worker` and `smsgate-sender`.
//! - [`calls`]: callers played the way Twilio plays them (voice).
//! - [`ledger`]: reads back what the pipeline did (history, dead letters,
//!   `P_sent`, the stub's calls) and checks invariants 1 and 2 (docs/ARCHITECTURE.md §4).
//!
//! Only one stack runs at a time per test process (a process-wide semaphore
//! taken by [`Stack::start`]): the machine has two cores, and two stacks
//! side by side would turn timing into noise.

pub mod binaries;
pub mod calls;
pub mod ledger;
mod poster;
mod processes;
mod queues;

pub use poster::{Attempt, Poster};
use processes::Proc;
pub use processes::Service;
pub use queues::Leftovers;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self};
use smsgate_shared::topology::{self, Topology};
use smsgate_testkit::chat::OpenAiStub;
use smsgate_testkit::nats::{NatsCluster, NatsServer, free_port};
use smsgate_testkit::twilio::TwilioStub;
use smsgate_testkit::{ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, PATH_TOKEN};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::webhook::Target;

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

    /// Reads back everything the pipeline recorded.
    pub async fn ledger(&self) -> anyhow::Result<Ledger> {
        Ledger::read(self).await
    }

    /// Directory of the channel file and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
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
