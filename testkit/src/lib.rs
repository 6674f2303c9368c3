//! smsgate's test kit: real parts for tests, never linked into a service.
//!
//! Every crate takes it as a dev-dependency only; the e2e crate (test-only,
//! never shipped) uses it in its harness and in `smsgate-loadgen`.
//! `deploy/test.sh` checks that no shipped crate depends on it normally.
//!
//! # Layout
//!
//! - [`browser`]: a headless Chromium driven over WebDriver, for the console.
//! - [`nats`]: [`nats::NatsServer`], a real `nats-server -js` on a free port
//!   with a temporary store, stopped and removed on drop, and
//!   [`nats::NatsCluster`], three of them in one JetStream cluster.
//! - [`twilio`]: a stub of Twilio's Messages and Calls APIs speaking their wire format,
//!   with media (MMS) served behind Basic auth and deletable, and the
//!   Account and IncomingPhoneNumbers resources (channel status, set_webhook).
//! - [`twilio_spec`]: a request checked against Twilio's OpenAPI
//!   description of `CreateMessage` (the spec in `shared/twilio/`).
//! - [`media`]: a second server, Twilio's media store or any host that must
//!   see no request, recording what it gets.
//! - [`chat`]: a stub of an OpenAI-compatible chat server and of an agent webhook.
//! - This file: the test channel ([`channel`], [`channel_with_id`]) with its
//!   credentials ([`ACCOUNT_SID`], [`AUTH_TOKEN`], [`PATH_TOKEN`],
//!   [`FROM_NUMBER`]), its JSON for connecting at run time ([`channel_json`]),
//!   a fresh [`secret_key`], and [`eventually`], polling until a condition holds.

pub mod browser;
pub mod chat;
pub mod media;
pub mod nats;
pub mod relay;
pub mod stream_chat;
pub mod twilio;
pub mod twilio_spec;

use std::time::Duration;

use smsgate_shared::config::{Channel, parse_channels};

/// A valid Account SID for tests.
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// The auth token of [`channel`].
pub const AUTH_TOKEN: &str = "test-auth-token-0123456789";
/// The path token of [`channel`] (≥ 32 characters).
pub const PATH_TOKEN: &str = "test-path-token-abcdefghijklmnopqrstuvwxyz";
/// The sending number of [`channel`].
pub const FROM_NUMBER: &str = "+15550001111";

/// A channel for tests: id `test`, public base `http://127.0.0.1:8000`, the
/// echo chat, limits too high to matter and quiet hours off (so that no
/// test depends on the hour it runs at), unless `extra` overrides them
/// (a key repeated in `extra` wins). `extra` is merged into `config` (JSON
/// object text without braces, e.g. `"\"mps\": 0"`, or empty).
pub fn channel(extra: &str) -> Channel {
    channel_with_id("test", PATH_TOKEN, extra)
}

/// Like [`channel`] with another id and path token.
pub fn channel_with_id(id: &str, path_token: &str, extra: &str) -> Channel {
    match parse_channels(&channel_text(id, path_token, extra), "testkit", &|_| None, None) {
        Ok(mut v) => v.remove(0),
        Err(e) => panic!("test channel config is invalid: {e}"),
    }
}

/// The JSON of [`channel_with_id`]: what a test connects at run time
/// (`POST /api/v1/channels`).
pub fn channel_json(id: &str, path_token: &str, extra: &str) -> serde_json::Value {
    serde_json::from_str(&channel_text(id, path_token, extra))
        .unwrap_or_else(|e| panic!("test channel JSON is invalid: {e}"))
}

fn channel_text(id: &str, path_token: &str, extra: &str) -> String {
    let comma = if extra.trim().is_empty() { "" } else { "," };
    // A test that sets its own `limits` gets only those.
    let limits = if extra.contains("\"limits\"") {
        ""
    } else {
        r#""limits": {"replies_per_minute": 1000000, "replies_per_day": 1000000},"#
    };
    format!(
        r#"{{"channel_id": "{id}", "config": {{
            "twilio_account_sid": "{ACCOUNT_SID}", "twilio_auth_token": "{AUTH_TOKEN}",
            "twilio_from_number": "{FROM_NUMBER}", "webhook_path_token": "{path_token}",
            "public_base_url": "http://127.0.0.1:8000", "chat": {{"kind": "echo"}},
            {limits}
            "compliance": {{"quiet_hours": null}}{comma} {extra} }} }}"#
    )
}

/// A fresh `SMSGATE_SECRET_KEY` for a test.
pub fn secret_key() -> std::sync::Arc<smsgate_shared::secret_key::SecretKey> {
    let text = smsgate_shared::secret_key::SecretKey::generate();
    std::sync::Arc::new(
        smsgate_shared::secret_key::SecretKey::parse(&text).unwrap_or_else(|e| panic!("generated key: {e}")),
    )
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A listener on a free loopback port that counts the connections made to
/// it and answers none: where a test points something that must never be
/// called (its base URL, and the count).
pub async fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    let base = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}")));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    (base, count)
}
