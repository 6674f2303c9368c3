//! The channel model: what a validated channel is, as the services use it.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{AccountSid, ChannelId, E164};

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
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_replies_per_minute")]
    pub replies_per_minute: u32,
    #[serde(default = "default_replies_per_day")]
    pub replies_per_day: u32,
    /// The most the channel may spend in a UTC day (estimates and Twilio's
    /// prices, `crate::cost`): past it, no model call and no guarded text
    /// that day. None: no limit.
    #[serde(default)]
    pub usd_per_day: Option<f64>,
}

fn default_replies_per_minute() -> u32 {
    30
}
fn default_replies_per_day() -> u32 {
    1000
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            replies_per_minute: default_replies_per_minute(),
            replies_per_day: default_replies_per_day(),
            usd_per_day: None,
        }
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

impl Delivery {
    /// The name the channel file uses (`twilio`, `log`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Twilio => "twilio",
            Self::Log => "log",
        }
    }
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
    pub(crate) fn problems(&self) -> Vec<(&'static str, String)> {
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
        /// Tools the model may call, run by smsgate (`["handoff", "followup"]`).
        #[serde(default)]
        tools: Vec<ChatTool>,
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

/// A tool the model may call (`chat.tools`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatTool {
    /// Hand the conversation to a person: the bot pauses, the reason is noted.
    Handoff,
    /// Schedule a later text to the person, through the guard.
    Followup,
}

/// `chat.ack_after_ms` and `chat.ack_text` (any kind): when no answer has
/// come within `after`, `text` goes first, once per inbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatAck {
    pub after: std::time::Duration,
    pub text: String,
}

/// What an acknowledgement says unless `ack_text` says otherwise.
pub const DEFAULT_ACK_TEXT: &str = "Got it, working on it. I'll text you back shortly.";

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
    /// The "on it" text when the chat is slow (`chat.ack_after_ms`).
    pub chat_ack: Option<ChatAck>,
    /// How agent-initiated texts and calls are guarded (`compliance`).
    pub compliance: crate::guard::Compliance,
    /// Prices for cost figures (`pricing`).
    pub pricing: crate::cost::Pricing,
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
