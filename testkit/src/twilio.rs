//! A stub of Twilio's Messages API that speaks its wire format, for the
//! sender's tests and the whole pipeline's (e2e).
//!
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`:
//! - HTTP Basic `AccountSid:AuthToken` (else 401, code 20003), and the path's
//!   AccountSid must be the account's (else 404, code 20404);
//! - form-encoded; `To` an E.164 number (else 400, 21211), `From` or
//!   `MessagingServiceSid` (else 400, 21603), `Body` or `MediaUrl` (else
//!   400, 21602), `Body` at most 1600 characters (else 400, 21617);
//! - answers 201 with a Twilio-shaped message (`sid` `SM` + 32 hex,
//!   `status` `queued`, `num_segments` as a string, …).
//!
//! Media (MMS), as Twilio serves it (docs/TWILIO.md §8):
//! - `GET /2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{MediaSid}`
//!   with the same Basic auth: a registered media file's bytes, or a 307 to
//!   where it was registered to redirect (a [`super::media::MediaHost`]),
//!   else 404 (20404);
//! - `DELETE …/Media/{MediaSid}.json`: 204, recorded ([`TwilioStub::deleted_media`]).
//!
//! Every media request, authenticated or not, is recorded ([`TwilioStub::media_requests`]).
//!
//! `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`: the same auth and
//! error shapes; `To` an E.164 number (else 400, 21211 / 21201), `From`
//! (else 400, 21213), one of `Url`, `Twiml`, `ApplicationSid` (else 400,
//! 21205), `Twiml` at most 4000 characters (else 400, 21211); answers 201
//! with a Twilio-shaped call (`sid` `CA` + 32 hex, `status` `queued`).
//! Its requests are recorded with [`Call::resource`] `Calls`.
//!
//! The account and its numbers, for `GET /api/v1/channels/{id}/status` and
//! connecting with `set_webhook`:
//! - `GET /2010-04-01/Accounts/{Sid}.json`: the Account resource (`status`
//!   `active` unless [`TwilioStub::set_account_status`] says otherwise);
//! - `GET …/IncomingPhoneNumbers.json[?PhoneNumber=+1…]`: Twilio's page
//!   shape (`incoming_phone_numbers`, `page`, `page_size`, `uri`, …) over
//!   the numbers added with [`TwilioStub::add_number`];
//! - `POST …/IncomingPhoneNumbers/{Sid}.json` (form `SmsUrl`, `SmsMethod`,
//!   `VoiceUrl`, `VoiceMethod`): updates the number, answers it (200).
//!
//! All with the same Basic auth (401 / 20003) and a 404 / 20404 for another
//! account or an unknown number. Every request to the Messages API that
//! passes authentication is recorded with its arrival
//! time ([`Call`]). Answers can be scripted: a FIFO queue of forced replies
//! ([`TwilioStub::push`]), and a probabilistic [`Chaos`] mode for fault
//! tests. A scripted or chaotic reply is chosen before the form is checked.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::extract::{Path, RawForm, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use rand::Rng;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use smsgate_shared::domain::E164;

/// A forced answer to the next authenticated request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The normal 201 (after checking the form).
    Created,
    /// 201, after a pause (a slow Twilio). The call is recorded when the
    /// answer is sent, so a client that gave up first leaves no record.
    SlowCreated(Duration),
    /// 429, code 20429, with `Retry-After: <secs>` when given.
    TooManyRequests { retry_after: Option<u64> },
    /// 500, code 20500, the message NOT created.
    ServerError,
    /// 500, code 20500, but the message WAS created (recorded with a SID):
    /// the "unknown outcome" a retry turns into a duplicate.
    ServerErrorAfterCreate,
    /// Any Twilio error document, e.g. 400 / 21610.
    Error { status: u16, code: i64, message: String },
}

impl Reply {
    /// A 400 with Twilio's code and a message like Twilio's.
    pub fn code(code: i64) -> Self {
        let message = match code {
            21211 => "The 'To' number is not a valid phone number.",
            21408 => "Permission to send an SMS has not been enabled for the region indicated by the 'To' number.",
            21610 => "Attempt to send to unsubscribed recipient",
            21614 => "'To' number is not a valid mobile number",
            21617 => "The concatenated message body exceeds the 1600 character limit.",
            21611 => "This 'From' number has exceeded the maximum number of queued messages",
            _ => "Error",
        };
        Reply::Error { status: 400, code, message: message.to_owned() }
    }
}

/// Random faults for whole-pipeline tests; shares are probabilities 0..=1.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Chaos {
    /// Answer 429 / 20429 (with `Retry-After: 1`).
    pub rate_limited: f64,
    /// Answer 500 / 20500 without creating the message.
    pub server_error: f64,
    /// Answer 500 / 20500 after creating the message.
    pub server_error_after_create: f64,
    /// Answer 201 after `slow_delay`.
    pub slow: f64,
    pub slow_delay: Duration,
}

/// One authenticated request as the stub received it.
#[derive(Debug, Clone)]
pub struct Call {
    /// When the request arrived (tokio clock).
    pub at: Instant,
    pub account_sid: String,
    /// Every form pair, in order (`MediaUrl` repeats).
    pub form: Vec<(String, String)>,
    /// The HTTP status answered.
    pub status: u16,
    /// Twilio's error code answered, if any.
    pub code: Option<i64>,
    /// The SID when the stub created the message (201, or a 500 after create).
    pub sid: Option<String>,
    /// `Messages` or `Calls`.
    pub resource: &'static str,
}

impl Call {
    /// The first value of a form field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated form field.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.form.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// Whether the stub created a message for this call.
    pub fn created(&self) -> bool {
        self.sid.is_some()
    }
}

/// A media file the stub serves.
#[derive(Debug, Clone)]
enum StubMedia {
    Bytes { content_type: String, bytes: Vec<u8> },
    Redirect(String),
}

/// One request for a media resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRequest {
    pub method: String,
    pub path: String,
    pub authorized: bool,
}

/// A phone number of the stub's account (`IncomingPhoneNumbers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    /// `PN` and 32 hex digits.
    pub sid: String,
    pub phone_number: String,
    pub sms_url: String,
    pub sms_method: String,
    pub voice_url: String,
    pub voice_method: String,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// By `(MessageSid, MediaSid)`.
    media: std::collections::HashMap<(String, String), StubMedia>,
    /// Served for any media not registered (the e2e load).
    any_media: Option<StubMedia>,
    media_requests: Vec<MediaRequest>,
    deleted_media: Vec<String>,
    /// Answer the next N media GETs with this status.
    media_failures: Option<(u16, usize)>,
    script: VecDeque<Reply>,
    chaos: Chaos,
    unauthorized: usize,
    numbers: Vec<Number>,
    account_status: Option<String>,
    /// Updates of numbers, in order: (number sid, form).
    number_updates: Vec<(String, Vec<(String, String)>)>,
    /// Every HTTP request the stub received, on any route, as `METHOD path`.
    requests: Vec<String>,
    /// Messages created, by SID: their JSON and how often each was fetched.
    messages: std::collections::HashMap<String, (Value, u32)>,
    /// How Twilio prices messages on a fetch (see [`Pricing`]).
    pricing: Pricing,
}

