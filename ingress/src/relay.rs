//! ConversationRelay (`voice.mode: "relay"`, docs/ARCHITECTURE.md §8,
//! TWILIO.md §11): one WebSocket per call on the public listener,
//! `GET /api/channels/voice/twilio/relay/{path_token}`.
//!
//! - The upgrade is checked before it is accepted: path token → channel
//!   enabled with relay voice (404) → `X-Twilio-Signature` over the `wss://`
//!   URL Twilio opened, query included, no parameters (403).
//! - The session: `setup` first (within [`SETUP_WAIT`]), for the channel's
//!   account; at most one live socket per CallSid ([`Sessions`]); messages
//!   over [`MAX_MESSAGE`] bytes end the socket, more than [`MAX_MESSAGES`]
//!   too, and 10 malformed messages in a row close it with 1007.
//! - A final `prompt` is turn `n`: ingress subscribes to the core subject
//!   `P.voice.tokens.<CallSid>.<n>`, then publishes the turn to `P_INBOUND`
//!   (`Nats-Msg-Id` `<CallSid>-t<n>`, durable), and forwards each token to
//!   Twilio as `{"type":"text","token":…,"last":…}` as it arrives.
//! - No first token within `first_token_timeout_ms`: the filler line, once.
//!   No end within `turn_timeout_ms`: the fallback line goes into `P_calls`
//!   first (`create`, as in Gather mode: the worker's late answer is
//!   dropped, history records the fallback) and is spoken; the call goes on.
//! - `interrupt`, a newer prompt and the socket's end cancel the turn on
//!   `P.voice.cancel.<CallSid>.<n>` with what the caller heard; after the
//!   turn's last token (Twilio may still be speaking) an interrupt goes to
//!   that turn, and the next prompt tells it `done`.
//! - `dtmf` `0` (with `voice.dtmf` and a `forward_to`), an operator's
//!   takeover (the conversation's `P_conversations` entry is watched during
//!   the call; one made before the call reaches the worker, which answers
//!   the turn with a handoff chunk) end the session with
//!   `{"type":"end","handoffData":…}`; the `<Connect action>` route then
//!   dials `forward_to` ([`crate::voice`]). Other digits reach the model as
//!   text.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use smsgate_shared::bus::MsgId;
use smsgate_shared::domain::{CallSid, E164};
use smsgate_shared::envelope::{self, CallPart, CallReply, Inbound, Origin};
use smsgate_shared::signature;
use smsgate_shared::topology::Topology;
use smsgate_shared::voice::{self, RelayCancel, RelayChunk, VoiceMode};
use time::OffsetDateTime;

use crate::Shared;
use crate::webhook::{self, Entry};

/// The largest message Twilio may send us (a prompt is a few hundred bytes).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most messages one session takes.
pub const MAX_MESSAGES: u32 = 20_000;
/// Malformed messages in a row that close the socket (1007), as Twilio does.
pub const MAX_MALFORMED: u32 = 10;
/// How long the socket may stay open without its `setup`.
pub const SETUP_WAIT: Duration = Duration::from_secs(10);

/// The live sessions, one per CallSid.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashSet<String>>,
}

impl Sessions {
    /// Claims the CallSid for this socket; `None` when one is live already.
    fn claim(self: &Arc<Self>, call_sid: &CallSid) -> Option<Claimed> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if !live.insert(call_sid.to_string()) {
            return None;
        }
        metrics::gauge!("smsgate_ingress_relay_sockets").set(live.len() as f64);
        Some(Claimed { sessions: self.clone(), call_sid: call_sid.to_string() })
    }

    /// How many sockets are live.
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A CallSid's place in [`Sessions`], given back when the session ends.
struct Claimed {
    sessions: Arc<Sessions>,
    call_sid: String,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let mut live = self.sessions.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.call_sid);
        metrics::gauge!("smsgate_ingress_relay_sockets").set(live.len() as f64);
    }
}

fn refuse(status: StatusCode, reason: &'static str) -> Response {
    metrics::counter!("smsgate_ingress_requests_total", "route" => "voice_relay", "outcome" => "rejected").increment(1);
    tracing::warn!(
        route = "voice_relay",
        status = status.as_u16(),
        reason,
        outcome = "rejected",
        "relay upgrade refused"
    );
    (status, reason).into_response()
}

