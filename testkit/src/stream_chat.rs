//! A streaming OpenAI-compatible chat stub: `POST /v1/chat/completions`
//! with `"stream": true` answers `text/event-stream`, its first token after
//! a set delay and the next ones at a set rate (`data: {"choices":[{"delta":
//! {"content": …}}]}` … `data: [DONE]`). It records, for each request, when
//! each token went out and whether the client stopped reading before the
//! end (the body dropped early: the model would stop generating).
//! Without `stream` it answers the whole reply at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One request and how its stream went.
#[derive(Debug, Clone)]
pub struct StreamCall {
    pub body: Value,
    pub received: Instant,
    /// When each token was handed to the connection.
    pub token_times: Vec<Instant>,
    /// The tokens sent.
    pub tokens: Vec<String>,
    /// `[DONE]` went out.
    pub finished: bool,
    /// The client stopped reading before the end.
    pub abandoned: bool,
}

impl StreamCall {
    pub fn first_token_at(&self) -> Option<Instant> {
        self.token_times.first().copied()
    }

    /// The text of the last user message.
    pub fn last_user_text(&self) -> String {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")))
            .and_then(|m| m.get("content").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned()
    }
}

struct Config {
    first_delay: Duration,
    interval: Duration,
    /// None: `reply to: <last user text>`, a word per token.
    tokens: Option<Vec<String>>,
}

struct Inner {
    calls: Vec<StreamCall>,
    config: Config,
}

/// The streaming stub.
pub struct StreamingStub {
    port: u16,
    inner: Arc<Mutex<Inner>>,
    called: Arc<Notify>,
}

impl StreamingStub {
    /// First token after `first_delay`, then one every `interval`.
    pub async fn start(first_delay: Duration, interval: Duration) -> Self {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap_or_else(|e| panic!("cannot bind the streaming stub: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("stub address: {e}"));
        let inner =
            Arc::new(Mutex::new(Inner { calls: Vec::new(), config: Config { first_delay, interval, tokens: None } }));
        let called = Arc::new(Notify::new());
        let app =
            Router::new().route("/v1/chat/completions", post(handler)).with_state((inner.clone(), called.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, inner, called }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// A channel `chat` config for this stub (JSON text).
    pub fn chat_config(&self, extra: &str) -> String {
        crate::chat::openai_chat_config(&self.base_url(), 20000, extra)
    }

    /// Answer every call with these tokens from now on.
    pub fn set_tokens(&self, tokens: &[&str]) {
        lock(&self.inner).config.tokens = Some(tokens.iter().map(|t| (*t).to_owned()).collect());
    }

    pub fn set_first_delay(&self, delay: Duration) {
        lock(&self.inner).config.first_delay = delay;
    }

    pub fn set_interval(&self, interval: Duration) {
        lock(&self.inner).config.interval = interval;
    }

    pub fn calls(&self) -> Vec<StreamCall> {
        lock(&self.inner).calls.clone()
    }

    /// Waits until `f` finds what it wants in the calls (panics after `timeout`).
    pub async fn wait_for<T>(&self, timeout: Duration, what: &str, f: impl Fn(&[StreamCall]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.called.notified();
            if let Some(v) = f(&self.calls()) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let calls = self.calls();
                if let Some(v) = f(&calls) {
                    return v;
                }
                panic!("timed out after {timeout:?} waiting for {what}; calls {calls:?}");
            }
        }
    }
}

/// Marks the call abandoned when the body is dropped before `[DONE]`.
struct Watch {
    inner: Arc<Mutex<Inner>>,
    called: Arc<Notify>,
    index: usize,
    done: bool,
}

impl Watch {
    fn update(&self, f: impl FnOnce(&mut StreamCall)) {
        if let Some(call) = lock(&self.inner).calls.get_mut(self.index) {
            f(call);
        }
        self.called.notify_waiters();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.done {
            self.update(|c| c.abandoned = true);
        }
    }
}

async fn handler(State((inner, called)): State<(Arc<Mutex<Inner>>, Arc<Notify>)>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let call = StreamCall {
        body,
        received: Instant::now(),
        token_times: vec![],
        tokens: vec![],
        finished: false,
        abandoned: false,
    };
    let user = call.last_user_text();
    let (index, first_delay, interval, tokens) = {
        let mut s = lock(&inner);
        s.calls.push(call);
        let tokens = s.config.tokens.clone().unwrap_or_else(|| {
            let text = format!("reply to: {user}");
            let mut out = Vec::new();
            for (i, word) in text.split(' ').enumerate() {
                out.push(if i == 0 { word.to_owned() } else { format!(" {word}") });
            }
            out
        });
        (s.calls.len() - 1, s.config.first_delay, s.config.interval, tokens)
    };
    called.notify_waiters();
    if !stream {
        tokio::time::sleep(first_delay).await;
        let text: String = tokens.concat();
        return axum::Json(json!({
            "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
        }))
        .into_response();
    }
    let watch = Watch { inner, called, index, done: false };
    let state = (watch, tokens.into_iter(), true);
    let body = futures::stream::unfold(state, move |(mut watch, mut tokens, first)| async move {
        if watch.done {
            return None;
        }
        tokio::time::sleep(if first { first_delay } else { interval }).await;
        let chunk = match tokens.next() {
            Some(token) => {
                let at = Instant::now();
                let data = json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": null}]});
                watch.update(|c| {
                    c.token_times.push(at);
                    c.tokens.push(token);
                });
                format!("data: {data}\n\n")
            }
            None => {
                watch.done = true;
                watch.update(|c| c.finished = true);
                "data: [DONE]\n\n".to_owned()
            }
        };
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (watch, tokens, false)))
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body))
        .into_response()
}
