//! The channel routes: `GET /api/v1/channels` (every channel, file and
//! runtime, with its health), `POST /api/v1/channels` (connect one at run
//! time, optionally pointing its number's SMS webhook at smsgate),
//! `DELETE /api/v1/channels/{id}` (disconnect), and
//! `GET /api/v1/channels/{id}/status` (what Twilio says about it, in one
//! line: [`ChannelStatus::verdict`]).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use futures::TryStreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use smsgate_shared::channels::{self, ConnectError, DisconnectError, Source};
use smsgate_shared::config::{Channel, Delivery, WEBHOOK_PATH, parse_runtime_channel};
use smsgate_shared::redact::clip;
use smsgate_shared::webhook::{self, SignedWebhook, Simulation, WebhookUrls, elide_token};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::twilio::{Number, TwilioError};
use crate::{AdminError, AdminState, NATS_TIMEOUT, bounded};

#[derive(Debug, Serialize)]
pub struct ChannelsView {
    pub nats: NatsHealth,
    pub channels: Vec<ChannelView>,
}

#[derive(Debug, Serialize)]
pub struct NatsHealth {
    pub connected: bool,
    pub streams_present: bool,
}

/// A channel as the API shows it: no auth token, no path token.
#[derive(Debug, Serialize)]
pub struct ChannelView {
    pub channel_id: String,
    /// `file` (read-only) or `runtime` (connected through this API).
    pub source: &'static str,
    /// When a runtime channel was connected (RFC 3339).
    pub connected_at: Option<String>,
    pub enabled: bool,
    pub from_number: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub chat: &'static str,
    pub delivery: &'static str,
    pub public_base_url: Option<String>,
    /// The webhook URL with the secret path token elided; the real one comes
    /// from `smsgate webhook-url`, which reads the config.
    pub webhook_url: Option<String>,
    pub insecure_skip_signature: bool,
    /// Entries in `P_DEAD` for this channel (None when NATS did not answer).
    pub dead_letters: Option<u64>,
    /// `ok`, `degraded`, `down` or `disabled`.
    pub health: &'static str,
    pub problems: Vec<String>,
}

pub(crate) async fn list_channels(State(state): State<AdminState>) -> Json<ChannelsView> {
    let connected = state.nats_connected();
    let streams_present =
        connected && tokio::time::timeout(NATS_TIMEOUT, state.topology.present(&state.js)).await.unwrap_or(false);
    let dead_counts: Option<HashMap<String, u64>> =
        if streams_present { dead_counts_by_channel(&state).await.ok() } else { None };
    let snapshot = state.channels.snapshot();
    let channels = snapshot
        .iter()
        .map(|live| {
            let dead_letters = dead_counts.as_ref().map(|m| m.get(live.channel.id.as_str()).copied().unwrap_or(0));
            view((&live.channel, live.source, live.connected_at), connected, streams_present, dead_letters)
        })
        .collect();
    Json(ChannelsView { nats: NatsHealth { connected, streams_present }, channels })
}

/// One channel's view and health.
fn view(
    (c, source, connected_at): (&Channel, Source, Option<OffsetDateTime>),
    connected: bool,
    streams_present: bool,
    dead_letters: Option<u64>,
) -> ChannelView {
    let mut problems = Vec::new();
    if !connected {
        problems.push("NATS is not connected".to_owned());
    } else if !streams_present {
        problems.push("the JetStream streams are missing".to_owned());
    }
    if let Some(n) = dead_letters.filter(|n| *n > 0) {
        problems.push(format!("{n} dead letter(s): smsgate dead list"));
    }
    if c.public_base_url.is_none() {
        problems.push("no public base URL: set SMSGATE_PUBLIC_BASE_URL or public_base_url".to_owned());
    }
    if c.insecure_skip_signature {
        problems.push("signature checking is off (insecure_skip_signature)".to_owned());
    }
    let health = if !c.enabled {
        "disabled"
    } else if !streams_present {
        "down"
    } else if problems.is_empty() {
        "ok"
    } else {
        "degraded"
    };
    ChannelView {
        channel_id: c.id.to_string(),
        source: source.as_str(),
        connected_at: connected_at.and_then(|t| t.format(&Rfc3339).ok()),
        enabled: c.enabled,
        from_number: c.from_number.as_ref().map(ToString::to_string),
        messaging_service_sid: c.messaging_service_sid.clone(),
        chat: c.chat.kind(),
        delivery: c.delivery.as_str(),
        public_base_url: c.public_base_url.clone(),
        webhook_url: c.public_base_url.as_ref().map(|b| format!("{b}{WEBHOOK_PATH}…")),
        insecure_skip_signature: c.insecure_skip_signature,
        dead_letters,
        health,
        problems,
    }
}

