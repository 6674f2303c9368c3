//! Reading channel JSON into [`Channel`]s: expansion, unknown keys,
//! located serde errors, validation.

use std::collections::{BTreeMap, HashSet};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::{AccountSid, ChannelId, E164};

use super::*;

/// The channel file as written, before defaults and validation.
#[derive(Deserialize)]
struct RawChannel {
    channel_id: String,
    #[serde(default = "default_manifest")]
    manifest_id: String,
    #[serde(default = "yes")]
    enabled: bool,
    config: RawChannelConfig,
    /// Keys smsgate does not know (reported, not refused: AgentOS files
    /// carry keys of their own).
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// The keys of a channel object, for "did you mean".
const CHANNEL_KEYS: [&str; 4] = ["channel_id", "manifest_id", "enabled", "config"];
/// The keys of a channel's `config`, for "did you mean".
const CONFIG_KEYS: [&str; 28] = [
    "compliance",
    "pricing",
    "twilio_account_sid",
    "twilio_auth_token",
    "twilio_from_number",
    "twilio_messaging_service_sid",
    "sms_max_len",
    "webhook_path_token",
    "twilio_api_base",
    "allow_private_api_base",
    "public_base_url",
    "rate_limit",
    "mps",
    "pause_minutes",
    "max_parts",
    "limits",
    "reply_countries",
    "allow_from",
    "block_from",
    "help_text",
    "fallback_text",
    "rate_limit_text",
    "chat",
    "delivery",
    "insecure_skip_signature",
    "media",
    "delete_media_after_fetch",
    "voice",
];

fn default_manifest() -> String {
    "sms".to_owned()
}
fn yes() -> bool {
    true
}

/// A new secret key here (or in [`ChatConfig`]) must also be listed in
/// `channels::stored::SECRET_PATHS`, or a channel connected at run time
/// would keep it unencrypted in `P_channels`.
#[derive(Deserialize)]
struct RawChannelConfig {
    twilio_account_sid: String,
    twilio_auth_token: SecretString,
    #[serde(default)]
    twilio_from_number: Option<String>,
    #[serde(default)]
    twilio_messaging_service_sid: Option<String>,
    #[serde(default)]
    sms_max_len: Option<usize>,
    webhook_path_token: SecretString,
    #[serde(default)]
    twilio_api_base: Option<String>,
    /// Lets `twilio_api_base` name a private or link-local address.
    #[serde(default)]
    allow_private_api_base: bool,
    #[serde(default)]
    public_base_url: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    mps: Option<f64>,
    #[serde(default)]
    pause_minutes: Option<f64>,
    #[serde(default)]
    max_parts: Option<usize>,
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    reply_countries: Option<Vec<String>>,
    #[serde(default)]
    allow_from: Vec<String>,
    #[serde(default)]
    block_from: Vec<String>,
    #[serde(default)]
    help_text: Option<String>,
    #[serde(default)]
    fallback_text: Option<String>,
    #[serde(default)]
    rate_limit_text: Option<String>,
    /// Parsed separately so that its errors name `config.chat`.
    #[serde(default)]
    chat: Option<Value>,
    #[serde(default)]
    delivery: Option<Delivery>,
    #[serde(default)]
    insecure_skip_signature: bool,
    /// Parsed separately so that its errors name `config.media`.
    #[serde(default)]
    media: Option<Value>,
    #[serde(default)]
    delete_media_after_fetch: bool,
    /// Parsed separately so that its errors name `config.voice.<key>`.
    #[serde(default)]
    voice: Option<Value>,
    /// Parsed separately so that its errors name `config.compliance.<key>`.
    #[serde(default)]
    compliance: Option<Value>,
    /// Parsed separately so that its errors name `config.pricing.<key>`.
    #[serde(default)]
    pricing: Option<Value>,
    #[serde(flatten)]
    unknown: BTreeMap<String, Value>,
}

/// `config.rate_limt (did you mean config.rate_limit?)` for every key of
/// `raw` smsgate does not know.
fn unknown_keys(raw: &RawChannel) -> Vec<String> {
    let describe = |prefix: &str, key: &str, known: &[&str]| match closest(key, known) {
        Some(k) => format!("{prefix}{key} (did you mean {prefix}{k}?)"),
        None => format!("{prefix}{key}"),
    };
    let top = raw.unknown.keys().map(|k| describe("", k, &CHANNEL_KEYS));
    let config = raw.config.unknown.keys().map(|k| describe("config.", k, &CONFIG_KEYS));
    top.chain(config).collect()
}

/// The known key nearest to `key` (a typo: at most 2 edits, fewer for short keys).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 4).clamp(1, 2);
    known.iter().map(|k| (edit_distance(key, k), *k)).filter(|(d, _)| *d <= limit).min().map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Loads the channels: from the file named by `SMSGATE_CHANNELS`, or one
/// channel `default` from the `TWILIO_*` variables.
pub fn load_channels(env: Lookup<'_>, settings: &Settings) -> Result<Vec<Channel>, ConfigError> {
    match env("SMSGATE_CHANNELS").filter(|v| !v.trim().is_empty()) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::one(&path, None, "SMSGATE_CHANNELS", format!("cannot read the file: {e}")))?;
            parse_channels(&text, &path, env, settings.public_base_url.as_deref())
        }
        None => channels_from_twilio_env(env, settings.public_base_url.as_deref()),
    }
}

