//! Stubs of the chat backends, speaking their real wire formats on
//! `127.0.0.1:<free port>`:
//!
//! - [`OpenAiStub`]: an OpenAI-compatible `POST /v1/chat/completions`. It
//!   records every request and answers with a fixed reply, or with a reply
//!   derived from the last user message (the default: `"reply to: <text>"`).
//!   It can fail the next N calls with a status, be slow, or be down
//!   (connection refused) until brought back up.
//! - [`AgentStub`]: an agent webhook that checks the Standard Webhooks
//!   signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`) with
//!   its own implementation, records each call with the verdict, and answers
//!   `{"reply": ...}`, `{"reply": null}`, any JSON (a reply with `media`),
//!   204 or an error status.
//!
//! Both are cheap to start; each test starts its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn bind(port: u16) -> TcpListener {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Re-binding the same port right after going down may need a moment.
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind the chat stub on {addr}")
}

/// One call the OpenAI stub received.
#[derive(Debug, Clone)]
pub struct OpenAiRequest {
    /// The JSON body (`model`, `messages`, `max_tokens`, ...).
    pub body: Value,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

impl OpenAiRequest {
    /// The `messages` array.
    pub fn messages(&self) -> Vec<Value> {
        self.body.get("messages").and_then(Value::as_array).cloned().unwrap_or_default()
    }

    /// The text of the last user message (text part when it has parts).
    pub fn last_user_text(&self) -> String {
        self.messages()
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(content_text)
            .unwrap_or_default()
    }
}

fn content_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

#[derive(Default)]
struct OpenAiState {
    requests: Vec<OpenAiRequest>,
    /// None: `"reply to: <last user text>"`.
    reply: Option<String>,
    fail: Option<(u16, usize)>,
    delay: Duration,
    /// A delay for calls whose last user text contains the key instead.
    delay_when: Vec<(String, Duration)>,
    in_flight: usize,
    max_in_flight: usize,
    /// Assistant messages to answer with first (tool calls), oldest first.
    queued: std::collections::VecDeque<Value>,
}

/// An OpenAI-compatible chat completions stub.
pub struct OpenAiStub {
    port: u16,
    state: Arc<Mutex<OpenAiState>>,
    called: Arc<Notify>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl OpenAiStub {
    pub async fn start() -> Self {
        Self::start_on_port(0).await
    }

    /// On a given loopback port (0: any free one).
    pub async fn start_on_port(port: u16) -> Self {
        let listener = bind(port).await;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("stub address: {e}"));
        let stub = Self { port, state: Arc::default(), called: Arc::new(Notify::new()), server: Mutex::new(None) };
        stub.serve(listener);
        stub
    }

    fn serve(&self, listener: TcpListener) {
        let app = Router::new()
            .route("/v1/chat/completions", post(openai_handler))
            .with_state((self.state.clone(), self.called.clone()));
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *lock(&self.server) = Some(handle);
    }

    /// The `base_url` for the channel's chat config (`http://127.0.0.1:port/v1`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// A channel `chat` config for this stub (JSON text), with `extra` keys
    /// (e.g. `"history_turns": 4`) merged in.
    pub fn chat_config(&self, extra: &str) -> String {
        openai_chat_config(&self.base_url(), 5000, extra)
    }

    /// Answer every call with `text` from now on.
    pub fn set_reply(&self, text: &str) {
        lock(&self.state).reply = Some(text.to_owned());
    }

    /// Answer the next call with this assistant `message` (e.g. one with
    /// `tool_calls`); queued messages go first, in order.
    pub fn push_message(&self, message: Value) {
        lock(&self.state).queued.push_back(message);
    }

