//! The chat pipeline: one [`ChatBackend`] per channel, built from its
//! [`ChatConfig`], all sharing one `reqwest::Client`.
//!
//! A backend answers a [`ChatRequest`] with `Some(answer)` (text, and for a
//! webhook agent media URLs to send), with `None` (no
//! reply now: a webhook agent may answer later through the admin API), or
//! with a [`ChatError`] whose [`ChatError::kind`] tells the consumer whether
//! to retry (through JetStream redelivery) or to give up at once.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use smsgate_shared::config::{ChatConfig, ChatTool};
use smsgate_shared::envelope::{Inbound, Media};

use crate::media::{Attachment, Content, describe_earlier};
use smsgate_shared::redact::third_party;
use smsgate_shared::retry::parse_retry_after;
use time::OffsetDateTime;

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

/// OpenAI's chat completions request: what smsgate sends of it.
#[derive(Debug, Serialize)]
pub(crate) struct CompletionRequest<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Debug, Serialize)]
struct Message<'a> {
    /// `system`, `user` or `assistant`.
    role: &'a str,
    content: MessageContent,
}

/// Plain text, or parts when the message carries pictures.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Serialize)]
struct ImageUrl {
    url: String,
}

/// OpenAI's answer: what smsgate reads of it.
#[derive(Debug, Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Debug, Deserialize)]
struct AnswerMessage {
    /// Text; null (or missing) when the model gave none. Anything else is
    /// refused with what it was.
    #[serde(default)]
    content: Option<Value>,
}

/// The current message: its text, every attachment that is not a loaded
/// picture described in words, and the loaded pictures as `image_url` parts
/// with `data:` URLs (which OpenAI and self-hosted vision servers alike
/// read; Twilio's own URLs need credentials they do not have).
fn user_content(body: &str, attachments: &[Attachment]) -> MessageContent {
    let mut text = body.to_owned();
    for words in attachments.iter().filter_map(Attachment::describe) {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&words);
    }
    let images: Vec<String> = attachments.iter().filter_map(Attachment::data_url).collect();
    if images.is_empty() {
        return MessageContent::Text(text);
    }
    let mut parts = vec![Part::Text { text }];
    parts.extend(images.into_iter().map(|url| Part::ImageUrl { image_url: ImageUrl { url } }));
    MessageContent::Parts(parts)
}

/// An earlier user turn: its text, its media named in words (the history
/// keeps references only, and they may be deleted from Twilio by now).
fn earlier_content(body: &str, media: &[Media]) -> MessageContent {
    let mut text = body.to_owned();
    for m in media {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&describe_earlier(m.content_type.as_deref()));
    }
    MessageContent::Text(text)
}

pub(crate) fn openai_body<'a>(
    model: &'a str,
    system_prompt: Option<&'a str>,
    max_tokens: u32,
    temperature: Option<f32>,
    req: &ChatRequest<'_>,
) -> CompletionRequest<'a> {
    let mut messages = Vec::with_capacity(req.history.len() + 2);
    if let Some(prompt) = system_prompt {
        messages.push(Message { role: "system", content: MessageContent::Text(prompt.to_owned()) });
    }
    for turn in req.history {
        let (role, content) = match turn.role {
            Role::User => ("user", earlier_content(&turn.body, &turn.media)),
            Role::Assistant => ("assistant", MessageContent::Text(turn.body.clone())),
        };
        messages.push(Message { role, content });
    }
    messages.push(Message { role: "user", content: user_content(&req.inbound.body, req.attachments) });
    CompletionRequest { model, messages, max_tokens, temperature }
}

/// `choices[0].message.content`; an empty or missing content is "no reply".
/// The answer's `usage` ({`prompt_tokens`, `completion_tokens`}), if any.
fn openai_usage(answer: &[u8]) -> Option<smsgate_shared::cost::Usage> {
    #[derive(Deserialize)]
    struct WithUsage {
        usage: Option<smsgate_shared::cost::Usage>,
    }
    serde_json::from_slice::<WithUsage>(answer).ok().and_then(|w| w.usage)
}

pub(crate) fn openai_reply(answer: &[u8]) -> Result<Option<String>, ChatError> {
    let completion: Completion =
        serde_json::from_slice(answer).map_err(|e| ChatError::BadAnswer(third_party(&e.to_string(), 200)))?;
    let message = completion
        .choices
        .into_iter()
        .next()
        .map(|c| c.message)
        .ok_or_else(|| ChatError::BadAnswer("no choices[0].message".to_owned()))?;
    match message.content {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Some(Value::String(_) | Value::Null) | None => Ok(None),
        Some(other) => {
            Err(ChatError::BadAnswer(format!("content is not text: {}", third_party(&other.to_string(), 80))))
        }
    }
}

