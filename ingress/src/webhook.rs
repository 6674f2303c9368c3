//! The two Twilio routes: inbound messages and status callbacks.
//!
//! Both run the same checks in the same order (invariant 4 (docs/ARCHITECTURE.md §4)): path
//! token (404) → content type (415) → body size (413) → signature (403) →
//! required fields (400) → publish and wait for the ack (503 when NATS is
//! down, or the stream has not taken it within `STORE_WAIT`) → 200.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::channels::{Live, Registry};
use smsgate_shared::config::Channel;
use smsgate_shared::domain::MessageSid;
use smsgate_shared::envelope::{self, InboundRef, Media, StatusUpdate};
use smsgate_shared::http::has_media_type;
use smsgate_shared::signature;
use smsgate_shared::topology::{ChannelSubjects, Topology};
use time::OffsetDateTime;

use crate::Shared;

/// Twilio's bodies are a few KiB; anything past this is not Twilio.
pub const MAX_BODY: usize = 64 * 1024;

/// The empty TwiML answer: acknowledge without replying inline (the reply
/// goes out through the REST API). Never text/plain: Twilio would send that
/// back to the person as an SMS.
pub const EMPTY_TWIML: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#;

/// A channel with what the hot path needs precomputed (its subjects).
pub type Entry = Live<ChannelSubjects>;

/// The live channels (the file's and those connected at run time), found
/// by path token in constant time ([`smsgate_shared::channels::Snapshot::find_token`]).
pub type Channels = Registry<ChannelSubjects>;

/// The registry ingress and its admin API share.
pub fn channels(file: Vec<Channel>, topology: &Topology) -> Channels {
    let topology = topology.clone();
    Registry::new("ingress", file, move |c| ChannelSubjects::new(&topology, &c.id))
}

/// Metric handles registered once, so the accepted path does no registry
/// look-up per request. Rejections are rare and use the macros.
pub struct Metrics {
    webhook_accepted: metrics::Counter,
    status_accepted: metrics::Counter,
    publish_seconds: metrics::Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            webhook_accepted: metrics::counter!("smsgate_ingress_requests_total", "route" => "webhook", "outcome" => "accepted"),
            status_accepted: metrics::counter!("smsgate_ingress_requests_total", "route" => "status", "outcome" => "accepted"),
            publish_seconds: metrics::histogram!("smsgate_ingress_publish_seconds"),
        }
    }

    fn accepted(&self, inbound: bool) -> &metrics::Counter {
        if inbound { &self.webhook_accepted } else { &self.status_accepted }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A refused request: the status code Twilio sees and the reason we log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl Rejection {
    pub(crate) const fn new(status: StatusCode, reason: &'static str) -> Self {
        Self { status, reason }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (self.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], self.reason).into_response()
    }
}

const UNKNOWN_TOKEN: Rejection = Rejection::new(StatusCode::NOT_FOUND, "unknown path token");
const CHANNEL_DISABLED: Rejection = Rejection::new(StatusCode::NOT_FOUND, "channel disabled");
const NOT_A_FORM: Rejection =
    Rejection::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content type is not application/x-www-form-urlencoded");
const TOO_LARGE: Rejection = Rejection::new(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB");
const BODY_UNREADABLE: Rejection = Rejection::new(StatusCode::BAD_REQUEST, "body could not be read");
const NO_SIGNATURE: Rejection = Rejection::new(StatusCode::FORBIDDEN, "X-Twilio-Signature missing");
const BAD_SIGNATURE: Rejection = Rejection::new(StatusCode::FORBIDDEN, "X-Twilio-Signature does not match");
const NO_URL: Rejection =
    Rejection::new(StatusCode::FORBIDDEN, "no public_base_url and no Host header to sign against");
const WRONG_ACCOUNT: Rejection = Rejection::new(StatusCode::BAD_REQUEST, "AccountSid is not the channel's");
const NATS_DOWN: Rejection = Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "NATS unavailable");
const ACK_TIMEOUT: Rejection = Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "JetStream did not ack in time");
const PUBLISH_FAILED: Rejection = Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "JetStream refused the publish");

pub(crate) fn missing(field: &'static str) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, field)
}

/// Which of the two routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Inbound,
    Status,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Route::Inbound => "webhook",
            Route::Status => "status",
        }
    }
}

/// `POST /api/channels/sms/twilio/webhook/{path_token}`.
pub async fn inbound(State(shared): State<Arc<Shared>>, Path(token): Path<String>, request: Request) -> Response {
    handle(Route::Inbound, &shared, &token, request).await
}

/// `POST /api/channels/sms/twilio/status/{path_token}`.
pub async fn status(State(shared): State<Arc<Shared>>, Path(token): Path<String>, request: Request) -> Response {
    handle(Route::Status, &shared, &token, request).await
}

