//! The chat pipeline: one [`ChatBackend`] per channel, built from its
//! [`ChatConfig`], all sharing one `reqwest::Client`.
//!
//! A backend answers a [`ChatRequest`] with `Some(answer)` (text, and for a
//! webhook agent media URLs to send), with `None` (no
//! reply now: a webhook agent may answer later through the admin API), or
//! with a [`ChatError`] whose [`ChatError::kind`] tells the consumer whether
//! to retry (through JetStream redelivery) or to give up at once.
//!
//! # Layout
//!
//! - this file: the types every kind shares ([`ChatRequest`], [`Answer`],
//!   [`ChatError`]), [`ChatBackend`] and its dispatch to the kinds, and
//!   the HTTP status rules; `static` and `echo` need nothing more;
//! - `openai`: the OpenAI chat completions request (system prompt,
//!   history, pictures as `data:` URLs) and reading its answer;
//! - `webhook`: the agent's request (Standard Webhooks, media inline), its
//!   signature, and reading its answer.

mod openai;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use smsgate_shared::config::{ChatConfig, ChatTool};
use smsgate_shared::envelope::{Inbound, Media};

use crate::media::Attachment;
use smsgate_shared::retry::parse_retry_after;
use time::OffsetDateTime;

use openai::openai_usage;
pub(crate) use openai::{openai_body, openai_reply};
pub use webhook::sign_webhook;
pub(crate) use webhook::{webhook_body, webhook_reply};

/// Who said a turn of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One earlier message of the conversation, oldest first in a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    pub role: Role,
    pub body: String,
    #[serde(skip)]
    pub media: Vec<Media>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What a backend is asked: the current message, its media as fetched
/// ([`crate::media`]; empty for backends that take none) and the turns before it.
#[derive(Debug, Clone)]
pub struct ChatRequest<'a> {
    pub inbound: &'a Inbound,
    pub history: &'a [Turn],
    pub attachments: &'a [Attachment],
    /// What the model's tools run against, when the channel has tools.
    pub tools: Option<&'a crate::tools::ToolBox<'a>>,
}

/// A backend's reply: text, and media URLs to send with it (a webhook
/// agent's `"media"`; checked by the caller before anything is sent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    pub text: String,
    pub media: Vec<String>,
    /// The model's token counts (`openai` only; None when the server gave none).
    pub usage: Option<smsgate_shared::cost::Usage>,
}

impl Answer {
    pub fn text(text: impl Into<String>) -> Self {
        Self { text: text.into(), media: vec![], usage: None }
    }
}

/// Whether a failed call is worth another try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connect errors, timeouts, 5xx, 429: retry later, honouring `retry_after`.
    Transient { retry_after: Option<Duration> },
    /// Any other 4xx, an answer we cannot read: retrying will not help.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat backend unreachable or too slow")]
    Transport(#[source] reqwest::Error),
    #[error("chat backend answered HTTP {status}")]
    Status { status: StatusCode, retry_after: Option<Duration> },
    #[error("chat backend answer could not be read: {0}")]
    BadAnswer(String),
}

impl ChatError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // A request that could not be built is our bug: retrying will not fix it.
            Self::Transport(e) if e.is_builder() => ErrorKind::Permanent,
            Self::Transport(_) => ErrorKind::Transient { retry_after: None },
            Self::Status { status, retry_after }
                if *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() =>
            {
                ErrorKind::Transient { retry_after: *retry_after }
            }
            Self::Status { .. } | Self::BadAnswer(_) => ErrorKind::Permanent,
        }
    }
}

/// A channel's chat pipeline.
#[derive(Debug, Clone)]
pub enum ChatBackend {
    Openai {
        http: reqwest::Client,
        url: String,
        model: String,
        api_key: Option<SecretString>,
        system_prompt: Option<String>,
        history_turns: usize,
        timeout: Duration,
        max_tokens: u32,
        temperature: Option<f32>,
        tools: Vec<ChatTool>,
        /// The server refused `tools` once: ask without them.
        tools_refused: Arc<AtomicBool>,
    },
    Webhook {
        http: reqwest::Client,
        url: String,
        secret: Option<SecretString>,
        history_turns: usize,
        timeout: Duration,
    },
    Static {
        reply: String,
    },
    Echo,
}

impl ChatBackend {
    pub fn new(config: &ChatConfig, http: &reqwest::Client) -> Self {
        match config.clone() {
            ChatConfig::Openai {
                base_url,
                model,
                api_key,
                system_prompt,
                history_turns,
                timeout_ms,
                max_tokens,
                temperature,
                tools,
            } => Self::Openai {
                http: http.clone(),
                url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
                model,
                api_key,
                system_prompt: system_prompt.filter(|p| !p.trim().is_empty()),
                history_turns,
                timeout: Duration::from_millis(timeout_ms),
                max_tokens,
                temperature,
                tools,
                tools_refused: Arc::default(),
            },
            ChatConfig::Webhook { url, secret, timeout_ms, history_turns } => Self::Webhook {
                http: http.clone(),
                url,
                secret,
                history_turns,
                timeout: Duration::from_millis(timeout_ms),
            },
            ChatConfig::Static { reply } => Self::Static { reply },
            ChatConfig::Echo => Self::Echo,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Openai { .. } => "openai",
            Self::Webhook { .. } => "webhook",
            Self::Static { .. } => "static",
            Self::Echo => "echo",
        }
    }

    /// How many earlier turns this backend wants (0: no history read at all).
    pub fn history_turns(&self) -> usize {
        match self {
            Self::Openai { history_turns, .. } | Self::Webhook { history_turns, .. } => *history_turns,
            Self::Static { .. } | Self::Echo => 0,
        }
    }

