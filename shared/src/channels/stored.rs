//! A runtime channel as `P_channels` holds it: key = the channel id, value =
//! the channel JSON (the file's keys) plus `"v": 1`, `"seal": 2` and
//! `connected_at`, with every secret replaced by a [`Sealed`] object.
//!
//! Sealing scheme 2 binds each secret to the channel's whole non-secret
//! configuration: the associated data holds the channel id, the field, and
//! a SHA-256 of the canonical channel JSON without its secrets. Whoever can
//! write the bucket but has no `SMSGATE_SECRET_KEY` can therefore change
//! nothing of a channel (`twilio_api_base` above all, which would send the
//! decrypted auth token to another host): the secrets no longer open and the
//! entry is refused. Entries of scheme 1 (the associated data named only
//! the channel and the field) are refused too, with a message to connect
//! the channel again: they may have been altered already.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::secret_key::{OpenError, Sealed, SecretKey};

/// The payload version this build writes and reads.
pub const VERSION: u64 = 1;
/// The sealing scheme this build writes and reads (`"seal"`): each secret
/// bound to the whole channel config.
pub const SEAL_SCHEME: u64 = 2;

/// The secrets of a channel, as key paths: sealed on write, opened on read.
/// A path that is absent (no `chat.api_key`) is simply skipped.
pub const SECRET_PATHS: [&str; 4] =
    ["config.twilio_auth_token", "config.webhook_path_token", "config.chat.api_key", "config.chat.secret"];

/// Why a stored channel cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    #[error("not a channel payload: {0}")]
    Malformed(String),
    #[error("payload version {0} is not supported (this build reads version {VERSION})")]
    UnknownVersion(u64),
    #[error(
        "its secrets are encrypted, but SMSGATE_SECRET_KEY is not set in this process (set the key the channel was \
         connected with)"
    )]
    NoKey,
    #[error("{path} cannot be decrypted: {source}")]
    Open {
        path: &'static str,
        #[source]
        source: OpenError,
    },
    #[error("{0} is stored unencrypted; smsgate never writes it so (disconnect and connect the channel again)")]
    NotSealed(&'static str),
    #[error(
        "the entry was altered without SMSGATE_SECRET_KEY: its settings no longer match its sealed secrets ({path} \
         does not open), so it is refused and no request is made with its credentials (disconnect it and connect \
         it again; see deploy/OPERATIONS.md, SMSGATE_SECRET_KEY)"
    )]
    Altered { path: &'static str },
    #[error(
        "it was sealed by an older smsgate whose sealing did not bind the channel's settings to its secrets, so an \
         alteration could not be told; it is refused (disconnect it and connect it again with the same JSON; see \
         deploy/OPERATIONS.md, SMSGATE_SECRET_KEY)"
    )]
    OldScheme,
}

/// The associated data of one secret: the channel, the field and the
/// digest of the channel's configuration, so a ciphertext moved to another
/// channel or field, or a channel whose settings were changed, does not open.
fn aad(channel_id: &str, path: &str, config_digest: &str) -> String {
    format!("smsgate channel secret v2/{channel_id}/{path}/{config_digest}")
}

