//! Configuration: the process environment ([`Settings`]) and the channel JSON
//! file ([`Channel`]), read once at start into typed, validated structs.
//!
//! Nothing here reads the environment by itself: callers pass a lookup
//! function (`std::env::var` in `main`, a map in tests), so tests never touch
//! the process environment.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::{AccountSid, ChannelId, E164};
use crate::nats::NatsOptions;
use crate::secret_key::SecretKey;

/// The exit status for a bad configuration (`EX_CONFIG` is 78; smsgate's
/// contract uses 64, `EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// A way to read a variable: `|k| std::env::var(k).ok()` in main.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One problem in the configuration, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, or `environment`.
    pub source: String,
    /// The channel id (or its index in the file when it has no usable id).
    pub channel: Option<String>,
    /// The key, dotted (`config.rate_limit.per_minute`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        if let Some(c) = &self.channel {
            write!(f, "channel {c}: ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, so an operator fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(source: &str, channel: Option<&str>, key: &str, message: impl Into<String>) -> Self {
        Self(vec![Problem {
            source: source.to_owned(),
            channel: channel.map(str::to_owned),
            key: key.to_owned(),
            message: message.into(),
        }])
    }
}

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
        }
    }
}

/// Per-sender rate limit of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default = "default_per_minute")]
    pub per_minute: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_per_minute() -> u32 {
    10
}
fn default_burst() -> u32 {
    5
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_minute: default_per_minute(), burst: default_burst() }
    }
}

/// Per-channel abuse and cost limits (docs/ARCHITECTURE.md §6, "Channel config JSON"):
/// replies of all senders together, counted across every worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_replies_per_minute")]
    pub replies_per_minute: u32,
    #[serde(default = "default_replies_per_day")]
    pub replies_per_day: u32,
}

fn default_replies_per_minute() -> u32 {
    30
}
fn default_replies_per_day() -> u32 {
    1000
}

impl Default for Limits {
    fn default() -> Self {
        Self { replies_per_minute: default_replies_per_minute(), replies_per_day: default_replies_per_day() }
    }
}

/// The country calling codes replies may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyCountries {
    /// `["*"]`: anywhere.
    All,
    /// Calling codes without `+` (`"1"`, `"44"`).
    Codes(Vec<String>),
}

impl ReplyCountries {
    /// Whether a reply may go to `to`. Calling codes are prefix-free, so a
    /// prefix match is exact.
    pub fn admits(&self, to: &E164) -> bool {
        match self {
            Self::All => true,
            Self::Codes(codes) => codes.iter().any(|c| to.subject_token().starts_with(c.as_str())),
        }
    }
}

/// How replies leave: through Twilio, or into the log (local runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    #[default]
    Twilio,
    Log,
}

/// How the worker fetches a channel's inbound media (MMS) and hands it to
/// the chat pipeline (docs/ARCHITECTURE.md §2.6). Every key is optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Where Twilio's media URLs may redirect to: URL prefixes (scheme,
    /// host, port if any, path prefix). A redirect anywhere else is refused
    /// and that media is not loaded.
    #[serde(default = "default_media_hosts")]
    pub hosts: Vec<String>,
    /// The most bytes fetched for one message, all its media together
    /// (Twilio's own limit is 5 MB per message).
    #[serde(default = "default_media_max_bytes")]
    pub max_bytes: u64,
    /// How long fetching one media file may take, redirects included.
    #[serde(default = "default_media_timeout_ms")]
    pub timeout_ms: u64,
    /// Pictures larger than this (longest edge, in pixels) are scaled down
    /// before they go to an `openai` model; 0 sends them as fetched.
    #[serde(default = "default_media_max_edge")]
    pub max_edge: u32,
    /// The content types that are fetched (`type/subtype` or `type/*`);
    /// anything else is described to the model, not fetched.
    #[serde(default = "default_media_types")]
    pub content_types: Vec<String>,
}

/// Twilio's media storage: `mms.twiliocdn.com` for accounts with HTTP auth
/// on media (the default now), the older S3 location for the rest.
pub const DEFAULT_MEDIA_HOSTS: [&str; 3] = [
    "https://mms.twiliocdn.com/",
    "https://media.twiliocdn.com/",
    "https://s3-external-1.amazonaws.com/media.twiliocdn.com/",
];
/// Twilio's limit for one message's media.
pub const DEFAULT_MEDIA_MAX_BYTES: u64 = 5 * 1024 * 1024;
/// The most `media.max_bytes` may be.
pub const MAX_MEDIA_MAX_BYTES: u64 = 20 * 1024 * 1024;
/// Types fetched unless the channel says otherwise: the pictures a vision
/// model reads, and the attachments phones send (contact cards, calendar
/// entries, PDFs, voice notes, clips) that an agent may want.
pub const DEFAULT_MEDIA_TYPES: [&str; 11] = [
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "text/vcard",
    "text/x-vcard",
    "text/calendar",
    "text/plain",
    "application/pdf",
    "audio/*",
    "video/*",
];

fn default_media_hosts() -> Vec<String> {
    DEFAULT_MEDIA_HOSTS.iter().map(|h| (*h).to_owned()).collect()
}
fn default_media_max_bytes() -> u64 {
    DEFAULT_MEDIA_MAX_BYTES
}
fn default_media_timeout_ms() -> u64 {
    15_000
}
fn default_media_max_edge() -> u32 {
    1024
}
fn default_media_types() -> Vec<String> {
    DEFAULT_MEDIA_TYPES.iter().map(|t| (*t).to_owned()).collect()
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            hosts: default_media_hosts(),
            max_bytes: default_media_max_bytes(),
            timeout_ms: default_media_timeout_ms(),
            max_edge: default_media_max_edge(),
            content_types: default_media_types(),
        }
    }
}

