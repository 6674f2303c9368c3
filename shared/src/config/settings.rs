//! [`Settings`]: the process environment, read once at start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::nats::NatsOptions;
use crate::secret_key::SecretKey;

use super::load::check_base_url;
use super::{ConfigError, Lookup, generate_token};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Process-wide settings from the environment (docs/ARCHITECTURE.md §6, "Other environment").
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SMSGATE_NATS_URL` as given (one server or several, comma-separated).
    pub nats_url: String,
    /// The servers, credentials, TLS and replicas ([`crate::nats`]).
    pub nats: NatsOptions,
    pub nats_prefix: String,
    pub log_format: LogFormat,
    pub ingress_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token: Option<SecretString>,
    /// Where ingress keeps (and the CLI finds) the admin token when
    /// `SMSGATE_ADMIN_TOKEN` is not set ([`crate::admin_token::path`]).
    pub admin_token_file: Option<std::path::PathBuf>,
    pub worker_addr: SocketAddr,
    pub sender_addr: SocketAddr,
    /// `SMSGATE_PUBLIC_BASE_URL`: the URL Twilio calls, e.g. the tunnel's.
    pub public_base_url: Option<String>,
    /// `SMSGATE_DUPLICATE_WINDOW_SECS` [600]: JetStream's publish dedupe window.
    pub duplicate_window: Duration,
    /// `SMSGATE_HISTORY_PER_PEER` [1000]: entries kept per conversation.
    pub history_per_peer: i64,
    /// `SMSGATE_HISTORY_MAX_AGE_DAYS` [90].
    pub history_max_age: Duration,
    /// `SMSGATE_WORKER_MAX_IN_FLIGHT` [512]: chat calls in flight per worker.
    pub worker_max_in_flight: usize,
    /// `SMSGATE_SENDER_MAX_IN_FLIGHT` [128]: Twilio calls in flight per sender.
    pub sender_max_in_flight: usize,
    /// `SMSGATE_WORKER_ACK_WAIT_SECS` [30]: how long a crashed worker's
    /// messages wait before another worker gets them.
    pub worker_ack_wait: Duration,
    /// `SMSGATE_SENDER_ACK_WAIT_SECS` [60]: the same for the sender.
    pub sender_ack_wait: Duration,
    /// `SMSGATE_WORKER_HISTORY_CACHE` [10000]: conversations whose recent
    /// turns the worker keeps in memory (0: read the stream every time).
    pub worker_history_cache: usize,
    /// `SMSGATE_SECRET_KEY`: seals the secrets of channels connected at run
    /// time ([`crate::secret_key`]); without it they are refused.
    pub secret_key: Option<Arc<SecretKey>>,
    /// `SMSGATE_MCP_DEFAULT_CHANNEL`: the channel MCP tools use when a call
    /// names none (else the only channel, when there is one).
    pub mcp_default_channel: Option<String>,
}

/// Default chat calls in flight per worker: a model call is a wait of
/// seconds, not work, so hundreds of people texting at once with a 2 s model
/// are answered in about one model latency; each costs a task and a socket.
pub const DEFAULT_WORKER_MAX_IN_FLIGHT: usize = 512;
/// Default Twilio calls in flight per sender: 400 replies at 250 ms a call
/// go out in under a second, while staying within what one Twilio account
/// accepts at once (more only earns 429s); `mps` still paces each number.
pub const DEFAULT_SENDER_MAX_IN_FLIGHT: usize = 128;

impl Settings {
    pub fn from_lookup(env: Lookup<'_>) -> Result<Self, ConfigError> {
        let get = |k: &str, d: &str| env(k).filter(|v| !v.trim().is_empty()).unwrap_or_else(|| d.to_owned());
        let addr = |k: &str, d: &str| -> Result<SocketAddr, ConfigError> {
            let v = get(k, d);
            v.parse().map_err(|e| ConfigError::one("environment", None, k, format!("{v:?} is not host:port ({e})")))
        };
        let num = |k: &str, d: u64| -> Result<u64, ConfigError> {
            match env(k).filter(|v| !v.trim().is_empty()) {
                None => Ok(d),
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError::one("environment", None, k, format!("{v:?} is not a whole number"))),
            }
        };
        let positive = |k: &str, d: u64| -> Result<usize, ConfigError> {
            match num(k, d)? {
                0 => Err(ConfigError::one("environment", None, k, "must be at least 1")),
                n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            }
        };
        let log_format = match get("SMSGATE_LOG_FORMAT", "json").as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::one(
                    "environment",
                    None,
                    "SMSGATE_LOG_FORMAT",
                    format!("{other:?} is neither \"json\" nor \"pretty\""),
                ));
            }
        };
        let nats_prefix = get("SMSGATE_NATS_PREFIX", "smsgate");
        if !nats_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(ConfigError::one(
                "environment",
                None,
                "SMSGATE_NATS_PREFIX",
                "must be letters, digits, '_' or '-'",
            ));
        }
        let secret_key = match env(crate::secret_key::ENV).filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => Some(Arc::new(
                SecretKey::parse(&v)
                    .map_err(|e| ConfigError::one("environment", None, crate::secret_key::ENV, e.to_string()))?,
            )),
        };
        let public_base_url = env("SMSGATE_PUBLIC_BASE_URL").filter(|v| !v.trim().is_empty());
        if let Some(u) = &public_base_url {
            check_base_url(u).map_err(|m| ConfigError::one("environment", None, "SMSGATE_PUBLIC_BASE_URL", m))?;
        }
        Ok(Self {
            nats_url: get("SMSGATE_NATS_URL", "nats://127.0.0.1:4222"),
            nats: NatsOptions::from_lookup(env)?,
            nats_prefix,
            log_format,
            ingress_addr: addr("SMSGATE_INGRESS_ADDR", "0.0.0.0:8000")?,
            admin_addr: addr("SMSGATE_ADMIN_ADDR", "127.0.0.1:8001")?,
            admin_token: env("SMSGATE_ADMIN_TOKEN").filter(|v| !v.trim().is_empty()).map(SecretString::from),
            admin_token_file: crate::admin_token::path(env),
            worker_addr: addr("SMSGATE_WORKER_ADDR", "127.0.0.1:8002")?,
            sender_addr: addr("SMSGATE_SENDER_ADDR", "127.0.0.1:8003")?,
            public_base_url: public_base_url.map(|u| u.trim_end_matches('/').to_owned()),
            duplicate_window: Duration::from_secs(num("SMSGATE_DUPLICATE_WINDOW_SECS", 600)?.max(1)),
            history_per_peer: i64::try_from(num("SMSGATE_HISTORY_PER_PEER", 1000)?.max(1)).unwrap_or(i64::MAX),
            history_max_age: Duration::from_secs(num("SMSGATE_HISTORY_MAX_AGE_DAYS", 90)?.max(1) * 86_400),
            worker_max_in_flight: positive("SMSGATE_WORKER_MAX_IN_FLIGHT", DEFAULT_WORKER_MAX_IN_FLIGHT as u64)?,
            sender_max_in_flight: positive("SMSGATE_SENDER_MAX_IN_FLIGHT", DEFAULT_SENDER_MAX_IN_FLIGHT as u64)?,
            worker_ack_wait: Duration::from_secs(positive("SMSGATE_WORKER_ACK_WAIT_SECS", 30)? as u64),
            sender_ack_wait: Duration::from_secs(positive("SMSGATE_SENDER_ACK_WAIT_SECS", 60)? as u64),
            worker_history_cache: usize::try_from(num("SMSGATE_WORKER_HISTORY_CACHE", 10_000)?).unwrap_or(usize::MAX),
            secret_key,
            mcp_default_channel: env("SMSGATE_MCP_DEFAULT_CHANNEL")
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
        })
    }

    /// Defaults for tests: every listener on port 0 of loopback, a fresh
    /// admin token (no token file is ever written by a test's ingress).
    pub fn for_tests(nats_url: &str, prefix: &str) -> Self {
        let any: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            nats_url: nats_url.to_owned(),
            nats: NatsOptions::url(nats_url),
            nats_prefix: prefix.to_owned(),
            log_format: LogFormat::Json,
            ingress_addr: any,
            admin_addr: any,
            admin_token: Some(SecretString::from(generate_token())),
            admin_token_file: None,
            worker_addr: any,
            sender_addr: any,
            public_base_url: None,
            duplicate_window: Duration::from_secs(600),
            history_per_peer: 1000,
            history_max_age: Duration::from_secs(90 * 86_400),
            worker_max_in_flight: DEFAULT_WORKER_MAX_IN_FLIGHT,
            sender_max_in_flight: DEFAULT_SENDER_MAX_IN_FLIGHT,
            worker_ack_wait: Duration::from_secs(30),
            sender_ack_wait: Duration::from_secs(60),
            worker_history_cache: 10_000,
            secret_key: None,
            mcp_default_channel: None,
        }
    }
}
