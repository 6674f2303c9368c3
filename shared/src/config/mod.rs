//! Configuration: the process environment ([`Settings`]) and the channel JSON
//! file ([`Channel`]), read once at start into typed, validated structs.
//!
//! # Layout
//!
//! - `settings`: [`Settings`], the `SMSGATE_*` variables.
//! - `channel`: the channel model ([`Channel`] and its parts: chat, limits,
//!   media, voice, delivery), what the services use.
//! - `api_base`: the checks of `twilio_api_base`, where credentials go.
//! - `load`: reading channel JSON (a file, the Twilio variables, a channel
//!   connected at run time): `${VAR}` expansion, unknown keys with "did you
//!   mean", serde errors located by `serde_path_to_error`, and validation
//!   into [`Channel`], every problem a [`Problem`] naming its key.
//! - this file: [`Problem`], [`ConfigError`], [`Config`] (both together).
//!
//! Nothing here reads the environment by itself: callers pass a lookup
//! function (`std::env::var` in `main`, a map in tests), so tests never touch
//! the process environment.

use std::fmt;

mod api_base;
mod channel;
mod load;
mod settings;

pub use api_base::{TWILIO_API_BASE, check_api_base, is_twilio_host};
pub use channel::*;
pub use load::*;
pub use settings::*;

/// The exit status for a bad configuration (`EX_CONFIG` is 78; smsgate's
/// contract uses 64, `EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// A way to read a variable: `|k| std::env::var(k).ok()` in main.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One problem in the configuration, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, or `environment`.
    pub source: String,
    /// The channel id (or its index in the file when it has no usable id).
    pub channel: Option<String>,
    /// The key, dotted (`config.rate_limit.per_minute`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.source)?;
        if let Some(c) = &self.channel {
            write!(f, "channel {c}: ")?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, so an operator fixes them in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(source: &str, channel: Option<&str>, key: &str, message: impl Into<String>) -> Self {
        Self(vec![Problem {
            source: source.to_owned(),
            channel: channel.map(str::to_owned),
            key: key.to_owned(),
            message: message.into(),
        }])
    }
}

/// Everything a service reads at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub channels: Vec<Channel>,
}

impl Config {
    pub fn from_lookup(env: Lookup<'_>) -> Result<Self, ConfigError> {
        let settings = Settings::from_lookup(env)?;
        let channels = load_channels(env, &settings)?;
        Ok(Self { settings, channels })
    }

    /// For `main`: reads the process environment; on a bad configuration
    /// prints every problem and exits with status 64.
    pub fn from_env_or_exit(service: &str) -> Self {
        match Self::from_lookup(&|k| std::env::var(k).ok()) {
            Ok(c) => {
                if std::env::var("SMSGATE_CHANNELS").is_ok_and(|f| !f.trim().is_empty()) {
                    // A channel file: its chats are named.
                } else {
                    tracing::warn!(service, channel_id = "default", "{DEFAULT_CHANNEL_NOTE}");
                }
                for channel in c.channels.iter().filter(|c| !c.unknown_keys.is_empty()) {
                    tracing::warn!(
                        service,
                        channel_id = %channel.id,
                        keys = %channel.unknown_keys.join(", "),
                        "the channel file has keys smsgate does not know; they are ignored"
                    );
                }
                c
            }
            Err(e) => {
                tracing::error!(service, outcome = "bad_config", error = %e, "invalid configuration");
                eprintln!("smsgate-{service}: {e}");
                std::process::exit(EXIT_BAD_CONFIG);
            }
        }
    }
}