impl MediaConfig {
    /// Whether `content_type` (parameters and case ignored) may be fetched.
    pub fn allows(&self, content_type: &str) -> bool {
        let t = essence(content_type);
        // Only a plain `type/subtype` (RFC 6838 characters): the type is
        // written into a `data:` URL and shown to people.
        let plain = t.bytes().filter(|b| *b == b'/').count() == 1
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"/!#$&^_.+-".contains(&b));
        plain
            && self.content_types.iter().any(|a| match a.strip_suffix("/*") {
                Some(major) => t.split('/').next() == Some(major) && t.contains('/'),
                None => *a == t,
            })
    }

    /// Problems with the values, as (key under `config.media`, message).
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let ok = url::Url::parse(h).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty()
            });
            if !ok {
                out.push((
                    "hosts",
                    format!("[{i}] {h:?} is not an http(s) URL prefix like \"https://mms.twiliocdn.com/\""),
                ));
            }
        }
        if !(1..=MAX_MEDIA_MAX_BYTES).contains(&self.max_bytes) {
            out.push(("max_bytes", format!("must be 1 to {MAX_MEDIA_MAX_BYTES}, is {}", self.max_bytes)));
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            out.push(("timeout_ms", format!("must be 100 to 120000, is {}", self.timeout_ms)));
        }
        if self.max_edge != 0 && !(64..=8192).contains(&self.max_edge) {
            out.push(("max_edge", format!("must be 0 (as fetched) or 64 to 8192, is {}", self.max_edge)));
        }
        for (i, t) in self.content_types.iter().enumerate() {
            let mut halves = t.split('/');
            let ok = *t == essence(t)
                && halves.next().is_some_and(|m| !m.is_empty() && m != "*")
                && halves.next().is_some_and(|s| !s.is_empty())
                && halves.next().is_none();
            if !ok {
                out.push(("content_types", format!("[{i}] {t:?} is not a lowercase type/subtype or type/*")));
            }
        }
        out
    }
}

/// A content type without its parameters, trimmed and lowercased
/// (`Image/JPEG; name=x` → `image/jpeg`).
pub fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// The chat pipeline that answers a channel's messages.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChatConfig {
    /// Any OpenAI-compatible chat completions server.
    Openai {
        base_url: String,
        model: String,
        #[serde(default)]
        api_key: Option<SecretString>,
        #[serde(default)]
        system_prompt: Option<String>,
        #[serde(default = "default_history_turns")]
        history_turns: usize,
        #[serde(default = "default_chat_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_max_tokens")]
        max_tokens: u32,
        #[serde(default)]
        temperature: Option<f32>,
    },
    /// The operator's own agent, called with a Standard Webhooks signature.
    Webhook {
        url: String,
        #[serde(default)]
        secret: Option<SecretString>,
        #[serde(default = "default_chat_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_history_turns")]
        history_turns: usize,
    },
    /// The same reply to everything.
    Static { reply: String },
    /// The message body sent back.
    #[default]
    Echo,
}

fn default_history_turns() -> usize {
    10
}
fn default_chat_timeout_ms() -> u64 {
    20_000
}
fn default_max_tokens() -> u32 {
    300
}

impl ChatConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Openai { .. } => "openai",
            Self::Webhook { .. } => "webhook",
            Self::Static { .. } => "static",
            Self::Echo => "echo",
        }
    }
}

pub const DEFAULT_HELP_TEXT: &str =
    "This number is answered by an automated assistant. Reply STOP to opt out, START to opt back in.";
pub const DEFAULT_FALLBACK_TEXT: &str = "Sorry, we can't answer right now. Please try again in a little while.";
pub const DEFAULT_RATE_LIMIT_TEXT: &str =
    "You're sending messages faster than we can answer. Please wait a minute and try again.";
pub const DEFAULT_SMS_MAX_LEN: usize = 480;
/// Twilio's hard limit on one message's body.
pub const TWILIO_MAX_BODY: usize = 1600;

/// One SMS channel: a Twilio number (or messaging service) and how it answers.
#[derive(Debug, Clone)]
pub struct Channel {
    pub id: ChannelId,
    pub manifest_id: String,
    pub enabled: bool,
    pub account_sid: AccountSid,
    pub auth_token: SecretString,
    pub from_number: Option<E164>,
    pub messaging_service_sid: Option<String>,
    pub sms_max_len: usize,
    pub path_token: SecretString,
    pub api_base: String,
    /// The channel's own public base URL, else `SMSGATE_PUBLIC_BASE_URL`.
    pub public_base_url: Option<String>,
    pub rate_limit: RateLimit,
    /// Sends per second per sending number; 0 means unpaced.
    pub mps: f64,
    /// How long an operator's pause of the bot lasts when the request names
    /// no time (human takeover), in minutes.
    pub pause_minutes: f64,
    pub max_parts: usize,
    /// Replies per minute and per day, all senders together.
    pub limits: Limits,
    /// Where replies may go: the from number's country unless set.
    pub reply_countries: ReplyCountries,
    pub allow_from: Vec<E164>,
    pub block_from: Vec<E164>,
    pub help_text: String,
    pub fallback_text: String,
    pub rate_limit_text: String,
    pub chat: ChatConfig,
    pub delivery: Delivery,
    pub insecure_skip_signature: bool,
    /// Inbound media: where it may come from, how much, which types.
    pub media: MediaConfig,
    /// Delete each inbound media file from Twilio once the chat pipeline
    /// has had it (`DELETE …/Media/<MediaSid>.json`).
    pub delete_media_after_fetch: bool,
    /// Voice calls on the number (`voice`).
    pub voice: crate::voice::VoiceConfig,
    /// Keys of the channel's JSON that smsgate does not know, with a "did
    /// you mean" when one is close: logged as a warning at start and shown by
    /// `check-config`.
    pub unknown_keys: Vec<String>,
}

pub const WEBHOOK_PATH: &str = "/api/channels/sms/twilio/webhook/";
pub const STATUS_PATH: &str = "/api/channels/sms/twilio/status/";

impl Channel {
    /// The URL to paste into Twilio's console (None without a public base URL).
    pub fn webhook_url(&self) -> Option<String> {
        self.public_base_url.as_ref().map(|b| format!("{b}{WEBHOOK_PATH}{}", self.path_token.expose_secret()))
    }

    /// The URL the sender sets as `StatusCallback`.
    pub fn status_url(&self) -> Option<String> {
        self.public_base_url.as_ref().map(|b| format!("{b}{STATUS_PATH}{}", self.path_token.expose_secret()))
    }

    /// The URL to paste into the number's "A call comes in" (None without
    /// a public base URL).
    pub fn voice_url(&self) -> Option<String> {
        self.voice_route(crate::voice::path::CALL)
    }