    /// Answer the next call with one tool call of `name` with `arguments`.
    pub fn push_tool_call(&self, name: &str, arguments: Value) {
        let n = {
            let s = lock(&self.state);
            s.requests.len() + s.queued.len()
        };
        self.push_message(json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": format!("call_{n}"), "type": "function",
            "function": {"name": name, "arguments": arguments.to_string()}
        }]}));
    }

    /// Fail the next `times` calls with `status` (500, 429, 400, ...).
    pub fn fail_next(&self, times: usize, status: u16) {
        lock(&self.state).fail = Some((status, times));
    }

    /// Wait `delay` before answering each call (the call is recorded at once).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// Wait `delay` before answering calls whose last user message contains
    /// `text` (other calls keep [`Self::set_delay`]'s delay).
    pub fn set_delay_when(&self, text: &str, delay: Duration) {
        lock(&self.state).delay_when.push((text.to_owned(), delay));
    }

    /// Stop listening: calls get "connection refused" until [`Self::up`].
    pub fn down(&self) {
        if let Some(h) = lock(&self.server).take() {
            h.abort();
        }
    }

    /// Listen again on the same port.
    pub async fn up(&self) {
        self.down();
        let listener = bind(self.port).await;
        self.serve(listener);
    }

    /// The most calls that were being answered at the same time.
    pub fn max_concurrency(&self) -> usize {
        lock(&self.state).max_in_flight
    }

    /// Every call so far, oldest first.
    pub fn requests(&self) -> Vec<OpenAiRequest> {
        lock(&self.state).requests.clone()
    }

    /// Waits until at least `n` calls were received (panics after `timeout`).
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<OpenAiRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.called.notified();
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("the OpenAI stub got {} calls, expected {n} within {timeout:?}", self.requests().len());
            }
        }
    }
}

impl Drop for OpenAiStub {
    fn drop(&mut self) {
        self.down();
    }
}

/// Counts a call as answered even when the client hangs up mid-way.
struct InFlight(Arc<Mutex<OpenAiState>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.0);
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

async fn openai_handler(
    State((state, called)): State<(Arc<Mutex<OpenAiState>>, Arc<Notify>)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not JSON: {e}")).into_response(),
    };
    let request = OpenAiRequest {
        body,
        authorization: headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned),
    };
    let (fail, delay, reply, queued) = {
        let mut s = lock(&state);
        s.requests.push(request.clone());
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        let fail = match &mut s.fail {
            Some((status, times)) if *times > 0 => {
                *times -= 1;
                Some(*status)
            }
            _ => None,
        };
        let user = request.last_user_text();
        let delay = s.delay_when.iter().find(|(t, _)| user.contains(t.as_str())).map_or(s.delay, |(_, d)| *d);
        let queued = if fail.is_none() { s.queued.pop_front() } else { None };
        (fail, delay, s.reply.clone(), queued)
    };
    let in_flight = InFlight(state.clone());
    called.notify_waiters();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    drop(in_flight);
    if let Some(status) = fail {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, axum::Json(json!({"error": {"message": "stub failure", "type": "server_error"}})))
            .into_response();
    }
    if request.body.get("model").and_then(Value::as_str).is_none() || request.messages().is_empty() {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": "model and messages required"}})))
            .into_response();
    }
    let text = reply.unwrap_or_else(|| format!("reply to: {}", request.last_user_text()));
    let (message, finish) = match queued {
        Some(m) if m.get("tool_calls").is_some() => (m, "tool_calls"),
        Some(m) => (m, "stop"),
        None => (json!({"role": "assistant", "content": text}), "stop"),
    };
    axum::Json(json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": request.body.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    }))
    .into_response()
}

/// How the agent stub answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAnswer {
    /// `{"reply": "reply to: <body>"}`.
    Echo,
    /// `{"reply": text}`.
    Reply(String),
    /// `{"reply": null}`.
    Null,
    /// Any JSON answer (e.g. `{"reply": "...", "media": [...]}`).
    Json(Value),
    /// 204 No Content.
    NoContent,
    /// An error status.
    Status(u16),
}

/// One call the agent stub received.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    pub body: Value,
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
    /// Whether the Standard Webhooks signature checked out (a request with a
    /// bad signature is answered 401).
    pub signature_valid: bool,
}

struct AgentState {
    secret: Vec<u8>,
    answer: AgentAnswer,
    requests: Vec<AgentRequest>,
}

