//! What every admin request passes before a handler sees it (docs/ARCHITECTURE.md
//! invariant 8, "the admin side is private"), in this order:
//!
//! 1. `Host` names the listener's own address, any IP literal when it
//!    listens on all addresses, or loopback (`localhost`, `127.0.0.1`,
//!    `[::1]`), whatever the port: anything else is a DNS-rebinding page
//!    reaching us under its own name → 421.
//! 2. No `Origin` other than the listener's own and no `Sec-Fetch-Site`
//!    other than `same-origin`/`none`: a web page of another origin (another
//!    port of localhost included) never gets to act → 403.
//! 3. The bearer token, compared as SHA-256 digests in constant time, so
//!    neither its content nor its length shows in the timing, or the
//!    console's session cookie (`crate::console`) → 401. Only the console's
//!    own page and files and signing in need neither.
//! 4. Writes (`POST`, `PUT`, `PATCH`, `DELETE`) carry `application/json`:
//!    a cross-site form or `text/plain` body (no CORS preflight) cannot →
//!    415.
//!
//! The token always exists: [`admin_token`] takes `SMSGATE_ADMIN_TOKEN`, or
//! the file ingress generates at first start (`shared::admin_token`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use smsgate_shared::config::Settings;
use subtle::ConstantTimeEq;

use smsgate_shared::http::{has_media_type, token_digest};

use crate::AdminError;
use crate::console::{ConsoleSession, Sessions, SignInThrottle, session_cookie};

/// The admin token: `SMSGATE_ADMIN_TOKEN`, else the token file (created with
/// a fresh token at first start). Never None: the admin API always needs one.
pub fn admin_token(settings: &Settings) -> Result<SecretString, String> {
    if let Some(t) = settings.admin_token.as_ref().filter(|t| !t.expose_secret().trim().is_empty()) {
        return Ok(t.clone());
    }
    let Some(file) = &settings.admin_token_file else {
        return Err("SMSGATE_ADMIN_TOKEN is not set and there is no place for a generated one: \
                    set SMSGATE_ADMIN_TOKEN (`smsgate gen-token`) or SMSGATE_ADMIN_TOKEN_FILE (or HOME)"
            .to_owned());
    };
    let (token, created) = smsgate_shared::admin_token::load_or_create(file)
        .map_err(|e| format!("cannot read or create the admin token file {}: {e}", file.display()))?;
    if created {
        tracing::info!(file = %file.display(), "generated the admin token (the CLI reads it from this file)");
    } else {
        tracing::info!(file = %file.display(), "admin token read from its file");
    }
    Ok(token)
}

/// What the guard compares against.
pub struct Guard {
    token_digest: [u8; 32],
    listener: SocketAddr,
    /// The console's signed-in browsers.
    pub(crate) sessions: Sessions,
    /// Sign-in attempts per client address.
    pub(crate) sign_ins: SignInThrottle,
}

/// Who a request comes from, once the guard let it through.
enum Caller {
    /// The bearer token (the CLI, scripts, agents).
    Token,
    /// The console, by its session cookie.
    Console(ConsoleSession),
}

impl Guard {
    pub fn new(token: &SecretString, listener: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            token_digest: token_digest(token.expose_secret()),
            listener,
            sessions: Sessions::default(),
            sign_ins: SignInThrottle::default(),
        })
    }

    /// Whether `presented` is the admin token (constant time).
    pub(crate) fn token_matches(&self, presented: &str) -> bool {
        let equal = token_digest(presented).ct_eq(&self.token_digest);
        bool::from(equal) && !presented.is_empty()
    }

    /// Whether `host` (a `Host` header's value) names this listener. The
    /// port is not compared: rebinding needs a name, and ports change
    /// behind port mappings and proxies.
    fn host_allowed(&self, host: &str) -> bool {
        let name = split_host(host);
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.listener.ip() || self.listener.ip().is_unspecified(),
            Err(_) => false,
        }
    }

    fn origin_allowed(&self, headers: &HeaderMap, host: &str) -> bool {
        let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
        if fetch_site.is_some_and(|s| s != b"same-origin" && s != b"none") {
            return false;
        }
        match headers.get(header::ORIGIN).map(|v| v.to_str()) {
            None => true,
            // Our own origin is the scheme and the very host the request names.
            Some(Ok(origin)) => origin.strip_prefix("http://").is_some_and(|o| o.eq_ignore_ascii_case(host)),
            Some(Err(_)) => false,
        }
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .unwrap_or("");
        // Digests have one length whatever was presented: nothing leaks.
        self.token_matches(presented)
    }

    /// The hosts the MCP transport's own DNS-rebinding check admits: the
    /// names [`Self::host_allowed`] admits, any port. None when the listener
    /// is on every address: then any IP literal names it, which a list
    /// cannot say (this guard, which runs first, checks it).
    pub fn mcp_allowed_hosts(&self) -> Option<Vec<String>> {
        let ip = self.listener.ip();
        if ip.is_unspecified() {
            return None;
        }
        let mut hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
        if !ip.is_loopback() {
            hosts.push(ip.to_string());
        }
        Some(hosts)
    }

    /// The origins the MCP transport's own Origin check admits: ours (this
    /// listener's names over http, any port), the same set
    /// [`Self::origin_allowed`] compares against. None with
    /// [`Self::mcp_allowed_hosts`] None.
    pub fn mcp_allowed_origins(&self) -> Option<Vec<String>> {
        let hosts = self.mcp_allowed_hosts()?;
        Some(
            hosts
                .iter()
                .map(|h| if h.contains(':') { format!("http://[{h}]:*") } else { format!("http://{h}:*") })
                .collect(),
        )
    }

    /// The bearer token, or the console's session cookie.
    fn authenticated(&self, headers: &HeaderMap) -> Option<Caller> {
        if self.token_ok(headers) {
            return Some(Caller::Token);
        }
        session_cookie(headers).and_then(|id| self.sessions.get(id)).map(Caller::Console)
    }
}

