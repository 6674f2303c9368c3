//! Twilio's side of a ConversationRelay session (TWILIO.md §11): a
//! WebSocket client that signs the upgrade as Twilio does (`X-Twilio-Signature`
//! over the `wss://` URL, here `ws://` for a `http://` public base, no
//! parameters), sends `setup`, `prompt`, `interrupt` and `dtmf`, and records
//! every message it receives with the instant it arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Sink = futures::stream::SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One message from ingress, with when it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// The JSON (a non-JSON text as a string).
    pub value: Value,
}

impl Received {
    pub fn kind(&self) -> &str {
        self.value.get("type").and_then(Value::as_str).unwrap_or("")
    }
    pub fn token(&self) -> &str {
        self.value.get("token").and_then(Value::as_str).unwrap_or("")
    }
    pub fn last(&self) -> bool {
        self.value.get("last").and_then(Value::as_bool).unwrap_or(false)
    }
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    /// The close frame's code and reason, or 1006 when the socket just ended.
    closed: Option<(u16, String)>,
}

/// One simulated ConversationRelay session.
pub struct RelaySim {
    sink: tokio::sync::Mutex<Sink>,
    log: Arc<Mutex<Log>>,
    changed: Arc<Notify>,
}

/// How the upgrade ended when it was refused: the HTTP status.
#[derive(Debug)]
pub enum ConnectError {
    Refused(u16),
    Other(String),
}

impl RelaySim {
    /// The socket URL Twilio signs for `public_base` (`https://` → `wss://`).
    pub fn signed_url(public_base: &str, path_token: &str) -> String {
        let base = if let Some(rest) = public_base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = public_base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            public_base.to_owned()
        };
        format!("{base}/api/channels/voice/twilio/relay/{path_token}")
    }

    /// Twilio's signature of the upgrade: the URL alone, no parameters.
    pub fn sign(auth_token: &str, url: &str) -> String {
        let none: &[(&str, &str)] = &[];
        smsgate_shared::signature::sign(auth_token, url, none)
    }

    /// Connects to ingress at `addr` as Twilio would, signed for the channel's
    /// public base URL.
    pub async fn connect(
        addr: SocketAddr,
        public_base: &str,
        path_token: &str,
        auth_token: &str,
    ) -> Result<Self, ConnectError> {
        let signature = Self::sign(auth_token, &Self::signed_url(public_base, path_token));
        Self::connect_with(addr, path_token, Some(&signature)).await
    }

    /// Connects with the given signature header (or none).
    pub async fn connect_with(
        addr: SocketAddr,
        path_token: &str,
        signature: Option<&str>,
    ) -> Result<Self, ConnectError> {
        let url = format!("ws://{addr}/api/channels/voice/twilio/relay/{path_token}");
        let mut request = url.into_client_request().map_err(|e| ConnectError::Other(e.to_string()))?;
        if let Some(sig) = signature {
            let value = sig.parse().map_err(|_| ConnectError::Other("signature is not a header value".to_owned()))?;
            request.headers_mut().insert("X-Twilio-Signature", value);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request).await.map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => ConnectError::Refused(response.status().as_u16()),
            other => ConnectError::Other(other.to_string()),
        })?;
        let (sink, mut stream) = socket.split();
        let log = Arc::new(Mutex::new(Log::default()));
        let changed = Arc::new(Notify::new());
        let (reader_log, reader_changed) = (log.clone(), changed.clone());
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let at = Instant::now();
                match message {
                    Ok(Message::Text(text)) => {
                        let value = serde_json::from_str(text.as_str()).unwrap_or(Value::String(text.to_string()));
                        lock(&reader_log).received.push(Received { at, value });
                    }
                    Ok(Message::Close(frame)) => {
                        let closed = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                        lock(&reader_log).closed = Some(closed);
                        reader_changed.notify_waiters();
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                reader_changed.notify_waiters();
            }
            let mut log = lock(&reader_log);
            if log.closed.is_none() {
                log.closed = Some((u16::from(CloseCode::Abnormal), String::new()));
            }
            drop(log);
            reader_changed.notify_waiters();
        });
        Ok(Self { sink: tokio::sync::Mutex::new(sink), log, changed })
    }

    /// Sends a text frame as it is.
    pub async fn send_raw(&self, text: &str) -> Instant {
        let at = Instant::now();
        let _ = self.sink.lock().await.send(Message::Text(text.to_owned().into())).await;
        at
    }

    async fn send(&self, value: Value) -> Instant {
        self.send_raw(&value.to_string()).await
    }

    /// `setup` for an incoming call from `from` to `to`.
    pub async fn setup(&self, account_sid: &str, call_sid: &str, from: &str, to: &str) -> Instant {
        self.send(json!({
            "type": "setup",
            "sessionId": format!("VX{}", &call_sid[2..]),
            "accountSid": account_sid,
            "callSid": call_sid,
            "from": from,
            "to": to,
            "forwardedFrom": to,
            "callType": "PSTN",
            "callerName": "",
            "direction": "inbound",
            "callStatus": "IN-PROGRESS",
            "customParameters": {"channel_id": "test"}
        }))
        .await
    }

    /// A final prompt: the caller's words.
    pub async fn prompt(&self, words: &str) -> Instant {
        self.send(json!({"type": "prompt", "voicePrompt": words, "lang": "en-US", "last": true})).await
    }

    /// The caller talked over the agent after hearing `heard`.
    pub async fn interrupt(&self, heard: &str, ms: u64) -> Instant {
        self.send(json!({"type": "interrupt", "utteranceUntilInterrupt": heard, "durationUntilInterruptMs": ms})).await
    }

    pub async fn dtmf(&self, digit: &str) -> Instant {
        self.send(json!({"type": "dtmf", "digit": digit})).await
    }

    /// Closes the socket (the caller hung up, or Twilio dropped it).
    pub async fn hang_up(&self) {
        let _ = self.sink.lock().await.close().await;
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.log).received.clone()
    }

    /// The close code and reason, once the socket is closed.
    pub fn closed(&self) -> Option<(u16, String)> {
        lock(&self.log).closed.clone()
    }

    /// Waits until `f` finds what it wants in the messages (panics after `timeout`).
    pub async fn wait_for<T>(&self, timeout: Duration, what: &str, f: impl Fn(&[Received]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(v) = f(&self.received()) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let received = self.received();
                if let Some(v) = f(&received) {
                    return v;
                }
                panic!("timed out after {timeout:?} waiting for {what}; received {received:?}");
            }
        }
    }

    /// Waits for the `last: true` text after the first `skip` messages;
    /// returns the text messages of that talk cycle (from `skip` on).
    pub async fn wait_cycle(&self, timeout: Duration, skip: usize) -> Vec<Received> {
        self.wait_for(timeout, "a text message with last: true", |r| {
            let tail = r.get(skip..)?;
            let end = tail.iter().position(|m| m.kind() == "text" && m.last())?;
            Some(tail[..=end].to_vec())
        })
        .await
    }

    /// Waits for the socket to close; its code and reason.
    pub async fn wait_closed(&self, timeout: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(c) = self.closed() {
                return c;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.closed().unwrap_or_else(|| panic!("the relay socket did not close within {timeout:?}"));
            }
        }
    }
}

/// The tokens of a talk cycle joined: what Twilio would speak.
pub fn spoken(cycle: &[Received]) -> String {
    cycle.iter().filter(|m| m.kind() == "text").map(Received::token).collect()
}
