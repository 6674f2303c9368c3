//! The client of Twilio's Messages API (docs/TWILIO.md §6): one
//! `reqwest::Client`, one call, and errors that say what to do next.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use smsgate_shared::config::Channel;
use smsgate_shared::domain::E164;
use smsgate_shared::retry::parse_retry_after;
use smsgate_shared::twilio_error::ErrorDocument;

/// Twilio codes that are never retried (docs/TWILIO.md §6): invalid To,
/// region/geo permission, recipient opted out, not a mobile number, body
/// over 1600 characters.
pub const PERMANENT_CODES: [i64; 5] = [21211, 21408, 21610, 21614, 21617];
/// The recipient replied STOP: never retried, and the number is opted out.
pub const CODE_OPTED_OUT: i64 = 21610;
/// Too many requests.
pub const CODE_TOO_MANY_REQUESTS: i64 = 20429;
/// The sender's queue is full: back off, retry later.
pub const CODE_QUEUE_FULL: i64 = 21611;

/// The longest `Retry-After` honoured; beyond it JetStream redelivery takes over.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// What a failed call means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Twilio never saw the request (connection refused, DNS, TLS): retry.
    Transient,
    /// Twilio saw it and refused to process it for now: retry after a pause.
    RateLimited { retry_after: Option<Duration> },
    /// Twilio may or may not have created the message (5xx, timeout, a
    /// connection lost mid-request): a retry may send it twice.
    UnknownOutcome,
    /// Retrying cannot help.
    Permanent,
}

/// A failed call to the Messages API.
#[derive(Debug, thiserror::Error)]
pub enum TwilioError {
    /// Twilio answered with an error document.
    #[error("Twilio refused with HTTP {status}{}: {message}", code.map(|c| format!(" code {c}")).unwrap_or_default())]
    Api { status: u16, code: Option<i64>, message: String, more_info: Option<String>, retry_after: Option<Duration> },
    #[error("cannot connect to Twilio")]
    Connect(#[source] reqwest::Error),
    #[error("Twilio did not answer in time")]
    Timeout(#[source] reqwest::Error),
    #[error("the request to Twilio failed")]
    Transport(#[source] reqwest::Error),
}

impl TwilioError {
    /// The one place that decides retry behaviour (STYLE point 8).
    pub fn kind(&self) -> ErrorKind {
        match self {
            TwilioError::Api { status, code, retry_after, .. } => {
                if *status == 429 || matches!(code, Some(CODE_TOO_MANY_REQUESTS | CODE_QUEUE_FULL)) {
                    ErrorKind::RateLimited { retry_after: *retry_after }
                } else if *status >= 500 {
                    ErrorKind::UnknownOutcome
                } else {
                    ErrorKind::Permanent
                }
            }
            TwilioError::Connect(_) => ErrorKind::Transient,
            TwilioError::Timeout(_) | TwilioError::Transport(_) => ErrorKind::UnknownOutcome,
        }
    }

    /// Twilio's error code, when it sent one.
    pub fn code(&self) -> Option<i64> {
        match self {
            TwilioError::Api { code, .. } => *code,
            _ => None,
        }
    }

    /// The HTTP status, when Twilio answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            TwilioError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self.kind() {
            ErrorKind::Transient => "transient",
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::UnknownOutcome => "unknown_outcome",
            ErrorKind::Permanent => "permanent",
        }
    }
}

/// Twilio's 201 answer (the fields the sender uses).
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedMessage {
    /// None only when Twilio said 201 with a body we could not read: the
    /// message exists, so it must not be sent again.
    #[serde(default)]
    pub sid: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// A string in Twilio's JSON.
    #[serde(default)]
    pub num_segments: Option<String>,
}

/// A message or call as `GET …/Messages/{Sid}.json` (or `Calls/{Sid}.json`)
/// answers it: what the cost figures read. `price` is null until Twilio has
/// billed it, then a negative string (`"-0.00790"`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fetched {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub price: Option<serde_json::Value>,
    #[serde(default)]
    pub price_unit: Option<String>,
    /// A string in Twilio's JSON (messages).
    #[serde(default)]
    pub num_segments: Option<String>,
    /// Seconds, a string in Twilio's JSON (calls).
    #[serde(default)]
    pub duration: Option<String>,
}