/// How the stub fills a message's `price` on `GET …/Messages/{Sid}.json`:
/// null for the first `null_fetches` fetches (as Twilio's is until it has
/// billed the message), then `-(usd_per_segment × num_segments)` as a string
/// with five decimals and `price_unit` `USD`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pricing {
    pub usd_per_segment: f64,
    pub null_fetches: u32,
}

impl Default for Pricing {
    fn default() -> Self {
        Self { usd_per_segment: 0.0079, null_fetches: 1 }
    }
}

/// Records every request, whatever its route (see [`TwilioStub::requests`]).
async fn record_request(
    State(state): State<Arc<StubState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    state.lock().requests.push(format!("{} {}", request.method(), request.uri().path()));
    next.run(request).await
}

struct StubState {
    account_sid: String,
    auth_token: String,
    inner: Mutex<Inner>,
}

impl StubState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running stub; stopped on drop.
pub struct TwilioStub {
    addr: SocketAddr,
    state: Arc<StubState>,
    stop: CancellationToken,
}

impl TwilioStub {
    /// A stub for the test kit's account ([`super::ACCOUNT_SID`], [`super::AUTH_TOKEN`]).
    pub async fn start() -> Self {
        Self::start_for(super::ACCOUNT_SID, super::AUTH_TOKEN).await
    }

