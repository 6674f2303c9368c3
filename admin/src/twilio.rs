//! The few Twilio resources the channel routes read and write: the Account
//! (are the credentials valid?) and the number's `IncomingPhoneNumbers`
//! entry (its SMS and voice webhooks), with the channel's own Basic auth
//! (docs/TWILIO.md §9).
//!
//! The text of an error answer is shown to the operator only when the
//! channel's `twilio_api_base` is Twilio's own (`*.twilio.com`): another
//! host (a stub, a proxy, or whatever an altered config points at) gets its
//! status and error code shown, never its words.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use smsgate_shared::config::{Channel, is_twilio_host};
use smsgate_shared::domain::E164;
use smsgate_shared::redact::third_party;
use smsgate_shared::twilio_error::ErrorDocument;

/// The longest one call to Twilio may take: an operator is waiting.
pub const TWILIO_TIMEOUT: Duration = Duration::from_secs(10);

/// The client the channel routes share.
#[derive(Clone)]
pub struct Twilio {
    http: reqwest::Client,
}

/// Why a call to Twilio did not give an answer to use.
#[derive(Debug, thiserror::Error)]
pub enum TwilioError {
    /// Twilio answered with an error document (`code`, `message`).
    #[error("Twilio answered {status}{}: {message}", code.map(|c| format!(" (error {c})")).unwrap_or_default())]
    Refused { status: u16, code: Option<i64>, message: String },
    #[error("cannot reach Twilio at {base}: {reason}")]
    Unreachable { base: String, reason: String },
    #[error("Twilio's answer is not what its API documents: {0}")]
    Malformed(String),
}

impl TwilioError {
    /// Twilio refused the credentials (401, error 20003).
    pub fn credentials_rejected(&self) -> bool {
        matches!(self, Self::Refused { status: 401, .. } | Self::Refused { code: Some(20003), .. })
    }
}

/// The Account resource, the part smsgate reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    /// `active`, `suspended` or `closed`.
    pub status: String,
}

/// An `IncomingPhoneNumbers` entry, the part smsgate reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Number {
    pub sid: String,
    pub phone_number: String,
    #[serde(default)]
    pub sms_url: Option<String>,
    #[serde(default)]
    pub sms_method: Option<String>,
    #[serde(default)]
    pub voice_url: Option<String>,
    #[serde(default)]
    pub voice_method: Option<String>,
}

#[derive(Deserialize)]
struct NumberPage {
    incoming_phone_numbers: Vec<Number>,
}

impl Default for Twilio {
    fn default() -> Self {
        Self::new()
    }
}

impl Twilio {
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(TWILIO_TIMEOUT)
            .user_agent(concat!("smsgate-admin/", env!("CARGO_PKG_VERSION")))
            .build()
            // Building fails only when TLS cannot start at all; the plain
            // client then fails the same way, on its first use.
            .unwrap_or_default();
        Self { http }
    }

    fn account_url(channel: &Channel) -> String {
        format!("{}/2010-04-01/Accounts/{}", channel.api_base, channel.account_sid)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        channel: &Channel,
        request: reqwest::RequestBuilder,
    ) -> Result<T, TwilioError> {
        let unreachable = |e: reqwest::Error| TwilioError::Unreachable {
            base: channel.api_base.clone(),
            reason: third_party(&e.to_string(), 200),
        };
        let response = request
            .basic_auth(channel.account_sid.as_str(), Some(channel.auth_token.expose_secret()))
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let doc = ErrorDocument::parse(&body);
            let code = doc.as_ref().and_then(|d| d.code);
            let reason = status.canonical_reason().unwrap_or("error");
            let message = if is_twilio_host(&channel.api_base) {
                ErrorDocument::message_or(doc.as_ref(), reason, 200)
            } else {
                format!("{reason} (the error text of {}, not a Twilio host, is not shown)", host_of(&channel.api_base))
            };
            return Err(TwilioError::Refused { status: status.as_u16(), code, message });
        }
        serde_json::from_slice(&body).map_err(|e| TwilioError::Malformed(e.to_string()))
    }

    /// `GET /2010-04-01/Accounts/{Sid}.json`: 200 means the credentials work.
    pub async fn account(&self, channel: &Channel) -> Result<Account, TwilioError> {
        let url = format!("{}.json", Self::account_url(channel));
        self.call(channel, self.http.get(url)).await
    }

    /// The account's entry for `number`, if the account has it.
    pub async fn find_number(&self, channel: &Channel, number: &E164) -> Result<Option<Number>, TwilioError> {
        let base = format!("{}/IncomingPhoneNumbers.json", Self::account_url(channel));
        let mut url = url::Url::parse(&base).map_err(|e| TwilioError::Malformed(format!("{base}: {e}")))?;
        url.query_pairs_mut().append_pair("PhoneNumber", number.as_str());
        let page: NumberPage = self.call(channel, self.http.get(url)).await?;
        Ok(page.incoming_phone_numbers.into_iter().find(|n| n.phone_number == number.as_str()))
    }

    /// Points the number's SMS webhook at `url` with POST.
    pub async fn set_sms_webhook(&self, channel: &Channel, sid: &str, url: &str) -> Result<Number, TwilioError> {
        let endpoint = format!("{}/IncomingPhoneNumbers/{sid}.json", Self::account_url(channel));
        let form = [("SmsUrl", url), ("SmsMethod", "POST")];
        self.call(channel, self.http.post(endpoint).form(&form)).await
    }
}

/// `host[:port]` of a base URL, for messages.
fn host_of(base: &str) -> String {
    url::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(|h| u.port().map_or_else(|| h.to_owned(), |p| format!("{h}:{p}"))))
        .unwrap_or_else(|| "the API base".to_owned())
}
