//! Signed webhooks and posting them to the stack's ingress.

use crate::webhook::{self, SignedWebhook};
use futures::StreamExt;
use smsgate_testkit::PATH_TOKEN;
use std::time::Duration;
use tokio::time::Instant;

use super::*;

impl Stack {
    /// A webhook for message `i` of this run, signed as Twilio signs it.
    pub fn webhook(&self, sid: &str, from: &str, body: &str) -> SignedWebhook {
        webhook::signed(&self.target, sid, from, body)
    }

    /// The same with one picture attached: a `MediaUrl0` on the Twilio
    /// stub, which serves a small PNG for any media (the worker fetches it).
    pub fn webhook_with_picture(&self, sid: &str, from: &str, body: &str) -> SignedWebhook {
        let media_sid = format!("ME{:0>32}", sid.get(sid.len().saturating_sub(32)..).unwrap_or(sid));
        let media = [(self.twilio.media_url(sid, &media_sid), "image/png".to_owned())];
        webhook::signed_with_media(&self.target, sid, from, body, &media)
    }

    /// Posts a webhook to ingress as Twilio does; returns the HTTP status
    /// (0 when no answer came at all).
    pub async fn post(&self, hook: &SignedWebhook) -> u16 {
        self.poster().post(hook).await.0
    }

    /// Posts `hooks` with `concurrency` connections; returns each one's status, in order.
    pub async fn post_all(&self, hooks: &[SignedWebhook], concurrency: usize) -> Vec<u16> {
        self.poster().post_all(hooks, concurrency).await.into_iter().map(|(s, _)| s).collect()
    }

    /// `http://127.0.0.1:<port>` of ingress's public listener.
    pub fn ingress_base(&self) -> String {
        let suffix = format!("{}{PATH_TOKEN}", smsgate_shared::config::WEBHOOK_PATH);
        self.ingress_url.strip_suffix(&suffix).unwrap_or(&self.ingress_url).to_owned()
    }

    /// A handle that posts webhooks from another task while the test
    /// kills and restarts things.
    pub fn poster(&self) -> Poster {
        Poster { http: self.http.clone(), url: self.ingress_url.clone() }
    }

    /// Posts to another channel's webhook path on this stack's ingress
    /// (a channel connected at run time).
    pub fn poster_for(&self, path_token: &str) -> Poster {
        let base = self.ingress_url.strip_suffix(PATH_TOKEN).unwrap_or(&self.ingress_url);
        Poster { http: self.http.clone(), url: format!("{base}{path_token}") }
    }
}

/// Posts signed webhooks to ingress, as Twilio does.
#[derive(Clone)]
pub struct Poster {
    http: reqwest::Client,
    url: String,
}

impl Poster {
    /// Posts one webhook; returns the HTTP status (0 when no answer came at
    /// all) and how long the answer took.
    pub async fn post(&self, hook: &SignedWebhook) -> (u16, Duration) {
        let started = Instant::now();
        let sent = self
            .http
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &hook.signature)
            .body(hook.body.clone())
            .send()
            .await;
        let status = match sent {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        (status, started.elapsed())
    }

    /// Posts `hooks` with `concurrency` connections; each one's status and
    /// latency, in order.
    pub async fn post_all(&self, hooks: &[SignedWebhook], concurrency: usize) -> Vec<(u16, Duration)> {
        futures::stream::iter(hooks.iter().map(|h| self.post(h))).buffered(concurrency.max(1)).collect().await
    }

    /// Posts `hook` until ingress answers 200 (as a Twilio that retried would),
    /// pausing `pause` between attempts; every attempt.
    pub async fn post_until_acked(&self, hook: &SignedWebhook, pause: Duration, timeout: Duration) -> Vec<Attempt> {
        let deadline = Instant::now() + timeout;
        let mut attempts = Vec::new();
        loop {
            let at = Instant::now();
            let (status, latency) = self.post(hook).await;
            attempts.push(Attempt { status, latency, at });
            if status == 200 || Instant::now() > deadline {
                return attempts;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// One post of a webhook: what ingress answered, how fast, and when.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The HTTP status (0 when no answer came at all).
    pub status: u16,
    pub latency: Duration,
    /// When the post started.
    pub at: Instant,
}
