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
    /// ConversationRelay: Twilio does speech-to-text and text-to-speech over
    /// one WebSocket per call, the model's tokens are streamed as they come.
    Relay,
}

impl VoiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Voicemail => "voicemail",
            Self::Forward => "forward",
            Self::Relay => "relay",
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
    /// Where `forward` mode dials, and where a handoff goes.
    pub forward_to: Option<E164>,
    /// The ConversationRelay keys (used when `mode` is `relay`).
    pub relay: RelayConfig,
}

/// `interruptible`: what may interrupt the agent's speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interruptible {
    None,
    Dtmf,
    Speech,
    #[default]
    Any,
}

impl Interruptible {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Dtmf => "dtmf",
            Self::Speech => "speech",
            Self::Any => "any",
        }
    }
}

/// The `relay` mode's keys of `voice`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// `ttsProvider` (`Google`, `Amazon`, `ElevenLabs`); Twilio's default when unset.
    pub tts_provider: Option<String>,
    /// `transcriptionProvider` (`Google`, `Deepgram`); Twilio's default when unset.
    pub transcription_provider: Option<String>,
    /// `speechModel`.
    pub speech_model: Option<String>,
    /// `hints`: words the transcription should expect.
    pub hints: Vec<String>,
    pub interruptible: Interruptible,
    /// `dtmfDetection`: key presses reach us (`0` hands the call to a person).
    pub dtmf: bool,
    /// Spoken once when the model's first token is late.
    pub filler: String,
    pub first_token_timeout_ms: u64,
    pub turn_timeout_ms: u64,
}

pub const DEFAULT_FILLER: &str = "One moment.";
pub const DEFAULT_FIRST_TOKEN_TIMEOUT_MS: u64 = 4000;
pub const DEFAULT_TURN_TIMEOUT_MS: u64 = 15000;

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            tts_provider: None,
            transcription_provider: None,
            speech_model: None,
            hints: Vec::new(),
            interruptible: Interruptible::Any,
            dtmf: true,
            filler: DEFAULT_FILLER.to_owned(),
            first_token_timeout_ms: DEFAULT_FIRST_TOKEN_TIMEOUT_MS,
            turn_timeout_ms: DEFAULT_TURN_TIMEOUT_MS,
        }
    }
}

/// One piece of a relay turn's answer on the core subject
/// `P.voice.tokens.<CallSid>.<n>` (worker → ingress), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
pub struct RelayChunk {
    /// Text to speak (already flattened for speech); may be empty.
    #[serde(default)]
    pub token: String,
    /// The turn's answer is complete.
    #[serde(default)]
    pub last: bool,
    /// Hand the call to a person (`forward_to`): the reason, sent to Twilio
    /// as `end`'s `handoffData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<String>,
}

/// A relay turn cancelled by ingress on `P.voice.cancel.<CallSid>.<n>`
/// (an `interrupt`, a newer prompt, the socket gone, the turn given up).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
pub struct RelayCancel {
    /// What the caller heard (`utteranceUntilInterrupt`); `None`: what was
    /// streamed so far.
    #[serde(default)]
    pub heard: Option<String>,
    /// Why: `interrupt`, `superseded`, `hangup`, `timeout`.
    #[serde(default)]
    pub reason: String,
}

/// The most turns of a relay session; a session that fails over to Gather
/// mode goes on from turn `MAX_RELAY_TURNS + 1`, so turn ids never collide.
pub const MAX_RELAY_TURNS: u32 = 50;
/// Spoken by ingress when a relay turn got no answer within `turn_timeout_ms`.
pub const RELAY_FALLBACK: &str = "Sorry, that is taking too long. Could you say that again?";
/// Said by the action route when the relay session failed and the call goes
/// on in Gather mode.
pub const RELAY_FAILED: &str = "Sorry, we had a problem. Please go on.";
/// `handoffData` reason when the caller pressed 0.
pub const HANDOFF_DTMF: &str = "the caller pressed 0";
/// `handoffData` reason when an operator took the conversation over.
pub const HANDOFF_TAKEOVER: &str = "human takeover";

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
            relay: RelayConfig::default(),
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
    #[serde(default)]
    tts_provider: Option<String>,
    #[serde(default)]
    transcription_provider: Option<String>,
    #[serde(default)]
    speech_model: Option<String>,
    #[serde(default)]
    hints: Option<Vec<String>>,
    #[serde(default)]
    interruptible: Interruptible,
    #[serde(default)]
    dtmf: Option<bool>,
    #[serde(default)]
    filler: Option<String>,
    #[serde(default)]
    first_token_timeout_ms: Option<u64>,
    #[serde(default)]
    turn_timeout_ms: Option<u64>,
}

