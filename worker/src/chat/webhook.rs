//! The `webhook` kind: the agent's request (the message, its media inline,
//! the history), its Standard Webhooks signature, and what it reads of the
//! agent's answer.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use smsgate_shared::redact::third_party;

use super::{Answer, ChatError, ChatRequest};
use crate::media::{Attachment, Content};

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
    use super::*;
    use crate::chat::tests::inbound;

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
    fn standard_webhooks_signature_matches_the_reference_vector() {
        // The test vector of the Standard Webhooks reference libraries.
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = sign_webhook(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