    /// A stub for another account.
    pub async fn start_for(account_sid: &str, auth_token: &str) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(addr, account_sid, auth_token).await.unwrap_or_else(|e| panic!("Twilio stub cannot bind: {e}"))
    }

    /// A stub for `account_sid` listening on `addr` (the load generator's
    /// end-to-end mode binds a fixed port the services are configured with).
    pub async fn start_on(addr: SocketAddr, account_sid: &str, auth_token: &str) -> std::io::Result<Self> {
        let state = Arc::new(StubState {
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.to_owned(),
            inner: Mutex::new(Inner::default()),
        });
        let app = Router::new()
            .route("/2010-04-01/Accounts/{account_sid}/Messages.json", post(create_message))
            .route(
                "/2010-04-01/Accounts/{account_sid}/Messages/{message_sid}/Media/{media}",
                get(get_media).delete(delete_media),
            )
            .route("/2010-04-01/Accounts/{account_sid}/Messages/{message_sid}", get(fetch_message))
            .route("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}", get(fetch_message))
            .route("/2010-04-01/Accounts/{file}", get(fetch_account))
            .route("/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers.json", get(list_numbers))
            .route("/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers/{file}", post(update_number))
            .route("/2010-04-01/Accounts/{account_sid}/Calls.json", post(create_call))
            .with_state(state.clone())
            .layer(axum::middleware::from_fn_with_state(state.clone(), record_request));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let until = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(until).await;
        });
        Ok(Self { addr, state, stop })
    }

    /// How messages are priced when fetched (default: null on the first
    /// fetch, 0.0079 USD per segment after).
    pub fn set_pricing(&self, pricing: Pricing) {
        self.state.lock().pricing = pricing;
    }

    /// How often the message `sid` was fetched (`GET …/Messages/{sid}.json`).
    pub fn fetches(&self, sid: &str) -> u32 {
        self.state.lock().messages.get(sid).map_or(0, |(_, n)| *n)
    }

    /// The base URL, for a channel's `twilio_api_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `MediaUrl` Twilio would post for this media of this message.
    pub fn media_url(&self, message_sid: &str, media_sid: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages/{message_sid}/Media/{media_sid}",
            self.base_url(),
            self.state.account_sid
        )
    }

    /// Serves `bytes` for this media and returns its `MediaUrl`.
    pub fn add_media(&self, message_sid: &str, media_sid: &str, content_type: &str, bytes: &[u8]) -> String {
        let media = StubMedia::Bytes { content_type: content_type.to_owned(), bytes: bytes.to_vec() };
        self.state.lock().media.insert((message_sid.to_owned(), media_sid.to_owned()), media);
        self.media_url(message_sid, media_sid)
    }

    /// Answers this media with a 307 to `location` (as Twilio redirects to
    /// its media store) and returns its `MediaUrl`.
    pub fn add_media_redirect(&self, message_sid: &str, media_sid: &str, location: &str) -> String {
        let media = StubMedia::Redirect(location.to_owned());
        self.state.lock().media.insert((message_sid.to_owned(), media_sid.to_owned()), media);
        self.media_url(message_sid, media_sid)
    }

    /// Serves `bytes` for every media not registered otherwise.
    pub fn serve_any_media(&self, content_type: &str, bytes: &[u8]) {
        self.state.lock().any_media =
            Some(StubMedia::Bytes { content_type: content_type.to_owned(), bytes: bytes.to_vec() });
    }

    /// Answers the next `times` media GETs with `status` (500, 429, ...).
    pub fn fail_media_next(&self, times: usize, status: u16) {
        self.state.lock().media_failures = Some((status, times));
    }

    /// Every request for a media resource, in arrival order.
    pub fn media_requests(&self) -> Vec<MediaRequest> {
        self.state.lock().media_requests.clone()
    }

    /// The paths of the media resources deleted (authenticated DELETEs).
    pub fn deleted_media(&self) -> Vec<String> {
        self.state.lock().deleted_media.clone()
    }

    /// Queues a forced answer for the next authenticated request.
    pub fn push(&self, reply: Reply) {
        self.state.lock().script.push_back(reply);
    }

    /// Sets (or, with `Chaos::default()`, clears) random faults.
    pub fn set_chaos(&self, chaos: Chaos) {
        self.state.lock().chaos = chaos;
    }

    /// Every authenticated request so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    /// The requests for which a message was created.
    pub fn created(&self) -> Vec<Call> {
        self.calls().into_iter().filter(Call::created).collect()
    }

    /// How many authenticated requests so far (cheaper than `calls().len()`).
    pub fn call_count(&self) -> usize {
        self.state.lock().calls.len()
    }

    /// Adds a number to the account with its SMS webhook (voice: none);
    /// returns its SID.
    pub fn add_number(&self, phone_number: &str, sms_url: &str, sms_method: &str) -> String {
        let sid = new_sid(MESSAGES).replacen("SM", "PN", 1);
        self.state.lock().numbers.push(Number {
            sid: sid.clone(),
            phone_number: phone_number.to_owned(),
            sms_url: sms_url.to_owned(),
            sms_method: sms_method.to_owned(),
            voice_url: String::new(),
            voice_method: "POST".to_owned(),
        });
        sid
    }

    /// The number as the stub holds it now.
    pub fn number(&self, phone_number: &str) -> Option<Number> {
        self.state.lock().numbers.iter().find(|n| n.phone_number == phone_number).cloned()
    }

    /// Every update of a number so far: (number SID, form pairs).
    pub fn number_updates(&self) -> Vec<(String, Vec<(String, String)>)> {
        self.state.lock().number_updates.clone()
    }

    /// The account's `status`: `active` (the default), `suspended`, `closed`.
    pub fn set_account_status(&self, status: &str) {
        self.state.lock().account_status = Some(status.to_owned());
    }

    /// Every request received so far, on any route, authenticated or not
    /// (`GET /2010-04-01/Accounts/AC….json`): a test that Twilio was never
    /// asked checks that this is empty.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().requests.clone()
    }

    /// How many requests failed authentication.
    pub fn unauthorized(&self) -> usize {
        self.state.lock().unauthorized
    }

    /// Waits until at least `n` requests were recorded.
    pub async fn wait_for_calls(&self, n: usize, timeout: Duration) -> Vec<Call> {
        super::eventually(timeout, &format!("{n} calls to the Twilio stub"), || async {
            let calls = self.calls();
            (calls.len() >= n).then_some(calls)
        })
        .await
    }
}