/// SHA-256 (hex) of the canonical JSON of `channel` without its secrets:
/// object keys sorted, no white space, every secret path removed.
fn config_digest(channel: &Value) -> String {
    let mut bare = channel.clone();
    for path in SECRET_PATHS {
        if let Some((parent, key)) = path.rsplit_once('.')
            && let Some(Value::Object(map)) = slot(&mut bare, parent)
        {
            map.remove(key);
        }
    }
    let mut text = String::new();
    canonical(&bare, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `value` as JSON with object keys sorted at every level (whatever order
/// the map keeps), scalars as serde_json writes them.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn slot<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(value, |v, k| v.get_mut(k))
}

/// The stored bytes of a validated channel JSON (unknown keys already
/// dropped): secrets sealed, `v` and `connected_at` added.
pub fn seal(channel: &Value, channel_id: &str, key: &SecretKey, connected_at: OffsetDateTime) -> bytes::Bytes {
    // Digested as the reader will see it: parsed back from its text, so a
    // number that does not survive the trip exactly digests the same.
    let digest = config_digest(&serde_json::from_str(&channel.to_string()).unwrap_or_else(|_| channel.clone()));
    let mut value = channel.clone();
    for path in SECRET_PATHS {
        if let Some(v) = slot(&mut value, path)
            && let Some(plain) = v.as_str()
        {
            let sealed = key.seal(plain, &aad(channel_id, path, &digest));
            *v = serde_json::to_value(sealed).unwrap_or(Value::Null);
        }
    }
    if let Value::Object(map) = &mut value {
        let mut out = Map::with_capacity(map.len() + 2);
        out.insert("v".to_owned(), Value::from(VERSION));
        out.insert("seal".to_owned(), Value::from(SEAL_SCHEME));
        let at = connected_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        out.insert("connected_at".to_owned(), Value::String(at));
        out.append(map);
        value = Value::Object(out);
    }
    crate::envelope::encode(&value)
}

/// A stored channel read back: the channel JSON with its secrets in the
/// clear (to be validated like any other), and when it was connected.
#[derive(Debug)]
pub struct Opened {
    pub channel: Value,
    pub connected_at: Option<OffsetDateTime>,
}

/// Reads a stored channel whose key is `channel_id`, opening its secrets.
pub fn open(bytes: &[u8], channel_id: &str, key: Option<&SecretKey>) -> Result<Opened, StoredError> {
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| StoredError::Malformed(e.to_string()))?;
    let Value::Object(map) = &mut value else {
        return Err(StoredError::Malformed("not a JSON object".to_owned()));
    };
    match map.remove("v").and_then(|v| v.as_u64()) {
        Some(VERSION) => {}
        Some(v) => return Err(StoredError::UnknownVersion(v)),
        None => return Err(StoredError::UnknownVersion(0)),
    }
    let scheme = map.remove("seal").and_then(|v| v.as_u64());
    let connected_at = map
        .remove("connected_at")
        .and_then(|v| v.as_str().map(str::to_owned))
        .and_then(|t| OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok());
    if map.get("channel_id").and_then(Value::as_str) != Some(channel_id) {
        return Err(StoredError::Malformed(format!("its channel_id is not its key {channel_id:?}")));
    }
    if scheme != Some(SEAL_SCHEME) {
        return Err(StoredError::OldScheme);
    }
    let digest = config_digest(&value);
    for path in SECRET_PATHS {
        let Some(v) = slot(&mut value, path) else { continue };
        if v.is_null() {
            continue;
        }
        let sealed: Sealed = match serde_json::from_value(v.clone()) {
            Ok(s) => s,
            Err(_) if v.is_string() => return Err(StoredError::NotSealed(path)),
            Err(e) => return Err(StoredError::Malformed(format!("{path}: {e}"))),
        };
        let key = key.ok_or(StoredError::NoKey)?;
        let plain = key.open(&sealed, &aad(channel_id, path, &digest)).map_err(|source| match source {
            // The ciphertext, the channel or its settings changed: all the
            // same to AES-GCM, and none of them done with the key.
            OpenError::Damaged => StoredError::Altered { path },
            source => StoredError::Open { path, source },
        })?;
        *v = Value::String(secrecy::ExposeSecret::expose_secret(&plain).to_owned());
    }
    Ok(Opened { channel: value, connected_at })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn channel() -> Value {
        json!({"channel_id": "rt", "config": {
            "twilio_account_sid": "AC0123456789abcdef0123456789abcdef", "twilio_auth_token": "tok-secret",
            "webhook_path_token": "path-secret-0123456789abcdefghijklmnop",
            "chat": {"kind": "webhook", "url": "http://agent", "secret": "agent-secret"}}})
    }

    #[test]
    fn secrets_are_sealed_and_come_back() {
        let key = SecretKey::parse(&SecretKey::generate()).unwrap();
        let bytes = seal(&channel(), "rt", &key, OffsetDateTime::now_utc());
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        for secret in ["tok-secret", "path-secret", "agent-secret"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains(r#""v":1"#) && text.contains(r#""seal":2"#), "{text}");
        let opened = open(&bytes, "rt", Some(&key)).unwrap();
        assert_eq!(opened.channel, channel());
        assert!(opened.connected_at.is_some());
    }

    #[test]
    fn no_key_another_key_a_moved_value_and_plaintext_are_refused() {
        let key = SecretKey::parse(&SecretKey::generate()).unwrap();
        let bytes = seal(&channel(), "rt", &key, OffsetDateTime::now_utc());
        assert!(matches!(open(&bytes, "rt", None), Err(StoredError::NoKey)));
        let other = SecretKey::parse(&SecretKey::generate()).unwrap();
        let err = open(&bytes, "rt", Some(&other)).unwrap_err();
        assert!(err.to_string().contains("SMSGATE_SECRET_KEY differs"), "{err}");
        // The same sealed JSON under another key (channel id) does not open.
        let moved = String::from_utf8(bytes.to_vec()).unwrap().replace(r#""channel_id":"rt""#, r#""channel_id":"x""#);
        assert!(matches!(open(moved.as_bytes(), "x", Some(&key)), Err(StoredError::Altered { .. })));
        let mut plain = channel();
        plain["v"] = json!(1);
        plain["seal"] = json!(2);
        assert!(matches!(
            open(plain.to_string().as_bytes(), "rt", Some(&key)),
            Err(StoredError::NotSealed("config.twilio_auth_token"))
        ));
        assert!(matches!(open(br#"{"v": 2}"#, "rt", Some(&key)), Err(StoredError::UnknownVersion(2))));
    }

    /// Edits `bytes` (a stored channel) as someone with write access to the
    /// bucket but no key could: the JSON's clear part only.
    fn edited(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut value: Value = serde_json::from_slice(bytes).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn any_change_to_the_settings_without_the_key_is_refused() {
        let key = SecretKey::parse(&SecretKey::generate()).unwrap();
        let mut with_numbers = channel();
        with_numbers["config"]["pricing"] = json!({"sms_usd_per_segment": {"default": 0.0079}, "mps": 0.1});
        let bytes = seal(&with_numbers, "rt", &key, OffsetDateTime::now_utc());
        assert_eq!(open(&bytes, "rt", Some(&key)).unwrap().channel, with_numbers, "unchanged, it opens");
        // White space added: the same settings.
        let mut value: Value = serde_json::from_slice(&bytes).unwrap();
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        assert!(open(pretty.as_bytes(), "rt", Some(&key)).is_ok());
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let edits: [(&str, Edit); 4] = [
            ("api base", Box::new(|v| v["config"]["twilio_api_base"] = json!("https://evil.example"))),
            ("chat url", Box::new(|v| v["config"]["chat"]["url"] = json!("http://elsewhere"))),
            ("a key removed", Box::new(|v| drop(v["config"].as_object_mut().unwrap().remove("twilio_account_sid")))),
            ("a number", Box::new(|v| v["config"]["pricing"]["mps"] = json!(0.2))),
        ];
        for (what, edit) in edits {
            let err = open(&edited(&bytes, edit), "rt", Some(&key)).unwrap_err();
            assert!(matches!(err, StoredError::Altered { .. }), "{what}: {err}");
            assert!(err.to_string().contains("altered without SMSGATE_SECRET_KEY"), "{err}");
        }
        // Scheme 1 (or the scheme field removed): refused, with what to do.
        value.as_object_mut().unwrap().remove("seal");
        let err = open(value.to_string().as_bytes(), "rt", Some(&key)).unwrap_err();
        assert!(matches!(err, StoredError::OldScheme), "{err}");
        assert!(err.to_string().contains("connect it again"), "{err}");
    }
}
