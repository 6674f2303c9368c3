//! Twilio's REST error document, as both callers of Twilio's API read it
//! (the sender's Messages and Calls, the admin side's Account and
//! IncomingPhoneNumbers): `{"code", "message", "more_info", "status"}`, or
//! the RFC 9457 form with `title` that twilio-python also reads.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorDocument {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub more_info: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

impl ErrorDocument {
    /// The document in an error answer's body, if it is one.
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// What Twilio says went wrong, redacted for logs and history (Twilio's
    /// texts quote phone numbers), at most `max` characters; `fallback`
    /// when the body says nothing.
    pub fn message_or(doc: Option<&Self>, fallback: &str, max: usize) -> String {
        let text =
            doc.and_then(|d| d.message.clone().or_else(|| d.title.clone())).unwrap_or_else(|| fallback.to_owned());
        crate::redact::third_party(&text, max)
    }
}
