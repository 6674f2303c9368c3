//! Voice calls (docs/ARCHITECTURE.md §8): the routes under
//! `/api/channels/voice/twilio/`, each checked exactly like the SMS routes
//! ([`webhook::read_form`], [`webhook::check_signature`]: token, content
//! type, size, signature over the URL with its query), each answered with
//! TwiML from [`smsgate_shared::twiml`] within a few seconds.
//!
//! A call in `agent` mode goes:
//! 1. `call`: the greeting inside a `<Gather input="speech">` whose action
//!    is `turn?n=1`; the call's start is published (history).
//! 2. `turn?n=N`: the caller's words are published to `P_INBOUND` as turn N
//!    (`Nats-Msg-Id` `<CallSid>-t<N>`), answered with `<Pause>` and a
//!    `<Redirect>` to `reply?n=N&w=1`. "Goodbye" ends the call instead.
//! 3. `reply?n=N&w=W`: waits up to [`VoiceTiming::poll`] for the turn's
//!    reply in `P_calls`; there → `<Say>` it and `<Gather>` turn N+1; not
//!    yet → `<Pause>` and `<Redirect>` to `w=W+1`; after
//!    [`VoiceTiming::waits`] redirects ingress writes the fallback into
//!    `P_calls` itself (`create`: whoever is first is what the caller
//!    hears) and offers voicemail.
//!
//! `voicemail` mode (and a turn whose model failed) records with
//! transcription; the transcription is published as an inbound message that
//! the worker answers by SMS. `forward` mode dials `forward_to`. Status
//! callbacks and a forwarded call's end are published for history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use smsgate_shared::bus::MsgId;
use smsgate_shared::config::Channel;
use smsgate_shared::domain::{CallSid, E164};
use smsgate_shared::envelope::{self, CallPart, CallReply, Inbound, Origin};
use smsgate_shared::topology::Topology;
use smsgate_shared::twiml::Twiml;
use smsgate_shared::voice::{self, VoiceMode, path};
use time::OffsetDateTime;

use crate::Shared;
use crate::webhook::{self, Entry, Fields, Rejection, missing, twiml_response};

/// How the reply route waits (tests shorten it).
#[derive(Debug, Clone, Copy)]
pub struct VoiceTiming {
    /// How long one reply request watches `P_calls` before redirecting.
    pub poll: Duration,
    /// The `<Pause>` before each redirect, in seconds.
    pub pause_secs: u32,
    /// Redirects before the turn is given up with the fallback: with the
    /// defaults, about 25 s after the caller spoke.
    pub waits: u32,
}

impl Default for VoiceTiming {
    fn default() -> Self {
        Self { poll: Duration::from_secs(2), pause_secs: 1, waits: 8 }
    }
}

/// The longest voicemail, in seconds.
const VOICEMAIL_MAX_SECS: u32 = 120;
/// The most turns a call takes (a loop of redirects ends somewhere).
const MAX_TURNS: u32 = 100;
/// How often the reply route looks at `P_calls` while it waits.
const POLL_EVERY: Duration = Duration::from_millis(100);

const VOICE_OFF: Rejection = Rejection::new(StatusCode::NOT_FOUND, "voice is not enabled on this channel");
const BAD_TURN: Rejection = Rejection::new(StatusCode::BAD_REQUEST, "query n (the turn) missing or malformed");
const KV_DOWN: Rejection = Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "the calls bucket cannot be read");

/// Which voice route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Call,
    Turn,
    Reply,
    Status,
    Recorded,
    Transcription,
    Dialed,
    Relayed,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Self::Call => "voice_call",
            Self::Turn => "voice_turn",
            Self::Reply => "voice_reply",
            Self::Status => "voice_status",
            Self::Recorded => "voice_recorded",
            Self::Transcription => "voice_transcription",
            Self::Dialed => "voice_dialed",
            Self::Relayed => "voice_relayed",
        }
    }
}

macro_rules! route {
    ($name:ident, $route:expr) => {
        pub async fn $name(State(shared): State<Arc<Shared>>, Path(token): Path<String>, request: Request) -> Response {
            handle($route, &shared, &token, request).await
        }
    };
}

route!(call, Route::Call);
route!(turn, Route::Turn);
route!(reply, Route::Reply);
route!(status, Route::Status);
route!(recorded, Route::Recorded);
route!(transcription, Route::Transcription);
route!(dialed, Route::Dialed);
route!(relayed, Route::Relayed);