/// A fresh random path token (48 URL-safe characters), for `gen-token`.
pub fn generate_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..48).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// A valid channel for unit tests of this crate (the test kit's is for the
/// other crates' tests).
#[cfg(test)]
pub(crate) fn test_channel() -> Channel {
    let text = r#"{"channel_id": "test", "config": {
        "twilio_account_sid": "AC0123456789abcdef0123456789abcdef", "twilio_auth_token": "t",
        "twilio_from_number": "+15551234567", "webhook_path_token": "0123456789abcdef0123456789abcdef",
        "public_base_url": "https://sms.example.com", "chat": {"kind": "echo"}}}"#;
    match parse_channels(text, "test", &|_| None, None) {
        Ok(mut v) => v.remove(0),
        Err(e) => panic!("test channel is invalid: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;
    use crate::domain::E164;

    const SID: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

    fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn channel_json(id: &str, token: &str) -> String {
        format!(
            r#"{{"channel_id": "{id}", "manifest_id": "sms", "enabled": true, "config": {{
                "twilio_account_sid": "{SID}", "twilio_auth_token": "${{TWILIO_AUTH_TOKEN}}",
                "twilio_from_number": "+15551234567", "chat": {{"kind": "echo"}}, "sms_max_len": 480,
                "webhook_path_token": "{token}" }} }}"#
        )
    }

    fn parse(text: &str) -> Result<Vec<Channel>, ConfigError> {
        let env = env_of(&[("TWILIO_AUTH_TOKEN", "secret-token-value")]);
        parse_channels(text, "channels.json", &|k| env.get(k).cloned(), Some("https://sms.example.com"))
    }

    #[test]
    fn loads_all_three_shapes() {
        let one = channel_json("a", TOKEN);
        assert_eq!(parse(&one).unwrap().len(), 1);
        assert_eq!(parse(&format!("[{one}]")).unwrap().len(), 1);
        assert_eq!(parse(&format!(r#"{{"channels": [{one}]}}"#)).unwrap().len(), 1);
    }

    #[test]
    fn applies_defaults_and_expands_variables() {
        let c = parse(&channel_json("a", TOKEN)).unwrap().remove(0);
        assert_eq!(c.auth_token.expose_secret(), "secret-token-value");
        assert_eq!(c.rate_limit, RateLimit { per_minute: 10, burst: 5 });
        assert_eq!(c.max_parts, 4);
        assert!((c.mps - 1.0).abs() < f64::EPSILON);
        assert_eq!(c.api_base, "https://api.twilio.com");
        assert_eq!(c.delivery, Delivery::Twilio);
        assert_eq!(c.chat.kind(), "echo");
        assert!(!c.insecure_skip_signature);
        assert_eq!(
            c.webhook_url().unwrap(),
            format!("https://sms.example.com/api/channels/sms/twilio/webhook/{TOKEN}")
        );
    }

    #[test]
    fn media_settings_have_twilio_defaults_and_are_checked() {
        let c = parse(&channel_json("a", TOKEN)).unwrap().remove(0);
        assert_eq!(c.media, MediaConfig::default());
        assert!(!c.delete_media_after_fetch);
        assert!(c.media.allows("Image/JPEG; charset=x"));
        assert!(c.media.allows("audio/amr"));
        assert!(!c.media.allows("application/x-msdownload"));
        assert!(!c.media.allows("audio"));
        assert!(!c.media.allows("audio/x,evil"));
        assert!(!c.media.allows("audio/a/b"));

        let with = |extra: &str| channel_json("a", TOKEN).replace(r#""sms_max_len": 480"#, extra);
        let c = parse(&with(
            r#""media": {"hosts": ["http://127.0.0.1:9/m/"], "max_edge": 0}, "delete_media_after_fetch": true"#,
        ))
        .unwrap()
        .remove(0);
        assert_eq!(c.media.hosts, ["http://127.0.0.1:9/m/"]);
        assert_eq!(c.media.max_edge, 0);
        assert_eq!(c.media.max_bytes, DEFAULT_MEDIA_MAX_BYTES);
        assert!(c.delete_media_after_fetch);

        let e = parse(&with(
            r#""media": {"hosts": ["ftp://x"], "max_bytes": 0, "max_edge": 10, "content_types": ["Image/*"]}"#,
        ))
        .unwrap_err()
        .to_string();
        for key in
            ["config.media.hosts", "config.media.max_bytes", "config.media.max_edge", "config.media.content_types"]
        {
            assert!(e.contains(key), "{key} in {e}");
        }
        let e = parse(&with(r#""media": {"host": []}"#)).unwrap_err().to_string();
        assert!(e.contains("config.media") && e.contains("host"), "{e}");
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let c = parse(&channel_json("a", TOKEN)).unwrap().remove(0);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret-token-value"));
        assert!(!dbg.contains(TOKEN));
    }

    #[test]
    fn missing_variable_names_it_and_the_key() {
        let err = parse_channels(&channel_json("a", TOKEN), "c.json", &|_| None, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("c.json"), "{text}");
        assert!(text.contains("channel a"), "{text}");
        assert!(text.contains("config.twilio_auth_token"), "{text}");
        assert!(text.contains("TWILIO_AUTH_TOKEN"), "{text}");
    }

    #[test]
    fn short_token_bad_sid_and_bad_numbers_are_all_reported() {
        let text = r#"{"channel_id": "x", "config": {"twilio_account_sid": "AC12", "twilio_auth_token": "t",
               "twilio_from_number": "5551234567", "webhook_path_token": "short",
               "allow_from": ["+15551230000", "nope"]}}"#;
        let err = parse(text).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"config.twilio_account_sid"), "{keys:?}");
        assert!(keys.contains(&"config.webhook_path_token"), "{keys:?}");
        assert!(keys.contains(&"config.twilio_from_number"), "{keys:?}");
        assert!(keys.contains(&"config.allow_from[1]"), "{keys:?}");
    }

    #[test]
    fn duplicate_ids_and_tokens_are_refused() {
        let text = format!("[{}, {}]", channel_json("a", TOKEN), channel_json("a", TOKEN));
        let err = parse(&text).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"channel_id"), "{keys:?}");
        assert!(keys.contains(&"config.webhook_path_token"), "{keys:?}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = parse(r#"{"channel_id": "a", "config": {"twilio_auth_token": "x", "webhook_path_token": "y"}}"#)
            .unwrap_err();
        assert!(err.0[0].key.contains("twilio_account_sid"), "{err}");
        assert_eq!(err.0[0].channel.as_deref(), Some("a"));
    }

    #[test]
    fn chat_kinds_parse_with_defaults() {
        let text = channel_json("a", TOKEN).replace(
            r#""sms_max_len": 480,"#,
            r#""chat": {"kind": "openai", "base_url": "http://localhost:11434/v1", "model": "llama3"},"#,
        );
        let c = parse(&text).unwrap().remove(0);
        match c.chat {
            ChatConfig::Openai { history_turns, timeout_ms, max_tokens, .. } => {
                assert_eq!((history_turns, timeout_ms, max_tokens), (10, 20_000, 300));
            }
            other => panic!("{other:?}"),
        }
        let bad = channel_json("a", TOKEN).replace(r#""sms_max_len": 480,"#, r#""chat": {"kind": "gpt"},"#);
        assert!(parse(&bad).unwrap_err().to_string().contains("chat"));
    }

    #[test]
    fn falls_back_to_twilio_variables() {
        let env = env_of(&[
            ("TWILIO_ACCOUNT_SID", SID),
            ("TWILIO_AUTH_TOKEN", "tok"),
            ("TWILIO_PHONE_NUMBER", "+15551234567"),
            ("SMS_WEBHOOK_PATH_TOKEN", TOKEN),
        ]);
        let lookup = |k: &str| env.get(k).cloned();
        let settings = Settings::from_lookup(&lookup).unwrap();
        // The variables cannot name a chat: the channel answers with a fixed
        // text, never the sender's own words.
        let channels = load_channels(&lookup, &settings).unwrap();
        assert_eq!(channels[0].id.as_str(), "default");
        assert_eq!(channels[0].chat.kind(), "static");
        let none = load_channels(&|_| None, &settings).unwrap_err();
        assert_eq!(none.0.len(), 4);
    }

    #[test]
    fn limits_and_reply_countries_have_safe_defaults() {
        let c = parse(&channel_json("a", TOKEN)).unwrap().remove(0);
        assert_eq!(c.limits, Limits { replies_per_minute: 30, replies_per_day: 1000, usd_per_day: None });
        // The from number's country only.
        assert_eq!(c.reply_countries, ReplyCountries::Codes(vec!["1".to_owned()]));
        assert!(c.reply_countries.admits(&E164::parse("+14155550100").unwrap()));
        assert!(!c.reply_countries.admits(&E164::parse("+447911123456").unwrap()));
    }

    #[test]
    fn bad_limits_and_reply_countries_are_reported_by_key() {
        let with = |extra: &str| channel_json("a", TOKEN).replace(r#""sms_max_len": 480,"#, extra);
        let keys = |extra: &str| -> Vec<String> {
            parse(&with(extra)).map(|_| Vec::new()).unwrap_or_else(|e| e.0.into_iter().map(|p| p.key).collect())
        };
        assert_eq!(keys(r#""limits": {"replies_per_minute": 0},"#), ["config.limits"]);
        assert_eq!(keys(r#""limits": {"replies_per_minute": 50, "replies_per_day": 10},"#), ["config.limits"]);
        assert!(!keys(r#""limits": {"per_hour": 5},"#).is_empty());
        assert_eq!(keys(r#""limits": {"usd_per_day": 0},"#), ["config.limits"]);
        assert!(keys(r#""limits": {"usd_per_day": 2.5},"#).is_empty());
        assert_eq!(
            keys(r#""pricing": {"sms_usd_per_segment": {"default": "cheap"}},"#),
            ["config.pricing.sms_usd_per_segment.default"]
        );
        assert_eq!(keys(r#""pricing": {"model": {"input_usd_per_mtok": 1}},"#), ["config.pricing.model"]);
        let priced =
            parse(&with(r#""pricing": {"sms_usd_per_segment": {"44": 0.04}}, "limits": {"usd_per_day": 2.5},"#));
        let priced = priced.unwrap().remove(0);
        assert_eq!((priced.pricing.sms_by_code.get("44"), priced.limits.usd_per_day), (Some(&0.04), Some(2.5)));
        assert_eq!(keys(r#""reply_countries": [],"#), ["config.reply_countries"]);
        assert_eq!(keys(r#""reply_countries": ["+44", "abc"],"#), ["config.reply_countries"]);
        assert_eq!(keys(r#""reply_countries": ["*", "1"],"#), ["config.reply_countries"]);
        assert!(keys(r#""reply_countries": ["*"],"#).is_empty());
        let c = parse(&with(r#""reply_countries": ["+44", "1"],"#)).unwrap().remove(0);
        assert_eq!(c.reply_countries, ReplyCountries::Codes(vec!["44".to_owned(), "1".to_owned()]));
        let ms = with(r#""twilio_messaging_service_sid": "MG0123456789abcdef0123456789abcdef","#)
            .replace(r#""twilio_from_number": "+15551234567","#, "");
        let err = parse(&ms).unwrap_err();
        assert_eq!(err.0[0].key, "config.reply_countries", "{err}");
    }

    #[test]
    fn a_tiny_mps_is_a_config_error_not_a_panic() {
        for mps in ["1e-300", "0.0000001", "-1", "1e9"] {
            let text = channel_json("a", TOKEN).replace(r#""sms_max_len": 480,"#, &format!(r#""mps": {mps},"#));
            let err = parse(&text).unwrap_err();
            assert_eq!(err.0[0].key, "config.mps", "{mps}: {err}");
        }
        let text = channel_json("a", TOKEN).replace(r#""sms_max_len": 480,"#, r#""mps": 0,"#);
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn twilio_delivery_without_a_chat_is_refused() {
        let no_chat = channel_json("a", TOKEN).replace(r#""chat": {"kind": "echo"},"#, "");
        let err = parse(&no_chat).unwrap_err();
        assert_eq!(err.0[0].key, "config.chat", "{err}");
        // Writing replies to the log costs nothing: echo stays the default there.
        let log = no_chat.replace(r#""sms_max_len": 480,"#, r#""delivery": "log","#);
        assert_eq!(parse(&log).unwrap()[0].chat.kind(), "echo");
    }

    #[test]
    fn settings_defaults_match_the_contract() {
        let s = Settings::from_lookup(&|_| None).unwrap();
        assert_eq!(s.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.nats_prefix, "smsgate");
        assert_eq!(s.ingress_addr.to_string(), "0.0.0.0:8000");
        assert_eq!(s.admin_addr.to_string(), "127.0.0.1:8001");
        assert_eq!(s.worker_addr.to_string(), "127.0.0.1:8002");
        assert_eq!(s.sender_addr.to_string(), "127.0.0.1:8003");
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(Settings::from_lookup(&|k| (k == "SMSGATE_LOG_FORMAT").then(|| "xml".to_owned())).is_err());
        assert_eq!(s.mcp_default_channel, None);
        let mcp = |v: &str| {
            let v = v.to_owned();
            Settings::from_lookup(&move |k| (k == "SMSGATE_MCP_DEFAULT_CHANNEL").then(|| v.clone())).unwrap()
        };
        assert_eq!(mcp(" sms_prod ").mcp_default_channel.as_deref(), Some("sms_prod"));
        assert_eq!(mcp("  ").mcp_default_channel, None);
    }

    #[test]
    fn generated_tokens_are_long_enough() {
        let t = generate_token();
        assert_eq!(t.len(), 48);
        assert_ne!(t, generate_token());
    }

    #[test]
    fn keys_beside_channels_in_the_file_are_reported_too() {
        let text = r#"{"version": 2, "channels": [{"channel_id": "c", "config": {
            "twilio_account_sid": "AC0123456789abcdef0123456789abcdef", "twilio_auth_token": "t",
            "twilio_from_number": "+14155550100", "webhook_path_token": "0123456789abcdef0123456789abcdef",
            "chat": {"kind": "echo"}}}]}"#;
        let channels = parse_channels(text, "test", &|_| None, None).unwrap();
        assert_eq!(channels[0].unknown_keys, ["version (beside \"channels\" at the top of the file)"]);
    }

    #[test]
    fn unknown_keys_are_reported_with_the_nearest_known_one() {
        let text = r#"{"channel_id": "c", "extra_agentos_field": 1, "config": {
            "twilio_account_sid": "AC0123456789abcdef0123456789abcdef", "twilio_auth_token": "t",
            "twilio_from_number": "+14155550100", "webhook_path_token": "0123456789abcdef0123456789abcdef",
            "chat": {"kind": "echo"}, "rate_limt": {"per_minute": 5}, "help_txt": "x", "completely_else": true}}"#;
        let channels = parse_channels(text, "test", &|_| None, None).unwrap();
        assert_eq!(
            channels[0].unknown_keys,
            [
                "extra_agentos_field",
                "config.completely_else",
                "config.help_txt (did you mean config.help_text?)",
                "config.rate_limt (did you mean config.rate_limit?)",
            ]
        );
    }
}