/// Dead letters per channel from the subject counts (`P.dead.<stage>.<channel>`).
async fn dead_counts_by_channel(state: &AdminState) -> Result<HashMap<String, u64>, AdminError> {
    let stream = state.stream(state.topology.dead_stream()).await?;
    let filter = state.topology.dead_filter(None);
    let subjects: Vec<(String, usize)> = bounded("read dead-letter subjects", async {
        stream.info_with_subjects(filter).await?.try_collect::<Vec<_>>().await
    })
    .await?;
    let mut counts = HashMap::new();
    for (subject, n) in subjects {
        if let Some(channel) = subject.rsplit('.').next() {
            *counts.entry(channel.to_owned()).or_insert(0) += n as u64;
        }
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------
// POST /api/v1/channels

/// `POST /api/v1/channels?set_webhook=true`: also point the number's SMS
/// webhook at smsgate (URL and POST) in Twilio before storing the channel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectQuery {
    #[serde(default)]
    pub set_webhook: bool,
}

/// The answer to a connect (201).
#[derive(Debug, Serialize)]
pub struct ConnectedView {
    pub channel: ChannelView,
    /// Keys smsgate does not know, dropped rather than stored (a typo is
    /// named with the key it is closest to).
    pub ignored_keys: Vec<String>,
    /// The number's SMS webhook as Twilio has it after `set_webhook`.
    pub webhook_set: Option<WebhookView>,
}

/// A webhook as Twilio has it, the path token elided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct WebhookView {
    pub url: Option<String>,
    pub method: Option<String>,
}

pub(crate) async fn connect_channel(
    State(state): State<AdminState>,
    query: Result<Query<ConnectQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<ConnectedView>), AdminError> {
    let Query(query) = query.map_err(|e| AdminError::invalid("invalid_query", e.body_text()))?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| AdminError::invalid("invalid_json", format!("the body is not JSON: {e}")))?;
    let source = state.channels.runtime_source().cloned().ok_or_else(|| AdminError::Unavailable {
        what: "the channels bucket is not open yet".to_owned(),
        source: None,
    })?;
    if source.key.is_none() {
        return Err(connect_error(ConnectError::NoKey));
    }
    // Validated here as well as in `connect`, so Twilio is only touched for
    // a channel that will be stored.
    let (channel, _) = parse_runtime_channel(value.clone(), "request", source.public_base_url.as_deref())
        .map_err(|e| connect_error(ConnectError::Invalid(e)))?;
    let now = state.channels.snapshot();
    if let Some(existing) = now.get(&channel.id) {
        return Err(connect_error(ConnectError::Exists { id: channel.id.to_string(), from: existing.source }));
    }
    // Also a stored channel this process skips (it cannot open it): Twilio
    // must not be touched for a connect that will be refused.
    let stored = bounded("read the channels bucket", source.store.entry(channel.id.as_str())).await?;
    if stored.is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put) {
        return Err(connect_error(ConnectError::Exists { id: channel.id.to_string(), from: Source::Runtime }));
    }
    let webhook_set = if query.set_webhook { Some(set_webhook(&state, &channel).await?) } else { None };
    let connected = channels::connect(&state.channels, value).await.map_err(connect_error)?;
    tracing::info!(
        service = "ingress",
        stage = "admin",
        channel_id = %connected.channel.id,
        webhook_set = webhook_set.is_some(),
        outcome = "connected",
        "channel connected at run time"
    );
    Ok((
        StatusCode::CREATED,
        Json(ConnectedView {
            channel: view((&connected.channel, Source::Runtime, Some(connected.connected_at)), true, true, Some(0)),
            ignored_keys: connected.channel.unknown_keys,
            webhook_set,
        }),
    ))
}

fn connect_error(e: ConnectError) -> AdminError {
    let detail = e.to_string();
    match e {
        ConnectError::NoBucket | ConnectError::Store(_) => AdminError::Unavailable { what: detail, source: None },
        ConnectError::NoKey => AdminError::NotSetUp { code: "secret_key_missing", detail },
        ConnectError::Invalid(_) => AdminError::invalid("invalid_channel", detail),
        ConnectError::Exists { .. } => AdminError::Conflict { code: "channel_exists", detail },
        ConnectError::TokenInUse { .. } => AdminError::Conflict { code: "path_token_in_use", detail },
    }
}