/// The voice routes and their handlers, for the router.
pub fn routes() -> [(&'static str, axum::routing::MethodRouter<Arc<Shared>>); 8] {
    use axum::routing::post;
    [
        (path::CALL, post(call)),
        (path::TURN, post(turn)),
        (path::REPLY, post(reply)),
        (path::STATUS, post(status)),
        (path::RECORDED, post(recorded)),
        (path::TRANSCRIPTION, post(transcription)),
        (path::DIALED, post(dialed)),
        (path::RELAYED, post(relayed)),
    ]
}

async fn handle(route: Route, shared: &Shared, token: &str, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let (uri, headers) = (&parts.uri, &parts.headers);
    webhook::checked(route.as_str(), shared, token, (uri, headers, body), started, |form| async move {
        let response = answer(route, shared, &form, uri, headers).await?;
        let entry = form.entry();
        metrics::counter!("smsgate_ingress_requests_total", "route" => route.as_str(), "outcome" => "accepted")
            .increment(1);
        tracing::debug!(
            route = route.as_str(),
            channel_id = %entry.channel.id,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            outcome = "accepted",
            "voice request answered"
        );
        Ok(response)
    })
    .await
}

/// What every voice request carries, checked.
struct Call<'a> {
    channel: &'a Channel,
    call_sid: CallSid,
    /// The other party: the caller, or whom we called.
    peer: E164,
    /// Our number.
    ours: String,
    direction: String,
    params: Vec<(String, String)>,
    /// Where Twilio reaches us (our TwiML's URLs start with it).
    base: String,
}

impl Call<'_> {
    /// `<base><route><token>?<query>`: a URL of ours for the TwiML.
    fn url(&self, route: &str, query: &str) -> String {
        use secrecy::ExposeSecret;
        let token = self.channel.path_token.expose_secret();
        if query.is_empty() {
            format!("{}{route}{token}", self.base)
        } else {
            format!("{}{route}{token}?{query}", self.base)
        }
    }

    fn inbound(&self, part: CallPart, body: &str) -> Inbound {
        Inbound {
            v: envelope::VERSION,
            channel_id: self.channel.id.clone(),
            message_sid: part.message_sid(),
            account_sid: self.channel.account_sid.to_string(),
            // The peer, whichever way the call goes: the worker keeps one
            // conversation's turns in order by it.
            from: self.peer.to_string(),
            to: self.ours.clone(),
            body: body.to_owned(),
            media: Vec::new(),
            received_at: OffsetDateTime::now_utc(),
            params: self.params.clone(),
            call: Some(part),
        }
    }

    fn status(&self, status: &str, duration_secs: Option<u64>, detail: Option<String>) -> Inbound {
        let part = CallPart::Status {
            call_sid: self.call_sid.clone(),
            status: status.to_owned(),
            direction: self.direction.clone(),
            duration_secs,
            detail,
        };
        self.inbound(part, "")
    }
}