async fn handle(route: Route, shared: &Shared, token: &str, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    checked(route.as_str(), shared, token, (&parts.uri, &parts.headers, body), started, |form| async move {
        let accepted = accept(route, shared, &form).await?;
        let entry = form.entry();
        shared.metrics.accepted(route == Route::Inbound).increment(1);
        // One info line per accepted webhook, flat fields only: what lets an
        // operator follow a message from its first service on by
        // `message_sid`.
        tracing::info!(
            stage = "webhook",
            route = route.as_str(),
            channel_id = entry.channel.id.as_str(),
            message_sid = accepted.message_sid.as_str(),
            duplicate = accepted.duplicate,
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            outcome = "accepted",
            "webhook published"
        );
        Ok(match route {
            Route::Inbound => twiml_response(EMPTY_TWIML),
            Route::Status => StatusCode::OK.into_response(),
        })
    })
    .await
}

/// Every Twilio route, SMS and voice: the checks in their order (path
/// token 404 → channel on 404 → content type 415 → size 413 → signature 403),
/// then `answer` with the [`Form`] (whose parameters come out only through
/// the signature check), then one log line and metric for a rejection.
/// `started` is when the request came in. The handlers take the whole
/// `Request` and lend its parts here: axum's `Uri` and `HeaderMap`
/// extractors would clone them on every webhook.
pub(crate) async fn checked<F, Fut>(
    route: &'static str,
    shared: &Shared,
    token: &str,
    (uri, headers, body): (&Uri, &HeaderMap, Body),
    started: Instant,
    answer: F,
) -> Response
where
    F: FnOnce(Form) -> Fut,
    Fut: std::future::Future<Output = Result<Response, Rejection>>,
{
    let entry = shared.channels.find_token(token);
    let result = match &entry {
        None => Err(UNKNOWN_TOKEN),
        Some(entry) => match admit(entry.clone(), uri, headers, body).await {
            Ok(form) => answer(form).await,
            Err(rejection) => Err(rejection),
        },
    };
    let channel_id = entry.as_ref().map_or("", |e| e.channel.id.as_str());
    finish(route, channel_id, started, result)
}

/// A form's parameters, in order, decoded.
pub(crate) type Params<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// A webhook that passed every check before its signature: the channel is
/// on, the body a form within [`MAX_BODY`], the signature header and the
/// signed URL are there. Its parameters come out only through
/// [`Form::params`], which checks the signature over them first, so the
/// form is parsed once for both.
pub(crate) struct Form {
    entry: Arc<Entry>,
    body: Bytes,
    /// The URL Twilio signed and its signature; `None` when the channel
    /// skips the check on purpose (`insecure_skip_signature`).
    signed: Option<(String, String)>,
}

impl Form {
    /// The channel the path token named.
    pub(crate) fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    /// The posted parameters, in order, once Twilio's signature over the
    /// URL it requested (query included) and every one of them matches.
    /// Borrowed from the body wherever nothing needed decoding.
    pub(crate) fn params(&self) -> Result<Params<'_>, Rejection> {
        let params: Params<'_> = smsgate_shared::http::parse_form(&self.body);
        if let Some((url, signature)) = &self.signed
            && !signature::validate(self.entry.channel.auth_token.expose_secret(), url, &params, signature)
        {
            return Err(BAD_SIGNATURE);
        }
        Ok(params)
    }
}

/// The checks before the signature, in their order.
async fn admit(entry: Arc<Entry>, uri: &Uri, headers: &HeaderMap, body: Body) -> Result<Form, Rejection> {
    let channel = &entry.channel;
    if !channel.enabled {
        return Err(CHANNEL_DISABLED);
    }
    if !is_form(headers) {
        return Err(NOT_A_FORM);
    }
    let body = read_body(headers, body).await?;
    let signed = if channel.insecure_skip_signature {
        None
    } else {
        let signature = headers
            .get(signature::HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or(NO_SIGNATURE)?;
        Some((signed_url(channel, uri, headers).ok_or(NO_URL)?, signature.to_owned()))
    };
    Ok(Form { entry, body, signed })
}

/// A TwiML answer (`text/xml`).
pub fn twiml_response(xml: impl IntoResponse) -> Response {
    ([(header::CONTENT_TYPE, "text/xml")], xml).into_response()
}

/// Logs and counts a rejection (every one has its status code and a
/// logged reason); an accepted answer goes out as it is.
fn finish(route: &'static str, channel_id: &str, started: Instant, result: Result<Response, Rejection>) -> Response {
    match result {
        Ok(response) => response,
        Err(rejection) => {
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let outcome = outcome_label(rejection.status);
            metrics::counter!("smsgate_ingress_requests_total", "route" => route, "outcome" => outcome).increment(1);
            if rejection.status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(
                    route,
                    channel_id,
                    status = rejection.status.as_u16(),
                    reason = rejection.reason,
                    latency_ms,
                    outcome,
                    "webhook not accepted"
                );
            } else {
                tracing::info!(
                    route,
                    channel_id,
                    status = rejection.status.as_u16(),
                    reason = rejection.reason,
                    latency_ms,
                    outcome,
                    "webhook rejected"
                );
            }
            rejection.into_response()
        }
    }
}

