//! Voice calls: the channel's `voice` key ([`VoiceConfig`]) and the routes
//! under `/api/channels/voice/twilio/` that the TwiML names
//! (docs/ARCHITECTURE.md §8).

use serde::Deserialize;
use serde_json::Value;

use crate::domain::E164;

/// What an incoming call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoiceMode {
    /// The agent answers: speech in, the chat pipeline's reply spoken.
    #[default]
    Agent,
    /// The greeting, then a recording whose transcription is answered by SMS.
    Voicemail,
    /// The call is dialled through to `forward_to`.
    Forward,
}

impl VoiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Voicemail => "voicemail",
            Self::Forward => "forward",
        }
    }
}

/// A channel's `voice` key, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceConfig {
    pub enabled: bool,
    pub mode: VoiceMode,
    /// Said when the call is answered.
    pub greeting: String,
    /// A Twilio `<Say>` voice (`Polly.Joanna`, `alice`); Twilio's default when unset.
    pub voice: Option<String>,
    pub language: String,
    /// Where `forward` mode dials.
    pub forward_to: Option<E164>,
}

pub const DEFAULT_GREETING: &str = "Hello, you have reached the assistant. How can I help?";
pub const DEFAULT_LANGUAGE: &str = "en-US";
/// Said before a voicemail's beep (voicemail mode, and when the chat backend is down).
pub const VOICEMAIL_PROMPT: &str = "Please leave a message after the tone, and we will answer you by text message.";
/// Said when a voicemail was recorded.
pub const VOICEMAIL_THANKS: &str = "Thank you. Goodbye.";
/// Said instead of the agent while an operator has the conversation.
pub const OPERATOR_WILL_ANSWER: &str = "A person will get back to you shortly.";
/// Said when the caller says nothing, or goodbye.
pub const GOODBYE: &str = "Goodbye.";
/// Said when the reply did not come in time.
pub const TOO_SLOW: &str = "Sorry, that is taking too long.";

impl Default for VoiceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: VoiceMode::Agent,
            greeting: DEFAULT_GREETING.to_owned(),
            voice: None,
            language: DEFAULT_LANGUAGE.to_owned(),
            forward_to: None,
        }
    }
}

impl VoiceConfig {
    pub fn speech(&self) -> crate::twiml::Speech<'_> {
        crate::twiml::Speech { voice: self.voice.as_deref(), language: &self.language }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVoice {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    mode: VoiceMode,
    #[serde(default)]
    greeting: Option<String>,
    #[serde(default)]
    voice: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    forward_to: Option<String>,
}

/// Parses `config.voice`; each problem is reported with its key
/// (`config.voice.forward_to`).
pub fn parse(value: Option<Value>, fail: &mut dyn FnMut(&str, String)) -> VoiceConfig {
    let raw: RawVoice = crate::config::section(value, "config.voice", fail);
    let greeting = raw.greeting.filter(|g| !g.trim().is_empty()).unwrap_or_else(|| DEFAULT_GREETING.to_owned());
    if greeting.chars().count() > 1000 {
        fail("config.voice.greeting", "must be at most 1000 characters".to_owned());
    }
    let name_like = |s: &str| {
        (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let voice = raw.voice.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if let Some(v) = &voice
        && !name_like(v)
    {
        fail("config.voice.voice", format!("{v:?} is not a Twilio voice name (e.g. \"Polly.Joanna\", \"alice\")"));
    }
    let language = raw.language.map(|l| l.trim().to_owned()).unwrap_or_else(|| DEFAULT_LANGUAGE.to_owned());
    if !name_like(&language) || !language.as_bytes()[0].is_ascii_alphabetic() {
        fail("config.voice.language", format!("{language:?} is not a language tag (e.g. \"en-US\")"));
    }
    let forward_to = match raw.forward_to.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(n) => E164::parse(n).map_err(|e| fail("config.voice.forward_to", e.reason)).ok(),
        None => None,
    };
    if raw.mode == VoiceMode::Forward && forward_to.is_none() && raw.forward_to.is_none() {
        fail("config.voice.forward_to", "is required when mode is \"forward\"".to_owned());
    }
    VoiceConfig { enabled: raw.enabled, mode: raw.mode, greeting, voice, language, forward_to }
}

/// The voice routes, each followed by the channel's path token.
pub mod path {
    /// The number's "A call comes in" webhook (contract).
    pub const CALL: &str = "/api/channels/voice/twilio/call/";
    /// `<Gather>`'s action: the caller's words of turn `?n=`.
    pub const TURN: &str = "/api/channels/voice/twilio/turn/";
    /// `<Redirect>` target while turn `?n=` waits for its reply in `P_calls`.
    pub const REPLY: &str = "/api/channels/voice/twilio/reply/";
    /// Call status callbacks (outbound calls' `StatusCallback`, and the
    /// number's "Call status changes").
    pub const STATUS: &str = "/api/channels/voice/twilio/status/";
    /// `<Record>`'s action: the voicemail is recorded.
    pub const RECORDED: &str = "/api/channels/voice/twilio/recorded/";
    /// `<Record>`'s `transcribeCallback`: the voicemail as text.
    pub const TRANSCRIPTION: &str = "/api/channels/voice/twilio/transcription/";
    /// `<Dial>`'s action: the forwarded call ended.
    pub const DIALED: &str = "/api/channels/voice/twilio/dialed/";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(text: &str) -> (VoiceConfig, Vec<String>) {
        let mut keys = Vec::new();
        let v = parse(Some(serde_json::from_str(text).unwrap()), &mut |k, _| keys.push(k.to_owned()));
        (v, keys)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let v = parse(None, &mut |k, m| panic!("{k}: {m}"));
        assert_eq!(v, VoiceConfig::default());
        assert!(!v.enabled);
        assert_eq!(v.mode, VoiceMode::Agent);
        assert_eq!(v.language, "en-US");
        let (v, keys) = parse_json(r#"{"enabled": true}"#);
        assert!(v.enabled && keys.is_empty());
    }

    #[test]
    fn problems_name_their_key() {
        assert_eq!(parse_json(r#"{"mode": "forward"}"#).1, ["config.voice.forward_to"]);
        assert_eq!(parse_json(r#"{"mode": "forward", "forward_to": "555"}"#).1, ["config.voice.forward_to"]);
        assert_eq!(parse_json(r#"{"voice": "a b<c>"}"#).1, ["config.voice.voice"]);
        assert_eq!(parse_json(r#"{"language": "-x"}"#).1, ["config.voice.language"]);
        assert_eq!(parse_json(r#"{"mode": "sing"}"#).1, ["config.voice.mode"]);
        assert_eq!(parse_json(r#"{"greting": "hi"}"#).1, ["config.voice.greting"]);
        let (v, keys) = parse_json(r#"{"enabled": true, "mode": "forward", "forward_to": "+14155550100"}"#);
        assert!(keys.is_empty());
        assert_eq!(v.forward_to.unwrap().as_str(), "+14155550100");
    }
}
