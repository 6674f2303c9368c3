//! A channel's inbound-SMS webhook as the operator sees it: its URLs (the
//! whole ones for pasting into Twilio, or with the path token cut for
//! showing), and the signed request `smsgate simulate` posts. One piece of
//! code for both ways the CLI gets them: from the channel file it reads,
//! or from the admin API for a channel connected at run time (whose auth
//! token only the services hold).

use rand::Rng;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::{Channel, WEBHOOK_PATH};
use crate::domain::{E164, MessageSid};
use crate::signature;

/// Every URL Twilio needs for a channel (None without a public base URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookUrls {
    pub channel_id: String,
    /// The number's "A message comes in".
    pub webhook_url: Option<String>,
    /// Where the sender has Twilio post delivery statuses.
    pub status_url: Option<String>,
    /// The number's "A call comes in".
    pub voice_url: Option<String>,
    /// The number's "Call status changes".
    pub voice_status_url: Option<String>,
    pub voice_enabled: bool,
}

impl WebhookUrls {
    pub fn of(c: &Channel) -> Self {
        Self {
            channel_id: c.id.to_string(),
            webhook_url: c.webhook_url(),
            status_url: c.status_url(),
            voice_url: c.voice_url(),
            voice_status_url: c.voice_route(crate::voice::path::STATUS),
            voice_enabled: c.voice.enabled,
        }
    }
}

/// A webhook URL with its path token cut to four characters, so what is
/// shown (a status answer, an error) never carries a whole token.
pub fn elide_token(url: &str) -> String {
    match url.find(WEBHOOK_PATH) {
        Some(at) => {
            let start = at + WEBHOOK_PATH.len();
            let token: String = url[start..].chars().take_while(|c| !matches!(c, '?' | '#' | '/')).collect();
            let rest = &url[start + token.len()..];
            let kept: String = token.chars().take(4).collect();
            format!("{}{kept}…{rest}", &url[..start])
        }
        None => url.to_owned(),
    }
}

/// A MessageSid as Twilio makes them: `SM` and 32 hex digits.
pub fn random_message_sid() -> String {
    let mut rng = rand::rng();
    let mut sid = String::from("SM");
    for _ in 0..32 {
        sid.push(char::from(b"0123456789abcdef"[rng.random_range(0..16)]));
    }
    sid
}

/// What to simulate: an SMS from `from` to the channel's number (or `to`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Simulation {
    pub from: E164,
    pub body: String,
    /// The channel's number texted (default: its from number).
    #[serde(default)]
    pub to: Option<E164>,
    /// Default: a fresh random one.
    #[serde(default)]
    pub message_sid: Option<MessageSid>,
    #[serde(default)]
    pub media_urls: Vec<String>,
    /// Where it is posted: a base (`http://127.0.0.1:8000`, a tunnel's
    /// URL) or a whole webhook URL.
    pub url: String,
}

/// The request Twilio would send, signed with the channel's auth token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedWebhook {
    pub channel_id: String,
    pub message_sid: String,
    pub from: String,
    pub to: String,
    /// Where to post it (holds the path token).
    pub post_url: String,
    /// The form, in the order Twilio sends it.
    pub params: Vec<(String, String)>,
    /// The `X-Twilio-Signature` header.
    pub signature: String,
}

/// Why a webhook could not be simulated for a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel {0} sends through a messaging service: name the number texted with --to")]
pub struct NoNumberToText(pub String);

/// Builds and signs the inbound-SMS webhook Twilio would send for `s`.
pub fn simulate(c: &Channel, s: Simulation) -> Result<SignedWebhook, NoNumberToText> {
    let to = match (s.to, &c.from_number) {
        (Some(t), _) => t,
        (None, Some(n)) => n.clone(),
        (None, None) => return Err(NoNumberToText(c.id.to_string())),
    };
    let sid = s.message_sid.map_or_else(random_message_sid, |m| m.to_string());
    let path = format!("{WEBHOOK_PATH}{}", c.path_token.expose_secret());
    let url = s.url.trim().trim_end_matches('/');
    let post_url = if url.contains("/api/") { url.to_owned() } else { format!("{url}{path}") };
    // Twilio signs the URL it was told to call, i.e. the public one; ingress
    // checks against the same. Without a public base URL ingress rebuilds
    // the URL from Host, i.e. the one posted to.
    let signed_url = c.webhook_url().unwrap_or_else(|| post_url.clone());
    let mut params = signature::inbound_sms_params(
        c.account_sid.as_str(),
        to.as_str(),
        &sid,
        s.from.as_str(),
        &s.body,
        s.media_urls.len(),
    );
    if let Some(ms) = &c.messaging_service_sid {
        params.push(("MessagingServiceSid".into(), ms.clone()));
    }
    for (i, u) in s.media_urls.iter().enumerate() {
        params.push((format!("MediaUrl{i}"), u.clone()));
        params.push((format!("MediaContentType{i}"), "image/jpeg".into()));
    }
    let signature = signature::sign(c.auth_token.expose_secret(), &signed_url, &params);
    Ok(SignedWebhook {
        channel_id: c.id.to_string(),
        message_sid: sid,
        from: s.from.to_string(),
        to: to.to_string(),
        post_url,
        params,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_elided_in_shown_urls() {
        assert_eq!(
            elide_token("https://x/api/channels/sms/twilio/webhook/abcdefgh#rc=3"),
            "https://x/api/channels/sms/twilio/webhook/abcd…#rc=3"
        );
        assert_eq!(elide_token("https://old.example/sms"), "https://old.example/sms");
    }
}
