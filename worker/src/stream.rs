//! Relay turns (ConversationRelay, docs/ARCHITECTURE.md §8): the caller's
//! words of one turn, answered by the model with streaming on, token by
//! token, on the core subject `P.voice.tokens.<CallSid>.<n>` that ingress
//! subscribed to before it published the turn.
//!
//! - The turn is claimed in `P_seen` and recorded like a Gather turn
//!   ([`crate::call`]), and its whole answer is written once to `P_calls`
//!   (`create`) when the stream ends:
//!   a redelivered turn whose key is there is recorded, never asked again;
//!   a key ingress wrote first (the turn given up with the fallback) is what
//!   the caller heard, and what history records.
//! - Tokens are flattened for speech as they come ([`Speaker`]: no `**`
//!   read aloud, a link's text without its URL, a bare URL as its host).
//! - `P.voice.cancel.<CallSid>.<n>` (an interrupt, a newer prompt, the socket
//!   gone) stops reading the model's stream at once (the HTTP response is
//!   dropped, so the model stops generating and we stop paying); history
//!   keeps what the caller heard, marked `interrupted`. After the last token
//!   the turn waits, at most about as long as Twilio takes to say it, for an
//!   interrupt (the caller talking over the rest) or ingress's `done` (the
//!   next prompt) before it is recorded.
//! - The operator's pause (human takeover) answers the turn with a handoff
//!   chunk: ingress ends the session with `handoffData` and the action
//!   route dials `voice.forward_to`. `Turn::handoff` is the seam for the
//!   model's `handoff` tool too.
//! - A model that fails: the channel's fallback text is spoken and the call
//!   goes on; a note records why.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use secrecy::ExposeSecret as _;
use serde_json::Value;
use smsgate_shared::envelope::{CallReply, NoteReason, Origin};
use smsgate_shared::sse::SseParser;
use smsgate_shared::voice::{self, RelayCancel, RelayChunk};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::Error;
use crate::call::Turn;
use crate::chat::{self, ChatBackend, ChatError, ChatRequest};

/// The longest answer a relay turn speaks, in characters: past this the
/// stream is cut (a model gone on for minutes).
pub const MAX_RELAY_CHARS: usize = 4000;

/// How a relay turn's answer ended: what the caller heard, and whether
/// they cut it short.
type Ended = (CallReply, bool);