    /// Whether this backend reads media (the worker fetches it only then).
    pub fn wants_media(&self) -> bool {
        matches!(self, Self::Openai { .. } | Self::Webhook { .. })
    }

    /// Whether pictures are scaled down before this backend gets them (a
    /// model pays per pixel; an agent gets what the person sent).
    pub fn scales_pictures(&self) -> bool {
        matches!(self, Self::Openai { .. })
    }

    /// Asks for the reply to `req.inbound`.
    pub async fn reply(&self, req: &ChatRequest<'_>) -> Result<Option<Answer>, ChatError> {
        match self {
            Self::Static { reply } => Ok(Some(Answer::text(reply.clone()))),
            Self::Echo => {
                let body = req.inbound.body.trim();
                Ok((!body.is_empty()).then(|| Answer::text(body)))
            }
            Self::Openai {
                http,
                url,
                model,
                api_key,
                system_prompt,
                timeout,
                max_tokens,
                temperature,
                tools,
                tools_refused,
                ..
            } => {
                let body = openai_body(model, system_prompt.as_deref(), *max_tokens, *temperature, req);
                if let Some(toolbox) = req.tools.filter(|_| !tools.is_empty()) {
                    let endpoint = crate::tools::Endpoint { http, url, api_key: api_key.as_ref(), timeout: *timeout };
                    let body = serde_json::to_value(&body)
                        .map_err(|e| ChatError::BadAnswer(format!("cannot encode the request: {e}")))?;
                    let text = crate::tools::converse(&endpoint, body, tools, toolbox, tools_refused).await?;
                    return Ok(text.map(Answer::text));
                }
                let mut request = http.post(url).timeout(*timeout).json(&body);
                if let Some(key) = api_key {
                    request = request.bearer_auth(key.expose_secret());
                }
                let response = request.send().await.map_err(transport)?;
                let response = check_status(response)?;
                let answer = response.bytes().await.map_err(transport)?;
                let usage = openai_usage(&answer);
                Ok(openai_reply(&answer)?.map(|text| Answer { usage, ..Answer::text(text) }))
            }
            Self::Webhook { http, url, secret, timeout, .. } => {
                let payload = serde_json::to_vec(&webhook_body(req))
                    .map_err(|e| ChatError::BadAnswer(format!("cannot encode the request: {e}")))?;
                let id = req.inbound.message_sid.as_str();
                let timestamp = OffsetDateTime::now_utc().unix_timestamp();
                let mut request = http
                    .post(url)
                    .timeout(*timeout)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", timestamp.to_string());
                if let Some(secret) = secret {
                    request = request.header("webhook-signature", sign_webhook(secret, id, timestamp, &payload));
                }
                let response = request.body(payload).send().await.map_err(transport)?;
                let response = check_status(response)?;
                if response.status() == StatusCode::NO_CONTENT {
                    return Ok(None);
                }
                let bytes = response.bytes().await.map_err(transport)?;
                webhook_reply(&bytes)
            }
        }
    }
}

/// A transport error without its URL: an agent's URL may hold a secret,
/// and this error reaches logs and dead letters.
pub(crate) fn transport(e: reqwest::Error) -> ChatError {
    ChatError::Transport(e.without_url())
}

/// The longest `Retry-After` of the chat backend honoured (the worker's
/// retry schedule caps what it waits at the same 5 minutes).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

pub(crate) fn check_status(response: reqwest::Response) -> Result<reqwest::Response, ChatError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, MAX_RETRY_AFTER));
    Err(ChatError::Status { status, retry_after })
}

#[cfg(test)]
mod tests {
    use smsgate_shared::domain::{ChannelId, MessageSid};

    use super::*;

    pub(super) fn inbound(body: &str, media: Vec<Media>) -> Inbound {
        Inbound {
            v: 1,
            channel_id: ChannelId::parse("c").unwrap(),
            message_sid: MessageSid::parse("SM1").unwrap(),
            account_sid: "AC1".into(),
            from: "+14155550100".into(),
            to: "+15550001111".into(),
            body: body.into(),
            media,
            received_at: OffsetDateTime::UNIX_EPOCH,
            params: vec![],
            call: None,
        }
    }

    #[test]
    fn transient_and_permanent_statuses_are_told_apart() {
        let status = |s: u16| ChatError::Status { status: StatusCode::from_u16(s).unwrap(), retry_after: None };
        assert_eq!(status(500).kind(), ErrorKind::Transient { retry_after: None });
        assert_eq!(status(503).kind(), ErrorKind::Transient { retry_after: None });
        assert_eq!(status(429).kind(), ErrorKind::Transient { retry_after: None });
        assert_eq!(status(400).kind(), ErrorKind::Permanent);
        assert_eq!(status(401).kind(), ErrorKind::Permanent);
        assert_eq!(ChatError::BadAnswer("x".into()).kind(), ErrorKind::Permanent);
    }

    #[tokio::test]
    async fn static_and_echo_need_no_network() {
        let http = reqwest::Client::new();
        let i = inbound("  ping ", vec![]);
        let req = ChatRequest { inbound: &i, history: &[], attachments: &[], tools: None };
        let echo = ChatBackend::new(&ChatConfig::Echo, &http);
        assert_eq!(echo.reply(&req).await.unwrap(), Some(Answer::text("ping")));
        let fixed = ChatBackend::new(&ChatConfig::Static { reply: "thanks".into() }, &http);
        assert_eq!(fixed.reply(&req).await.unwrap(), Some(Answer::text("thanks")));
        assert!(!fixed.wants_media());
        assert_eq!(fixed.history_turns(), 0);
    }
}