    /// `public_base_url` + one of [`crate::voice::path`] + the path token.
    pub fn voice_route(&self, path: &str) -> Option<String> {
        self.public_base_url.as_ref().map(|b| format!("{b}{path}{}", self.path_token.expose_secret()))
    }

    /// Whether `from` may talk to this channel (allow and block lists).
    pub fn admits(&self, from: &E164) -> bool {
        !self.block_from.contains(from) && (self.allow_from.is_empty() || self.allow_from.contains(from))
    }
}

/// The channel file as written, before defaults and validation.
#[derive(Deserialize)]
struct RawChannel {
    channel_id: String,
    #[serde(default = "default_manifest")]
    manifest_id: String,
    #[serde(default = "yes")]
    enabled: bool,
    config: RawChannelConfig,
    /// Keys smsgate does not know (reported, not refused: AgentOS files
    /// carry keys of their own).
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// The keys of a channel object, for "did you mean".
const CHANNEL_KEYS: [&str; 4] = ["channel_id", "manifest_id", "enabled", "config"];
/// The keys of a channel's `config`, for "did you mean".
const CONFIG_KEYS: [&str; 25] = [
    "twilio_account_sid",
    "twilio_auth_token",
    "twilio_from_number",
    "twilio_messaging_service_sid",
    "sms_max_len",
    "webhook_path_token",
    "twilio_api_base",
    "public_base_url",
    "rate_limit",
    "mps",
    "pause_minutes",
    "max_parts",
    "limits",
    "reply_countries",
    "allow_from",
    "block_from",
    "help_text",
    "fallback_text",
    "rate_limit_text",
    "chat",
    "delivery",
    "insecure_skip_signature",
    "media",
    "delete_media_after_fetch",
    "voice",
];

fn default_manifest() -> String {
    "sms".to_owned()
}
fn yes() -> bool {
    true
}

/// A new secret key here (or in [`ChatConfig`]) must also be listed in
/// `channels::stored::SECRET_PATHS`, or a channel connected at run time
/// would keep it unencrypted in `P_channels`.
#[derive(Deserialize)]
struct RawChannelConfig {
    twilio_account_sid: String,
    twilio_auth_token: SecretString,
    #[serde(default)]
    twilio_from_number: Option<String>,
    #[serde(default)]
    twilio_messaging_service_sid: Option<String>,
    #[serde(default)]
    sms_max_len: Option<usize>,
    webhook_path_token: SecretString,
    #[serde(default)]
    twilio_api_base: Option<String>,
    #[serde(default)]
    public_base_url: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    mps: Option<f64>,
    #[serde(default)]
    pause_minutes: Option<f64>,
    #[serde(default)]
    max_parts: Option<usize>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    reply_countries: Option<Vec<String>>,
    #[serde(default)]
    allow_from: Vec<String>,
    #[serde(default)]
    block_from: Vec<String>,
    #[serde(default)]
    help_text: Option<String>,
    #[serde(default)]
    fallback_text: Option<String>,
    #[serde(default)]
    rate_limit_text: Option<String>,
    /// Parsed separately so that its errors name `config.chat`.
    #[serde(default)]
    chat: Option<Value>,
    #[serde(default)]
    delivery: Option<Delivery>,
    #[serde(default)]
    insecure_skip_signature: bool,
    /// Parsed separately so that its errors name `config.media`.
    #[serde(default)]
    media: Option<Value>,
    #[serde(default)]
    delete_media_after_fetch: bool,
    /// Parsed separately so that its errors name `config.voice.<key>`.
    #[serde(default)]
    voice: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// `config.rate_limt (did you mean config.rate_limit?)` for every key of
/// `raw` smsgate does not know.
fn unknown_keys(raw: &RawChannel) -> Vec<String> {
    let describe = |prefix: &str, key: &str, known: &[&str]| match closest(key, known) {
        Some(k) => format!("{prefix}{key} (did you mean {prefix}{k}?)"),
        None => format!("{prefix}{key}"),
    };
    let top = raw.unknown.keys().map(|k| describe("", k, &CHANNEL_KEYS));
    let config = raw.config.unknown.keys().map(|k| describe("config.", k, &CONFIG_KEYS));
    top.chain(config).collect()
}

/// The known key nearest to `key` (a typo: at most 2 edits, fewer for short keys).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 4).clamp(1, 2);
    known.iter().map(|k| (edit_distance(key, k), *k)).filter(|(d, _)| *d <= limit).min().map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Loads the channels: from the file named by `SMSGATE_CHANNELS`, or one
/// channel `default` from the `TWILIO_*` variables.
pub fn load_channels(env: Lookup<'_>, settings: &Settings) -> Result<Vec<Channel>, ConfigError> {
    match env("SMSGATE_CHANNELS").filter(|v| !v.trim().is_empty()) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::one(&path, None, "SMSGATE_CHANNELS", format!("cannot read the file: {e}")))?;
            parse_channels(&text, &path, env, settings.public_base_url.as_deref())
        }
        None => channels_from_twilio_env(env, settings.public_base_url.as_deref()),
    }
}

fn channels_from_twilio_env(env: Lookup<'_>, public_base_url: Option<&str>) -> Result<Vec<Channel>, ConfigError> {
    let vars = ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_PHONE_NUMBER", "SMS_WEBHOOK_PATH_TOKEN"];
    let missing: Vec<Problem> = vars
        .iter()
        .filter(|k| env(k).is_none_or(|v| v.trim().is_empty()))
        .map(|k| Problem {
            source: "environment".to_owned(),
            channel: Some("default".to_owned()),
            key: (*k).to_owned(),
            message: "is not set (set it, or name a channel file in SMSGATE_CHANNELS)".to_owned(),
        })
        .collect();
    if !missing.is_empty() {
        return Err(ConfigError(missing));
    }
    let v = |k: &str| Value::String(env(k).unwrap_or_default());
    let json = serde_json::json!({
        "channel_id": "default",
        "config": {
            "twilio_account_sid": v("TWILIO_ACCOUNT_SID"),
            "twilio_auth_token": v("TWILIO_AUTH_TOKEN"),
            "twilio_from_number": v("TWILIO_PHONE_NUMBER"),
            "webhook_path_token": v("SMS_WEBHOOK_PATH_TOKEN"),
            // The variables cannot name a chat; a fixed acknowledgement is
            // the one built-in answer that never sends a stranger's text
            // back from the operator's number. A model needs a channel file.
            "chat": {"kind": "static", "reply": DEFAULT_CHANNEL_REPLY},
        }
    });
    validate_all(vec![json], "environment", public_base_url)
}

