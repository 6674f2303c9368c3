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
//! (`DELETE /api/v1/session`) or a restart ends them, and with them every
//! event stream they opened ([`ConsoleSession`]).
//!
//! Signing in is throttled per client address ([`SIGN_INS_PER_MINUTE`]):
//! past it the answer is 429 with `Retry-After`, and the log says so.
//!
//! The page writes every text it shows (message bodies above all) as text,
//! never as HTML, and the answers carry a strict Content-Security-Policy:
//! no inline script, nothing from another origin, no framing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use smsgate_shared::http::token_digest;
use tokio_util::sync::CancellationToken;

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
/// Sign-in attempts one client address may make in a minute.
pub const SIGN_INS_PER_MINUTE: u32 = 10;
/// The window the sign-in attempts are counted in.
const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses whose attempts are counted at most; past it the one
/// whose window began first is forgotten.
const MAX_SIGN_IN_ADDRESSES: usize = 4096;

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

/// A signed-in console session as a request made with its cookie carries
/// it (the guard puts it in the request's extensions): what ends it.
#[derive(Clone, Debug)]
pub struct ConsoleSession {
    /// Cancelled when the session is signed out or dropped.
    pub ended: CancellationToken,
    /// When it expires.
    pub expires: Instant,
}

impl ConsoleSession {
    /// Resolves when the session ends: signed out, dropped or expired.
    pub async fn over(self) {
        tokio::select! {
            _ = self.ended.cancelled() => {}
            _ = tokio::time::sleep_until(self.expires.into()) => {}
        }
    }
}

/// The console's signed-in sessions: digest of the session id → the session.
#[derive(Default)]
pub struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], ConsoleSession>>,
}

impl Sessions {
    /// A new session; its id goes into the cookie and nowhere else.
    fn create(&self) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let now = Instant::now();
        let mut map = self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, s| {
            let alive = s.expires > now;
            if !alive {
                s.ended.cancel();
            }
            alive
        });
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
            && let Some(gone) = map.remove(&oldest)
        {
            gone.ended.cancel();
        }
        map.insert(token_digest(&id), ConsoleSession { ended: CancellationToken::new(), expires: now + SESSION_TTL });
        id
    }

    /// The session with this id, while it is valid.
    pub(crate) fn get(&self, id: &str) -> Option<ConsoleSession> {
        let map = self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&token_digest(id)).filter(|s| s.expires > Instant::now() && !s.ended.is_cancelled()).cloned()
    }

    #[cfg(test)]
    fn valid(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    fn end(&self, id: &str) {
        let gone = self.by_digest.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&token_digest(id));
        if let Some(session) = gone {
            session.ended.cancel();
        }
    }
}

/// Sign-in attempts per client address, counted in fixed windows.
#[derive(Default)]
pub struct SignInThrottle {
    by_address: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl SignInThrottle {
    /// Counts an attempt from `address` at `now`; `Err(seconds)` to wait
    /// when it is over [`SIGN_INS_PER_MINUTE`].
    fn attempt(&self, address: IpAddr, now: Instant) -> Result<(), u64> {
        let mut map = self.by_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_SIGN_IN_ADDRESSES && !map.contains_key(&address) {
            map.retain(|_, (began, _)| now.duration_since(*began) < SIGN_IN_WINDOW);
            if map.len() >= MAX_SIGN_IN_ADDRESSES
                && let Some(oldest) = map.iter().min_by_key(|(_, (began, _))| *began).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let (began, count) = map.entry(address).or_insert((now, 0));
        if now.duration_since(*began) >= SIGN_IN_WINDOW {
            (*began, *count) = (now, 0);
        }
        if *count >= SIGN_INS_PER_MINUTE {
            let left = SIGN_IN_WINDOW.saturating_sub(now.duration_since(*began));
            return Err(left.as_secs().max(1));
        }
        *count += 1;
        Ok(())
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
pub(crate) async fn sign_in(
    State(guard): State<Arc<Guard>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Result<Response, AdminError> {
    // Without the peer (a server that does not record it) every attempt
    // shares one count: stricter, never looser.
    let address = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(ConnectInfo(a))| a.ip());
    if let Err(retry_after) = guard.sign_ins.attempt(address, Instant::now()) {
        metrics::counter!("smsgate_admin_refused_total", "why" => "sign_in_throttled").increment(1);
        tracing::warn!(
            service = "ingress",
            stage = "admin",
            outcome = "refused",
            why = "sign_in_throttled",
            client = %address,
            retry_after_s = retry_after,
            "console sign-in attempts from this address are over {SIGN_INS_PER_MINUTE} a minute; refused"
        );
        return Err(AdminError::Limited {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_sign_ins",
            detail: format!(
                "more than {SIGN_INS_PER_MINUTE} sign-in attempts a minute from this address; try again in {retry_after} s"
            ),
            retry_after,
        });
    }
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
    fn ending_a_session_cancels_what_it_opened() {
        let sessions = Sessions::default();
        let id = sessions.create();
        let held = sessions.get(&id).unwrap();
        assert!(!held.ended.is_cancelled());
        sessions.end(&id);
        assert!(held.ended.is_cancelled());
        assert!(sessions.get(&id).is_none());
    }

    #[tokio::test]
    async fn a_session_is_over_when_it_expires() {
        let session =
            ConsoleSession { ended: CancellationToken::new(), expires: Instant::now() + Duration::from_millis(50) };
        tokio::time::timeout(Duration::from_secs(5), session.over()).await.unwrap();
    }

    #[test]
    fn sign_ins_are_counted_per_address_in_a_minute() {
        let throttle = SignInThrottle::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let now = Instant::now();
        for _ in 0..SIGN_INS_PER_MINUTE {
            assert_eq!(throttle.attempt(a, now), Ok(()));
        }
        assert_eq!(throttle.attempt(a, now + Duration::from_secs(20)), Err(40));
        assert_eq!(throttle.attempt(b, now), Ok(()), "another address has its own count");
        assert_eq!(throttle.attempt(a, now + SIGN_IN_WINDOW), Ok(()), "a new minute, a new count");
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