fn channels_from_twilio_env(env: Lookup<'_>, public_base_url: Option<&str>) -> Result<Vec<Channel>, ConfigError> {
    let vars = ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_PHONE_NUMBER", "SMS_WEBHOOK_PATH_TOKEN"];
    let missing: Vec<Problem> = vars
        .iter()
        .filter(|k| env(k).is_none_or(|v| v.trim().is_empty()))
        .map(|k| Problem {
            source: "environment".to_owned(),
            channel: Some("default".to_owned()),
            key: (*k).to_owned(),
            message: "is not set (set it, or name a channel file in SMSGATE_CHANNELS)".to_owned(),
        })
        .collect();
    if !missing.is_empty() {
        return Err(ConfigError(missing));
    }
    let v = |k: &str| Value::String(env(k).unwrap_or_default());
    let json = serde_json::json!({
        "channel_id": "default",
        "config": {
            "twilio_account_sid": v("TWILIO_ACCOUNT_SID"),
            "twilio_auth_token": v("TWILIO_AUTH_TOKEN"),
            "twilio_from_number": v("TWILIO_PHONE_NUMBER"),
            "webhook_path_token": v("SMS_WEBHOOK_PATH_TOKEN"),
            // The variables cannot name a chat; a fixed acknowledgement is
            // the one built-in answer that never sends a stranger's text
            // back from the operator's number. A model needs a channel file.
            "chat": {"kind": "static", "reply": DEFAULT_CHANNEL_REPLY},
        }
    });
    validate_all(vec![json], "environment", public_base_url)
}

/// What the services and `check-config` say about the `default` channel:
/// it cannot name a chat, so it answers with [`DEFAULT_CHANNEL_REPLY`].
pub const DEFAULT_CHANNEL_NOTE: &str = "channel default (built from the TWILIO_* variables, no SMSGATE_CHANNELS) \
    answers every text with a fixed acknowledgement (chat \"static\"); for a model, your agent or echo, name a chat \
    in a channel file and set SMSGATE_CHANNELS";

/// What the `default` channel (built from the `TWILIO_*` variables) answers.
pub const DEFAULT_CHANNEL_REPLY: &str = "Thanks, we got your message. (This number's assistant is not set up yet.)";

/// Parses a channel file's text (any of the three shapes), expands `${VAR}`,
/// applies defaults and validates. Reports every problem found.
pub fn parse_channels(
    text: &str,
    source: &str,
    env: Lookup<'_>,
    public_base_url: Option<&str>,
) -> Result<Vec<Channel>, ConfigError> {
    let mut channels = validate_all(expand_channels(text, source, env)?, source, public_base_url)?;
    // Keys beside `channels` are warned about like a channel's own, on the
    // first channel (the file has no line of its own in the warnings).
    if let Some(first) = channels.first_mut() {
        first.unknown_keys.extend(file_keys(text));
    }
    Ok(channels)
}