/// The `wss://` (or `ws://`) form of an `https://` (`http://`) base URL.
pub fn socket_base(base: &str) -> String {
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    }
}

/// `GET /api/channels/voice/twilio/relay/{path_token}`: checked, then upgraded.
pub async fn socket(
    State(shared): State<Arc<Shared>>,
    Path(token): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(entry) = shared.channels.find_token(&token) else {
        return refuse(StatusCode::NOT_FOUND, "unknown path token");
    };
    let channel = &entry.channel;
    if !channel.enabled || !channel.voice.enabled || channel.voice.mode != VoiceMode::Relay {
        return refuse(StatusCode::NOT_FOUND, "relay voice is not enabled on this channel");
    }
    if !channel.insecure_skip_signature {
        let Some(sig) = headers.get(signature::HEADER).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) else {
            return refuse(StatusCode::FORBIDDEN, "X-Twilio-Signature missing");
        };
        let Some(base) = webhook::public_base(channel, &headers) else {
            return refuse(StatusCode::FORBIDDEN, "no public_base_url and no Host header to sign against");
        };
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let url = format!("{}{path_and_query}", socket_base(&base));
        let no_params: &[(&str, &str)] = &[];
        if !signature::validate(channel.auth_token.expose_secret(), &url, no_params, sig) {
            return refuse(StatusCode::FORBIDDEN, "X-Twilio-Signature does not match");
        }
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            tracing::warn!(route = "voice_relay", outcome = "rejected", "not a WebSocket upgrade");
            return rejection.into_response();
        }
    };
    metrics::counter!("smsgate_ingress_requests_total", "route" => "voice_relay", "outcome" => "accepted").increment(1);
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move { Session::run(shared, entry, socket).await })
}

/// Twilio's `setup`, what we use of it.
struct Setup {
    call_sid: CallSid,
    peer: E164,
    ours: String,
    direction: String,
}

/// One turn being answered.
struct Live {
    n: u32,
    tokens: async_nats::Subscriber,
    prompted: Instant,
    first_token: bool,
    filler_sent: bool,
    streamed: String,
    filler_at: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

/// Why the session loop ended.
enum End {
    /// The socket closed or failed.
    Gone,
    /// We ended it (handoff, too many turns, bad input).
    Closed,
}

struct Session {
    shared: Arc<Shared>,
    entry: Arc<Entry>,
    tx: futures::stream::SplitSink<WebSocket, Message>,
    setup: Setup,
    turn: Option<Live>,
    /// The last turn whose stream ended while Twilio may still be saying
    /// it: an interrupt now is for it; the next prompt marks it `done`.
    spoken: Option<u32>,
    n: u32,
    malformed: u32,
}

impl Session {
    async fn run(shared: Arc<Shared>, entry: Arc<Entry>, socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let setup = match tokio::time::timeout(SETUP_WAIT, read_setup(&entry, &mut rx)).await {
            Ok(Ok(setup)) => setup,
            Ok(Err((code, reason))) => {
                tracing::warn!(channel_id = %entry.channel.id, reason, "relay session refused");
                let _ = tx.send(close(code, reason)).await;
                return;
            }
            Err(_) => {
                let _ = tx.send(close(1008, "no setup in time")).await;
                return;
            }
        };
        let Some(_claimed) = shared.relay.claim(&setup.call_sid) else {
            tracing::warn!(channel_id = %entry.channel.id, call_sid = %setup.call_sid, "a relay session for this call is live already");
            let _ = tx.send(close(1008, "a session for this call is live already")).await;
            return;
        };
        let mut session = Session { shared, entry, tx, setup, turn: None, spoken: None, n: 0, malformed: 0 };
        session.status(envelope::STREAM_STARTED, None).await;
        tracing::info!(channel_id = %session.entry.channel.id, call_sid = %session.setup.call_sid, "relay session started");
        let started = Instant::now();
        let mut pauses = session.watch_pauses().await;
        let end = session.serve(&mut rx, &mut pauses).await;
        if let Some(turn) = session.turn.take() {
            session.cancel(turn.n, None, "hangup").await;
        }
        if let Some(n) = session.spoken.take() {
            session.cancel(n, None, "hangup").await;
        }
        if matches!(end, End::Closed) {
            let _ = session.tx.close().await;
        }
        let secs = started.elapsed().as_secs();
        session.status(envelope::STREAM_ENDED, Some(secs)).await;
        tracing::info!(call_sid = %session.setup.call_sid, duration_secs = secs, "relay session ended");
    }