fn outcome_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        413 => "too_large",
        415 => "unsupported_media_type",
        503 => "unavailable",
        _ => "error",
    }
}

struct Accepted {
    message_sid: MessageSid,
    duplicate: bool,
}

async fn accept(route: Route, shared: &Shared, form: &Form) -> Result<Accepted, Rejection> {
    let entry = form.entry();
    let channel = &entry.channel;
    let params = form.params()?;
    let fields = Fields(&params);
    let message_sid = MessageSid::parse(fields.get("MessageSid").ok_or(missing("MessageSid missing"))?)
        .map_err(|_| missing("MessageSid malformed"))?;
    fields.check_account(channel)?;
    let now = OffsetDateTime::now_utc();
    // The status callback's id borrows its status from here.
    let status: String;
    let (subject, msg_id, payload) = match route {
        Route::Inbound => {
            let inbound = InboundRef {
                v: envelope::VERSION,
                channel_id: &channel.id,
                message_sid: &message_sid,
                account_sid: channel.account_sid.as_str(),
                from: fields.get("From").ok_or(missing("From missing"))?,
                to: fields.get("To").ok_or(missing("To missing"))?,
                body: fields.get("Body").unwrap_or_default(),
                media: fields.media(),
                received_at: now,
                params: &params,
            };
            // The envelope holds every parameter and a few of them twice.
            let payload = envelope::encode_within(&inbound, 2 * form.body.len() + 256);
            (entry.local.inbound.clone(), MsgId::Inbound(&message_sid), payload)
        }
        Route::Status => {
            status = fields.get("MessageStatus").ok_or(missing("MessageStatus missing"))?.to_owned();
            if !status.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') || status.is_empty() {
                return Err(missing("MessageStatus malformed"));
            }
            let update = StatusUpdate {
                v: envelope::VERSION,
                channel_id: channel.id.clone(),
                message_sid: message_sid.clone(),
                error_code: fields.get("ErrorCode").filter(|c| !c.is_empty()).map(str::to_owned),
                to: fields.get("To").map(str::to_owned),
                received_at: now,
                params: fields.owned(),
                status: status.clone(),
            };
            let payload = envelope::encode(&update);
            (entry.local.status.clone(), MsgId::Status { sid: &message_sid, status: &status }, payload)
        }
    };
    let duplicate = publish(shared, subject, msg_id, payload).await?;
    Ok(Accepted { message_sid, duplicate })
}

/// Publishes and waits for the stream's ack, within `publish_timeout` per
/// attempt. While connected, a publish the stream did not take (no leader:
/// "no stream found", or no ack in time) is tried again every 250 ms for up
/// to `store_wait`; the message id makes a repeat harmless. Returns whether
/// JetStream saw the id before (a repeated webhook).
pub(crate) async fn publish(
    shared: &Shared,
    subject: String,
    msg_id: MsgId<'_>,
    payload: Bytes,
) -> Result<bool, Rejection> {
    let started = Instant::now();
    let deadline = started + shared.store_wait;
    for attempt in 0u32.. {
        // Fail fast while disconnected: Twilio gets its 503 at once and nothing
        // sits in the client's buffer to be published behind our back.
        if shared.client.connection_state() != async_nats::connection::State::Connected {
            return Err(NATS_DOWN);
        }
        let now = if attempt == 0 { started } else { Instant::now() };
        let budget = shared.publish_timeout.min(deadline.saturating_duration_since(now));
        let once = bus::publish(&shared.js, subject.clone(), msg_id, payload.clone());
        let rejection = match tokio::time::timeout(budget, once).await {
            Ok(Ok(ack)) => {
                shared.metrics.publish_seconds.record(started.elapsed().as_secs_f64());
                if attempt > 0 {
                    tracing::info!(attempt, waited_ms = started.elapsed().as_millis() as u64, "stored after retrying");
                }
                return Ok(ack.duplicate);
            }
            Ok(Err(e)) => {
                tracing::warn!(attempt, error = &e as &dyn std::error::Error, "publish not acknowledged");
                PUBLISH_FAILED
            }
            Err(_) => ACK_TIMEOUT,
        };
        let pause = std::time::Duration::from_millis(250);
        if Instant::now() + pause >= deadline {
            return Err(rejection);
        }
        tokio::time::sleep(pause).await;
    }
    Err(PUBLISH_FAILED)
}