/// Points the channel's number at smsgate in Twilio: SmsUrl = our webhook
/// URL, SmsMethod = POST.
async fn set_webhook(state: &AdminState, channel: &Channel) -> Result<WebhookView, AdminError> {
    let url = channel.webhook_url().ok_or_else(|| {
        AdminError::invalid(
            "no_public_base_url",
            "set_webhook needs the URL Twilio should call: set config.public_base_url or SMSGATE_PUBLIC_BASE_URL",
        )
    })?;
    let Some(number) = &channel.from_number else {
        return Err(AdminError::invalid(
            "no_from_number",
            "set_webhook needs config.twilio_from_number; a Messaging Service's webhook is set on the service",
        ));
    };
    let twilio_failed = |e: TwilioError| AdminError::Upstream { code: "twilio_failed", detail: e.to_string() };
    let found = state.twilio.find_number(channel, number).await.map_err(twilio_failed)?;
    let Some(found) = found else {
        return Err(AdminError::invalid(
            "number_not_in_account",
            format!("{number} is not a number of Twilio account {}", channel.account_sid),
        ));
    };
    let updated = state.twilio.set_sms_webhook(channel, &found.sid, &url).await.map_err(twilio_failed)?;
    tracing::info!(
        service = "ingress",
        stage = "admin",
        channel_id = %channel.id,
        number_sid = %found.sid,
        outcome = "webhook_set",
        "pointed the number's SMS webhook at smsgate"
    );
    Ok(WebhookView { url: updated.sms_url.map(|u| elide_token(&u)), method: updated.sms_method })
}

// ---------------------------------------------------------------------------
// DELETE /api/v1/channels/{id}

#[derive(Debug, Serialize, Deserialize)]
pub struct Disconnected {
    pub channel_id: String,
    pub disconnected: bool,
}

pub(crate) async fn disconnect_channel(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Disconnected>, AdminError> {
    channels::disconnect(&state.channels, &id).await.map_err(|e| {
        let detail = e.to_string();
        match e {
            DisconnectError::NotFound(_) => AdminError::not_found("unknown_channel", detail),
            DisconnectError::FileChannel(_) => AdminError::Conflict { code: "file_channel", detail },
            DisconnectError::NoBucket | DisconnectError::Store(_) => {
                AdminError::Unavailable { what: detail, source: None }
            }
        }
    })?;
    tracing::info!(service = "ingress", stage = "admin", channel_id = %clip(&id, 64), outcome = "disconnected", "channel disconnected");
    Ok(Json(Disconnected { channel_id: id, disconnected: true }))
}

// ---------------------------------------------------------------------------
// GET /api/v1/channels/{id}/status

/// What Twilio says about a channel, and one line for the operator.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ChannelStatus {
    pub channel_id: String,
    /// `twilio`, or `log` (Twilio is not asked: nothing of it is used).
    pub delivery: String,
    /// True when Twilio sends the number's SMS to smsgate with POST, with
    /// valid credentials on an active account.
    pub ok: bool,
    /// One line an operator understands: `ok`, or what is wrong.
    pub verdict: String,
    /// None when Twilio could not be asked.
    pub credentials_valid: Option<bool>,
    pub account_status: Option<String>,
    /// The number checked (None with a Messaging Service only).
    pub number: Option<String>,
    pub number_found: Option<bool>,
    pub number_sid: Option<String>,
    /// SMS webhook: as Twilio has it and as smsgate needs it.
    pub sms: Option<WebhookView>,
    pub expected_sms: WebhookView,
    /// Voice webhook as Twilio has it (smsgate does not need one).
    pub voice: Option<WebhookView>,
}