async fn answer(
    route: Route,
    shared: &Shared,
    form: &webhook::Form,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, Rejection> {
    let entry = form.entry();
    let channel = &entry.channel;
    let params = form.params()?;
    // After the signature: a status callback of a call placed before voice
    // was switched off still counts.
    if !channel.voice.enabled && route != Route::Status {
        return Err(VOICE_OFF);
    }
    let fields = Fields(&params);
    fields.check_account(channel)?;
    let call_sid = CallSid::parse(fields.get("CallSid").ok_or(missing("CallSid missing"))?)
        .map_err(|_| missing("CallSid malformed"))?;
    let direction = fields.get("Direction").unwrap_or("inbound").to_owned();
    // An outbound call's other party is `To`; an incoming call's `From`.
    let (peer_field, ours_field) = if direction.starts_with("outbound") { ("To", "From") } else { ("From", "To") };
    let peer = fields.get(peer_field).ok_or(missing("From/To missing"))?;
    let peer = E164::parse(peer).map_err(|_| missing("the caller's number is not E.164"))?;
    let base = webhook::public_base(channel, headers).ok_or(missing("no public base URL to answer with"))?;
    let call = Call {
        channel,
        call_sid,
        peer,
        ours: fields.get(ours_field).unwrap_or_default().to_owned(),
        direction,
        params: fields.owned(),
        base,
    };
    let query = Query(uri.query().unwrap_or(""));
    match route {
        Route::Call => incoming(shared, entry, &call).await,
        Route::Turn => heard(shared, entry, &call, query.turn()?, fields.get("SpeechResult").unwrap_or("")).await,
        Route::Reply => {
            wait_reply(shared, &call, query.turn()?, query.get("w").and_then(|w| w.parse().ok()).unwrap_or(1)).await
        }
        Route::Status => {
            let status = fields.get("CallStatus").ok_or(missing("CallStatus missing"))?;
            let duration = fields.get("CallDuration").and_then(|d| d.parse().ok());
            publish(shared, entry, call.status(checked_status(status)?, duration, None)).await?;
            Ok(StatusCode::OK.into_response())
        }
        Route::Recorded => {
            let speech = channel.voice.speech();
            Ok(twiml_response(Twiml::new().say(voice::VOICEMAIL_THANKS, &speech).hangup().finish()))
        }
        Route::Transcription => {
            let text = fields.get("TranscriptionText").unwrap_or("").trim();
            let done = fields.get("TranscriptionStatus") == Some("completed");
            let inbound = if done && !text.is_empty() {
                call.inbound(CallPart::Voicemail { call_sid: call.call_sid.clone() }, text)
            } else {
                call.status("voicemail", None, Some("a voicemail that could not be transcribed".to_owned()))
            };
            publish(shared, entry, inbound).await?;
            Ok(StatusCode::OK.into_response())
        }
        Route::Dialed => {
            let status = fields.get("DialCallStatus").ok_or(missing("DialCallStatus missing"))?;
            let duration = fields.get("DialCallDuration").and_then(|d| d.parse().ok());
            let detail = channel.voice.forward_to.as_ref().map(|n| format!("forwarded to {}", n.masked()));
            publish(shared, entry, call.status(checked_status(status)?, duration, detail)).await?;
            Ok(twiml_response(Twiml::new().hangup().finish()))
        }
        Route::Relayed => relay_over(shared, entry, &call, &fields).await,
    }
}

/// `<Connect>`'s action: the relay session ended. A handoff dials
/// `forward_to` (voicemail without one); a failed session with the caller
/// still there goes on in Gather mode (from turn `MAX_RELAY_TURNS + 1`, so
/// no turn id is reused); an ended one says goodbye; a hung-up call gets
/// nothing more.
async fn relay_over(
    shared: &Shared,
    entry: &Entry,
    call: &Call<'_>,
    fields: &Fields<'_>,
) -> Result<Response, Rejection> {
    let v = &call.channel.voice;
    let speech = v.speech();
    let session = fields.get("SessionStatus").unwrap_or("ended");
    let in_progress = fields.get("CallStatus") == Some("in-progress");
    let handoff = fields.get("HandoffData").map(str::trim).filter(|h| !h.is_empty());
    tracing::info!(
        channel_id = %call.channel.id,
        session_status = %smsgate_shared::redact::third_party(session, 24),
        handoff = handoff.is_some(),
        "relay session over"
    );
    if !in_progress {
        return Ok(twiml_response(Twiml::new().finish()));
    }
    if handoff.is_some() {
        return Ok(match &v.forward_to {
            Some(to) => {
                let detail = format!("handed off to {}", to.masked());
                publish(shared, entry, call.status("handoff", None, Some(detail))).await?;
                twiml_response(Twiml::new().dial(to, &call.url(path::DIALED, "")).finish())
            }
            None => twiml_response(voicemail(call, Twiml::new().say(voice::OPERATOR_WILL_ANSWER, &speech))),
        });
    }
    if session == "failed" {
        let n = voice::MAX_RELAY_TURNS + 1;
        let xml = Twiml::new()
            .gather(&call.url(path::TURN, &format!("n={n}")), &speech, Some(voice::RELAY_FAILED))
            .say(voice::GOODBYE, &speech)
            .hangup()
            .finish();
        return Ok(twiml_response(xml));
    }
    Ok(twiml_response(Twiml::new().say(voice::GOODBYE, &speech).hangup().finish()))
}

/// The relay answer: `<Connect action=relayed><ConversationRelay url=wss://…/relay/{token}>`.
fn relay_twiml(call: &Call<'_>) -> String {
    use secrecy::ExposeSecret;
    let v = &call.channel.voice;
    let r = &v.relay;
    let url =
        format!("{}{}{}", crate::relay::socket_base(&call.base), path::RELAY, call.channel.path_token.expose_secret());
    let relay = smsgate_shared::twiml::Relay {
        url: &url,
        welcome_greeting: Some(&v.greeting),
        language: &v.language,
        voice: v.voice.as_deref(),
        tts_provider: r.tts_provider.as_deref(),
        transcription_provider: r.transcription_provider.as_deref(),
        speech_model: r.speech_model.as_deref(),
        hints: &r.hints,
        interruptible: r.interruptible.as_str(),
        dtmf: r.dtmf,
    };
    let params = [("channel_id", call.channel.id.as_str())];
    Twiml::new().connect_relay(&call.url(path::RELAYED, ""), &relay, &params).finish()
}

/// A call status as a token of an id: lowercase letters and `-`.
fn checked_status(status: &str) -> Result<&str, Rejection> {
    let ok = (1..=24).contains(&status.len()) && status.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    if ok { Ok(status) } else { Err(missing("call status malformed")) }
}

/// The route's query string.
struct Query<'a>(&'a str);

