//! The public listener's HTTP server, hardened against slow and idle
//! clients (what `axum::serve` leaves open: it sets no header-read timer,
//! no connection cap and waits for every connection on shutdown).
//!
//! - A cap on open connections ([`Limits::max_connections`]): past it a new
//!   connection is closed at once and a warning says so (at most once a
//!   second), so a flood of sockets cannot exhaust file descriptors and
//!   Twilio's next webhook still finds a free slot when one closes.
//! - The request head must arrive within [`Limits::header_timeout`]
//!   (hyper's header-read timer, which also runs between keep-alive
//!   requests).
//! - Reading the body and answering must end within
//!   [`Limits::request_timeout`] (a `TimeoutLayer` around the router: the
//!   body is read inside the handler) → 408.
//! - A connection on which nothing moves in either direction for
//!   [`Limits::idle_timeout`] is closed (within a quarter more), whatever
//!   state it is in (a client that stops reading our answer included).
//! - Each request carries the client's address (axum's `ConnectInfo`), for
//!   what is counted per address (the console's sign-in attempts).
//! - On shutdown: no new connections; open ones are asked to finish (hyper's
//!   graceful shutdown closes idle keep-alive connections at once) and are
//!   dropped when [`Limits::grace`] is over, whatever the client does.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The public listener's limits; the defaults are what production runs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Well under the usual 1024 descriptors, far above what Twilio uses.
            max_connections: 512,
            header_timeout: Duration::from_secs(5),
            // Twilio waits 15 s; the publish itself is bounded at 2 s.
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then for at most
/// `limits.grace` more.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut last_warning: Option<Instant> = None;
    // One waiter for the whole loop: a fresh `cancelled()` per iteration
    // would lock the token's waiter list each time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        let accepted = tokio::select! {
            _ = &mut cancelled => break,
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(service = "ingress", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("smsgate_ingress_connections_refused_total").increment(1);
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_warning = Some(Instant::now());
                tracing::warn!(
                    service = "ingress",
                    max_connections = limits.max_connections,
                    outcome = "connection_cap",
                    "connection cap reached: closing new connections until some close"
                );
            }
            drop(stream);
            continue;
        };
        // Twilio's requests are small and each wants its answer at once: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, peer, router, limits, shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    // Every connection task ends within the grace period by itself; this
    // bound only guards against a bug there.
    let _ = tokio::time::timeout(limits.grace + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let moved = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(Watched { inner: stream, moved: moved.clone() });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        tower_service::Service::call(&mut router.clone(), request)
    });
    // With upgrades: the ConversationRelay WebSocket (relay.rs) is an
    // upgraded connection; the future ends when the socket is handed over.
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let tick = (limits.idle_timeout / 4).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(tick);
    let mut last_moved = Instant::now();
    // Made once: this loop wakes for every request on the connection, and a
    // fresh `cancelled()` each time contends on the token shared by all.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = &mut cancelled => break,
            _ = ticks.tick() => {
                // The clock is read here, once a tick, not on every read and
                // write: a connection is closed between one and 1¼ idle
                // timeouts after bytes last moved.
                if moved.swap(false, Ordering::Relaxed) {
                    last_moved = Instant::now();
                } else if last_moved.elapsed() >= limits.idle_timeout {
                    metrics::counter!("smsgate_ingress_connections_idle_closed_total").increment(1);
                    return;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.grace, conn).await;
}

/// A stream that notes that bytes moved (a flag the connection's tick
/// clears).
struct Watched {
    inner: TcpStream,
    moved: Arc<AtomicBool>,
}

impl Watched {
    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
