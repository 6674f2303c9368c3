//! `SMSGATE_SECRET_KEY` and the secrets it seals: the credentials of
//! channels connected at run time are kept in the `P_channels` bucket only as
//! AES-256-GCM ciphertexts (docs/ARCHITECTURE.md §3.6).
//!
//! - The key is 32 random bytes, written as base64 (standard or URL-safe,
//!   padded or not) or as 64 hex digits. `smsgate gen-token --secret-key`
//!   prints a fresh one.
//! - Each secret gets its own random 96-bit nonce (drawn by AWS-LC); the
//!   associated data (chosen by the caller, `channels::stored`) names the
//!   channel, the key path and a digest of the channel's whole config, so a
//!   ciphertext copied to another channel or another field, or a channel
//!   whose settings were changed without the key, does not open.
//! - A sealed value carries the key's id (the first 8 hex digits of a
//!   SHA-256 of the key), so a service holding another key says so instead
//!   of "cannot decrypt".

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of the algorithm in a sealed value.
pub const ALGORITHM: &str = "A256GCM";
/// The environment variable holding the key.
pub const ENV: &str = "SMSGATE_SECRET_KEY";

/// Why a key cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be 32 bytes written as base64 (44 characters) or as 64 hex digits; {0} (make one with `smsgate gen-token --secret-key`)"
)]
pub struct KeyError(String);

/// Why a sealed value does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed with key {found}, but this process has key {ours} (SMSGATE_SECRET_KEY differs)")]
    OtherKey { found: String, ours: String },
    #[error("sealed with {0}, which this build does not know")]
    Algorithm(String),
    #[error("the sealed value is damaged or was moved from another channel or field")]
    Damaged,
}

/// `SMSGATE_SECRET_KEY`, ready to seal and open. Its `Debug` shows only
/// the key's id.
pub struct SecretKey {
    key: RandomizedNonceKey,
    id: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// A secret as stored: `{"enc": "A256GCM", "kid": "…", "nonce": "…", "data": "…"}`
/// (base64; `data` is the ciphertext followed by the 16-byte tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    pub enc: String,
    pub kid: String,
    pub nonce: String,
    pub data: String,
}

impl SecretKey {
    /// Reads a key written as base64 or hex.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| KeyError(format!("not hex ({e})")))?
        } else {
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or_else(|| KeyError("it is neither base64 nor hex".to_owned()))?
        };
        if bytes.len() != 32 {
            return Err(KeyError(format!("it holds {} bytes", bytes.len())));
        }
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let key =
            RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| KeyError("AES-256-GCM refused it".to_owned()))?;
        let digest = Sha256::new().chain_update(b"smsgate secret key id\0").chain_update(bytes).finalize();
        Ok(Self { key, id: hex::encode(&digest[..4]) })
    }

    /// A fresh key, base64 (for `smsgate gen-token --secret-key`).
    pub fn generate() -> String {
        let bytes: [u8; 32] = rand::random();
        STANDARD.encode(bytes)
    }

    /// The key's id: 8 hex digits that name it without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext`, binding it to `aad` (the channel and field).
    pub fn seal(&self, plaintext: &str, aad: &str) -> Sealed {
        let mut data = plaintext.as_bytes().to_vec();
        // AES-GCM with a fresh random nonce fails only on absurd lengths
        // (over 64 GiB); a secret is a few bytes.
        let nonce = match self.key.seal_in_place_append_tag(Aad::from(aad.as_bytes()), &mut data) {
            Ok(nonce) => nonce,
            Err(_) => unreachable!("AES-256-GCM sealing a short secret cannot fail"),
        };
        Sealed {
            enc: ALGORITHM.to_owned(),
            kid: self.id.clone(),
            nonce: STANDARD.encode(nonce.as_ref()),
            data: STANDARD.encode(&data),
        }
    }

    /// Decrypts a value sealed with this key and the same `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<SecretString, OpenError> {
        if sealed.enc != ALGORITHM {
            return Err(OpenError::Algorithm(crate::redact::clip(&sealed.enc, 16).into_owned()));
        }
        if sealed.kid != self.id {
            return Err(OpenError::OtherKey {
                found: crate::redact::clip(&sealed.kid, 16).into_owned(),
                ours: self.id.clone(),
            });
        }
        let nonce: [u8; NONCE_LEN] =
            STANDARD.decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or(OpenError::Damaged)?;
        let mut data = STANDARD.decode(&sealed.data).map_err(|_| OpenError::Damaged)?;
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut data)
            .map_err(|_| OpenError::Damaged)?;
        let text = std::str::from_utf8(plain).map_err(|_| OpenError::Damaged)?;
        Ok(SecretString::from(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let key = SecretKey::parse(&SecretKey::generate()).unwrap();
        let a = key.seal("twilio-token", "c1/config.twilio_auth_token");
        let b = key.seal("twilio-token", "c1/config.twilio_auth_token");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.data, b.data);
        assert!(!a.data.contains("twilio"));
        assert_eq!(key.open(&a, "c1/config.twilio_auth_token").unwrap().expose_secret(), "twilio-token");
    }

    #[test]
    fn a_value_moved_to_another_channel_or_field_does_not_open() {
        let key = SecretKey::parse(&SecretKey::generate()).unwrap();
        let sealed = key.seal("s", "c1/config.twilio_auth_token");
        assert_eq!(key.open(&sealed, "c2/config.twilio_auth_token").unwrap_err(), OpenError::Damaged);
        assert_eq!(key.open(&sealed, "c1/config.chat.api_key").unwrap_err(), OpenError::Damaged);
        let mut flipped = sealed.clone();
        let mut bytes = STANDARD.decode(&flipped.data).unwrap();
        bytes[0] ^= 1;
        flipped.data = STANDARD.encode(bytes);
        assert_eq!(key.open(&flipped, "c1/config.twilio_auth_token").unwrap_err(), OpenError::Damaged);
    }

    #[test]
    fn another_key_is_named_by_its_id() {
        let one = SecretKey::parse(&SecretKey::generate()).unwrap();
        let two = SecretKey::parse(&SecretKey::generate()).unwrap();
        let sealed = one.seal("s", "a");
        match two.open(&sealed, "a").unwrap_err() {
            OpenError::OtherKey { found, ours } => assert_eq!((found.as_str(), ours.as_str()), (one.id(), two.id())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_base64_and_hex_and_refuses_other_lengths() {
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let from_hex = SecretKey::parse(hex_key).unwrap();
        let b64 = STANDARD.encode(hex::decode(hex_key).unwrap());
        assert_eq!(SecretKey::parse(&b64).unwrap().id(), from_hex.id());
        assert_eq!(SecretKey::parse(b64.trim_end_matches('=')).unwrap().id(), from_hex.id());
        assert!(SecretKey::parse("c2hvcnQ=").unwrap_err().to_string().contains("holds 5 bytes"));
        assert!(SecretKey::parse("not a key!").is_err());
        assert!(!format!("{from_hex:?}").contains("0011"));
    }
}