/// The agent's request. Each `media` item keeps Twilio's `url` and the
/// webhook's `content_type`; a fetched one adds `size` and `data` (the bytes,
/// base64: inline, so the agent needs no credentials and no second request),
/// one that was not fetched adds `skipped` with the reason.
pub(crate) fn webhook_body(req: &ChatRequest<'_>) -> Value {
    let i = req.inbound;
    let media: Vec<Value> = if req.attachments.is_empty() {
        i.media.iter().map(|m| json!({"url": m.url, "content_type": m.content_type})).collect()
    } else {
        req.attachments.iter().map(webhook_media).collect()
    };
    json!({
        "channel_id": i.channel_id,
        "from": i.from,
        "to": i.to,
        "body": i.body,
        "media": media,
        "message_sid": i.message_sid,
        "history": req.history,
    })
}

fn webhook_media(a: &Attachment) -> Value {
    match &a.content {
        Content::Loaded { content_type, bytes, .. } => json!({
            "url": a.url,
            "content_type": content_type,
            "size": bytes.len(),
            "data": STANDARD.encode(bytes),
        }),
        Content::Skipped(_) => json!({
            "url": a.url,
            "content_type": a.declared_type,
            "skipped": a.skip_line().unwrap_or_default(),
        }),
    }
}

/// `{"reply": "...", "media": ["https://..."]?}` is a reply (media alone
/// too); `{"reply": null}`, no `reply` or an empty body is none.
pub(crate) fn webhook_reply(bytes: &[u8]) -> Result<Option<Answer>, ChatError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let answer: Value =
        serde_json::from_slice(bytes).map_err(|e| ChatError::BadAnswer(third_party(&e.to_string(), 200)))?;
    let bad = |answer: &Value| {
        ChatError::BadAnswer(format!(
            "expected {{\"reply\": string|null, \"media\"?: [string]}}, got {}",
            third_party(&answer.to_string(), 80)
        ))
    };
    let media = match answer.get("media") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items
            .iter()
            .map(|m| m.as_str().map(|s| s.trim().to_owned()))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| bad(&answer))?,
        Some(_) => return Err(bad(&answer)),
    };
    let text = match answer.get("reply") {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Null) | None if answer.is_object() => String::new(),
        _ => return Err(bad(&answer)),
    };
    Ok((!text.is_empty() || !media.is_empty()).then_some(Answer { text, media, usage: None }))
}