impl Turn<'_> {
    /// Streams the answer of a relay turn to ingress and writes it to
    /// `P_calls` ([`Turn::run`] records it).
    pub(crate) async fn stream(&self, key: &str) -> Result<Ended, Error> {
        let client = self.p.js.client();
        let topology = &self.p.topology;
        let tokens = topology.voice_tokens_subject(self.call_sid, self.n);
        let mut cancel = client
            .subscribe(topology.voice_cancel_subject(self.call_sid, self.n))
            .await
            .map_err(|e| Error::Publish { what: "relay cancel subscription", source: Box::new(e) })?;
        let out = Out { client: &client, subject: tokens };
        let channel = &self.lane.channel;
        if !channel.admits(self.peer) {
            self.note(NoteReason::Blocked, "the caller is not allowed on this channel").await?;
            out.send(&RelayChunk { token: voice::GOODBYE.to_owned(), last: true, handoff: None }).await;
            return self
                .write_relay(key, CallReply::new("worker", voice::GOODBYE.to_owned(), Origin::Chat, true), false)
                .await;
        }
        if self.p.paused_until(&self.inbound.channel_id, self.peer).await?.is_some() {
            self.note(NoteReason::Paused, "the bot is paused (human takeover); the relay call is handed to a person")
                .await?;
            return self.handoff(&out, key, voice::HANDOFF_TAKEOVER, voice::OPERATOR_WILL_ANSWER).await;
        }
        let backend = &self.lane.local;
        let recent = self
            .p
            .history
            .recent(&self.inbound.channel_id, self.peer, &self.inbound.message_sid, backend.history_turns())
            .await?;
        let request = ChatRequest { inbound: self.inbound, history: &recent.turns, attachments: &[], tools: None };
        let limit = Duration::from_millis(channel.voice.relay.turn_timeout_ms).min(backend_timeout(backend));
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + limit;
        let mut speaker = Speaker::default();
        let mut said = String::new();
        let mut first_token: Option<Duration> = None;
        let result: Result<Option<RelayCancel>, ChatError> = async {
            let mut source = tokio::select! {
                biased;
                m = cancel.next() => return Ok(Some(cancelled(m))),
                opened = open(backend, &request) => opened?,
                () = tokio::time::sleep_until(deadline) => return Err(ChatError::BadAnswer("no answer in time".to_owned())),
            };
            loop {
                let piece = tokio::select! {
                    biased;
                    m = cancel.next() => return Ok(Some(cancelled(m))),
                    piece = source.next() => piece?,
                    () = tokio::time::sleep_until(deadline) => return Err(ChatError::BadAnswer("the answer did not end in time".to_owned())),
                };
                let Some(piece) = piece else { return Ok(None) };
                let spoken = speaker.push(&piece);
                if !spoken.is_empty() {
                    first_token.get_or_insert_with(|| started.elapsed());
                    said.push_str(&spoken);
                    out.send(&RelayChunk { token: spoken, last: false, handoff: None }).await;
                }
                if said.chars().count() >= MAX_RELAY_CHARS {
                    return Ok(None);
                }
            }
        }
        .await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(None) => {
                let rest = speaker.finish();
                said.push_str(&rest);
                out.send(&RelayChunk { token: rest, last: true, handoff: None }).await;
                if let Some(first) = first_token {
                    metrics::histogram!("smsgate_worker_relay_first_token_seconds").record(first.as_secs_f64());
                }
                info!(latency_ms, turn = self.n, chat = backend.kind(), "relay turn answered");
                let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
                if said.is_empty() {
                    self.note(NoteReason::NoReply, "the chat pipeline gave no reply to a call turn").await?;
                }
                let reply = CallReply::new("worker", said, Origin::Chat, false);
                let (there, _) = self.write_relay(key, reply.clone(), false).await?;
                if there != reply || reply.say.is_empty() {
                    return Ok((there, false));
                }
                Ok(heard_after_last(&mut cancel, reply).await)
            }
            Ok(Some(cancel)) => {
                metrics::counter!("smsgate_worker_relay_cancelled_total", "reason" => reason_label(&cancel.reason))
                    .increment(1);
                info!(latency_ms, turn = self.n, reason = %cancel.reason, "relay turn cancelled; the model stream is dropped");
                if cancel.reason == "timeout" {
                    // Ingress spoke the fallback and wrote it first.
                    return self.write_relay(key, CallReply::new("worker", said, Origin::Timeout, false), false).await;
                }
                let heard = cancel.heard.unwrap_or(said);
                self.write_relay(key, CallReply::new("worker", heard.trim().to_owned(), Origin::Chat, false), true)
                    .await
            }
            Err(e) => {
                self.chat_failed(&e, latency_ms).await?;
                let fallback = channel.fallback_text.clone();
                // What was streamed already was heard; the fallback follows it.
                out.send(&RelayChunk { token: format!(" {fallback}"), last: true, handoff: None }).await;
                let say = if said.trim().is_empty() { fallback } else { format!("{} {fallback}", said.trim()) };
                self.write_relay(key, CallReply::new("worker", say, Origin::Fallback, false), false).await
            }
        }
    }

    /// Hands the call to a person: `say` spoken, then the session ended
    /// with `handoffData` (`reason`), which the action route turns into a
    /// `<Dial>` to `voice.forward_to`. The seam for the model's `handoff`
    /// tool as well.
    async fn handoff(&self, out: &Out<'_>, key: &str, reason: &str, say: &str) -> Result<Ended, Error> {
        out.send(&RelayChunk { token: say.to_owned(), last: true, handoff: Some(reason.to_owned()) }).await;
        self.write_relay(key, CallReply::new("worker", say.to_owned(), Origin::Fallback, true), false).await
    }

    /// Writes the answer unless something is there already (ingress's
    /// fallback); what is there is what the caller heard.
    async fn write_relay(&self, key: &str, reply: CallReply, interrupted: bool) -> Result<Ended, Error> {
        let there = self.write(key, reply.clone()).await?;
        let ours = there == reply;
        Ok((there, interrupted && ours))
    }
}

/// The longest a turn waits after its last token for an interrupt: Twilio
/// is still speaking what the model wrote faster than it can be said.
pub const MAX_SPEAKING: Duration = Duration::from_secs(30);

/// About how long Twilio takes to say `text` (14 characters a second, plus
/// two seconds), at most [`MAX_SPEAKING`].
fn speaking_time(text: &str) -> Duration {
    let chars = u64::try_from(text.chars().count()).unwrap_or(u64::MAX);
    (Duration::from_secs(2) + Duration::from_millis(chars.saturating_mul(70))).min(MAX_SPEAKING)
}