/// The keys of a `{"channels": [...]}` file other than `channels`.
fn file_keys(text: &str) -> Vec<String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) if map.contains_key("channels") && !map.contains_key("channel_id") => map
            .keys()
            .filter(|k| k.as_str() != "channels")
            .map(|k| format!("{k} (beside \"channels\" at the top of the file)"))
            .collect(),
        _ => Vec::new(),
    }
}

/// A channel file's channel objects (any of the three shapes) with `${VAR}`
/// expanded, not yet validated: what `smsgate channels connect` sends.
pub fn expand_channels(text: &str, source: &str, env: Lookup<'_>) -> Result<Vec<Value>, ConfigError> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| ConfigError::one(source, None, "(file)", format!("not valid JSON: {e}")))?;
    let list = match root {
        Value::Array(items) => items,
        Value::Object(mut map) if map.contains_key("channels") && !map.contains_key("channel_id") => {
            match map.remove("channels") {
                Some(Value::Array(items)) => items,
                _ => return Err(ConfigError::one(source, None, "channels", "must be a list of channel objects")),
            }
        }
        obj @ Value::Object(_) => vec![obj],
        _ => {
            return Err(ConfigError::one(
                source,
                None,
                "(file)",
                "must be a channel object, a list of them, or {\"channels\": [...]}",
            ));
        }
    };
    if list.is_empty() {
        return Err(ConfigError::one(source, None, "channels", "no channel is defined"));
    }
    let mut problems = Vec::new();
    let mut expanded = Vec::with_capacity(list.len());
    for (i, mut item) in list.into_iter().enumerate() {
        let name = channel_label(&item, i);
        expand_vars(&mut item, "", env, &mut |key, message| {
            problems.push(Problem { source: source.to_owned(), channel: Some(name.clone()), key, message })
        });
        expanded.push(item);
    }
    if problems.is_empty() { Ok(expanded) } else { Err(ConfigError(problems)) }
}

/// One channel connected at run time (the admin API, or read back from
/// `P_channels`): the same keys, defaults and validation as a channel of
/// the file, with two differences. `${VAR}` is not expanded (the API must
/// not read the server's environment; `smsgate channels connect` expands a
/// file's variables from its own before sending), and keys smsgate does not
/// know are dropped from the returned JSON rather than kept (a mistyped
/// secret's key would otherwise be stored unencrypted). Returns the channel
/// (its `unknown_keys` name what was dropped) and the JSON to store.
pub fn parse_runtime_channel(
    mut value: Value,
    source: &str,
    public_base_url: Option<&str>,
) -> Result<(Channel, Value), ConfigError> {
    if !value.is_object() {
        return Err(ConfigError::one(source, None, "(channel)", "must be one channel object"));
    }
    let name = channel_label(&value, 0);
    let mut problems = Vec::new();
    let mut probe = value.clone();
    expand_vars(&mut probe, "", &|_| None, &mut |key, _| {
        problems.push(Problem {
            source: source.to_owned(),
            channel: Some(name.clone()),
            key,
            message: "holds ${...}: variables are expanded by `smsgate channels connect` from its environment, \
                      never by the server"
                .to_owned(),
        })
    });
    if !problems.is_empty() {
        return Err(ConfigError(problems));
    }
    let mut channels = validate_all(vec![value.clone()], source, public_base_url)?;
    let channel = channels.pop().ok_or_else(|| ConfigError::one(source, Some(&name), "(channel)", "is empty"))?;
    if let Value::Object(top) = &mut value {
        top.retain(|k, _| CHANNEL_KEYS.contains(&k.as_str()));
        if let Some(Value::Object(config)) = top.get_mut("config") {
            config.retain(|k, _| CONFIG_KEYS.contains(&k.as_str()));
        }
    }
    Ok((channel, value))
}

fn channel_label(item: &Value, index: usize) -> String {
    item.get("channel_id").and_then(Value::as_str).map_or_else(|| format!("#{index}"), str::to_owned)
}