/// The Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")), the key being the base64 after `whsec_`
/// (else the secret's raw bytes).
pub fn sign_webhook(secret: &SecretString, id: &str, timestamp: i64, body: &[u8]) -> String {
    let secret = secret.expose_secret();
    let key = secret.strip_prefix("whsec_").and_then(|b| STANDARD.decode(b).ok()).unwrap_or_else(|| secret.into());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use smsgate_shared::domain::{ChannelId, MessageSid};

    use super::*;

    fn inbound(body: &str, media: Vec<Media>) -> Inbound {
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
    fn openai_request_has_system_prompt_history_and_image_parts() {
        let media = vec![
            Media { url: "https://m/1".into(), content_type: Some("image/jpeg".into()) },
            Media { url: "https://m/2".into(), content_type: Some("audio/amr".into()) },
        ];
        let i = inbound("look", media.clone());
        let history = vec![
            Turn { role: Role::User, body: "hi".into(), media, at: OffsetDateTime::UNIX_EPOCH },
            Turn { role: Role::Assistant, body: "hello".into(), media: vec![], at: OffsetDateTime::UNIX_EPOCH },
        ];
        let media_ref = smsgate_shared::media::MediaRef { url: "https://m/1".into(), media_sid: "ME1".into() };
        let attachments = vec![
            Attachment {
                index: 0,
                url: "https://m/1".into(),
                declared_type: Some("image/jpeg".into()),
                content: Content::Loaded {
                    content_type: "image/jpeg".into(),
                    bytes: bytes::Bytes::from_static(b"jpg"),
                    fetched_bytes: 3,
                    media: media_ref,
                },
            },
            Attachment {
                index: 1,
                url: "https://m/2".into(),
                declared_type: Some("audio/amr".into()),
                content: Content::Skipped(crate::media::Skip::Refused(404)),
            },
        ];
        let req = ChatRequest { inbound: &i, history: &history, attachments: &attachments, tools: None };
        let body = openai_body("m", Some("be brief"), 50, Some(0.5), &req);
        let body = serde_json::to_value(&body).unwrap();
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(
            msgs[1],
            json!({"role": "user", "content": "hi\n[a photo sent earlier]\n[an attachment (audio/amr) sent earlier]"}),
            "earlier media is named, never linked"
        );
        assert_eq!(msgs[2], json!({"role": "assistant", "content": "hello"}));
        let parts = msgs[3]["content"].as_array().unwrap();
        assert_eq!(parts[0]["text"], "look\n[an attachment (audio/amr) could not be loaded]");
        assert_eq!(parts[1], json!({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,anBn"}}));
        assert_eq!(parts.len(), 2);
        assert!(!body.to_string().contains("https://m/"), "no Twilio URL reaches the model");
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(body["temperature"], 0.5);
    }

    #[test]
    fn an_agent_gets_fetched_media_inline_and_skipped_media_with_the_reason() {
        let i = inbound("two", vec![]);
        let media_ref = smsgate_shared::media::MediaRef { url: "https://m/1".into(), media_sid: "ME1".into() };
        let attachments = vec![
            Attachment {
                index: 0,
                url: "https://m/1".into(),
                declared_type: Some("text/vcard".into()),
                content: Content::Loaded {
                    content_type: "text/vcard".into(),
                    bytes: bytes::Bytes::from_static(b"BEGIN:VCARD"),
                    fetched_bytes: 11,
                    media: media_ref,
                },
            },
            Attachment {
                index: 1,
                url: "https://evil.example/x".into(),
                declared_type: Some("image/png".into()),
                content: Content::Skipped(crate::media::Skip::NotTwilio("another host")),
            },
        ];
        let body = webhook_body(&ChatRequest { inbound: &i, history: &[], attachments: &attachments, tools: None });
        assert_eq!(
            body["media"],
            json!([
                {"url": "https://m/1", "content_type": "text/vcard", "size": 11, "data": "QkVHSU46VkNBUkQ="},
                {"url": "https://evil.example/x", "content_type": "image/png",
                 "skipped": "MediaUrl1 (image/png): never requested: not this message's Twilio media (another host)"}
            ])
        );
    }

    #[test]
    fn openai_answer_is_read_from_the_first_choice() {
        let ok = br#"{"id": "c1", "choices": [{"index": 0, "message": {"role": "assistant", "content": " Hi! "}}]}"#;
        assert_eq!(openai_reply(ok).unwrap().as_deref(), Some("Hi!"));
        assert_eq!(openai_reply(br#"{"choices": [{"message": {"content": null}}]}"#).unwrap(), None);
        assert_eq!(openai_reply(br#"{"choices": [{"message": {}}]}"#).unwrap(), None);
        assert_eq!(openai_reply(br#"{"error": "x"}"#).unwrap_err().kind(), ErrorKind::Permanent);
        assert_eq!(openai_reply(br#"{"choices": []}"#).unwrap_err().kind(), ErrorKind::Permanent);
        assert_eq!(
            openai_reply(br#"{"choices": [{"message": {"content": [1]}}]}"#).unwrap_err().kind(),
            ErrorKind::Permanent
        );
        assert_eq!(openai_reply(b"not json").unwrap_err().kind(), ErrorKind::Permanent);
    }

    #[test]
    fn webhook_answers_reply_null_and_garbage() {
        assert_eq!(webhook_reply(br#"{"reply": "yes"}"#).unwrap(), Some(Answer::text("yes")));
        assert_eq!(webhook_reply(br#"{"reply": null}"#).unwrap(), None);
        assert_eq!(webhook_reply(b"").unwrap(), None);
        assert!(webhook_reply(b"<html>").is_err());
        assert!(webhook_reply(br#"{"reply": 3}"#).is_err());
        let with_media = webhook_reply(br#"{"reply": "see", "media": ["https://x.example.com/a.png"]}"#).unwrap();
        assert_eq!(
            with_media,
            Some(Answer { text: "see".into(), media: vec!["https://x.example.com/a.png".into()], usage: None })
        );
        let media_only = webhook_reply(br#"{"reply": null, "media": ["https://x.example.com/a.png"]}"#).unwrap();
        assert_eq!(media_only.map(|a| a.text), Some(String::new()));
        assert!(webhook_reply(br#"{"reply": "x", "media": "https://x"}"#).is_err());
        assert!(webhook_reply(br#"{"reply": "x", "media": [1]}"#).is_err());
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

    #[test]
    fn standard_webhooks_signature_matches_the_reference_vector() {
        // The test vector of the Standard Webhooks reference libraries.
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = sign_webhook(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
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