impl Fetched {
    /// Twilio's price in USD, once billed.
    pub fn price_usd(&self) -> Option<f64> {
        smsgate_shared::cost::parse_twilio_price(self.price.as_ref())
    }

    pub fn segments(&self) -> Option<u64> {
        self.num_segments.as_deref().and_then(|s| s.trim().parse().ok())
    }

    pub fn duration_secs(&self) -> Option<u64> {
        self.duration.as_deref().and_then(|s| s.trim().parse().ok())
    }
}

/// One message to create.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub to: &'a E164,
    pub body: &'a str,
    pub media_urls: &'a [String],
    pub status_callback: Option<&'a str>,
}

/// Timeouts of the Messages API client.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        // Twilio answers creates in well under a second; 15 s is its own
        // webhook budget and a generous ceiling for ours.
        Self { connect: Duration::from_secs(5), request: Duration::from_secs(15) }
    }
}

#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
}

impl TwilioClient {
    pub fn new(timeouts: ClientTimeouts) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("smsgate-sender/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .build()?;
        Ok(Self { http })
    }

    /// `POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json`.
    pub async fn create_message(&self, channel: &Channel, msg: NewMessage<'_>) -> Result<CreatedMessage, TwilioError> {
        self.create(channel, "Messages", &form_fields(channel, msg)).await
    }

    /// `POST {api_base}/2010-04-01/Accounts/{sid}/Calls.json`: the same
    /// form encoding, auth and errors as a message; the answer's `sid` is
    /// the call's (`CA…`).
    pub async fn create_call(&self, channel: &Channel, call: NewCall<'_>) -> Result<CreatedMessage, TwilioError> {
        self.create(channel, "Calls", &call_form_fields(channel, call)).await
    }

    /// `GET {api_base}/2010-04-01/Accounts/{sid}/{Messages|Calls}/{Sid}.json`.
    pub async fn fetch(&self, channel: &Channel, resource: &str, sid: &str) -> Result<Fetched, TwilioError> {
        let url = format!("{}/2010-04-01/Accounts/{}/{resource}/{sid}.json", channel.api_base, channel.account_sid);
        let response = self
            .http
            .get(url)
            .basic_auth(channel.account_sid.as_str(), Some(channel.auth_token.expose_secret()))
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(classify)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| TwilioError::Api {
                status: status.as_u16(),
                code: None,
                message: format!("unreadable answer: {e}"),
                more_info: None,
                retry_after: None,
            });
        }
        Err(api_error(status.as_u16(), &bytes, None))
    }

    async fn create(
        &self,
        channel: &Channel,
        resource: &str,
        form: &[(&'static str, &str)],
    ) -> Result<CreatedMessage, TwilioError> {
        let url = format!("{}/2010-04-01/Accounts/{}/{resource}.json", channel.api_base, channel.account_sid);
        let response = self
            .http
            .post(url)
            .basic_auth(channel.account_sid.as_str(), Some(channel.auth_token.expose_secret()))
            .form(form)
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, MAX_RETRY_AFTER));
        let bytes = response.bytes().await.map_err(classify)?;
        if status.is_success() {
            return Ok(serde_json::from_slice(&bytes).unwrap_or(CreatedMessage {
                sid: None,
                status: None,
                num_segments: None,
            }));
        }
        Err(api_error(status.as_u16(), &bytes, retry_after))
    }
}

/// Twilio's error document as an error. Its texts quote the numbers (`The
/// 'To' number +1415... is not valid`); this message reaches logs, history
/// and dead letters, which mask them.
fn api_error(status: u16, bytes: &[u8], retry_after: Option<Duration>) -> TwilioError {
    let doc = ErrorDocument::parse(bytes);
    let message = ErrorDocument::message_or(doc.as_ref(), &String::from_utf8_lossy(bytes), 300);
    TwilioError::Api {
        status,
        code: doc.as_ref().and_then(|d| d.code),
        message,
        more_info: doc.and_then(|d| d.more_info),
        retry_after,
    }
}