pub(crate) async fn channel_status(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<ChannelStatus>, AdminError> {
    let channel = named_channel(&state, &id)?;
    let expected_url = channel.webhook_url();
    let mut status = ChannelStatus {
        channel_id: channel.id.to_string(),
        delivery: channel.delivery.as_str().to_owned(),
        ok: false,
        verdict: String::new(),
        credentials_valid: None,
        account_status: None,
        number: channel.from_number.as_ref().map(ToString::to_string),
        number_found: None,
        number_sid: None,
        sms: None,
        expected_sms: WebhookView { url: expected_url.as_deref().map(elide_token), method: Some("POST".to_owned()) },
        voice: None,
    };
    // A log-only channel never talks to Twilio: nothing there to check.
    if channel.delivery == Delivery::Log {
        status.ok = true;
        status.verdict = match expected_url.as_deref() {
            Some(url) => format!(
                "delivery log: Twilio is not used; the webhook URL Twilio would need is {} (whole: smsgate \
                 webhook-url --channel {})",
                elide_token(url),
                channel.id
            ),
            None => "delivery log: Twilio is not used; with a public base URL (SMSGATE_PUBLIC_BASE_URL or \
                     config.public_base_url) smsgate webhook-url shows the webhook URL Twilio would need"
                .to_owned(),
        };
        tracing::info!(service = "ingress", stage = "admin", channel_id = %channel.id, ok = true, outcome = "log_only", "channel status: delivery log, Twilio not asked");
        return Ok(Json(status));
    }
    let account = state.twilio.account(&channel).await;
    let number = match (&account, &channel.from_number) {
        (Ok(_), Some(n)) => Some(state.twilio.find_number(&channel, n).await),
        _ => None,
    };
    (status.ok, status.verdict) = match judge(&channel, expected_url.as_deref(), account, number, &mut status) {
        Ok(()) => match (&channel.from_number, &channel.messaging_service_sid) {
            (None, Some(service)) => (
                true,
                format!(
                    "ok as far as smsgate can tell: credentials valid; this channel sends through Messaging Service \
                     {service}, whose incoming webhook is set on the service (not checked)"
                ),
            ),
            // The number is right, but a service with its own incoming
            // webhook takes precedence over it (docs/TWILIO.md §9).
            (Some(_), Some(service)) => (
                true,
                format!(
                    "ok; this channel also names Messaging Service {service}: if that service has an incoming \
                     webhook of its own, Twilio uses it instead of the number's"
                ),
            ),
            _ => (true, "ok".to_owned()),
        },
        Err(verdict) => (false, verdict),
    };
    tracing::info!(
        service = "ingress",
        stage = "admin",
        channel_id = %channel.id,
        ok = status.ok,
        verdict = %smsgate_shared::redact::third_party(&status.verdict, 300),
        "channel status checked with Twilio"
    );
    Ok(Json(status))
}

/// The one-line verdict of the first thing that is wrong (`Err`), else
/// `Ok`; fills in what Twilio said on the way.
fn judge(
    channel: &Channel,
    expected_url: Option<&str>,
    account: Result<crate::twilio::Account, TwilioError>,
    number: Option<Result<Option<Number>, TwilioError>>,
    status: &mut ChannelStatus,
) -> Result<(), String> {
    let account = match account {
        Ok(a) => a,
        Err(e) if e.credentials_rejected() => {
            status.credentials_valid = Some(false);
            let code = match e {
                TwilioError::Refused { code: Some(c), .. } => c,
                _ => 20003,
            };
            return Err(format!(
                "credentials rejected by Twilio ({code}): check config.twilio_account_sid and config.twilio_auth_token"
            ));
        }
        Err(e) => return Err(format!("cannot check with Twilio: {e}")),
    };
    status.credentials_valid = Some(true);
    status.account_status = Some(account.status.clone());
    if account.status != "active" {
        return Err(format!("the Twilio account {} is {}", channel.account_sid, account.status));
    }
    // A channel with a Messaging Service and no number: nothing more to
    // look at here (the service's webhook is not checked).
    let Some(number) = number else { return Ok(()) };
    let found = match number {
        Ok(found) => found,
        Err(e) => return Err(format!("cannot look the number up in Twilio: {e}")),
    };
    let phone = status.number.clone().unwrap_or_default();
    let Some(found) = found else {
        status.number_found = Some(false);
        return Err(format!("{phone} is not a number of Twilio account {}", channel.account_sid));
    };
    status.number_found = Some(true);
    status.number_sid = Some(found.sid.clone());
    let sms_url = found.sms_url.clone().filter(|u| !u.trim().is_empty());
    status.sms = Some(WebhookView { url: sms_url.as_deref().map(elide_token), method: found.sms_method.clone() });
    status.voice = Some(WebhookView {
        url: found.voice_url.as_deref().filter(|u| !u.trim().is_empty()).map(elide_token),
        method: found.voice_method.clone(),
    });
    let Some(expected) = expected_url else {
        return Err("smsgate has no public base URL (set SMSGATE_PUBLIC_BASE_URL or config.public_base_url), so it \
                    cannot tell whether Twilio calls it"
            .to_owned());
    };
    let Some(sms_url) = sms_url else {
        return Err(format!("Twilio has no SMS webhook for {phone}; set it to {} (POST)", elide_token(expected)));
    };
    if !same_webhook(&sms_url, expected) {
        let shown = elide_token(&sms_url);
        let smsgate_path = url::Url::parse(sms_url.trim()).is_ok_and(|u| u.path().starts_with(WEBHOOK_PATH));
        if same_origin(&sms_url, expected) && smsgate_path {
            return Err(format!(
                "Twilio sends this number's SMS to {shown}: smsgate, but with another path token than this channel's"
            ));
        }
        return Err(format!("Twilio sends this number's SMS to {shown}, not to smsgate ({})", elide_token(expected)));
    }
    match found.sms_method.as_deref() {
        Some(m) if m.eq_ignore_ascii_case("POST") => Ok(()),
        Some(m) => Err(format!("Twilio calls smsgate's webhook for this number with {m}; smsgate needs POST")),
        None => {
            Err("Twilio does not say which method it uses for this number's SMS webhook; smsgate needs POST".to_owned())
        }
    }
}

// ---------------------------------------------------------------------------
// GET /api/v1/channels/{id}/webhook and POST /api/v1/channels/{id}/simulate

/// A channel the request names, or 404.
fn named_channel(state: &AdminState, id: &str) -> Result<Channel, AdminError> {
    state
        .channel(id)
        .ok_or_else(|| AdminError::not_found("unknown_channel", format!("no channel {:?} is configured", clip(id, 64))))
}

/// `GET /api/v1/channels/{id}/webhook`: the whole URLs to paste into Twilio,
/// for any channel, runtime ones included (whose path token only the
/// services hold). The admin side is private; the token is never logged.
pub(crate) async fn channel_webhook(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookUrls>, AdminError> {
    Ok(Json(WebhookUrls::of(&named_channel(&state, &id)?)))
}

/// `POST /api/v1/channels/{id}/simulate` `{from, body, url, to?,
/// message_sid?, media_urls?}`: the webhook Twilio would send, signed with
/// the channel's auth token, for `smsgate simulate` to post (the auth
/// token itself never leaves the services).
pub(crate) async fn simulate_webhook(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<SignedWebhook>, AdminError> {
    let channel = named_channel(&state, &id)?;
    let simulation: Simulation = serde_json::from_slice(&body)
        .map_err(|e| AdminError::invalid("invalid_simulation", format!("the body is not a simulation: {e}")))?;
    let signed =
        webhook::simulate(&channel, simulation).map_err(|e| AdminError::invalid("no_number_to_text", e.to_string()))?;
    tracing::info!(
        service = "ingress",
        stage = "admin",
        channel_id = %channel.id,
        message_sid = %signed.message_sid,
        outcome = "simulation_signed",
        "signed a simulated webhook"
    );
    Ok(Json(signed))
}

/// Whether Twilio's URL reaches the same webhook as ours: scheme, host,
/// port (the default one written or not) and path; a query, a trailing
/// slash and Twilio's `#rc=…` override fragment aside.
fn same_webhook(twilio: &str, ours: &str) -> bool {
    let (Ok(a), Ok(b)) = (url::Url::parse(twilio.trim()), url::Url::parse(ours)) else { return false };
    same_origin(twilio, ours) && a.path().trim_end_matches('/') == b.path().trim_end_matches('/')
}

/// Scheme, host and port (the default one written or not) agree.
fn same_origin(twilio: &str, ours: &str) -> bool {
    let (Ok(a), Ok(b)) = (url::Url::parse(twilio.trim()), url::Url::parse(ours)) else { return false };
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_matches_with_or_without_the_default_port_and_an_override_fragment() {
        let ours = "https://sms.example.com/api/channels/sms/twilio/webhook/abc";
        assert!(same_webhook("https://sms.example.com:443/api/channels/sms/twilio/webhook/abc#rc=3&rp=ct,5xx", ours));
        assert!(same_webhook("https://SMS.example.com/api/channels/sms/twilio/webhook/abc/", ours));
        assert!(!same_webhook("http://sms.example.com/api/channels/sms/twilio/webhook/abc", ours));
        assert!(!same_webhook("https://old.example/sms", ours));
        assert!(!same_webhook("not a url", ours));
    }
}