impl Query<'_> {
    fn get(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.0.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    /// `n`, the turn: 1 to [`MAX_TURNS`].
    fn turn(&self) -> Result<u32, Rejection> {
        self.get("n").and_then(|n| n.parse().ok()).filter(|n| (1..=MAX_TURNS).contains(n)).ok_or(BAD_TURN)
    }
}

/// Publishes a call's part to `P_INBOUND` like a text (its id is its
/// MessageSid, made by [`CallPart::message_sid`]) and waits for the ack.
async fn publish(shared: &Shared, entry: &Entry, inbound: Inbound) -> Result<bool, Rejection> {
    let sid = inbound.message_sid.clone();
    webhook::publish(shared, entry.local.inbound.clone(), MsgId::Inbound(&sid), envelope::encode(&inbound)).await
}

/// "A call comes in": the mode decides.
async fn incoming(shared: &Shared, entry: &Entry, call: &Call<'_>) -> Result<Response, Rejection> {
    let v = &call.channel.voice;
    let speech = v.speech();
    if !call.channel.admits(&call.peer) {
        let inbound = call.status("rejected", None, Some("the caller is not allowed on this channel".to_owned()));
        publish(shared, entry, inbound).await?;
        return Ok(twiml_response(Twiml::new().reject().finish()));
    }
    let (detail, xml) = match (v.mode, &v.forward_to) {
        (VoiceMode::Forward, Some(to)) => {
            (format!("forwarded to {}", to.masked()), Twiml::new().dial(to, &call.url(path::DIALED, "")).finish())
        }
        (VoiceMode::Relay, _) => ("answered by the agent (ConversationRelay)".to_owned(), relay_twiml(call)),
        (VoiceMode::Agent, _) => (
            "answered by the agent".to_owned(),
            Twiml::new()
                .gather(&call.url(path::TURN, "n=1"), &speech, Some(&v.greeting))
                .say(voice::GOODBYE, &speech)
                .hangup()
                .finish(),
        ),
        (VoiceMode::Voicemail | VoiceMode::Forward, _) => {
            ("voicemail".to_owned(), voicemail(call, Twiml::new().say(&v.greeting, &speech)))
        }
    };
    let status = if v.mode == VoiceMode::Forward { "forwarded" } else { "answered" };
    publish(shared, entry, call.status(status, None, Some(detail))).await?;
    Ok(twiml_response(xml))
}

/// The voicemail prompt, the beep and the recording, after `twiml`.
fn voicemail(call: &Call<'_>, twiml: Twiml) -> String {
    twiml
        .say(voice::VOICEMAIL_PROMPT, &call.channel.voice.speech())
        .record(&call.url(path::RECORDED, ""), &call.url(path::TRANSCRIPTION, ""), VOICEMAIL_MAX_SECS)
        .hangup()
        .finish()
}

/// Whether the caller is saying goodbye (the whole utterance).
fn is_goodbye(words: &str) -> bool {
    let plain: String = words
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace() || *c == '\'')
        .collect::<String>()
        .to_lowercase();
    let plain = plain.split_whitespace().collect::<Vec<_>>().join(" ");
    const BYE: [&str; 12] = [
        "goodbye",
        "good bye",
        "bye",
        "bye bye",
        "bye now",
        "thanks bye",
        "thank you bye",
        "thank you goodbye",
        "ok goodbye",
        "okay goodbye",
        "that's all",
        "hang up",
    ];
    BYE.contains(&plain.as_str())
}