/// Parses `config.voice`; each problem is reported with its key
/// (`config.voice.forward_to`).
pub fn parse(value: Option<Value>, fail: &mut dyn FnMut(&str, String)) -> VoiceConfig {
    let raw: RawVoice = crate::config::section(value, "config.voice", fail);
    let relay = relay(&raw, fail);
    let greeting = raw.greeting.filter(|g| !g.trim().is_empty()).unwrap_or_else(|| DEFAULT_GREETING.to_owned());
    if greeting.chars().count() > 1000 {
        fail("config.voice.greeting", "must be at most 1000 characters".to_owned());
    }
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
    VoiceConfig { enabled: raw.enabled, mode: raw.mode, greeting, voice, language, forward_to, relay }
}

/// A Twilio voice, provider, model or language name.
fn name_like(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn relay(raw: &RawVoice, fail: &mut dyn FnMut(&str, String)) -> RelayConfig {
    let mut name = |key: &str, value: &Option<String>| {
        let v = value.as_deref().map(str::trim).filter(|v| !v.is_empty())?;
        if name_like(v) {
            Some(v.to_owned())
        } else {
            fail(&format!("config.voice.{key}"), format!("{v:?} is not a provider or model name"));
            None
        }
    };
    let tts_provider = name("tts_provider", &raw.tts_provider);
    let transcription_provider = name("transcription_provider", &raw.transcription_provider);
    let speech_model = name("speech_model", &raw.speech_model);
    let hints: Vec<String> =
        raw.hints.iter().flatten().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect();
    if hints.len() > 100 || hints.iter().any(|h| h.contains(',') || h.chars().count() > 100) {
        fail("config.voice.hints", "at most 100 hints, each at most 100 characters and without commas".to_owned());
    }
    let filler = raw.filler.as_deref().map(str::trim).unwrap_or(DEFAULT_FILLER).to_owned();
    if filler.chars().count() > 200 {
        fail("config.voice.filler", "must be at most 200 characters".to_owned());
    }
    let first_token_timeout_ms = raw.first_token_timeout_ms.unwrap_or(DEFAULT_FIRST_TOKEN_TIMEOUT_MS);
    let turn_timeout_ms = raw.turn_timeout_ms.unwrap_or(DEFAULT_TURN_TIMEOUT_MS);
    if !(100..=60_000).contains(&first_token_timeout_ms) {
        fail("config.voice.first_token_timeout_ms", "must be between 100 and 60000".to_owned());
    }
    if !(200..=120_000).contains(&turn_timeout_ms) || turn_timeout_ms <= first_token_timeout_ms {
        fail(
            "config.voice.turn_timeout_ms",
            "must be between 200 and 120000 and longer than first_token_timeout_ms".to_owned(),
        );
    }
    RelayConfig {
        tts_provider,
        transcription_provider,
        speech_model,
        hints,
        interruptible: raw.interruptible,
        dtmf: raw.dtmf.unwrap_or(true),
        filler,
        first_token_timeout_ms,
        turn_timeout_ms,
    }
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
    /// The ConversationRelay WebSocket (contract; `GET`, upgraded).
    pub const RELAY: &str = "/api/channels/voice/twilio/relay/";
    /// `<Connect>`'s action: the relay session ended (handoff, failure, hang-up).
    pub const RELAYED: &str = "/api/channels/voice/twilio/relayed/";
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

    #[test]
    fn relay_keys_have_the_contracts_defaults_and_name_their_key() {
        let (v, keys) = parse_json(r#"{"enabled": true, "mode": "relay"}"#);
        assert!(keys.is_empty());
        assert_eq!(v.mode, VoiceMode::Relay);
        assert_eq!(v.relay, RelayConfig::default());
        assert_eq!(v.relay.interruptible, Interruptible::Any);
        assert!(v.relay.dtmf);
        assert_eq!((v.relay.first_token_timeout_ms, v.relay.turn_timeout_ms), (4000, 15000));
        assert_eq!(v.relay.filler, "One moment.");
        let (v, keys) = parse_json(
            r#"{"mode": "relay", "tts_provider": "Google", "transcription_provider": "Deepgram",
                "speech_model": "nova-3-general", "hints": ["smsgate", " Ada "], "interruptible": "speech",
                "dtmf": false, "filler": "Hm.", "first_token_timeout_ms": 500, "turn_timeout_ms": 3000}"#,
        );
        assert!(keys.is_empty(), "{keys:?}");
        assert_eq!(v.relay.hints, ["smsgate", "Ada"]);
        assert_eq!(v.relay.tts_provider.as_deref(), Some("Google"));
        assert!(!v.relay.dtmf);
        assert_eq!(parse_json(r#"{"tts_provider": "a b"}"#).1, ["config.voice.tts_provider"]);
        assert_eq!(parse_json(r#"{"hints": ["a,b"]}"#).1, ["config.voice.hints"]);
        assert_eq!(parse_json(r#"{"interruptible": "never"}"#).1, ["config.voice.interruptible"]);
        assert_eq!(parse_json(r#"{"first_token_timeout_ms": 5}"#).1, ["config.voice.first_token_timeout_ms"]);
        assert_eq!(
            parse_json(r#"{"first_token_timeout_ms": 4000, "turn_timeout_ms": 3000}"#).1,
            ["config.voice.turn_timeout_ms"]
        );
    }
}