/// What the `default` channel (built from the `TWILIO_*` variables) answers.
pub const DEFAULT_CHANNEL_REPLY: &str = "Thanks, we got your message. (This number's assistant is not set up yet.)";

/// Parses a channel file's text (any of the three shapes), expands `${VAR}`,
/// applies defaults and validates. Reports every problem found.
pub fn parse_channels(
    text: &str,
    source: &str,
    env: Lookup<'_>,
    public_base_url: Option<&str>,
) -> Result<Vec<Channel>, ConfigError> {
    validate_all(expand_channels(text, source, env)?, source, public_base_url)
}

/// A channel file's channel objects (any of the three shapes) with `${VAR}`
/// expanded, not yet validated: what `smsgate channels connect` sends.
pub fn expand_channels(text: &str, source: &str, env: Lookup<'_>) -> Result<Vec<Value>, ConfigError> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::one(source, None, "(file)", format!("not valid JSON: {e}")))?;
    let list = match root {
        Value::Array(items) => items,
        Value::Object(mut map) if map.contains_key("channels") && !map.contains_key("channel_id") => {
            match map.remove("channels") {
                Some(Value::Array(items)) => items,
                _ => return Err(ConfigError::one(source, None, "channels", "must be a list of channel objects")),
            }
        }
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(ConfigError::one(
                source,
                None,
                "(file)",
                "must be a channel object, a list of them, or {\"channels\": [...]}",
            ));
        }
    };
    if list.is_empty() {
        return Err(ConfigError::one(source, None, "channels", "no channel is defined"));
    }
    let mut problems = Vec::new();
    let mut expanded = Vec::with_capacity(list.len());
    for (i, mut item) in list.into_iter().enumerate() {
        let name = channel_label(&item, i);
        expand_vars(&mut item, "", env, &mut |key, message| {
            problems.push(Problem { source: source.to_owned(), channel: Some(name.clone()), key, message })
        });
        expanded.push(item);
    }
    if problems.is_empty() { Ok(expanded) } else { Err(ConfigError(problems)) }
}

/// One channel connected at run time (the admin API, or read back from
/// `P_channels`): the same keys, defaults and validation as a channel of
/// the file, with two differences. `${VAR}` is not expanded (the API must
/// not read the server's environment; `smsgate channels connect` expands a
/// file's variables from its own before sending), and keys smsgate does not
/// know are dropped from the returned JSON rather than kept (a mistyped
/// secret's key would otherwise be stored unencrypted). Returns the channel
/// (its `unknown_keys` name what was dropped) and the JSON to store.
pub fn parse_runtime_channel(
    mut value: Value,
    source: &str,
    public_base_url: Option<&str>,
) -> Result<(Channel, Value), ConfigError> {
    if !value.is_object() {
        return Err(ConfigError::one(source, None, "(channel)", "must be one channel object"));
    }
    let name = channel_label(&value, 0);
    let mut problems = Vec::new();
    let mut probe = value.clone();
    expand_vars(&mut probe, "", &|_| None, &mut |key, _| {
        problems.push(Problem {
            source: source.to_owned(),
            channel: Some(name.clone()),
            key,
            message: "holds ${...}: variables are expanded by `smsgate channels connect` from its environment, \
                      never by the server"
                .to_owned(),
        })
    });
    if !problems.is_empty() {
        return Err(ConfigError(problems));
    }
    let mut channels = validate_all(vec![value.clone()], source, public_base_url)?;
    let channel = channels.pop().ok_or_else(|| ConfigError::one(source, Some(&name), "(channel)", "is empty"))?;
    if let Value::Object(top) = &mut value {
        top.retain(|k, _| CHANNEL_KEYS.contains(&k.as_str()));
        if let Some(Value::Object(config)) = top.get_mut("config") {
            config.retain(|k, _| CONFIG_KEYS.contains(&k.as_str()));
        }
    }
    Ok((channel, value))
}

fn channel_label(item: &Value, index: usize) -> String {
    item.get("channel_id").and_then(Value::as_str).map_or_else(|| format!("#{index}"), str::to_owned)
}

/// Replaces `${VAR}` in every string of `value`; reports missing variables.
fn expand_vars(value: &mut Value, path: &str, env: Lookup<'_>, report: &mut dyn FnMut(String, String)) {
    match value {
        Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    report(path.to_owned(), "has an unterminated ${".to_owned());
                    return;
                };
                let var = &after[..end];
                match env(var) {
                    Some(v) => out.push_str(&v),
                    None => {
                        report(path.to_owned(), format!("refers to ${{{var}}}, which is not set in the environment"))
                    }
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_vars(v, &format!("{path}[{i}]"), env, report);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                expand_vars(v, &p, env, report);
            }
        }
        _ => {}
    }
}

fn validate_all(items: Vec<Value>, source: &str, public_base_url: Option<&str>) -> Result<Vec<Channel>, ConfigError> {
    let mut problems = Vec::new();
    let mut channels = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let label = channel_label(&item, i);
        let mut report = |key: &str, message: String| {
            problems.push(Problem {
                source: source.to_owned(),
                channel: Some(label.clone()),
                key: key.to_owned(),
                message,
            })
        };
        match serde_json::from_value::<RawChannel>(item) {
            Ok(raw) => {
                if let Some(c) = validate_one(raw, public_base_url, &mut report) {
                    channels.push(c);
                }
            }
            Err(e) => report(serde_key(&e.to_string()), e.to_string()),
        }
    }
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    for c in &channels {
        if !ids.insert(c.id.clone()) {
            problems.push(Problem {
                source: source.to_owned(),
                channel: Some(c.id.to_string()),
                key: "channel_id".to_owned(),
                message: "is used by more than one channel".to_owned(),
            });
        }
        if !tokens.insert(c.path_token.expose_secret().to_owned()) {
            problems.push(Problem {
                source: source.to_owned(),
                channel: Some(c.id.to_string()),
                key: "config.webhook_path_token".to_owned(),
                message: "is the same as another channel's".to_owned(),
            });
        }
    }
    if problems.is_empty() { Ok(channels) } else { Err(ConfigError(problems)) }
}

