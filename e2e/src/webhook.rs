//! Twilio-shaped inbound webhooks, signed as Twilio signs them.

use smsgate_shared::signature;

/// A signed webhook ready to post.
#[derive(Debug, Clone)]
pub struct SignedWebhook {
    pub message_sid: String,
    pub body: String,
    pub signature: String,
}

/// What a webhook is signed for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL Twilio is configured with (what the signature covers).
    pub public_url: String,
    pub auth_token: String,
    pub account_sid: String,
    /// The channel's number (`To`).
    pub to: String,
}

/// A MessageSid like Twilio's: `SM` and 32 hex digits, unique per `(run, i)`.
pub fn message_sid(run: u64, i: u64) -> String {
    format!("SM{run:016x}{i:016x}")
}

/// The `i`-th sender of `k`: distinct E.164 numbers.
pub fn sender_number(i: u64) -> String {
    format!("+1555{:07}", i % 10_000_000)
}

/// The parameters of an inbound SMS, in the order Twilio sends them.
pub fn inbound_params(target: &Target, sid: &str, from: &str, body: &str) -> Vec<(String, String)> {
    signature::inbound_sms_params(&target.account_sid, &target.to, sid, from, body, 0)
}

/// Builds and signs one webhook.
pub fn signed(target: &Target, sid: &str, from: &str, text: &str) -> SignedWebhook {
    signed_with_media(target, sid, from, text, &[])
}

/// Builds and signs one MMS webhook: `NumMedia`, then `MediaContentTypeN`
/// and `MediaUrlN` for each `(url, content type)`, as Twilio posts them.
pub fn signed_with_media(
    target: &Target,
    sid: &str,
    from: &str,
    text: &str,
    media: &[(String, String)],
) -> SignedWebhook {
    let mut params = signature::inbound_sms_params(&target.account_sid, &target.to, sid, from, text, media.len());
    for (n, (url, content_type)) in media.iter().enumerate() {
        params.push((format!("MediaContentType{n}"), content_type.clone()));
        params.push((format!("MediaUrl{n}"), url.clone()));
    }
    let signature = signature::sign(&target.auth_token, &target.public_url, &params);
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        body.append_pair(k, v);
    }
    SignedWebhook { message_sid: sid.to_owned(), body: body.finish(), signature }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_webhooks_validate_against_the_public_url() {
        let target = Target {
            public_url: "https://sms.example.com/api/channels/sms/twilio/webhook/t".to_owned(),
            auth_token: "tok".to_owned(),
            account_sid: "AC0123456789abcdef0123456789abcdef".to_owned(),
            to: "+15550001111".to_owned(),
        };
        let w = signed(&target, &message_sid(1, 2), &sender_number(3), "hi & bye");
        let params: Vec<(String, String)> = form_urlencoded::parse(w.body.as_bytes()).into_owned().collect();
        assert!(signature::validate("tok", &target.public_url, &params, &w.signature));
        assert_eq!(w.message_sid.len(), 34);
    }
}