/// Turn `n`: the caller's words to the worker, and Twilio told to come back.
async fn heard(shared: &Shared, entry: &Entry, call: &Call<'_>, n: u32, words: &str) -> Result<Response, Rejection> {
    let speech = call.channel.voice.speech();
    let words = words.trim();
    if words.is_empty() || is_goodbye(words) {
        return Ok(twiml_response(Twiml::new().say(voice::GOODBYE, &speech).hangup().finish()));
    }
    let part = CallPart::Turn { call_sid: call.call_sid.clone(), turn: n };
    publish(shared, entry, call.inbound(part, words)).await?;
    Ok(twiml_response(redirect_to_reply(shared, call, n, 1)))
}

/// `<Pause>` and `<Redirect>` to the reply route's wait `w` of turn `n`.
fn redirect_to_reply(shared: &Shared, call: &Call<'_>, n: u32, w: u32) -> String {
    Twiml::new()
        .pause(shared.voice_timing.pause_secs)
        .redirect(&call.url(path::REPLY, &format!("n={n}&w={w}")))
        .finish()
}

/// Turn `n`'s reply, if it is in `P_calls` within [`VoiceTiming::poll`].
async fn wait_reply(shared: &Shared, call: &Call<'_>, n: u32, w: u32) -> Result<Response, Rejection> {
    let store = shared.calls().await.ok_or(KV_DOWN)?;
    let key = Topology::call_key(&call.call_sid, n);
    let timing = shared.voice_timing;
    let deadline = Instant::now() + timing.poll;
    loop {
        if let Some(reply) = read_reply(&store, &key).await? {
            return Ok(twiml_response(speak(call, n, &reply)));
        }
        if Instant::now() + POLL_EVERY >= deadline {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    if w < timing.waits {
        return Ok(twiml_response(redirect_to_reply(shared, call, n, w + 1)));
    }
    // Given up: the fallback goes into P_calls first, so that a reply
    // arriving now is not also taken as heard (the worker sees the key).
    let say = format!("{} {}", voice::TOO_SLOW, call.channel.fallback_text);
    let fallback = CallReply::new("ingress", say, Origin::Timeout, true);
    match store.create(&key, envelope::encode(&fallback)).await {
        Ok(_) => {
            tracing::warn!(channel_id = %call.channel.id, turn = n, outcome = "timeout", "call turn not answered in time; fallback spoken");
            metrics::counter!("smsgate_ingress_call_turn_timeouts_total").increment(1);
            Ok(twiml_response(speak(call, n, &fallback)))
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let reply = read_reply(&store, &key).await?.ok_or(KV_DOWN)?;
            Ok(twiml_response(speak(call, n, &reply)))
        }
        Err(e) => {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot write the turn's fallback");
            Err(KV_DOWN)
        }
    }
}

async fn read_reply(store: &kv::Store, key: &str) -> Result<Option<CallReply>, Rejection> {
    match store.get(key).await {
        Ok(Some(bytes)) => Ok(envelope::decode::<CallReply>(&bytes).ok()),
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot read the calls bucket");
            Err(KV_DOWN)
        }
    }
}

/// The reply spoken, then the next turn, or the end: a failed turn offers
/// voicemail (answered by SMS), a goodbye hangs up.
fn speak(call: &Call<'_>, n: u32, reply: &CallReply) -> String {
    let speech = call.channel.voice.speech();
    let twiml = Twiml::new().say(&reply.say, &speech);
    match reply.origin {
        Origin::Fallback | Origin::Timeout => voicemail(call, twiml),
        _ if reply.end || n >= MAX_TURNS => twiml.say(voice::GOODBYE, &speech).hangup().finish(),
        _ => twiml
            .gather(&call.url(path::TURN, &format!("n={}", n + 1)), &speech, None)
            .say(voice::GOODBYE, &speech)
            .hangup()
            .finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodbyes_are_recognised_and_other_words_are_not() {
        for bye in ["Goodbye.", "bye", "Bye bye!", "OK, goodbye", "That's all."] {
            assert!(is_goodbye(bye), "{bye}");
        }
        for not in ["goodbye to my old plan, what's new?", "buy", "hello", ""] {
            assert!(!is_goodbye(not), "{not}");
        }
    }

    #[test]
    fn statuses_must_be_id_tokens() {
        assert!(checked_status("no-answer").is_ok());
        assert!(checked_status("in-progress").is_ok());
        assert!(checked_status("Completed").is_err());
        assert!(checked_status("a.b").is_err());
        assert!(checked_status("").is_err());
    }
}