    /// The conversation's entry in `P_conversations`, watched: an operator
    /// taking it over during the call hands the call over at once.
    async fn watch_pauses(&self) -> Option<kv::Watch> {
        let store = self.shared.js.get_key_value(self.shared.topology.conversations_bucket()).await.ok()?;
        let key = Topology::conversation_key(&self.entry.channel.id, &self.setup.peer);
        store
            .watch(key)
            .await
            .inspect_err(|e| tracing::warn!(error = e as &dyn std::error::Error, "cannot watch for a takeover"))
            .ok()
    }

    async fn serve(&mut self, rx: &mut futures::stream::SplitStream<WebSocket>, pauses: &mut Option<kv::Watch>) -> End {
        let mut messages = 0u32;
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        loop {
            let filler_at =
                self.turn.as_ref().filter(|t| !t.first_token && !t.filler_sent).map_or_else(far, |t| t.filler_at);
            let deadline = self.turn.as_ref().map_or_else(far, |t| t.deadline);
            tokio::select! {
                message = rx.next() => {
                    let Some(Ok(message)) = message else { return End::Gone };
                    messages += 1;
                    if messages > MAX_MESSAGES {
                        let _ = self.tx.send(close(1008, "too many messages")).await;
                        return End::Closed;
                    }
                    match message {
                        Message::Text(text) => {
                            if let Some(end) = self.message(text.as_str()).await {
                                return end;
                            }
                        }
                        Message::Binary(_) => {
                            if let Some(end) = self.malformed().await {
                                return end;
                            }
                        }
                        Message::Close(_) => return End::Gone,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                chunk = next_chunk(&mut self.turn) => {
                    if let Some(end) = self.chunk(chunk).await {
                        return end;
                    }
                }
                entry = next_pause(pauses) => {
                    let paused = entry.is_some_and(|e| {
                        e.operation == kv::Operation::Put
                            && envelope::ConversationState::paused_until(&e.value, OffsetDateTime::now_utc())
                                .ok()
                                .flatten()
                                .is_some()
                    });
                    if paused {
                        return self.taken_over().await;
                    }
                }
                () = tokio::time::sleep_until(filler_at) => self.filler().await,
                () = tokio::time::sleep_until(deadline) => self.give_up().await,
            }
        }
    }

    /// One text message from Twilio; `Some` ends the session.
    async fn message(&mut self, text: &str) -> Option<End> {
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return self.malformed().await;
        };
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            return self.malformed().await;
        };
        match kind {
            "prompt" => {
                let Some(words) = value.get("voicePrompt").and_then(Value::as_str) else {
                    return self.malformed().await;
                };
                self.malformed = 0;
                // Partial prompts (with `partialPrompts`) wait for the last one.
                if value.get("last").and_then(Value::as_bool) == Some(false) {
                    return None;
                }
                let words = words.trim().to_owned();
                if words.is_empty() {
                    return None;
                }
                self.prompt(&words).await
            }
            "interrupt" => {
                self.malformed = 0;
                let heard = value.get("utteranceUntilInterrupt").and_then(Value::as_str).unwrap_or("").to_owned();
                metrics::counter!("smsgate_ingress_relay_interrupts_total").increment(1);
                match self.turn.take().map(|t| t.n).or_else(|| self.spoken.take()) {
                    Some(n) => {
                        tracing::info!(call_sid = %self.setup.call_sid, turn = n, "the caller interrupted the turn");
                        self.cancel(n, Some(heard), "interrupt").await;
                    }
                    None => tracing::debug!(call_sid = %self.setup.call_sid, "interrupt with no turn to stop"),
                }
                None
            }
            "dtmf" => {
                let Some(digit) = value.get("digit").and_then(Value::as_str).filter(|d| is_digit(d)) else {
                    return self.malformed().await;
                };
                self.malformed = 0;
                let v = &self.entry.channel.voice;
                if digit == "0" && v.relay.dtmf && v.forward_to.is_some() {
                    if let Some(turn) = self.turn.take() {
                        self.cancel(turn.n, None, "superseded").await;
                    }
                    return Some(self.handoff(voice::HANDOFF_DTMF).await);
                }
                let words = format!("(The caller pressed {digit} on the keypad.)");
                self.prompt(&words).await
            }
            "setup" => self.malformed().await,
            "error" => {
                self.malformed = 0;
                let description = value.get("description").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(
                    call_sid = %self.setup.call_sid,
                    description = %smsgate_shared::redact::third_party(description, 200),
                    "ConversationRelay reported an error"
                );
                None
            }
            // `info` and whatever Twilio adds: read leniently, ignored.
            _ => {
                self.malformed = 0;
                None
            }
        }
    }

