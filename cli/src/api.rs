//! The admin API client and the answers the CLI reads from it. The types
//! take only the fields the tables need and ignore the rest, so the API can
//! grow without breaking older CLIs; `--json` prints the answer untouched.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::CliError;

pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: Option<SecretString>,
}

impl Admin {
    pub fn new(base: &str, token: Option<String>) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| CliError::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.filter(|t| !t.trim().is_empty()).map(SecretString::from),
        })
    }

    /// Calls the admin API; answers other than 2xx become [`CliError::Api`].
    /// Writes always carry a JSON body (`{}` when there is nothing to say):
    /// the admin API takes no other.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let write = method != Method::GET && method != Method::HEAD;
        let mut request = self.http.request(method, &url);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t.expose_secret());
        }
        match body {
            Some(b) => request = request.json(b),
            None if write => request = request.json(&serde_json::json!({})),
            None => {}
        }
        let response = request.send().await.map_err(|source| CliError::Unreachable {
            what: "the admin API",
            url: self.base.clone(),
            hint: " (is ingress running? set SMSGATE_ADMIN_URL or --admin-url)",
            source: source.without_url(),
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CliError::Failed(format!("the admin API's answer could not be read: {e}")))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                CliError::Failed(format!(
                    "the admin API's answer is not JSON ({e}): {}",
                    smsgate_shared::redact::clip(&text, 200)
                ))
            });
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            code: String,
            detail: String,
            #[serde(default)]
            next_allowed_at: Option<String>,
        }
        let (code, detail) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(ErrorBody { code, detail, next_allowed_at: Some(next) }) => {
                (code, format!("{detail}; the next allowed time is {next}"))
            }
            Ok(e) => (e.code, e.detail),
            Err(_) => ("http_error".to_owned(), text.chars().take(300).collect()),
        };
        let hint = match status {
            StatusCode::UNAUTHORIZED if self.token.is_none() => {
                " (no token: set SMSGATE_ADMIN_TOKEN or --token, or SMSGATE_ADMIN_TOKEN_FILE to the file ingress wrote)"
            }
            StatusCode::UNAUTHORIZED => {
                " (the token must equal the ingress's: SMSGATE_ADMIN_TOKEN, or the file it names in its log)"
            }
            StatusCode::SERVICE_UNAVAILABLE => " (ingress cannot reach NATS)",
            _ => "",
        };
        Err(CliError::Api { status: status.as_u16(), code, detail, hint })
    }
}

impl Admin {
    /// `smsgate events`: follows `GET /api/v1/events`, printing each event's
    /// data (with its stream position as `event_id`) as one JSON line. When the stream breaks it
    /// reconnects with `Last-Event-ID`, so nothing is missed or repeated;
    /// a refusal (401, 404, ...) ends it with the error.
    pub async fn follow_events(&self, channel: Option<&str>) -> Result<(), CliError> {
        use std::io::Write as _;
        // No overall timeout: the answer never ends. Keep-alives come every
        // 15 s, so a read that waits much longer means a dead connection.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(45))
            .build()
            .map_err(|e| CliError::Failed(format!("cannot build the HTTP client: {e}")))?;
        let url = match channel {
            Some(c) => format!("{}/api/v1/events?{}", self.base, query_string(&[("channel_id", c.to_owned())])),
            None => format!("{}/api/v1/events", self.base),
        };
        let mut last_id: Option<String> = None;
        let mut pause = Duration::from_millis(500);
        loop {
            let mut request = http.get(&url).header("accept", "text/event-stream");
            if let Some(t) = &self.token {
                request = request.bearer_auth(t.expose_secret());
            }
            if let Some(id) = &last_id {
                request = request.header("last-event-id", id);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    pause = Duration::from_millis(500);
                    let mut response = response;
                    let mut parser = smsgate_shared::sse::SseParser::default();
                    while let Ok(Some(chunk)) = response.chunk().await {
                        for event in parser.push(&chunk) {
                            let mut data: Value =
                                serde_json::from_str(&event.data).unwrap_or(Value::String(event.data));
                            // Beside the event's own fields, never over one of
                            // them (an outbound's `id` is its outbound id).
                            if let (Value::Object(map), Some(id)) = (&mut data, &event.id) {
                                map.insert("event_id".to_owned(), Value::String(id.clone()));
                            }
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "{data}");
                            let _ = out.flush();
                            if event.id.is_some() {
                                last_id = event.id;
                            }
                        }
                    }
                    eprintln!("smsgate: the event stream ended; reconnecting");
                }
                Ok(response) if response.status().is_client_error() => {
                    let status = response.status();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    return Err(CliError::Api {
                        status: status.as_u16(),
                        code: body["code"].as_str().unwrap_or("http_error").to_owned(),
                        detail: body["detail"].as_str().unwrap_or("").to_owned(),
                        hint: "",
                    });
                }
                Ok(response) => eprintln!("smsgate: the event stream answered {}; retrying", response.status()),
                Err(e) => eprintln!("smsgate: cannot reach {} ({}); retrying", self.base, e.without_url()),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }
}

/// The token when neither `--token` nor `SMSGATE_ADMIN_TOKEN` gives one:
/// the file ingress generated at first start (`SMSGATE_ADMIN_TOKEN_FILE`,
/// `$XDG_STATE_HOME/smsgate/admin-token` or
/// `~/.local/state/smsgate/admin-token`).
pub fn stored_token() -> Option<String> {
    let file = smsgate_shared::admin_token::path(&|k| std::env::var(k).ok())?;
    smsgate_shared::admin_token::read(&file).ok().flatten().map(|t| t.expose_secret().to_owned())
}