impl Drop for TwilioStub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn error(status: u16, code: i64, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn authorized(headers: &HeaderMap, state: &StubState) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    decoded == format!("{}:{}", state.account_sid, state.auth_token).as_bytes()
}

/// `SM` (or `CA` for a call) and 32 hex digits.
fn new_sid(resource: &str) -> String {
    let mut rng = rand::rng();
    let hex: String = (0..32).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect();
    format!("{}{hex}", if resource == CALLS { "CA" } else { "SM" })
}

const MESSAGES: &str = "Messages";
const CALLS: &str = "Calls";

fn call_json(account_sid: &str, sid: &str, form: &[(String, String)]) -> Value {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc2822).unwrap_or_default();
    json!({
        "account_sid": account_sid,
        "annotation": null,
        "answered_by": null,
        "api_version": "2010-04-01",
        "caller_name": null,
        "date_created": now,
        "date_updated": now,
        "direction": "outbound-api",
        "duration": null,
        "end_time": null,
        "forwarded_from": null,
        "from": get("From"),
        "from_formatted": get("From"),
        "group_sid": null,
        "parent_call_sid": null,
        "phone_number_sid": null,
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "start_time": null,
        "status": "queued",
        "subresource_uris": {
            "recordings": format!("/2010-04-01/Accounts/{account_sid}/Calls/{sid}/Recordings.json"),
        },
        "to": get("To"),
        "to_formatted": get("To"),
        "trunk_sid": null,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Calls/{sid}.json"),
        "queue_time": "0",
    })
}

