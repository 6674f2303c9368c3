//! Small HTTP helpers both listeners use (the webhook and the admin side).

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

/// SHA-256 of a secret token. Tokens are compared as digests in constant
/// time, so neither their content nor their length shows in the timing.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `Content-Type` is `mime` (parameters such as `charset` aside).
pub fn has_media_type(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case(mime))
}