/// Replaces `${VAR}` in every string of `value`; reports missing variables.
fn expand_vars(value: &mut Value, path: &str, env: Lookup<'_>, report: &mut dyn FnMut(String, String)) {
    match value {
        Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else {
                    report(path.to_owned(), "has an unterminated ${".to_owned());
                    return;
                };
                let var = &after[..end];
                match env(var) {
                    Some(v) => out.push_str(&v),
                    None => {
                        report(path.to_owned(), format!("refers to ${{{var}}}, which is not set in the environment"))
                    }
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_vars(v, &format!("{path}[{i}]"), env, report);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                expand_vars(v, &p, env, report);
            }
        }
        _ => {}
    }
}

fn validate_all(items: Vec<Value>, source: &str, public_base_url: Option<&str>) -> Result<Vec<Channel>, ConfigError> {
    let mut problems = Vec::new();
    let mut channels = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let label = channel_label(&item, i);
        let mut report = |key: &str, message: String| {
            problems.push(Problem {
                source: source.to_owned(),
                channel: Some(label.clone()),
                key: key.to_owned(),
                message,
            })
        };
        match serde_path_to_error::deserialize::<_, RawChannel>(item) {
            Ok(raw) => {
                if let Some(c) = validate_one(raw, public_base_url, &mut report) {
                    channels.push(c);
                }
            }
            Err(e) => {
                let (key, message) = located("", &e);
                report(&key, message);
            }
        }
    }
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    for c in &channels {
        if !ids.insert(c.id.clone()) {
            problems.push(Problem {
                source: source.to_owned(),
                channel: Some(c.id.to_string()),
                key: "channel_id".to_owned(),
                message: "is used by more than one channel".to_owned(),
            });
        }
        if !tokens.insert(c.path_token.expose_secret().to_owned()) {
            problems.push(Problem {
                source: source.to_owned(),
                channel: Some(c.id.to_string()),
                key: "config.webhook_path_token".to_owned(),
                message: "is the same as another channel's".to_owned(),
            });
        }
    }
    if problems.is_empty() { Ok(channels) } else { Err(ConfigError(problems)) }
}

/// Where a serde error is, as a key path under `prefix` (`config.rate_limit.per_minute`),
/// and what it says. A missing field is named in the message, not the
/// path: it is added to the path.
fn located(prefix: &str, e: &serde_path_to_error::Error<serde_json::Error>) -> (String, String) {
    let message = e.inner().to_string();
    let mut path = e.path().to_string();
    if path == "." {
        path.clear();
    }
    if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
        path = if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
    }
    let key = match (prefix.is_empty(), path.is_empty()) {
        (_, true) if prefix.is_empty() => "(channel)".to_owned(),
        (_, true) => prefix.to_owned(),
        (true, false) => path,
        (false, false) => format!("{prefix}.{path}"),
    };
    (key, message)
}

pub(super) fn check_base_url(u: &str) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("{u:?} is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{u:?} must be http:// or https://"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{u:?} must not have a query or fragment"));
    }
    Ok(())
}