/// After the last token: an `interrupt` while Twilio is still speaking
/// (before the caller's next prompt, which ingress announces as `done`, or
/// the socket's end) means the caller heard only part of the answer, and
/// that part is what history keeps. `P_calls` holds the whole answer
/// already, so a redelivery records it whole.
async fn heard_after_last(cancel: &mut async_nats::Subscriber, reply: CallReply) -> Ended {
    let Ok(message) = tokio::time::timeout(speaking_time(&reply.say), cancel.next()).await else {
        return (reply, false);
    };
    let cancel = cancelled(message);
    match cancel.heard.filter(|_| cancel.reason == "interrupt") {
        Some(heard) => {
            metrics::counter!("smsgate_worker_relay_cancelled_total", "reason" => "interrupt").increment(1);
            (CallReply { say: heard.trim().to_owned(), ..reply }, true)
        }
        None => (reply, false),
    }
}

fn reason_label(reason: &str) -> &'static str {
    match reason {
        "interrupt" => "interrupt",
        "superseded" => "superseded",
        "hangup" => "hangup",
        "timeout" => "timeout",
        _ => "other",
    }
}

fn cancelled(message: Option<async_nats::Message>) -> RelayCancel {
    message
        .and_then(|m| serde_json::from_slice::<RelayCancel>(&m.payload).ok())
        .unwrap_or_else(|| RelayCancel { heard: None, reason: "other".to_owned() })
}

/// The token subject, written to as core NATS (not stored: a caller who
/// is gone needs no tokens).
struct Out<'a> {
    client: &'a async_nats::Client,
    subject: String,
}

impl Out<'_> {
    async fn send(&self, chunk: &RelayChunk) {
        let Ok(bytes) = serde_json::to_vec(chunk) else { return };
        if let Err(e) = self.client.publish(self.subject.clone(), bytes.into()).await {
            // Ingress gives the turn up with the fallback when tokens stop coming.
            warn!(error = &e as &dyn std::error::Error, "cannot publish a relay token");
        }
    }
}

fn backend_timeout(backend: &ChatBackend) -> Duration {
    match backend {
        ChatBackend::Openai { timeout, .. } | ChatBackend::Webhook { timeout, .. } => *timeout,
        ChatBackend::Static { .. } | ChatBackend::Echo => Duration::from_secs(1),
    }
}

/// The model's answer as it comes: text pieces.
enum Source {
    /// An SSE body: OpenAI's `choices[0].delta.content` chunks, or an
    /// agent's `{"token": …}` / `{"reply": …}` / plain-text events.
    Sse { response: Box<reqwest::Response>, parser: SseParser, pending: VecDeque<String>, done: bool },
    /// A whole answer (a webhook agent answering JSON, the static and echo kinds).
    Whole(Option<String>),
}

impl Source {
    async fn next(&mut self) -> Result<Option<String>, ChatError> {
        match self {
            Self::Whole(text) => Ok(text.take()),
            Self::Sse { response, parser, pending, done } => loop {
                if let Some(piece) = pending.pop_front() {
                    return Ok(Some(piece));
                }
                if *done {
                    return Ok(None);
                }
                let Some(chunk) = response.chunk().await.map_err(chat::transport)? else {
                    return Ok(None);
                };
                for event in parser.push(&chunk) {
                    match sse_piece(&event.data) {
                        Piece::Text(t) if !t.is_empty() => pending.push_back(t),
                        Piece::Text(_) => {}
                        Piece::Done => *done = true,
                    }
                }
            },
        }
    }
}

enum Piece {
    Text(String),
    Done,
}

