//! The `openai` kind: the chat completions request smsgate sends (system
//! prompt, history with earlier media named in words, the current message's
//! pictures as `data:` URLs) and what it reads of the answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use smsgate_shared::redact::third_party;

use super::{ChatError, ChatRequest, Role};
use crate::media::{Attachment, describe_earlier};
use smsgate_shared::envelope::Media;

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

/// The answer's `usage` ({`prompt_tokens`, `completion_tokens`}), if any.
pub(super) fn openai_usage(answer: &[u8]) -> Option<smsgate_shared::cost::Usage> {
    #[derive(Deserialize)]
    struct WithUsage {
        usage: Option<smsgate_shared::cost::Usage>,
    }
    serde_json::from_slice::<WithUsage>(answer).ok().and_then(|w| w.usage)
}

/// `choices[0].message.content`; an empty or missing content is "no reply".
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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::chat::tests::inbound;
    use crate::chat::{ErrorKind, Turn};
    use crate::media::Content;

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
}