/// The name of `name:port`, `[v6]:port` or `name`.
fn split_host(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, _)) if !name.contains(':') => name,
        _ => host,
    }
}

/// What answers without the token: the console's page and files (no data
/// in them) and signing in. Host and origin are checked all the same.
fn is_public(method: &Method, path: &str) -> bool {
    match *method {
        Method::GET | Method::HEAD => crate::console::is_console_file(path),
        Method::POST => path == crate::console::SESSION_PATH,
        _ => false,
    }
}

fn is_write(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

fn is_json(headers: &HeaderMap) -> bool {
    has_media_type(headers, "application/json")
}

/// The MCP transport ends a session with a bodiless `DELETE /mcp`; a
/// cross-site page cannot send one (DELETE needs a CORS preflight, and the
/// origin check ran already).
fn is_mcp_session_end(method: &Method, path: &str) -> bool {
    *method == Method::DELETE && path == "/mcp"
}

/// The middleware: see the module docs for the order of the checks.
/// A request let in by a console session carries it ([`ConsoleSession`]),
/// so what lasts (an event stream) can end with the session.
pub async fn check(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let caller = guard.authenticated(headers);
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let refusal = if !guard.host_allowed(host) {
        Some((
            "host",
            AdminError::refused(
                StatusCode::MISDIRECTED_REQUEST,
                "wrong_host",
                "this listener does not serve that host name",
            ),
        ))
    } else if !guard.origin_allowed(headers, host) {
        Some((
            "origin",
            AdminError::refused(StatusCode::FORBIDDEN, "cross_origin", "requests from another origin are refused"),
        ))
    } else if !is_public(request.method(), request.uri().path()) && caller.is_none() {
        Some(("token", AdminError::Unauthorized))
    } else if is_write(request.method())
        && !is_json(headers)
        && !is_mcp_session_end(request.method(), request.uri().path())
    {
        Some((
            "content_type",
            AdminError::refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not_json",
                "writes take Content-Type: application/json",
            ),
        ))
    } else {
        None
    };
    match refusal {
        None => {
            if let Some(Caller::Console(session)) = caller {
                request.extensions_mut().insert(session);
            }
            next.run(request).await
        }
        Some((why, error)) => {
            metrics::counter!("smsgate_admin_refused_total", "why" => why).increment(1);
            tracing::warn!(service = "ingress", stage = "admin", why, method = %request.method(), path = %request.uri().path(), outcome = "refused", "admin request refused");
            error.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(listener: &str) -> Arc<Guard> {
        Guard::new(&SecretString::from("s3cret-token"), listener.parse().unwrap())
    }

    #[test]
    fn hosts_are_the_listener_or_loopback_names() {
        let g = guard("127.0.0.1:8001");
        for ok in ["127.0.0.1:8001", "localhost:8001", "LOCALHOST", "[::1]:8001", "127.0.0.1", "127.0.0.1:18001"] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:8001", "10.0.0.5:8001", "", "localhost.evil.example:8001", "[::1"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let lan = guard("10.0.0.5:8001");
        assert!(lan.host_allowed("10.0.0.5:8001"));
        assert!(!lan.host_allowed("10.0.0.6:8001"));
        assert!(guard("0.0.0.0:8001").host_allowed("192.168.1.9:8001"));
        assert!(!guard("0.0.0.0:8001").host_allowed("rebind.example:8001"));
    }

    #[test]
    fn the_mcp_transport_admits_the_hosts_and_origins_the_guard_does() {
        let local = guard("127.0.0.1:8001");
        assert_eq!(local.mcp_allowed_hosts().unwrap(), ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(
            local.mcp_allowed_origins().unwrap(),
            ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]
        );
        let lan = guard("10.0.0.5:8001");
        assert!(lan.mcp_allowed_hosts().unwrap().contains(&"10.0.0.5".to_owned()));
        assert!(lan.mcp_allowed_origins().unwrap().contains(&"http://10.0.0.5:*".to_owned()));
        // Every address: only the guard can say "any IP literal".
        assert_eq!(guard("0.0.0.0:8001").mcp_allowed_hosts(), None);
        assert_eq!(guard("0.0.0.0:8001").mcp_allowed_origins(), None);
    }

    #[test]
    fn only_our_own_origin_and_same_origin_fetches_pass() {
        let g = guard("127.0.0.1:8001");
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let host = "127.0.0.1:8001";
        assert!(g.origin_allowed(&with(&[]), host));
        assert!(
            g.origin_allowed(&with(&[("origin", "http://127.0.0.1:8001"), ("sec-fetch-site", "same-origin")]), host)
        );
        assert!(!g.origin_allowed(&with(&[("origin", "http://localhost:3000")]), host));
        assert!(!g.origin_allowed(&with(&[("origin", "null")]), host));
        assert!(!g.origin_allowed(&with(&[("sec-fetch-site", "cross-site")]), host));
        assert!(!g.origin_allowed(&with(&[("sec-fetch-site", "same-site")]), host));
    }

    #[test]
    fn the_token_must_match_exactly() {
        let g = guard("127.0.0.1:8001");
        let auth = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(g.token_ok(&auth("Bearer s3cret-token")));
        assert!(!g.token_ok(&auth("Bearer s3cret-toke")));
        assert!(!g.token_ok(&auth("Bearer s3cret-token2")));
        assert!(!g.token_ok(&HeaderMap::new()));
    }
}