/// The form: To, From or MessagingServiceSid, Body, MediaUrl (repeated),
/// StatusCallback.
pub fn form_fields<'a>(channel: &'a Channel, msg: NewMessage<'a>) -> Vec<(&'static str, &'a str)> {
    let mut form = vec![("To", msg.to.as_str())];
    match (&channel.messaging_service_sid, &channel.from_number) {
        (Some(ms), _) => form.push(("MessagingServiceSid", ms.as_str())),
        (None, Some(from)) => form.push(("From", from.as_str())),
        (None, None) => {}
    }
    if !msg.body.is_empty() || msg.media_urls.is_empty() {
        form.push(("Body", msg.body));
    }
    for url in msg.media_urls {
        form.push(("MediaUrl", url.as_str()));
    }
    if let Some(cb) = msg.status_callback {
        form.push(("StatusCallback", cb));
    }
    form
}

/// One call to place.
#[derive(Debug, Clone, Copy)]
pub struct NewCall<'a> {
    pub to: &'a E164,
    /// What the call plays, as TwiML (Twilio's `Twiml` parameter).
    pub twiml: &'a str,
    pub status_callback: Option<&'a str>,
}

/// The call progress events asked for (`StatusCallbackEvent`, repeated).
pub const CALL_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];

/// The form of a call: To, From (calls need a number, not a messaging
/// service), Twiml, StatusCallback with its events and method.
pub fn call_form_fields<'a>(channel: &'a Channel, call: NewCall<'a>) -> Vec<(&'static str, &'a str)> {
    let mut form = vec![("To", call.to.as_str())];
    if let Some(from) = &channel.from_number {
        form.push(("From", from.as_str()));
    }
    form.push(("Twiml", call.twiml));
    if let Some(cb) = call.status_callback {
        form.push(("StatusCallback", cb));
        form.push(("StatusCallbackMethod", "POST"));
        for event in CALL_EVENTS {
            form.push(("StatusCallbackEvent", event));
        }
    }
    form
}

fn classify(e: reqwest::Error) -> TwilioError {
    // The URL names the account; logs need only what went wrong.
    let e = e.without_url();
    if e.is_connect() {
        // A connect timeout is a connect error too: Twilio never saw it.
        TwilioError::Connect(e)
    } else if e.is_timeout() {
        TwilioError::Timeout(e)
    } else {
        TwilioError::Transport(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<i64>) -> TwilioError {
        TwilioError::Api { status, code, message: "m".into(), more_info: None, retry_after: None }
    }

    #[test]
    fn rate_limits_are_retried_server_errors_are_unknown_and_4xx_permanent() {
        assert_eq!(api(429, Some(20429)).kind(), ErrorKind::RateLimited { retry_after: None });
        assert_eq!(api(400, Some(21611)).kind(), ErrorKind::RateLimited { retry_after: None });
        assert_eq!(api(500, Some(20500)).kind(), ErrorKind::UnknownOutcome);
        assert_eq!(api(503, None).kind(), ErrorKind::UnknownOutcome);
        for code in PERMANENT_CODES {
            assert_eq!(api(400, Some(code)).kind(), ErrorKind::Permanent, "{code}");
        }
        assert_eq!(api(401, Some(20003)).kind(), ErrorKind::Permanent);
    }

    #[test]
    fn the_form_uses_the_messaging_service_when_configured() {
        let to = E164::parse("+14155550100").unwrap();
        let media = vec!["https://x.io/a.png".to_owned(), "https://x.io/b.png".to_owned()];
        let msg = NewMessage { to: &to, body: "", media_urls: &media, status_callback: Some("https://cb") };
        let plain = smsgate_testkit::channel("");
        let form = form_fields(&plain, msg);
        assert_eq!(
            form,
            vec![
                ("To", "+14155550100"),
                ("From", smsgate_testkit::FROM_NUMBER),
                ("MediaUrl", "https://x.io/a.png"),
                ("MediaUrl", "https://x.io/b.png"),
                ("StatusCallback", "https://cb"),
            ]
        );
        let ms = smsgate_testkit::channel(r#""twilio_messaging_service_sid": "MG0123456789abcdef0123456789abcdef""#);
        let form = form_fields(&ms, NewMessage { body: "hi", media_urls: &[], status_callback: None, ..msg });
        assert_eq!(form[1], ("MessagingServiceSid", "MG0123456789abcdef0123456789abcdef"));
        assert_eq!(form[2], ("Body", "hi"));
    }
}