/// serde's messages name the field in backquotes; use it as the key.
fn serde_key(message: &str) -> &str {
    message.split('`').nth(1).unwrap_or("(channel)")
}

fn check_base_url(u: &str) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("{u:?} is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{u:?} must be http:// or https://"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{u:?} must not have a query or fragment"));
    }
    Ok(())
}

fn validate_one(raw: RawChannel, default_base: Option<&str>, report: &mut dyn FnMut(&str, String)) -> Option<Channel> {
    let mut ok = true;
    let mut fail = |key: &str, message: String| {
        ok = false;
        report(key, message);
    };
    let unknown_keys = unknown_keys(&raw);
    let c = raw.config;
    let id = ChannelId::parse(&raw.channel_id).map_err(|e| fail("channel_id", e.reason)).ok();
    let account_sid =
        AccountSid::parse(c.twilio_account_sid.trim()).map_err(|e| fail("config.twilio_account_sid", e.reason)).ok();
    if c.twilio_auth_token.expose_secret().trim().is_empty() {
        fail("config.twilio_auth_token", "is empty".to_owned());
    }
    let from_number = match c.twilio_from_number.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(n) => E164::parse(n).map_err(|e| fail("config.twilio_from_number", e.reason)).ok(),
        None => None,
    };
    let messaging_service_sid = c.twilio_messaging_service_sid.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if let Some(ms) = &messaging_service_sid {
        let valid = ms.len() == 34 && ms.starts_with("MG") && ms[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            fail("config.twilio_messaging_service_sid", "must be 'MG' followed by 32 hex digits".to_owned());
        }
    }
    if from_number.is_none() && messaging_service_sid.is_none() {
        fail("config.twilio_from_number", "is required (or set twilio_messaging_service_sid)".to_owned());
    }
    let token = c.webhook_path_token.expose_secret();
    if token.chars().count() < 32 {
        fail(
            "config.webhook_path_token",
            format!(
                "must be at least 32 characters, has {} (make one with `smsgate gen-token`)",
                token.chars().count()
            ),
        );
    } else if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        fail("config.webhook_path_token", "must be letters, digits, '_' or '-' (it is part of a URL path)".to_owned());
    }
    let sms_max_len = c.sms_max_len.unwrap_or(DEFAULT_SMS_MAX_LEN);
    if !(1..=TWILIO_MAX_BODY).contains(&sms_max_len) {
        fail("config.sms_max_len", format!("must be 1 to {TWILIO_MAX_BODY}, is {sms_max_len}"));
    }
    let max_parts = c.max_parts.unwrap_or(4);
    if !(1..=10).contains(&max_parts) {
        fail("config.max_parts", format!("must be 1 to 10, is {max_parts}"));
    }
    let mps = c.mps.unwrap_or(1.0);
    let pause_minutes = c.pause_minutes.unwrap_or(DEFAULT_PAUSE_MINUTES);
    if let Err(m) = check_pause_minutes(pause_minutes) {
        fail("config.pause_minutes", m);
    }
    // Below the minimum the interval between sends would be days (or
    // overflow a Duration): surely a typo.
    if !mps.is_finite() || mps < 0.0 || (mps > 0.0 && mps < MIN_MPS) || mps > MAX_MPS {
        fail("config.mps", format!("must be 0 (unpaced) or {MIN_MPS} to {MAX_MPS}, is {mps}"));
    }
    let limits = c.limits.unwrap_or_default();
    if limits.replies_per_minute == 0 || limits.replies_per_day == 0 {
        fail("config.limits", "replies_per_minute and replies_per_day must be at least 1".to_owned());
    } else if limits.replies_per_minute > limits.replies_per_day {
        fail("config.limits", "replies_per_minute must not be more than replies_per_day".to_owned());
    }
    let reply_countries = match c.reply_countries {
        Some(list) => parse_reply_countries(&list).map_err(|m| fail("config.reply_countries", m)).ok(),
        None => match &from_number {
            Some(n) => Some(ReplyCountries::Codes(vec![n.calling_code().to_owned()])),
            None if messaging_service_sid.is_some() => {
                fail(
                    "config.reply_countries",
                    "is required with a messaging service and no from number (e.g. [\"1\"], or [\"*\"] for all)"
                        .to_owned(),
                );
                None
            }
            None => None,
        },
    };
    let rate_limit = c.rate_limit.unwrap_or_default();
    if rate_limit.per_minute == 0 || rate_limit.burst == 0 {
        fail("config.rate_limit", "per_minute and burst must be at least 1".to_owned());
    }
    let api_base = c.twilio_api_base.unwrap_or_else(|| "https://api.twilio.com".to_owned());
    if let Err(m) = check_base_url(&api_base) {
        fail("config.twilio_api_base", m);
    }
    let public_base_url = match c.public_base_url.filter(|s| !s.trim().is_empty()) {
        Some(u) => {
            if let Err(m) = check_base_url(&u) {
                fail("config.public_base_url", m);
            }
            Some(u.trim_end_matches('/').to_owned())
        }
        None => default_base.map(str::to_owned),
    };
    let mut numbers = |key: &str, list: Vec<String>| -> Vec<E164> {
        list.iter()
            .enumerate()
            .filter_map(|(i, n)| E164::parse(n.trim()).map_err(|e| fail(&format!("{key}[{i}]"), e.reason)).ok())
            .collect()
    };
    let allow_from = numbers("config.allow_from", c.allow_from);
    let block_from = numbers("config.block_from", c.block_from);
    let delivery = c.delivery.unwrap_or_default();
    let chat = match c.chat {
        // Echo from the operator's number to anyone who texts it costs money
        // and can be abused: a real channel must choose its chat.
        None | Some(Value::Null) if delivery == Delivery::Twilio => {
            fail(
                "config.chat",
                "is required when delivery is \"twilio\" (e.g. {\"kind\": \"openai\", ...}, or {\"kind\": \"echo\"} on purpose)"
                    .to_owned(),
            );
            ChatConfig::default()
        }
        chat => section(chat, "config.chat", &mut fail),
    };
    match &chat {
        ChatConfig::Openai { base_url, model, .. } => {
            if let Err(m) = check_base_url(base_url) {
                fail("config.chat.base_url", m);
            }
            if model.trim().is_empty() {
                fail("config.chat.model", "is empty".to_owned());
            }
        }
        ChatConfig::Webhook { url, .. } => {
            if let Err(m) = check_base_url(url) {
                fail("config.chat.url", m);
            }
        }
        ChatConfig::Static { reply } if reply.trim().is_empty() => fail("config.chat.reply", "is empty".to_owned()),
        _ => {}
    }
    let media: MediaConfig = section(c.media, "config.media", &mut fail);
    for (key, message) in media.problems() {
        fail(&format!("config.media.{key}"), message);
    }
    let voice = crate::voice::parse(c.voice, &mut fail);
    if !ok {
        return None;
    }
    Some(Channel {
        id: id?,
        manifest_id: raw.manifest_id,
        enabled: raw.enabled,
        account_sid: account_sid?,
        auth_token: c.twilio_auth_token,
        from_number,
        messaging_service_sid,
        sms_max_len,
        path_token: c.webhook_path_token,
        api_base: api_base.trim_end_matches('/').to_owned(),
        public_base_url,
        rate_limit,
        mps,
        pause_minutes,
        max_parts,
        limits,
        reply_countries: reply_countries?,
        allow_from,
        block_from,
        help_text: c.help_text.unwrap_or_else(|| DEFAULT_HELP_TEXT.to_owned()),
        fallback_text: c.fallback_text.unwrap_or_else(|| DEFAULT_FALLBACK_TEXT.to_owned()),
        rate_limit_text: c.rate_limit_text.unwrap_or_else(|| DEFAULT_RATE_LIMIT_TEXT.to_owned()),
        chat,
        delivery,
        insecure_skip_signature: c.insecure_skip_signature,
        media,
        delete_media_after_fetch: c.delete_media_after_fetch,
        voice,
        unknown_keys,
    })
}