fn validate_one(raw: RawChannel, default_base: Option<&str>, report: &mut dyn FnMut(&str, String)) -> Option<Channel> {
    let mut ok = true;
    let mut fail = |key: &str, message: String| {
        ok = false;
        report(key, message);
    };
    let unknown_keys = unknown_keys(&raw);
    let c = raw.config;
    let id = ChannelId::parse(&raw.channel_id).map_err(|e| fail("channel_id", e.reason)).ok();
    let account_sid =
        AccountSid::parse(c.twilio_account_sid.trim()).map_err(|e| fail("config.twilio_account_sid", e.reason)).ok();
    if c.twilio_auth_token.expose_secret().trim().is_empty() {
        fail("config.twilio_auth_token", "is empty".to_owned());
    }
    let from_number = match c.twilio_from_number.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(n) => E164::parse(n).map_err(|e| fail("config.twilio_from_number", e.reason)).ok(),
        None => None,
    };
    let messaging_service_sid = c.twilio_messaging_service_sid.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    if let Some(ms) = &messaging_service_sid {
        let valid = ms.len() == 34 && ms.starts_with("MG") && ms[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            fail("config.twilio_messaging_service_sid", "must be 'MG' followed by 32 hex digits".to_owned());
        }
    }
    if from_number.is_none() && messaging_service_sid.is_none() {
        fail("config.twilio_from_number", "is required (or set twilio_messaging_service_sid)".to_owned());
    }
    let token = c.webhook_path_token.expose_secret();
    if token.chars().count() < 32 {
        fail(
            "config.webhook_path_token",
            format!(
                "must be at least 32 characters, has {} (make one with `smsgate gen-token`)",
                token.chars().count()
            ),
        );
    } else if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        fail("config.webhook_path_token", "must be letters, digits, '_' or '-' (it is part of a URL path)".to_owned());
    }
    let sms_max_len = c.sms_max_len.unwrap_or(DEFAULT_SMS_MAX_LEN);
    if !(1..=TWILIO_MAX_BODY).contains(&sms_max_len) {
        fail("config.sms_max_len", format!("must be 1 to {TWILIO_MAX_BODY}, is {sms_max_len}"));
    }
    let max_parts = c.max_parts.unwrap_or(4);
    if !(1..=10).contains(&max_parts) {
        fail("config.max_parts", format!("must be 1 to 10, is {max_parts}"));
    }
    let mps = c.mps.unwrap_or(1.0);
    let pause_minutes = c.pause_minutes.unwrap_or(DEFAULT_PAUSE_MINUTES);
    if let Err(m) = check_pause_minutes(pause_minutes) {
        fail("config.pause_minutes", m);
    }
    // Below the minimum the interval between sends would be days (or
    // overflow a Duration): surely a typo.
    if !mps.is_finite() || mps < 0.0 || (mps > 0.0 && mps < MIN_MPS) || mps > MAX_MPS {
        fail("config.mps", format!("must be 0 (unpaced) or {MIN_MPS} to {MAX_MPS}, is {mps}"));
    }
    let limits = c.limits.unwrap_or_default();
    if limits.replies_per_minute == 0 || limits.replies_per_day == 0 {
        fail("config.limits", "replies_per_minute and replies_per_day must be at least 1".to_owned());
    } else if limits.replies_per_minute > limits.replies_per_day {
        fail("config.limits", "replies_per_minute must not be more than replies_per_day".to_owned());
    } else if limits.usd_per_day.is_some_and(|usd| !(usd.is_finite() && usd > 0.0)) {
        fail("config.limits", "usd_per_day must be a positive amount in USD".to_owned());
    }
    let reply_countries = match c.reply_countries {
        Some(list) => parse_reply_countries(&list).map_err(|m| fail("config.reply_countries", m)).ok(),
        None => match &from_number {
            Some(n) => Some(ReplyCountries::Codes(vec![n.calling_code().to_owned()])),
            None if messaging_service_sid.is_some() => {
                fail(
                    "config.reply_countries",
                    "is required with a messaging service and no from number (e.g. [\"1\"], or [\"*\"] for all)"
                        .to_owned(),
                );
                None
            }
            None => None,
        },
    };
    let rate_limit = c.rate_limit.unwrap_or_default();
    if rate_limit.per_minute == 0 || rate_limit.burst == 0 {
        fail("config.rate_limit", "per_minute and burst must be at least 1".to_owned());
    }
    let api_base = c.twilio_api_base.unwrap_or_else(|| super::TWILIO_API_BASE.to_owned());
    if let Err(m) = super::check_api_base(&api_base, c.allow_private_api_base) {
        fail("config.twilio_api_base", m);
    }
    let public_base_url = match c.public_base_url.filter(|s| !s.trim().is_empty()) {
        Some(u) => {
            if let Err(m) = check_base_url(&u) {
                fail("config.public_base_url", m);
            }
            Some(u.trim_end_matches('/').to_owned())
        }
        None => default_base.map(str::to_owned),
    };
    let mut numbers = |key: &str, list: Vec<String>| -> Vec<E164> {
        list.iter()
            .enumerate()
            .filter_map(|(i, n)| E164::parse(n.trim()).map_err(|e| fail(&format!("{key}[{i}]"), e.reason)).ok())
            .collect()
    };
    let allow_from = numbers("config.allow_from", c.allow_from);
    let block_from = numbers("config.block_from", c.block_from);
    let delivery = c.delivery.unwrap_or_default();
    let (chat_value, chat_ack) = split_ack(c.chat, &mut fail);
    let chat = match chat_value {
        // Echo from the operator's number to anyone who texts it costs money
        // and can be abused: a real channel must choose its chat.
        None | Some(Value::Null) if delivery == Delivery::Twilio => {
            fail(
                "config.chat",
                "is required when delivery is \"twilio\" (e.g. {\"kind\": \"openai\", ...}, or {\"kind\": \"echo\"} on purpose)"
                    .to_owned(),
            );
            ChatConfig::default()
        }
        chat => section(chat, "config.chat", &mut fail),
    };
    match &chat {
        ChatConfig::Openai { base_url, model, .. } => {
            if let Err(m) = check_base_url(base_url) {
                fail("config.chat.base_url", m);
            }
            if model.trim().is_empty() {
                fail("config.chat.model", "is empty".to_owned());
            }
        }
        ChatConfig::Webhook { url, .. } => {
            if let Err(m) = check_base_url(url) {
                fail("config.chat.url", m);
            }
        }
        ChatConfig::Static { reply } if reply.trim().is_empty() => fail("config.chat.reply", "is empty".to_owned()),
        _ => {}
    }
    let media: MediaConfig = section(c.media, "config.media", &mut fail);
    for (key, message) in media.problems() {
        fail(&format!("config.media.{key}"), message);
    }
    let voice = crate::voice::parse(c.voice, &mut fail);
    let compliance = crate::guard::config::parse(c.compliance, &mut fail);
    let pricing = crate::cost::parse_pricing(c.pricing, &mut fail);
    if !ok {
        return None;
    }
    Some(Channel {
        id: id?,
        manifest_id: raw.manifest_id,
        enabled: raw.enabled,
        account_sid: account_sid?,
        auth_token: c.twilio_auth_token,
        from_number,
        messaging_service_sid,
        sms_max_len,
        path_token: c.webhook_path_token,
        api_base: api_base.trim_end_matches('/').to_owned(),
        public_base_url,
        rate_limit,
        mps,
        pause_minutes,
        max_parts,
        limits,
        reply_countries: reply_countries?,
        allow_from,
        block_from,
        help_text: c.help_text.unwrap_or_else(|| DEFAULT_HELP_TEXT.to_owned()),
        fallback_text: c.fallback_text.unwrap_or_else(|| DEFAULT_FALLBACK_TEXT.to_owned()),
        rate_limit_text: c.rate_limit_text.unwrap_or_else(|| DEFAULT_RATE_LIMIT_TEXT.to_owned()),
        chat,
        delivery,
        insecure_skip_signature: c.insecure_skip_signature,
        media,
        delete_media_after_fetch: c.delete_media_after_fetch,
        voice,
        compliance,
        chat_ack,
        pricing,
        unknown_keys,
    })
}