/// What a call's form is missing, as Twilio would say it.
fn check_call_form(form: &[(String, String)]) -> Result<(), (i64, String)> {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("To") {
        None => return Err((21201, "No 'To' number is specified".to_owned())),
        Some(to) if E164::parse(to).is_err() => {
            return Err((21211, format!("Invalid 'To' Phone Number: {to}")));
        }
        Some(_) => {}
    }
    if get("From").is_none() {
        return Err((21213, "No 'From' number is specified".to_owned()));
    }
    if get("Url").is_none() && get("Twiml").is_none() && get("ApplicationSid").is_none() {
        return Err((21205, "Url parameter is required.".to_owned()));
    }
    if get("Twiml").is_some_and(|t| t.chars().count() > 4000) {
        return Err((21211, "Twiml is over 4000 characters.".to_owned()));
    }
    Ok(())
}

/// Approximate segments (GSM-7 when ASCII without backtick), for the
/// answer's `num_segments` only; the sender counts exactly on its own.
fn segments(body: &str) -> usize {
    let gsm = body.chars().all(|c| c.is_ascii() && c != '`');
    let (single, multi, units) =
        if gsm { (160, 153, body.chars().count()) } else { (70, 67, body.encode_utf16().count()) };
    match units {
        0 => 1,
        u if u <= single => 1,
        u => u.div_ceil(multi),
    }
}

fn message_json(account_sid: &str, sid: &str, form: &[(String, String)]) -> Value {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let body = get("Body").unwrap_or_default();
    let media = form.iter().filter(|(k, _)| k == "MediaUrl").count();
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc2822).unwrap_or_default();
    let uri = format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json");
    json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": get("From"),
        "messaging_service_sid": get("MessagingServiceSid"),
        "num_media": media.to_string(),
        "num_segments": segments(&body).to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": if get("MessagingServiceSid").is_some() { "accepted" } else { "queued" },
        "subresource_uris": { "media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json") },
        "to": get("To"),
        "uri": uri,
    })
}

/// What the form is missing, as Twilio would say it.
fn check_form(form: &[(String, String)]) -> Result<(), (i64, String)> {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("To") {
        None => return Err((21604, "A 'To' phone number is required.".to_owned())),
        Some(to) if E164::parse(to).is_err() => {
            return Err((21211, format!("The 'To' number {to} is not a valid phone number.")));
        }
        Some(_) => {}
    }
    if get("From").is_none() && get("MessagingServiceSid").is_none() {
        return Err((21603, "A 'From' or 'MessagingServiceSid' parameter is required to send a message.".to_owned()));
    }
    let body = get("Body");
    if body.is_none_or(str::is_empty) && get("MediaUrl").is_none() {
        return Err((21602, "Message body is required.".to_owned()));
    }
    if body.is_some_and(|b| b.chars().count() > 1600) {
        return Err((21617, "The concatenated message body exceeds the 1600 character limit.".to_owned()));
    }
    Ok(())
}