    async fn malformed(&mut self) -> Option<End> {
        self.malformed += 1;
        metrics::counter!("smsgate_ingress_relay_malformed_total").increment(1);
        if self.malformed >= MAX_MALFORMED {
            tracing::warn!(call_sid = %self.setup.call_sid, "10 malformed messages in a row: the relay socket is closed");
            let _ = self.tx.send(close(1007, "malformed messages")).await;
            return Some(End::Closed);
        }
        None
    }

    /// A final prompt: turn `n + 1`, subscribed before it is published.
    async fn prompt(&mut self, words: &str) -> Option<End> {
        if let Some(turn) = self.turn.take() {
            self.cancel(turn.n, None, "superseded").await;
        }
        // The previous answer was heard whole (no interrupt came).
        if let Some(n) = self.spoken.take() {
            self.cancel(n, None, "done").await;
        }
        if self.n >= voice::MAX_RELAY_TURNS {
            let _ = self.text(voice::GOODBYE, true).await;
            return Some(self.handoff_or_end(None).await);
        }
        self.n += 1;
        let n = self.n;
        let prompted = Instant::now();
        let subject = self.shared.topology.voice_tokens_subject(&self.setup.call_sid, n);
        let tokens = match self.shared.client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = &e as &dyn std::error::Error, "cannot subscribe to the turn's tokens");
                return self.fallback_now().await;
            }
        };
        let part = CallPart::RelayTurn { call_sid: self.setup.call_sid.clone(), turn: n };
        if self.publish(self.inbound(part, words)).await.is_err() {
            tracing::warn!(call_sid = %self.setup.call_sid, turn = n, "cannot publish the relay turn");
            return self.fallback_now().await;
        }
        let relay = &self.entry.channel.voice.relay;
        let at = tokio::time::Instant::from_std(prompted);
        self.turn = Some(Live {
            n,
            tokens,
            prompted,
            first_token: false,
            filler_sent: false,
            streamed: String::new(),
            filler_at: at + Duration::from_millis(relay.first_token_timeout_ms),
            deadline: at + Duration::from_millis(relay.turn_timeout_ms),
        });
        None
    }

    /// An operator took the conversation over during the call: the turn
    /// stops, the caller is told, and the call is handed to a person.
    async fn taken_over(&mut self) -> End {
        if let Some(turn) = self.turn.take() {
            self.cancel(turn.n, None, "superseded").await;
        }
        if let Err(end) = self.text(voice::OPERATOR_WILL_ANSWER, true).await {
            return end;
        }
        self.handoff(voice::HANDOFF_TAKEOVER).await
    }

    /// A turn that could not even be published: the fallback line at once.
    async fn fallback_now(&mut self) -> Option<End> {
        metrics::counter!("smsgate_ingress_relay_fallbacks_total").increment(1);
        let line = self.fallback_line();
        self.text(&line, true).await.err()
    }

    fn fallback_line(&self) -> String {
        voice::RELAY_FALLBACK.to_owned()
    }

    /// A chunk of the current turn from the worker.
    async fn chunk(&mut self, message: Option<async_nats::Message>) -> Option<End> {
        let Some(message) = message else {
            // The subscription ended (NATS gone): the turn cannot finish.
            self.give_up().await;
            return None;
        };
        let Ok(chunk) = serde_json::from_slice::<RelayChunk>(&message.payload) else {
            tracing::warn!(call_sid = %self.setup.call_sid, "unreadable relay chunk dropped");
            return None;
        };
        let turn = self.turn.as_mut()?;
        if !chunk.token.is_empty() && !turn.first_token {
            turn.first_token = true;
            metrics::histogram!("smsgate_ingress_relay_first_token_seconds")
                .record(turn.prompted.elapsed().as_secs_f64());
        }
        turn.streamed.push_str(&chunk.token);
        let last = chunk.last || chunk.handoff.is_some();
        if last
            && let Some(turn) = self.turn.take()
            && chunk.handoff.is_none()
        {
            self.spoken = Some(turn.n);
        }
        if (!chunk.token.is_empty() || last)
            && let Err(end) = self.text(&chunk.token, last).await
        {
            return Some(end);
        }
        if let Some(reason) = chunk.handoff {
            return Some(self.handoff_or_end(Some(&reason)).await);
        }
        None
    }

    /// No first token yet: the filler line, once.
    async fn filler(&mut self) {
        let filler = self.entry.channel.voice.relay.filler.clone();
        let Some(turn) = self.turn.as_mut() else { return };
        turn.filler_sent = true;
        if filler.is_empty() {
            return;
        }
        metrics::counter!("smsgate_ingress_relay_fillers_total").increment(1);
        tracing::info!(call_sid = %self.setup.call_sid, turn = turn.n, "no first token in time: filler spoken");
        let _ = self.text(&filler, false).await;
    }

    /// No end in time: the fallback goes into `P_calls` first (the worker's
    /// late answer is dropped and history records the fallback), then is
    /// spoken; the call goes on.
    async fn give_up(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        metrics::counter!("smsgate_ingress_relay_fallbacks_total").increment(1);
        let line = self.fallback_line();
        let heard = format!("{} {line}", turn.streamed.trim());
        let fallback = CallReply::new("ingress", heard.trim().to_owned(), Origin::Timeout, false);
        let key = Topology::call_key(&self.setup.call_sid, turn.n);
        match self.shared.calls().await {
            Some(store) => match store.create(&key, envelope::encode(&fallback)).await {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => tracing::warn!(error = &e as &dyn std::error::Error, "cannot write the turn's fallback"),
            },
            None => tracing::warn!("no calls bucket: the turn's fallback is spoken but not recorded"),
        }
        tracing::warn!(call_sid = %self.setup.call_sid, turn = turn.n, outcome = "timeout", "relay turn not answered in time; fallback spoken");
        self.cancel(turn.n, None, "timeout").await;
        let _ = self.text(&format!(" {line}"), true).await;
    }

    /// Tells the worker to stop the turn.
    async fn cancel(&self, n: u32, heard: Option<String>, reason: &str) {
        let subject = self.shared.topology.voice_cancel_subject(&self.setup.call_sid, n);
        let body = RelayCancel { heard, reason: reason.to_owned() };
        let Ok(bytes) = serde_json::to_vec(&body) else { return };
        if let Err(e) = self.shared.client.publish(subject, bytes.into()).await {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot publish the relay cancel");
        }
    }

    /// `{"type":"text","token":…,"last":…}`; an error means the socket is gone.
    async fn text(&mut self, token: &str, last: bool) -> Result<(), End> {
        let message = json!({"type": "text", "token": token, "last": last}).to_string();
        self.tx.send(Message::Text(message.into())).await.map_err(|_| End::Gone)
    }

    /// Ends the session with `handoffData` (the action route dials
    /// `forward_to`), or plainly when there is no reason.
    async fn handoff_or_end(&mut self, reason: Option<&str>) -> End {
        match reason {
            Some(reason) => self.handoff(reason).await,
            None => {
                let _ = self.tx.send(Message::Text(json!({"type": "end"}).to_string().into())).await;
                End::Closed
            }
        }
    }

    async fn handoff(&mut self, reason: &str) -> End {
        tracing::info!(call_sid = %self.setup.call_sid, reason, "relay session handed off");
        metrics::counter!("smsgate_ingress_relay_handoffs_total").increment(1);
        let data = json!({"reason": reason, "channel_id": self.entry.channel.id.as_str()}).to_string();
        let _ = self.tx.send(Message::Text(json!({"type": "end", "handoffData": data}).to_string().into())).await;
        End::Closed
    }

    fn inbound(&self, part: CallPart, body: &str) -> Inbound {
        Inbound {
            v: envelope::VERSION,
            channel_id: self.entry.channel.id.clone(),
            message_sid: part.message_sid(),
            account_sid: self.entry.channel.account_sid.to_string(),
            from: self.setup.peer.to_string(),
            to: self.setup.ours.clone(),
            body: body.to_owned(),
            media: Vec::new(),
            received_at: OffsetDateTime::now_utc(),
            params: Vec::new(),
            call: Some(part),
        }
    }

    /// The socket's start or end, for history (`call.stream.started` / `ended`).
    async fn status(&self, status: &str, duration_secs: Option<u64>) {
        let part = CallPart::Status {
            call_sid: self.setup.call_sid.clone(),
            status: status.to_owned(),
            direction: self.setup.direction.clone(),
            duration_secs,
            detail: Some("ConversationRelay".to_owned()),
        };
        if self.publish(self.inbound(part, "")).await.is_err() {
            tracing::warn!(call_sid = %self.setup.call_sid, status, "cannot record the relay session's status");
        }
    }

    /// To `P_INBOUND`, durable, its MessageSid as `Nats-Msg-Id`.
    async fn publish(&self, inbound: Inbound) -> Result<bool, webhook::Rejection> {
        let sid = inbound.message_sid.clone();
        let subject = self.entry.local.inbound.clone();
        webhook::publish(&self.shared, subject, MsgId::Inbound(&sid), envelope::encode(&inbound)).await
    }
}