/// An agent webhook that verifies Standard Webhooks signatures.
pub struct AgentStub {
    addr: SocketAddr,
    state: Arc<Mutex<AgentState>>,
    server: JoinHandle<()>,
}

/// A `whsec_` secret for tests.
pub const AGENT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

impl AgentStub {
    /// Starts the stub checking signatures made with `secret` (`whsec_<base64>`
    /// or raw).
    pub async fn start(secret: &str) -> Self {
        let key = secret.strip_prefix("whsec_").and_then(|b| STANDARD.decode(b).ok()).unwrap_or_else(|| secret.into());
        let state = Arc::new(Mutex::new(AgentState { secret: key, answer: AgentAnswer::Echo, requests: vec![] }));
        let listener = bind(0).await;
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("stub address: {e}"));
        let app = Router::new().route("/agent", post(agent_handler)).with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, server }
    }

    pub fn url(&self) -> String {
        format!("http://{}/agent", self.addr)
    }

    /// A channel `chat` config for this stub, signing with `secret`.
    pub fn chat_config(&self, secret: &str) -> String {
        format!(r#""chat": {{"kind": "webhook", "url": "{}", "secret": "{secret}", "timeout_ms": 5000}}"#, self.url())
    }

    pub fn set_answer(&self, answer: AgentAnswer) {
        lock(&self.state).answer = answer;
    }

    pub fn requests(&self) -> Vec<AgentRequest> {
        lock(&self.state).requests.clone()
    }
}

impl Drop for AgentStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Checks `v1,<base64>` signatures (space-separated list) against
/// HMAC-SHA256(key, "{id}.{timestamp}.{body}"), in constant time.
fn verify(key: &[u8], id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    signatures.split(' ').filter_map(|s| s.strip_prefix("v1,")).filter_map(|b| STANDARD.decode(b).ok()).any(|sig| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

async fn agent_handler(State(state): State<Arc<Mutex<AgentState>>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (id, timestamp, signature) = (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let fresh = timestamp.as_deref().and_then(|t| t.parse::<i64>().ok()).is_some_and(|t| (now - t).abs() <= 300);
    let mut s = lock(&state);
    let valid = match (&id, &timestamp, &signature) {
        (Some(id), Some(ts), Some(sig)) => fresh && verify(&s.secret, id, ts, &body, sig),
        _ => false,
    };
    let json_body = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    s.requests.push(AgentRequest {
        body: json_body.clone(),
        webhook_id: id,
        webhook_timestamp: timestamp,
        webhook_signature: signature,
        signature_valid: valid,
    });
    if !valid {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    match s.answer.clone() {
        AgentAnswer::Echo => {
            let text = json_body.get("body").and_then(Value::as_str).unwrap_or_default();
            axum::Json(json!({"reply": format!("reply to: {text}")})).into_response()
        }
        AgentAnswer::Reply(text) => axum::Json(json!({"reply": text})).into_response(),
        AgentAnswer::Null => axum::Json(json!({"reply": null})).into_response(),
        AgentAnswer::Json(value) => axum::Json(value).into_response(),
        AgentAnswer::NoContent => StatusCode::NO_CONTENT.into_response(),
        AgentAnswer::Status(code) => {
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR).into_response()
        }
    }
}

/// A channel `chat` config (JSON text) of kind `openai` for a stub at
/// `base_url`, with `extra` keys merged in.
pub(crate) fn openai_chat_config(base_url: &str, timeout_ms: u64, extra: &str) -> String {
    let comma = if extra.trim().is_empty() { "" } else { "," };
    format!(
        r#""chat": {{"kind": "openai", "base_url": "{base_url}", "model": "stub-model", "api_key": "sk-test", "timeout_ms": {timeout_ms}{comma} {extra}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_the_standard_webhooks_reference_vector() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let body = br#"{"test": 2432232314}"#;
        assert!(verify(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body, sig));
        assert!(verify(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body, &format!("v1,AAAA {sig}")));
        assert!(!verify(&key, "msg_other", "1614265330", body, sig));
    }
}