async fn create_message(
    State(state): State<Arc<StubState>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    RawForm(raw): RawForm,
) -> Response {
    create(MESSAGES, &state, account_sid, &headers, &raw).await
}

async fn create_call(
    State(state): State<Arc<StubState>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    RawForm(raw): RawForm,
) -> Response {
    create(CALLS, &state, account_sid, &headers, &raw).await
}

async fn create(
    resource: &'static str,
    state: &StubState,
    account_sid: String,
    headers: &HeaderMap,
    raw: &[u8],
) -> Response {
    let at = Instant::now();
    if !authorized(headers, state) {
        state.lock().unauthorized += 1;
        return error(401, 20003, "Authentication Error - invalid username");
    }
    if account_sid != state.account_sid {
        return error(404, 20404, "The requested resource was not found");
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(raw).into_owned().collect();
    let reply = {
        let mut inner = state.lock();
        match inner.script.pop_front() {
            Some(r) => r,
            None => roll(&inner.chaos),
        }
    };
    let record = |status: u16, code: Option<i64>, sid: Option<String>| {
        let call = Call { at, account_sid: account_sid.clone(), form: form.clone(), status, code, sid, resource };
        state.lock().calls.push(call);
    };
    let checked = if resource == CALLS { check_call_form(&form) } else { check_form(&form) };
    let created = |record: &dyn Fn(u16, Option<i64>, Option<String>)| match checked.clone() {
        Ok(()) => {
            let sid = new_sid(resource);
            record(201, None, Some(sid.clone()));
            let body = if resource == CALLS {
                call_json(&account_sid, &sid, &form)
            } else {
                message_json(&account_sid, &sid, &form)
            };
            state.lock().messages.insert(sid.clone(), (body.clone(), 0));
            (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err((code, message)) => {
            record(400, Some(code), None);
            error(400, code, &message)
        }
    };
    match reply {
        Reply::Created => created(&record),
        Reply::SlowCreated(d) => {
            tokio::time::sleep(d).await;
            created(&record)
        }
        Reply::TooManyRequests { retry_after } => {
            record(429, Some(20429), None);
            let mut response = error(429, 20429, "Too Many Requests");
            if let Some(secs) = retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
        Reply::ServerError => {
            record(500, Some(20500), None);
            error(500, 20500, "An internal server error has occurred")
        }
        Reply::ServerErrorAfterCreate => {
            record(500, Some(20500), Some(new_sid(resource)));
            error(500, 20500, "An internal server error has occurred")
        }
        Reply::Error { status, code, message } => {
            record(status, Some(code), None);
            error(status, code, &message)
        }
    }
}

/// `GET …/Messages/{Sid}.json` (and `…/Calls/{Sid}.json`): the message as
/// created, `status` `sent`, `price` null until [`Pricing::null_fetches`]
/// fetches have passed; a call then reads `completed`, 42 s, -0.01400 USD.
async fn fetch_message(
    State(state): State<Arc<StubState>>,
    Path((account_sid, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &state) {
        state.lock().unauthorized += 1;
        return error(401, 20003, "Authentication Error - invalid username");
    }
    let Some(sid) = file.strip_suffix(".json") else {
        return error(404, 20404, "The requested resource was not found");
    };
    if account_sid != state.account_sid {
        return error(404, 20404, "The requested resource was not found");
    }
    let mut inner = state.lock();
    let pricing = inner.pricing;
    let Some((body, fetches)) = inner.messages.get_mut(sid) else {
        return error(
            404,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account_sid}/Messages/{sid}.json was not found"),
        );
    };
    *fetches += 1;
    let mut body = body.clone();
    let call = sid.starts_with("CA");
    if *fetches > pricing.null_fetches {
        if call {
            // A call that ended after 42 s, at 0.014 USD a minute.
            body["status"] = json!("completed");
            body["duration"] = json!("42");
            body["price"] = json!("-0.01400");
        } else {
            let segments: f64 = body["num_segments"].as_str().and_then(|s| s.parse().ok()).unwrap_or(1.0);
            body["price"] = json!(format!("{:.5}", -(segments * pricing.usd_per_segment)));
        }
    }
    if !call {
        body["status"] = json!("sent");
    }
    json_response(StatusCode::OK, &body)
}

/// Records a media request; None when it may go on, else the answer.
fn media_gate(state: &StubState, method: &str, path: &str, account_sid: &str, headers: &HeaderMap) -> Option<Response> {
    let ok = authorized(headers, state);
    state.lock().media_requests.push(MediaRequest { method: method.to_owned(), path: path.to_owned(), authorized: ok });
    if !ok {
        state.lock().unauthorized += 1;
        return Some(error(401, 20003, "Authentication Error - invalid username"));
    }
    if account_sid != state.account_sid {
        return Some(error(404, 20404, "The requested resource was not found"));
    }
    None
}

async fn get_media(
    State(state): State<Arc<StubState>>,
    Path((account_sid, message_sid, media_sid)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = media_gate(&state, "GET", uri.path(), &account_sid, &headers) {
        return refused;
    }
    let (media, failure) = {
        let mut inner = state.lock();
        let failure = match &mut inner.media_failures {
            Some((status, times)) if *times > 0 => {
                *times -= 1;
                Some(*status)
            }
            _ => None,
        };
        let media = inner.media.get(&(message_sid, media_sid)).cloned().or_else(|| inner.any_media.clone());
        (media, failure)
    };
    if let Some(status) = failure {
        return error(status, 20500, "stub media failure");
    }
    match media {
        Some(StubMedia::Bytes { content_type, bytes }) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        Some(StubMedia::Redirect(location)) => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)], "").into_response()
        }
        None => error(404, 20404, "The requested resource was not found"),
    }
}

async fn delete_media(
    State(state): State<Arc<StubState>>,
    Path((account_sid, _message_sid, media)): Path<(String, String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = media_gate(&state, "DELETE", uri.path(), &account_sid, &headers) {
        return refused;
    }
    if !media.ends_with(".json") {
        return error(405, 20004, "Method not allowed");
    }
    state.lock().deleted_media.push(uri.path().to_owned());
    StatusCode::NO_CONTENT.into_response()
}

fn roll(chaos: &Chaos) -> Reply {
    let mut rng = rand::rng();
    let x: f64 = rng.random();
    let mut edge = chaos.rate_limited;
    if x < edge {
        return Reply::TooManyRequests { retry_after: Some(1) };
    }
    edge += chaos.server_error;
    if x < edge {
        return Reply::ServerError;
    }
    edge += chaos.server_error_after_create;
    if x < edge {
        return Reply::ServerErrorAfterCreate;
    }
    edge += chaos.slow;
    if x < edge {
        return Reply::SlowCreated(chaos.slow_delay);
    }
    Reply::Created
}

/// Authentication and the account in the path, for the account's
/// resources: the refusal, if any.
fn refusal(headers: &HeaderMap, state: &StubState, account_sid: &str) -> Option<Response> {
    if !authorized(headers, state) {
        state.lock().unauthorized += 1;
        return Some(error(401, 20003, "Authenticate"));
    }
    if account_sid != state.account_sid {
        return Some(error(404, 20404, "The requested resource was not found"));
    }
    None
}

fn rfc2822_now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc2822).unwrap_or_default()
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `GET /2010-04-01/Accounts/{Sid}.json`.
async fn fetch_account(State(state): State<Arc<StubState>>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(sid) = file.strip_suffix(".json") else {
        return error(404, 20404, "The requested resource was not found");
    };
    if let Some(r) = refusal(&headers, &state, sid) {
        return r;
    }
    let status = state.lock().account_status.clone().unwrap_or_else(|| "active".to_owned());
    let now = rfc2822_now();
    let base = format!("/2010-04-01/Accounts/{sid}");
    json_response(
        StatusCode::OK,
        &json!({
            "auth_token": "[Redacted]",
            "date_created": now,
            "date_updated": now,
            "friendly_name": "smsgate test account",
            "owner_account_sid": sid,
            "sid": sid,
            "status": status,
            "subresource_uris": {
                "incoming_phone_numbers": format!("{base}/IncomingPhoneNumbers.json"),
                "messages": format!("{base}/Messages.json"),
            },
            "type": "Full",
            "uri": format!("{base}.json"),
        }),
    )
}

fn number_json(account_sid: &str, n: &Number) -> Value {
    let now = rfc2822_now();
    json!({
        "account_sid": account_sid,
        "address_requirements": "none",
        "api_version": "2010-04-01",
        "beta": false,
        "capabilities": {"voice": true, "sms": true, "mms": true, "fax": false},
        "date_created": now,
        "date_updated": now,
        "friendly_name": n.phone_number,
        "origin": "twilio",
        "phone_number": n.phone_number,
        "sid": n.sid,
        "sms_application_sid": "",
        "sms_fallback_method": "POST",
        "sms_fallback_url": "",
        "sms_method": n.sms_method,
        "sms_url": n.sms_url,
        "status_callback": "",
        "status_callback_method": "POST",
        "status": "in-use",
        "uri": format!("/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers/{}.json", n.sid),
        "voice_application_sid": null,
        "voice_caller_id_lookup": false,
        "voice_fallback_method": "POST",
        "voice_fallback_url": null,
        "voice_method": n.voice_method,
        "voice_url": n.voice_url,
    })
}

/// `GET /2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json[?PhoneNumber=]`.
async fn list_numbers(
    State(state): State<Arc<StubState>>,
    Path(account_sid): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refusal(&headers, &state, &account_sid) {
        return r;
    }
    let filter = query.get("PhoneNumber");
    let numbers: Vec<Value> = state
        .lock()
        .numbers
        .iter()
        .filter(|n| filter.is_none_or(|f| *f == n.phone_number))
        .map(|n| number_json(&account_sid, n))
        .collect();
    let uri = format!("/2010-04-01/Accounts/{account_sid}/IncomingPhoneNumbers.json?PageSize=50&Page=0");
    json_response(
        StatusCode::OK,
        &json!({
            "end": numbers.len().saturating_sub(1),
            "first_page_uri": uri,
            "incoming_phone_numbers": numbers,
            "next_page_uri": null,
            "page": 0,
            "page_size": 50,
            "previous_page_uri": null,
            "start": 0,
            "uri": uri,
        }),
    )
}

/// `POST /2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers/{Sid}.json`.
async fn update_number(
    State(state): State<Arc<StubState>>,
    Path((account_sid, file)): Path<(String, String)>,
    headers: HeaderMap,
    RawForm(raw): RawForm,
) -> Response {
    if let Some(r) = refusal(&headers, &state, &account_sid) {
        return r;
    }
    let sid = file.strip_suffix(".json").unwrap_or_default().to_owned();
    let form: Vec<(String, String)> = form_urlencoded::parse(&raw).into_owned().collect();
    let mut inner = state.lock();
    let Some(number) = inner.numbers.iter_mut().find(|n| n.sid == sid) else {
        return error(404, 20404, "The requested resource was not found");
    };
    for (key, value) in &form {
        match key.as_str() {
            "SmsUrl" => number.sms_url = value.clone(),
            "SmsMethod" if matches!(value.as_str(), "GET" | "POST") => number.sms_method = value.clone(),
            "VoiceUrl" => number.voice_url = value.clone(),
            "VoiceMethod" if matches!(value.as_str(), "GET" | "POST") => number.voice_method = value.clone(),
            "SmsMethod" | "VoiceMethod" => {
                return error(400, 21205, "Method must be GET or POST");
            }
            _ => {}
        }
    }
    let answer = number_json(&account_sid, number);
    inner.number_updates.push((sid, form));
    json_response(StatusCode::OK, &answer)
}