/// An object key parsed on its own, so that its errors name `key`; its
/// default when absent, null or invalid (the problem is reported).
pub(crate) fn section<T: serde::de::DeserializeOwned + Default>(
    value: Option<Value>,
    key: &str,
    fail: &mut dyn FnMut(&str, String),
) -> T {
    match value {
        None | Some(Value::Null) => T::default(),
        Some(v) => serde_json::from_value(v).unwrap_or_else(|e| {
            fail(key, e.to_string());
            T::default()
        }),
    }
}

/// How long a pause of the bot lasts unless the channel or the request
/// says otherwise.
pub const DEFAULT_PAUSE_MINUTES: f64 = 60.0;
/// The longest pause: a week.
pub const MAX_PAUSE_MINUTES: f64 = 7.0 * 24.0 * 60.0;

/// A pause length in minutes: more than 0, at most a week.
pub fn check_pause_minutes(minutes: f64) -> Result<(), String> {
    if minutes.is_finite() && minutes > 0.0 && minutes <= MAX_PAUSE_MINUTES {
        Ok(())
    } else {
        Err(format!("must be more than 0 and at most {MAX_PAUSE_MINUTES} minutes (a week), is {minutes}"))
    }
}

/// The smallest non-zero `mps`: one send every 1000 s.
pub const MIN_MPS: f64 = 0.001;
/// The largest `mps` (Twilio's own limits are far below).
pub const MAX_MPS: f64 = 1000.0;

/// `reply_countries`: `["*"]`, or calling codes of 1 to 3 digits without `+`.
fn parse_reply_countries(list: &[String]) -> Result<ReplyCountries, String> {
    if list.iter().any(|c| c.trim() == "*") {
        return if list.len() == 1 { Ok(ReplyCountries::All) } else { Err("\"*\" must be alone".to_owned()) };
    }
    if list.is_empty() {
        return Err("is empty: no reply could be sent (use [\"*\"] for all countries)".to_owned());
    }
    let mut codes = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let c = c.trim().trim_start_matches('+');
        let ok = (1..=3).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()) && !c.starts_with('0');
        if !ok {
            return Err(format!(
                "[{i}] {:?} is not a country calling code (1 to 3 digits, e.g. \"44\")",
                crate::redact::clip(c, 8)
            ));
        }
        codes.push(c.to_owned());
    }
    Ok(ReplyCountries::Codes(codes))
}

/// Everything a service reads at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub channels: Vec<Channel>,
}

impl Config {
    pub fn from_lookup(env: Lookup<'_>) -> Result<Self, ConfigError> {
        let settings = Settings::from_lookup(env)?;
        let channels = load_channels(env, &settings)?;
        Ok(Self { settings, channels })
    }

    /// For `main`: reads the process environment; on a bad configuration
    /// prints every problem and exits with status 64.
    pub fn from_env_or_exit(service: &str) -> Self {
        match Self::from_lookup(&|k| std::env::var(k).ok()) {
            Ok(c) => {
                for channel in c.channels.iter().filter(|c| !c.unknown_keys.is_empty()) {
                    tracing::warn!(
                        service,
                        channel_id = %channel.id,
                        keys = %channel.unknown_keys.join(", "),
                        "the channel file has keys smsgate does not know; they are ignored"
                    );
                }
                c
            }
            Err(e) => {
                tracing::error!(service, outcome = "bad_config", error = %e, "invalid configuration");
                eprintln!("smsgate-{service}: {e}");
                std::process::exit(EXIT_BAD_CONFIG);
            }
        }
    }
}

