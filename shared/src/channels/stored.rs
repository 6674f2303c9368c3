//! A runtime channel as `P_channels` holds it: key = the channel id, value =
//! the channel JSON (the file's keys) plus `"v": 1` and `connected_at`, with
//! every secret replaced by a [`Sealed`] object.

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::secret_key::{OpenError, Sealed, SecretKey};

/// The payload version this build writes and reads.
pub const VERSION: u64 = 1;

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
}

/// The associated data of one secret: the channel and the field, so a
/// ciphertext moved to another channel or field does not open.
fn aad(channel_id: &str, path: &str) -> String {
    format!("smsgate channel secret v1/{channel_id}/{path}")
}

fn slot<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(value, |v, k| v.get_mut(k))
}

/// The stored bytes of a validated channel JSON (unknown keys already
/// dropped): secrets sealed, `v` and `connected_at` added.
pub fn seal(channel: &Value, channel_id: &str, key: &SecretKey, connected_at: OffsetDateTime) -> bytes::Bytes {
    let mut value = channel.clone();
    for path in SECRET_PATHS {
        if let Some(v) = slot(&mut value, path)
            && let Some(plain) = v.as_str()
        {
            let sealed = key.seal(plain, &aad(channel_id, path));
            *v = serde_json::to_value(sealed).unwrap_or(Value::Null);
        }
    }
    if let Value::Object(map) = &mut value {
        let mut out = Map::with_capacity(map.len() + 2);
        out.insert("v".to_owned(), Value::from(VERSION));
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
    let connected_at = map
        .remove("connected_at")
        .and_then(|v| v.as_str().map(str::to_owned))
        .and_then(|t| OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok());
    if map.get("channel_id").and_then(Value::as_str) != Some(channel_id) {
        return Err(StoredError::Malformed(format!("its channel_id is not its key {channel_id:?}")));
    }
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
        let plain = key.open(&sealed, &aad(channel_id, path)).map_err(|source| StoredError::Open { path, source })?;
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
        assert!(text.contains(r#""v":1"#), "{text}");
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
        assert!(matches!(open(moved.as_bytes(), "x", Some(&key)), Err(StoredError::Open { .. })));
        let mut plain = channel();
        plain["v"] = json!(1);
        assert!(matches!(
            open(plain.to_string().as_bytes(), "rt", Some(&key)),
            Err(StoredError::NotSealed("config.twilio_auth_token"))
        ));
        assert!(matches!(open(br#"{"v": 2}"#, "rt", Some(&key)), Err(StoredError::UnknownVersion(2))));
    }
}