/// `chat.ack_after_ms` and `chat.ack_text`, taken out of the chat object
/// (they belong to every kind) before the kind is read.
fn split_ack(chat: Option<Value>, fail: &mut dyn FnMut(&str, String)) -> (Option<Value>, Option<ChatAck>) {
    let Some(Value::Object(mut object)) = chat else { return (chat, None) };
    let after = object.remove("ack_after_ms");
    let text = object.remove("ack_text");
    let text = match text {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.trim().is_empty() && t.chars().count() <= 320 => Some(t.trim().to_owned()),
        Some(_) => {
            fail("config.chat.ack_text", "must be a text of 1 to 320 characters".to_owned());
            None
        }
    };
    let ack = match after {
        None | Some(Value::Null) => {
            if text.is_some() {
                fail("config.chat.ack_text", "needs ack_after_ms (when to send it)".to_owned());
            }
            None
        }
        Some(v) => match v.as_u64() {
            Some(ms) if (200..=600_000).contains(&ms) => Some(ChatAck {
                after: std::time::Duration::from_millis(ms),
                text: text.unwrap_or_else(|| DEFAULT_ACK_TEXT.to_owned()),
            }),
            _ => {
                fail("config.chat.ack_after_ms", "must be a number of milliseconds from 200 to 600000".to_owned());
                None
            }
        },
    };
    (Some(Value::Object(object)), ack)
}

