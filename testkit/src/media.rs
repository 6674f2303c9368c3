//! A second HTTP server for media tests, on `127.0.0.1:<free port>`:
//! Twilio's media store (where the Twilio stub redirects a media URL), or
//! any other server that must see no request at all (an attacker's host in
//! a forged `MediaUrl`, a redirect target that is not a media host).
//!
//! It records every request (method, path and query, `Authorization`
//! header) and serves what was [`MediaHost::put`] for a path, else 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

/// A valid 1×1 PNG (a red pixel), for media that only has to be real.
pub const TINY_PNG: [u8; 69] = [
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0, 144, 119, 83,
    222, 0, 0, 0, 12, 73, 68, 65, 84, 120, 156, 99, 248, 207, 192, 0, 0, 3, 1, 1, 0, 201, 254, 146, 239, 0, 0, 0, 0,
    73, 69, 78, 68, 174, 66, 96, 130,
];

/// One request the host received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
}

/// How a file is served.
#[derive(Debug, Clone, Copy, Default)]
struct Serve {
    /// Wait this long before answering.
    delay: std::time::Duration,
    /// Send the body in chunks without a `Content-Length`.
    chunked: bool,
}

#[derive(Default)]
struct Inner {
    files: HashMap<String, (String, Vec<u8>, Serve)>,
    requests: Vec<HostRequest>,
}

/// The running server; stopped on drop.
pub struct MediaHost {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MediaHost {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap_or_else(|e| panic!("media host stub cannot bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("media host address: {e}"));
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(serve).with_state(inner.clone());
        let stop = CancellationToken::new();
        let until = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(until).await;
        });
        Self { addr, inner, stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `bytes` at `path` (which starts with `/`); returns its URL
    /// with a query like the signed URLs of Twilio's media store.
    pub fn put(&self, path: &str, content_type: &str, bytes: &[u8]) -> String {
        self.put_as(path, content_type, bytes, Serve::default())
    }

    /// Like [`Self::put`], answered only after `delay` (a stalled store).
    pub fn put_slow(&self, path: &str, content_type: &str, bytes: &[u8], delay: std::time::Duration) -> String {
        self.put_as(path, content_type, bytes, Serve { delay, chunked: false })
    }

    /// Like [`Self::put`], the body in 1 KiB chunks with no `Content-Length`
    /// (a client must count what it reads).
    pub fn put_chunked(&self, path: &str, content_type: &str, bytes: &[u8]) -> String {
        self.put_as(path, content_type, bytes, Serve { delay: std::time::Duration::ZERO, chunked: true })
    }

    fn put_as(&self, path: &str, content_type: &str, bytes: &[u8], serve: Serve) -> String {
        lock(&self.inner).files.insert(path.to_owned(), (content_type.to_owned(), bytes.to_vec(), serve));
        format!("{}{path}?Expires=9999999999&Signature=stub", self.base_url())
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<HostRequest> {
        lock(&self.inner).requests.clone()
    }
}

impl Drop for MediaHost {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(State(inner): State<Arc<Mutex<Inner>>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let target = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let file = {
        let mut inner = lock(&inner);
        inner.requests.push(HostRequest { method: method.to_string(), target, authorization });
        inner.files.get(uri.path()).cloned()
    };
    let Some((content_type, bytes, serve)) = file.filter(|_| method == Method::GET) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    tokio::time::sleep(serve.delay).await;
    let body = if serve.chunked {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(1024).map(|c| Ok(c.to_vec())).collect();
        axum::body::Body::from_stream(futures::stream::iter(chunks))
    } else {
        axum::body::Body::from(bytes)
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}
