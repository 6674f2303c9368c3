//! The web console at `/`: one static page and its script and style (in
//! `admin/console/`, compiled into the binary), which use the same admin API
//! as the CLI.
//!
//! Signing in: the page posts the admin token to `POST /api/v1/session`
//! (JSON, so a cross-site form cannot); the answer sets an HttpOnly,
//! SameSite=Strict cookie holding a random session id. The guard accepts
//! that cookie wherever it accepts the bearer token, after the same host
//! and origin checks, so another site can neither read nor use it.
//! Sessions live in this process's memory for [`SESSION_TTL`]; signing out
//! (`DELETE /api/v1/session`) or a restart ends them.
//!
//! The page writes every text it shows (message bodies above all) as text,
//! never as HTML, and the answers carry a strict Content-Security-Policy:
//! no inline script, nothing from another origin, no framing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use smsgate_shared::http::token_digest;

use crate::AdminError;
use crate::guard::Guard;

/// Signing in and out.
pub const SESSION_PATH: &str = "/api/v1/session";
/// The session cookie's name.
pub const COOKIE: &str = "smsgate_session";
/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes first past it.
const MAX_SESSIONS: usize = 1024;

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");

/// The console's files, by path.
fn file(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/console.js" => Some(("text/javascript; charset=utf-8", CONSOLE_JS)),
        "/console.css" => Some(("text/css; charset=utf-8", CONSOLE_CSS)),
        _ => None,
    }
}

pub(crate) fn is_console_file(path: &str) -> bool {
    file(path).is_some()
}

/// `GET /`, `/console.js`, `/console.css`.
pub(crate) async fn serve_file(uri: axum::http::Uri) -> Response {
    let Some((content_type, body)) = file(uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                 form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The console's signed-in sessions: digest of the session id → expiry.
#[derive(Default)]
pub struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Sessions {
    /// A new session; its id goes into the cookie and nowhere else.
    fn create(&self) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let now = Instant::now();
        let mut map = self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, expires| *expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(token_digest(&id), now + SESSION_TTL);
        id
    }

    pub(crate) fn valid(&self, id: &str) -> bool {
        let map = self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&token_digest(id)).is_some_and(|expires| *expires > Instant::now())
    }

    fn end(&self, id: &str) {
        self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&token_digest(id));
    }
}

/// The session id in the request's cookies, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// The answer to signing in, and to `GET /api/v1/session`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionInfo {
    pub signed_in: bool,
    /// Seconds the session lasts from sign-in.
    pub ttl_seconds: u64,
}

fn cookie(id: &str, max_age: u64) -> HeaderValue {
    let text = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("smsgate_session=; Max-Age=0"))
}

/// `POST /api/v1/session {"token": "..."}`: the admin token for a cookie.
pub(crate) async fn sign_in(State(guard): State<Arc<Guard>>, body: Bytes) -> Result<Response, AdminError> {
    let request: SignIn = serde_json::from_slice(&body)
        .map_err(|e| AdminError::invalid("invalid_json", format!("the body must be {{\"token\": \"...\"}}: {e}")))?;
    if !guard.token_matches(request.token.trim()) {
        metrics::counter!("smsgate_admin_refused_total", "why" => "sign_in").increment(1);
        tracing::warn!(
            service = "ingress",
            stage = "admin",
            outcome = "refused",
            why = "sign_in",
            "console sign-in with a wrong token"
        );
        return Err(AdminError::Unauthorized);
    }
    let id = guard.sessions.create();
    tracing::info!(service = "ingress", stage = "admin", outcome = "signed_in", "console session started");
    let mut response = Json(SessionInfo { signed_in: true, ttl_seconds: SESSION_TTL.as_secs() }).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie(&id, SESSION_TTL.as_secs()));
    Ok(response)
}

/// `GET /api/v1/session`: whether this browser is signed in (the guard
/// answered 401 otherwise).
pub(crate) async fn session() -> Json<SessionInfo> {
    Json(SessionInfo { signed_in: true, ttl_seconds: SESSION_TTL.as_secs() })
}

/// `DELETE /api/v1/session`: signs this browser out.
pub(crate) async fn sign_out(State(guard): State<Arc<Guard>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        guard.sessions.end(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie("", 0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_found_by_their_id_and_end() {
        let sessions = Sessions::default();
        let id = sessions.create();
        assert!(sessions.valid(&id));
        assert!(!sessions.valid("0000"));
        sessions.end(&id);
        assert!(!sessions.valid(&id));
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; smsgate_session=abc ; b=2"));
        assert_eq!(session_cookie(&headers), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("smsgate_session="));
        assert_eq!(session_cookie(&headers), None);
    }
}