/// One SSE event's text: OpenAI's delta, an agent's `token`/`reply`, or the
/// data itself when it is not JSON.
fn sse_piece(data: &str) -> Piece {
    if data.trim() == "[DONE]" {
        return Piece::Done;
    }
    let Ok(value) = serde_json::from_str::<Value>(data) else {
        return Piece::Text(data.to_owned());
    };
    let text = value
        .pointer("/choices/0/delta/content")
        .or_else(|| value.get("token"))
        .or_else(|| value.get("reply"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Piece::Text(text.to_owned())
}

/// Sends the request with streaming on.
async fn open(backend: &ChatBackend, req: &ChatRequest<'_>) -> Result<Source, ChatError> {
    match backend {
        ChatBackend::Openai { http, url, model, api_key, system_prompt, max_tokens, temperature, .. } => {
            let body = chat::openai_body(model, system_prompt.as_deref(), *max_tokens, *temperature, req);
            let mut body = serde_json::to_value(&body)
                .map_err(|e| ChatError::BadAnswer(format!("cannot encode the request: {e}")))?;
            if let Some(map) = body.as_object_mut() {
                map.insert("stream".to_owned(), Value::Bool(true));
            }
            let mut request = http.post(url).header(reqwest::header::ACCEPT, "text/event-stream").json(&body);
            if let Some(key) = api_key {
                request = request.bearer_auth(key.expose_secret());
            }
            let response = chat::check_status(request.send().await.map_err(chat::transport)?)?;
            if is_event_stream(&response) {
                return Ok(sse(response));
            }
            // A server that ignored `stream`: its whole answer.
            let bytes = response.bytes().await.map_err(chat::transport)?;
            let text: Option<String> = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.pointer("/choices/0/message/content").and_then(Value::as_str).map(str::to_owned));
            Ok(Source::Whole(text))
        }
        ChatBackend::Webhook { http, url, secret, .. } => {
            let payload = serde_json::to_vec(&chat::webhook_body(req))
                .map_err(|e| ChatError::BadAnswer(format!("cannot encode the request: {e}")))?;
            let id = req.inbound.message_sid.as_str();
            let timestamp = OffsetDateTime::now_utc().unix_timestamp();
            let mut request = http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "text/event-stream, application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string());
            if let Some(secret) = secret {
                request = request.header("webhook-signature", chat::sign_webhook(secret, id, timestamp, &payload));
            }
            let response = chat::check_status(request.body(payload).send().await.map_err(chat::transport)?)?;
            if response.status() == reqwest::StatusCode::NO_CONTENT {
                return Ok(Source::Whole(None));
            }
            if is_event_stream(&response) {
                return Ok(sse(response));
            }
            let bytes = response.bytes().await.map_err(chat::transport)?;
            Ok(Source::Whole(chat::webhook_reply(&bytes)?.map(|a| a.text)))
        }
        other => Ok(Source::Whole(other.reply(req).await?.map(|a| a.text))),
    }
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

fn sse(response: reqwest::Response) -> Source {
    Source::Sse { response: Box::new(response), parser: SseParser::default(), pending: VecDeque::new(), done: false }
}

/// Markdown flattened for speech as the tokens come, holding back only what
/// it must to decide (a `]` that may start a link's URL, a word that may
/// be a URL, a `-` that may be a list bullet): emphasis marks, headings and
/// code ticks dropped, a link read as its text, a bare URL as its host,
/// line breaks as spaces, control characters dropped. Anything else (`<`,
/// `]]>`, quotes) is text: it goes to Twilio as a JSON string, never markup.
#[derive(Debug, Default)]
pub struct Speaker {
    /// Held back: the start of a word that may be a URL, or a `]`, or a `-`
    /// at the start of a line.
    held: String,
    /// Inside a link's `(url)`, or inside a bare URL word.
    skipping: Skip,
    /// At the start of a line (or of the answer).
    line_start: bool,
    started: bool,
    /// `[`s dropped and not closed yet: a `]` closes one (and is dropped,
    /// its `(url)` with it); a `]` with none open is text.
    open: u32,
    /// The last character written was a space.
    spaced: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Skip {
    #[default]
    No,
    LinkUrl,
    /// A bare URL: its host collected in `held` until the word ends.
    Url,
}

impl Speaker {
    /// Adds a piece of the answer; returns what may be spoken of it now.
    pub fn push(&mut self, piece: &str) -> String {
        if !self.started {
            self.started = true;
            self.line_start = true;
            self.spaced = true;
        }
        let mut out = String::new();
        for c in piece.chars() {
            self.char(c, &mut out);
        }
        out
    }

    /// The end of the answer: what was held back.
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.end_word(&mut out);
        out
    }

    fn emit(&mut self, out: &mut String, c: char) {
        if c == ' ' {
            if self.spaced {
                return;
            }
            self.spaced = true;
        } else {
            self.spaced = false;
        }
        out.push(c);
    }

    /// A word ended (whitespace, or the answer's end): what was held goes out.
    fn end_word(&mut self, out: &mut String) {
        match self.skipping {
            Skip::Url => {
                let host = url_host(&std::mem::take(&mut self.held));
                for c in host.chars() {
                    self.emit(out, c);
                }
                self.skipping = Skip::No;
            }
            _ => {
                let held = std::mem::take(&mut self.held);
                let held = if held == "]" { String::new() } else { held };
                // A lone "-" at a line's start is a bullet.
                if held != "-" {
                    for c in held.chars() {
                        self.emit(out, c);
                    }
                }
            }
        }
    }

    fn char(&mut self, c: char, out: &mut String) {
        if self.skipping == Skip::LinkUrl {
            if c == ')' {
                self.skipping = Skip::No;
            }
            return;
        }
        if c.is_whitespace() {
            self.end_word(out);
            self.emit(out, ' ');
            if c == '\n' {
                self.line_start = true;
            }
            return;
        }
        if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' {
            return;
        }
        if self.skipping == Skip::Url {
            self.held.push(c);
            return;
        }
        if self.held == "]" {
            self.held.clear();
            if c == '(' {
                self.skipping = Skip::LinkUrl;
                return;
            }
            // Not a link: the brackets' text stays, the brackets go.
        }
        if self.held == "-" && self.line_start {
            // "-x": not a bullet after all (e.g. "-5").
            self.held.clear();
            self.emit(out, '-');
        }
        match c {
            '*' | '`' | '#' | '~' => return,
            '[' => {
                self.open = self.open.saturating_add(1);
                return;
            }
            ']' if self.open > 0 => {
                self.open -= 1;
                self.held = "]".to_owned();
                return;
            }
            '-' if self.line_start && self.held.is_empty() => {
                self.held = "-".to_owned();
                return;
            }
            _ => {}
        }
        self.line_start = false;
        // A word that may become `http://` or `https://` is held back.
        let mut candidate = std::mem::take(&mut self.held);
        candidate.push(c);
        let lower = candidate.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            self.skipping = Skip::Url;
            self.held = candidate;
        } else if !self.spaced_before_word(&candidate)
            && ("https://".starts_with(&lower) || "http://".starts_with(&lower))
        {
            self.held = candidate;
        } else {
            for ch in candidate.chars() {
                self.emit(out, ch);
            }
        }
    }

    /// Whether `candidate` (held so far plus this character) is inside a
    /// word that began before it: only a word's start can be a URL.
    fn spaced_before_word(&self, candidate: &str) -> bool {
        // The candidate starts a word only if the last thing written was a
        // space (or nothing): otherwise it continues a word already spoken.
        !self.spaced && candidate.len() == 1
    }
}