/// An object key parsed on its own, so that its errors name `key`; its
/// default when absent, null or invalid (the problem is reported).
pub(crate) fn section<T: serde::de::DeserializeOwned + Default>(
    value: Option<Value>,
    key: &str,
    fail: &mut dyn FnMut(&str, String),
) -> T {
    match value {
        None | Some(Value::Null) => T::default(),
        Some(v) => serde_path_to_error::deserialize(v).unwrap_or_else(|e| {
            let (key, message) = located(key, &e);
            fail(&key, message);
            T::default()
        }),
    }
}

/// `reply_countries`: `["*"]`, or calling codes of 1 to 3 digits without `+`.
fn parse_reply_countries(list: &[String]) -> Result<ReplyCountries, String> {
    if list.iter().any(|c| c.trim() == "*") {
        return if list.len() == 1 { Ok(ReplyCountries::All) } else { Err("\"*\" must be alone".to_owned()) };
    }
    if list.is_empty() {
        return Err("is empty: no reply could be sent (use [\"*\"] for all countries)".to_owned());
    }
    let mut codes = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let c = c.trim().trim_start_matches('+');
        let ok = (1..=3).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()) && !c.starts_with('0');
        if !ok {
            return Err(format!(
                "[{i}] {:?} is not a country calling code (1 to 3 digits, e.g. \"44\")",
                crate::redact::clip(c, 8)
            ));
        }
        codes.push(c.to_owned());
    }
    Ok(ReplyCountries::Codes(codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_is_one_serde_knows() {
        for key in CONFIG_KEYS {
            let value = serde_json::json!({"channel_id": "c", "config": {
                "twilio_account_sid": "AC0123456789abcdef0123456789abcdef", "twilio_auth_token": "t",
                "webhook_path_token": "0123456789abcdef0123456789abcdef", key: null}});
            if let Ok(raw) = serde_json::from_value::<RawChannel>(value) {
                assert!(!raw.config.unknown.contains_key(key), "{key} is listed but not a field");
            }
        }
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("mpss", &CONFIG_KEYS), Some("mps"));
    }
}

#[cfg(test)]
mod located_tests {
    use super::*;

    fn keys_of(config: Value) -> Vec<String> {
        let item = serde_json::json!({"channel_id": "c", "config": config});
        match validate_all(vec![item], "test.json", None) {
            Ok(_) => Vec::new(),
            Err(ConfigError(problems)) => problems.into_iter().map(|p| p.key).collect(),
        }
    }

    #[test]
    fn type_errors_name_the_nested_key_and_missing_fields_their_own() {
        let base = |extra: Value| {
            let mut c = serde_json::json!({
                "twilio_account_sid": "AC0123456789abcdef0123456789abcdef", "twilio_auth_token": "t",
                "webhook_path_token": "0123456789abcdef0123456789abcdef0123"});
            if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
                c.extend(extra);
            }
            c
        };
        let has = |config: Value, key: &str| {
            let keys = keys_of(config);
            assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
        };
        has(base(serde_json::json!({"rate_limit": {"per_minute": "ten"}})), "config.rate_limit.per_minute");
        has(base(serde_json::json!({"media": {"max_edge": -1}})), "config.media.max_edge");
        has(base(serde_json::json!({"chat": {"kind": "openai"}})), "config.chat.base_url");
        let mut no_sid = base(Value::Null);
        if let Some(c) = no_sid.as_object_mut() {
            c.remove("twilio_account_sid");
        }
        has(no_sid, "config.twilio_account_sid");
    }
}