fn is_form(headers: &HeaderMap) -> bool {
    has_media_type(headers, "application/x-www-form-urlencoded")
}

async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, Rejection> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(TOO_LARGE);
    }
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        // to_bytes fails for an over-limit body or a broken stream.
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            TOO_LARGE
        } else {
            BODY_UNREADABLE
        }
    })
}

/// The URL Twilio signed: the channel's public base URL + path + query, or,
/// without one, the URL rebuilt from the proxy headers and Host.
fn signed_url(channel: &Channel, uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut url = public_base(channel, headers)?;
    url.push_str(path_and_query);
    Some(url)
}

/// Where Twilio reaches us: the channel's public base URL, or the one the
/// proxy headers and Host name. The URLs our TwiML names start with it.
pub(crate) fn public_base(channel: &Channel, headers: &HeaderMap) -> Option<String> {
    if let Some(base) = &channel.public_base_url {
        return Some(base.clone());
    }
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let proto = header_str("x-forwarded-proto").and_then(|p| p.split(',').next()).unwrap_or("http").trim();
    let host = header_str("x-forwarded-host").or_else(|| header_str("host"))?;
    Some(format!("{proto}://{host}"))
}

/// Form fields by name (the first value of a repeated key).
pub(crate) struct Fields<'a>(pub(crate) &'a [(Cow<'a, str>, Cow<'a, str>)]);

impl<'a> Fields<'a> {
    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_ref())
    }

    /// `AccountSid` must be the channel's (400).
    pub(crate) fn check_account(&self, channel: &Channel) -> Result<(), Rejection> {
        if self.get("AccountSid") == Some(channel.account_sid.as_str()) { Ok(()) } else { Err(WRONG_ACCOUNT) }
    }

    /// Every parameter, owned (what the envelope keeps).
    pub(crate) fn owned(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// MediaUrl{N} / MediaContentType{N}, N from 0 to NumMedia - 1 (at most 10).
    fn media(&self) -> Vec<Media> {
        let count = self.get("NumMedia").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0).min(10);
        (0..count)
            .filter_map(|i| {
                let url = self.get(&format!("MediaUrl{i}"))?;
                Some(Media {
                    url: url.to_owned(),
                    content_type: self.get(&format!("MediaContentType{i}")).map(str::to_owned),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smsgate_testkit as testkit;

    #[test]
    fn finds_a_channel_by_token_and_nothing_by_a_near_miss() {
        let channels = channels(vec![testkit::channel("")], &Topology::new("t"));
        assert!(channels.find_token(testkit::PATH_TOKEN).is_some());
        let near = &testkit::PATH_TOKEN[..testkit::PATH_TOKEN.len() - 1];
        assert!(channels.find_token(near).is_none());
        assert!(channels.find_token("").is_none());
    }

    #[test]
    fn signed_url_prefers_the_configured_base() {
        let channel = testkit::channel("");
        let uri: Uri = "/api/channels/sms/twilio/webhook/x?a=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "evil.example".parse().unwrap());
        assert_eq!(
            signed_url(&channel, &uri, &headers).unwrap(),
            "http://127.0.0.1:8000/api/channels/sms/twilio/webhook/x?a=1"
        );
    }

    #[test]
    fn signed_url_falls_back_to_forwarded_headers() {
        let mut channel = testkit::channel("");
        channel.public_base_url = None;
        let uri: Uri = "/p".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "internal:8000".parse().unwrap());
        assert_eq!(signed_url(&channel, &uri, &headers).unwrap(), "http://internal:8000/p");
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        headers.insert("x-forwarded-host", "sms.example.com".parse().unwrap());
        assert_eq!(signed_url(&channel, &uri, &headers).unwrap(), "https://sms.example.com/p");
    }

    #[test]
    fn form_content_type_accepts_a_charset() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=utf-8".parse().unwrap());
        assert!(is_form(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_form(&h));
        assert!(!is_form(&HeaderMap::new()));
    }

    #[test]
    fn media_are_read_up_to_num_media() {
        let params: Vec<(Cow<'_, str>, Cow<'_, str>)> = [
            ("NumMedia", "2"),
            ("MediaUrl0", "https://a/0"),
            ("MediaContentType0", "image/jpeg"),
            ("MediaUrl1", "https://a/1"),
            ("MediaUrl2", "https://a/2"),
        ]
        .iter()
        .map(|(k, v)| (Cow::Borrowed(*k), Cow::Borrowed(*v)))
        .collect();
        let media = Fields(&params).media();
        assert_eq!(media.len(), 2);
        assert_eq!(media[0].content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(media[1].content_type, None);
    }
}