/// Reads an answer into the type a table needs.
pub fn parse<T: DeserializeOwned>(value: Value) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|e| CliError::Failed(format!("unexpected answer from the admin API: {e}")))
}

#[derive(Debug, Deserialize)]
pub struct Accepted {
    pub id: String,
    #[serde(default)]
    pub duplicate: bool,
    /// `queued` or `scheduled`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub send_at: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
}

/// `GET /api/v1/scheduled`.
#[derive(Debug, Deserialize)]
pub struct ScheduledList {
    pub scheduled: Vec<ScheduledItem>,
}

#[derive(Debug, Deserialize)]
pub struct ScheduledItem {
    pub id: String,
    pub channel_id: String,
    pub to: String,
    pub body: String,
    pub kind: String,
    pub send_at: String,
    pub why: String,
}

/// `/api/v1/consent/...`.
#[derive(Debug, Deserialize)]
pub struct ConsentView {
    pub channel_id: String,
    pub to: String,
    pub consent: Option<String>,
    pub source: Option<String>,
    pub at: Option<String>,
    pub opted_out: bool,
}

#[derive(Debug, Deserialize)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
    #[serde(default)]
    pub next_cursor: Option<String>,
    #[serde(default)]
    pub total: usize,
}

#[derive(Debug, Deserialize)]
pub struct ConversationSummary {
    pub channel_id: String,
    pub peer: String,
    #[serde(default)]
    pub messages: u64,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub last_message: Option<LastMessage>,
}

#[derive(Debug, Deserialize)]
pub struct LastMessage {
    pub direction: String,
    pub body: String,
    #[serde(default)]
    pub media: usize,
}

/// `k=v&...`, each value percent-encoded.
pub fn query_string(pairs: &[(&str, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str()))).finish()
}

#[derive(Debug, Deserialize)]
pub struct Conversation {
    pub channel_id: String,
    pub peer: String,
    pub total: u64,
    #[serde(default)]
    pub messages: u64,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// What it cost (an admin API older than cost figures sends none).
    #[serde(default)]
    pub cost: Option<CostSum>,
    pub entries: Vec<Entry>,
}

/// The conversation's cost as the admin API sums it.
#[derive(Debug, Default, Deserialize)]
pub struct CostSum {
    #[serde(default)]
    pub total_usd: f64,
    #[serde(default)]
    pub sms_usd: f64,
    #[serde(default)]
    pub call_usd: f64,
    #[serde(default)]
    pub model_usd: f64,
    #[serde(default)]
    pub estimated: u32,
    #[serde(default)]
    pub usage_unknown: u32,
}

#[derive(Debug, Deserialize)]
pub struct Entry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Inbound {
        body: String,
        #[serde(default)]
        media: Vec<Value>,
    },
    Outbound {
        body: String,
        #[serde(default)]
        state: String,
        #[serde(default)]
        pieces: Vec<Piece>,
        /// The media URLs sent with it (an MMS).
        #[serde(default)]
        media: Vec<String>,
    },
    Status,
    Note {
        reason: String,
        #[serde(default)]
        detail: String,
    },
    /// A call's progress (answered, forwarded, completed, …).
    Call {
        status: String,
        #[serde(default)]
        duration_secs: Option<u64>,
        #[serde(default)]
        detail: Option<String>,
    },
    /// One turn of a call.
    CallTurn {
        heard: String,
        said: String,
        #[serde(default)]
        origin: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
pub struct Piece {
    #[serde(default)]
    pub error_code: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChannelsView {
    pub nats: NatsHealth,
    pub channels: Vec<ChannelView>,
}

#[derive(Debug, Deserialize)]
pub struct NatsHealth {
    pub connected: bool,
    pub streams_present: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChannelView {
    pub channel_id: String,
    /// `file` or `runtime` (absent from older ingresses).
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub webhook_url: Option<String>,
    pub enabled: bool,
    pub from_number: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub chat: String,
    pub delivery: String,
    pub dead_letters: Option<u64>,
    pub health: String,
    #[serde(default)]
    pub problems: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Connected {
    pub channel: ChannelView,
    #[serde(default)]
    pub ignored_keys: Vec<String>,
    #[serde(default)]
    pub webhook_set: Option<Webhook>,
}

#[derive(Debug, Deserialize)]
pub struct Webhook {
    pub url: Option<String>,
    pub method: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChannelStatus {
    pub channel_id: String,
    /// `twilio` or `log` (absent from older ingresses).
    #[serde(default)]
    pub delivery: Option<String>,
    pub ok: bool,
    pub verdict: String,
    pub credentials_valid: Option<bool>,
    pub account_status: Option<String>,
    pub number: Option<String>,
    pub number_found: Option<bool>,
    pub sms: Option<Webhook>,
    pub expected_sms: Webhook,
    pub voice: Option<Webhook>,
}

#[derive(Debug, Deserialize)]
pub struct DeadList {
    pub entries: Vec<DeadEntry>,
}

#[derive(Debug, Deserialize)]
pub struct DeadEntry {
    pub seq: u64,
    pub stage: String,
    pub channel_id: String,
    pub reason: String,
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Debug, Deserialize)]
pub struct Replayed {
    pub seq: u64,
    pub subject: String,
    pub msg_id: String,
    #[serde(default)]
    pub duplicate: bool,
}