/// A URL word as its host, without `www.`, keeping a sentence's last mark.
fn url_host(word: &str) -> String {
    smsgate_shared::twiml::speak_word(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speak(pieces: &[&str]) -> String {
        let mut s = Speaker::default();
        let mut out: String = pieces.iter().map(|p| s.push(p)).collect();
        out.push_str(&s.finish());
        out
    }

    #[test]
    fn markdown_is_flattened_token_by_token() {
        assert_eq!(speak(&["We are **op", "en** from *9*", " to `5`."]), "We are open from 9 to 5.");
        assert_eq!(speak(&["# Hours\n", "- Mon", "day\n- Tues", "day"]), "Hours Monday Tuesday");
        assert_eq!(speak(&["See [our ", "site](https://ex", "ample.com/x) now"]), "See our site now");
        assert_eq!(speak(&["Go to https://www.", "example.com/a?b.", " Bye"]), "Go to example.com. Bye");
        assert_eq!(speak(&["hat", "h ", "http"]), "hath http");
        assert_eq!(speak(&["-5 degrees"]), "-5 degrees");
        assert_eq!(speak(&["a\u{7}b\r\n\n c"]), "ab c");
    }

    #[test]
    fn markup_is_kept_as_words() {
        assert_eq!(speak(&["<Say>", "hi</Say> ]]>"]), "<Say>hi</Say> ]]>");
        assert_eq!(speak(&["a] [b] c"]), "a] b c");
    }

    #[test]
    fn plain_words_are_not_held_back() {
        let mut s = Speaker::default();
        assert_eq!(s.push("Hello"), "Hello");
        assert_eq!(s.push(" there"), " there");
        // "h" may start a URL: held until it cannot.
        assert_eq!(s.push(" h"), " ");
        assert_eq!(s.push("i"), "hi");
    }

    #[test]
    fn sse_pieces_of_openai_and_agents() {
        assert!(matches!(sse_piece(r#"{"choices":[{"delta":{"content":"Hi"}}]}"#), Piece::Text(t) if t == "Hi"));
        assert!(matches!(sse_piece(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#), Piece::Text(t) if t.is_empty()));
        assert!(matches!(sse_piece(r#"{"token":"a"}"#), Piece::Text(t) if t == "a"));
        assert!(matches!(sse_piece("plain words"), Piece::Text(t) if t == "plain words"));
        assert!(matches!(sse_piece("[DONE]"), Piece::Done));
    }
}