/// A fresh random path token (48 URL-safe characters), for `gen-token`.
pub fn generate_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..48).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

    fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn channel_json(id: &str, token: &str) -> String {
        format!(
            r#"{{"channel_id": "{id}", "manifest_id": "sms", "enabled": true, "config": {{
                "twilio_account_sid": "{SID}", "twilio_auth_token": "${{TWILIO_AUTH_TOKEN}}",
                "twilio_from_number": "+15551234567", "chat": {{"kind": "echo"}}, "sms_max_len": 480,
                "webhook_path_token": "{token}" }} }}"#
        )
    }

    fn parse(text: &str) -> Result<Vec<Channel>, ConfigError> {
        let env = env_of(&[("TWILIO_AUTH_TOKEN", "secret-token-value")]);
        parse_channels(text, "channels.json", &|k| env.get(k).cloned(), Some("https://sms.example.com"))
    }

    #[test]
    fn loads_all_three_shapes() {
        let one = channel_json("a", TOKEN);
        assert_eq!(parse(&one).unwrap().len(), 1);
        assert_eq!(parse(&format!("[{one}]")).unwrap().len(), 1);
        assert_eq!(parse(&format!(r#"{{"channels": [{one}]}}"#)).unwrap().len(), 1);
    }

    #[test]
    fn applies_defaults_and_expands_variables() {
        let c = parse(&channel_json("a", TOKEN)).unwrap().remove(0);
        assert_eq!(c.auth_token.expose_secret(), "secret-token-value");
        assert_eq!(c.rate_limit, RateLimit { per_minute: 10, burst: 5 });
        assert_eq!(c.max_parts, 4);
        assert!((c.mps - 1.0).abs() < f64::EPSILON);
        assert_eq!(c.api_base, "https://api.twilio.com");
        assert_eq!(c.delivery, Delivery::Twilio);
        assert_eq!(c.chat.kind(), "echo");
        assert!(!c.insecure_skip_signature);
        assert_eq!(
            c.webhook_url().unwrap(),
            format!("https://sms.example.com/api/channels/sms/twilio/webhook/{TOKEN}")
        );
    }

    #[test]
    fn media_settings_have_twilio_defaults_and_are_checked() {
        let c = parse(&channel_json("a", TOKEN)).unwrap().remove(0);
        assert_eq!(c.media, MediaConfig::default());
        assert!(!c.delete_media_after_fetch);
        assert!(c.media.allows("Image/JPEG; charset=x"));
        assert!(c.media.allows("audio/amr"));
        assert!(!c.media.allows("application/x-msdownload"));
        assert!(!c.media.allows("audio"));
        assert!(!c.media.allows("audio/x,evil"));
        assert!(!c.media.allows("audio/a/b"));

        let with = |extra: &str| channel_json("a", TOKEN).replace(r#""sms_max_len": 480"#, extra);
        let c = parse(&with(
            r#""media": {"hosts": ["http://127.0.0.1:9/m/"], "max_edge": 0}, "delete_media_after_fetch": true"#,
        ))
        .unwrap()
        .remove(0);
        assert_eq!(c.media.hosts, ["http://127.0.0.1:9/m/"]);
        assert_eq!(c.media.max_edge, 0);
        assert_eq!(c.media.max_bytes, DEFAULT_MEDIA_MAX_BYTES);
        assert!(c.delete_media_after_fetch);

        let e = parse(&with(
            r#""media": {"hosts": ["ftp://x"], "max_bytes": 0, "max_edge": 10, "content_types": ["Image/*"]}"#,
        ))
        .unwrap_err()
        .to_string();
        for key in
            ["config.media.hosts", "config.media.max_bytes", "config.media.max_edge", "config.media.content_types"]
        {
            assert!(e.contains(key), "{key} in {e}");
        }
        let e = parse(&with(r#""media": {"host": []}"#)).unwrap_err().to_string();
        assert!(e.contains("config.media") && e.contains("host"), "{e}");
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let c = parse(&channel_json("a", TOKEN)).unwrap().remove(0);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret-token-value"));
        assert!(!dbg.contains(TOKEN));
    }

    #[test]
    fn missing_variable_names_it_and_the_key() {
        let err = parse_channels(&channel_json("a", TOKEN), "c.json", &|_| None, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("c.json"), "{text}");
        assert!(text.contains("channel a"), "{text}");
        assert!(text.contains("config.twilio_auth_token"), "{text}");
        assert!(text.contains("TWILIO_AUTH_TOKEN"), "{text}");
    }

    #[test]
    fn short_token_bad_sid_and_bad_numbers_are_all_reported() {
        let text = r#"{"channel_id": "x", "config": {"twilio_account_sid": "AC12", "twilio_auth_token": "t",
               "twilio_from_number": "5551234567", "webhook_path_token": "short",
               "allow_from": ["+15551230000", "nope"]}}"#;
        let err = parse(text).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"config.twilio_account_sid"), "{keys:?}");
        assert!(keys.contains(&"config.webhook_path_token"), "{keys:?}");
        assert!(keys.contains(&"config.twilio_from_number"), "{keys:?}");
        assert!(keys.contains(&"config.allow_from[1]"), "{keys:?}");
    }

    #[test]
    fn duplicate_ids_and_tokens_are_refused() {
        let text = format!("[{}, {}]", channel_json("a", TOKEN), channel_json("a", TOKEN));
        let err = parse(&text).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"channel_id"), "{keys:?}");
        assert!(keys.contains(&"config.webhook_path_token"), "{keys:?}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = parse(r#"{"channel_id": "a", "config": {"twilio_auth_token": "x", "webhook_path_token": "y"}}"#)
            .unwrap_err();
        assert!(err.0[0].key.contains("twilio_account_sid"), "{err}");
        assert_eq!(err.0[0].channel.as_deref(), Some("a"));
    }

    #[test]
    fn chat_kinds_parse_with_defaults() {
        let text = channel_json("a", TOKEN).replace(
            r#""sms_max_len": 480,"#,
            r#""chat": {"kind": "openai", "base_url": "http://localhost:11434/v1", "model": "llama3"},"#,
        );
        let c = parse(&text).unwrap().remove(0);
        match c.chat {
            ChatConfig::Openai { history_turns, timeout_ms, max_tokens, .. } => {
                assert_eq!((history_turns, timeout_ms, max_tokens), (10, 20_000, 300));
            }
            other => panic!("{other:?}"),
        }
        let bad = channel_json("a", TOKEN).replace(r#""sms_max_len": 480,"#, r#""chat": {"kind": "gpt"},"#);
        assert!(parse(&bad).unwrap_err().to_string().contains("chat"));
    }

    #[test]
    fn falls_back_to_twilio_variables() {
        let env = env_of(&[
            ("TWILIO_ACCOUNT_SID", SID),
            ("TWILIO_AUTH_TOKEN", "tok"),
            ("TWILIO_PHONE_NUMBER", "+15551234567"),
            ("SMS_WEBHOOK_PATH_TOKEN", TOKEN),
        ]);
        let lookup = |k: &str| env.get(k).cloned();
        let settings = Settings::from_lookup(&lookup).unwrap();
        // The variables cannot name a chat: the channel answers with a fixed
        // text, never the sender's own words.
        let channels = load_channels(&lookup, &settings).unwrap();
        assert_eq!(channels[0].id.as_str(), "default");
        assert_eq!(channels[0].chat.kind(), "static");
        let none = load_channels(&|_| None, &settings).unwrap_err();
        assert_eq!(none.0.len(), 4);
    }

    #[test]
    fn limits_and_reply_countries_have_safe_defaults() {
        let c = parse(&channel_json("a", TOKEN)).unwrap().remove(0);
        assert_eq!(c.limits, Limits { replies_per_minute: 30, replies_per_day: 1000 });
        // The from number's country only.
        assert_eq!(c.reply_countries, ReplyCountries::Codes(vec!["1".to_owned()]));
        assert!(c.reply_countries.admits(&E164::parse("+14155550100").unwrap()));
        assert!(!c.reply_countries.admits(&E164::parse("+447911123456").unwrap()));
    }

    #[test]
    fn bad_limits_and_reply_countries_are_reported_by_key() {
        let with = |extra: &str| channel_json("a", TOKEN).replace(r#""sms_max_len": 480,"#, extra);
        let keys = |extra: &str| -> Vec<String> {
            parse(&with(extra)).map(|_| Vec::new()).unwrap_or_else(|e| e.0.into_iter().map(|p| p.key).collect())
        };
        assert_eq!(keys(r#""limits": {"replies_per_minute": 0},"#), ["config.limits"]);
        assert_eq!(keys(r#""limits": {"replies_per_minute": 50, "replies_per_day": 10},"#), ["config.limits"]);
        assert!(!keys(r#""limits": {"per_hour": 5},"#).is_empty());
        assert_eq!(keys(r#""reply_countries": [],"#), ["config.reply_countries"]);
        assert_eq!(keys(r#""reply_countries": ["+44", "abc"],"#), ["config.reply_countries"]);
        assert_eq!(keys(r#""reply_countries": ["*", "1"],"#), ["config.reply_countries"]);
        assert!(keys(r#""reply_countries": ["*"],"#).is_empty());
        let c = parse(&with(r#""reply_countries": ["+44", "1"],"#)).unwrap().remove(0);
        assert_eq!(c.reply_countries, ReplyCountries::Codes(vec!["44".to_owned(), "1".to_owned()]));
        let ms = with(r#""twilio_messaging_service_sid": "MG0123456789abcdef0123456789abcdef","#)
            .replace(r#""twilio_from_number": "+15551234567","#, "");
        let err = parse(&ms).unwrap_err();
        assert_eq!(err.0[0].key, "config.reply_countries", "{err}");
    }

    #[test]
    fn a_tiny_mps_is_a_config_error_not_a_panic() {
        for mps in ["1e-300", "0.0000001", "-1", "1e9"] {
            let text = channel_json("a", TOKEN).replace(r#""sms_max_len": 480,"#, &format!(r#""mps": {mps},"#));
            let err = parse(&text).unwrap_err();
            assert_eq!(err.0[0].key, "config.mps", "{mps}: {err}");
        }
        let text = channel_json("a", TOKEN).replace(r#""sms_max_len": 480,"#, r#""mps": 0,"#);
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn twilio_delivery_without_a_chat_is_refused() {
        let no_chat = channel_json("a", TOKEN).replace(r#""chat": {"kind": "echo"},"#, "");
        let err = parse(&no_chat).unwrap_err();
        assert_eq!(err.0[0].key, "config.chat", "{err}");
        // Writing replies to the log costs nothing: echo stays the default there.
        let log = no_chat.replace(r#""sms_max_len": 480,"#, r#""delivery": "log","#);
        assert_eq!(parse(&log).unwrap()[0].chat.kind(), "echo");
    }

    #[test]
    fn settings_defaults_match_the_contract() {
        let s = Settings::from_lookup(&|_| None).unwrap();
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.nats_prefix, "smsgate");
        assert_eq!(s.ingress_addr.to_string(), "0.0.0.0:8000");
        assert_eq!(s.admin_addr.to_string(), "127.0.0.1:8001");
        assert_eq!(s.worker_addr.to_string(), "127.0.0.1:8002");
        assert_eq!(s.sender_addr.to_string(), "127.0.0.1:8003");
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(Settings::from_lookup(&|k| (k == "SMSGATE_LOG_FORMAT").then(|| "xml".to_owned())).is_err());
    }

    #[test]
    fn generated_tokens_are_long_enough() {
        let t = generate_token();
        assert_eq!(t.len(), 48);
        assert_ne!(t, generate_token());
    }

    #[test]
    fn unknown_keys_are_reported_with_the_nearest_known_one() {
        let text = r#"{"channel_id": "c", "extra_agentos_field": 1, "config": {
            "twilio_account_sid": "AC0123456789abcdef0123456789abcdef", "twilio_auth_token": "t",
            "twilio_from_number": "+14155550100", "webhook_path_token": "0123456789abcdef0123456789abcdef",
            "chat": {"kind": "echo"}, "rate_limt": {"per_minute": 5}, "help_txt": "x", "completely_else": true}}"#;
        let channels = parse_channels(text, "test", &|_| None, None).unwrap();
        assert_eq!(
            channels[0].unknown_keys,
            [
                "extra_agentos_field",
                "config.completely_else",
                "config.help_txt (did you mean config.help_text?)",
                "config.rate_limt (did you mean config.rate_limit?)",
            ]
        );
    }

    #[test]
    fn every_listed_key_is_one_serde_knows() {
        for key in CONFIG_KEYS {
            let value = serde_json::json!({"channel_id": "c", "config": {
                "twilio_account_sid": "AC0123456789abcdef0123456789abcdef", "twilio_auth_token": "t",
                "webhook_path_token": "0123456789abcdef0123456789abcdef", key: null}});
            if let Ok(raw) = serde_json::from_value::<RawChannel>(value) {
                assert!(!raw.config.unknown.contains_key(key), "{key} is listed but not a field");
            }
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("mpss", &CONFIG_KEYS), Some("mps"));
    }
}