/// The next change of the conversation's pause; never, without a watch
/// (or once it ended).
async fn next_pause(watch: &mut Option<kv::Watch>) -> Option<kv::Entry> {
    let Some(w) = watch.as_mut() else { return std::future::pending().await };
    match w.next().await {
        Some(Ok(entry)) => Some(entry),
        Some(Err(_)) => None,
        None => {
            *watch = None;
            None
        }
    }
}

/// The next chunk of the current turn; never, without one.
async fn next_chunk(turn: &mut Option<Live>) -> Option<async_nats::Message> {
    match turn {
        Some(t) => t.tokens.next().await,
        None => std::future::pending().await,
    }
}

fn is_digit(d: &str) -> bool {
    d.len() == 1 && d.bytes().all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// Reads messages until `setup`: the call, for this channel's account.
async fn read_setup(
    entry: &Entry,
    rx: &mut futures::stream::SplitStream<WebSocket>,
) -> Result<Setup, (u16, &'static str)> {
    let mut malformed = 0;
    while let Some(Ok(message)) = rx.next().await {
        let Message::Text(text) = message else {
            if matches!(message, Message::Close(_)) {
                break;
            }
            continue;
        };
        let value: Option<Value> = serde_json::from_str(text.as_str()).ok();
        let Some(value) = value.filter(|v| v.get("type").and_then(Value::as_str) == Some("setup")) else {
            malformed += 1;
            if malformed >= MAX_MALFORMED {
                return Err((1007, "malformed messages"));
            }
            continue;
        };
        let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("");
        if field("accountSid") != entry.channel.account_sid.as_str() {
            return Err((1008, "setup for another account"));
        }
        let call_sid = CallSid::parse(field("callSid")).map_err(|_| (1008, "setup without a valid callSid"))?;
        let direction = if field("direction").is_empty() { "inbound" } else { field("direction") }.to_owned();
        let (peer, ours) = if direction.starts_with("outbound") { ("to", "from") } else { ("from", "to") };
        let peer = E164::parse(field(peer)).map_err(|_| (1008, "setup without the caller's number"))?;
        return Ok(Setup { call_sid, peer, ours: field(ours).to_owned(), direction });
    }
    Err((1000, "closed before setup"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls_are_the_wss_form_of_the_base() {
        assert_eq!(socket_base("https://example.com"), "wss://example.com");
        assert_eq!(socket_base("http://127.0.0.1:8000"), "ws://127.0.0.1:8000");
    }

    #[test]
    fn digits_are_keypad_keys() {
        for d in ["0", "9", "*", "#"] {
            assert!(is_digit(d));
        }
        for d in ["", "10", "a", "w"] {
            assert!(!is_digit(d));
        }
    }
}
