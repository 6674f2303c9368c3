//! The commands about one channel's webhook, for channels of the file the
//! CLI reads and (through the admin API) channels connected at run time:
//! `webhook-url` and `simulate`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use smsgate_shared::config::Channel;
use smsgate_shared::domain::MessageSid;
use smsgate_shared::signature;
use smsgate_shared::webhook::{self, SignedWebhook, Simulation, WebhookUrls};

use crate::api::{self, Admin};
use crate::commands::{channel_id, load_config, number, pick_channel, print_json};
use crate::error::CliError;

/// A channel of the configuration this command reads, or `local`'s error
/// (no such channel, or no configuration at all).
fn local_channel(id: Option<&str>) -> Result<(Channel, u16), CliError> {
    let config = load_config(None)?;
    let c = pick_channel(&config.channels, id)?;
    Ok((c.clone(), config.settings.ingress_addr.port()))
}

/// Asks the running ingress about a channel the local configuration does
/// not have (one connected at run time); when it does not know it either,
/// or cannot be asked, the local error stands, with what the ingress said.
async fn ask_running(
    admin: Result<Admin, CliError>,
    local: CliError,
    (method, path, body): (Method, &str, Option<&Value>),
) -> Result<Value, CliError> {
    let admin = match admin {
        Ok(a) => a,
        Err(_) => return Err(local),
    };
    match admin.call(method, path, body).await {
        Ok(answer) => Ok(answer),
        Err(CliError::Api { status: 404, .. }) => Err(match local {
            // "no channel X in the configuration (channels: ...)"
            CliError::Usage(_) => local.with_note(" nor in the running ingress (smsgate channels)"),
            _ => local.with_note("; the running ingress has no such channel either (smsgate channels)"),
        }),
        Err(e) => Err(local.with_note(&format!("; the running ingress could not be asked either: {e}"))),
    }
}

/// The port ingress's public listener uses, from SMSGATE_INGRESS_ADDR
/// [0.0.0.0:8000], for when the configuration could not be read.
fn ingress_port() -> u16 {
    std::env::var("SMSGATE_INGRESS_ADDR")
        .ok()
        .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
        .map_or(8000, |a| a.port())
}

pub async fn webhook_url(
    admin: Result<Admin, CliError>,
    channel: Option<&str>,
    voice: bool,
    json: bool,
) -> Result<(), CliError> {
    let urls = match local_channel(channel) {
        Ok((c, _)) => WebhookUrls::of(&c),
        Err(local) => {
            let Some(id) = channel else { return Err(local) };
            let path = format!("/api/v1/channels/{}/webhook", channel_id(id)?);
            api::parse(ask_running(admin, local, (Method::GET, &path, None)).await?)?
        }
    };
    let (webhook, status) = if voice {
        (urls.voice_url.clone(), urls.voice_status_url.clone())
    } else {
        (urls.webhook_url.clone(), urls.status_url.clone())
    };
    let (Some(webhook), Some(status)) = (webhook, status) else {
        return Err(CliError::BadConfig(format!(
            "channel {}: no public base URL: set SMSGATE_PUBLIC_BASE_URL (your tunnel's https:// address) or the \
             channel's public_base_url",
            urls.channel_id
        )));
    };
    if json {
        return print_json(&json!({"channel_id": urls.channel_id, "webhook_url": webhook, "status_url": status}));
    }
    if voice && !urls.voice_enabled {
        eprintln!("note: channel {}: voice is not enabled (set \"voice\": {{\"enabled\": true}})", urls.channel_id);
    }
    println!("{webhook}");
    Ok(())
}

pub struct SimulateArgs {
    pub channel: Option<String>,
    pub from: String,
    pub body: String,
    pub url: Option<String>,
    pub to: Option<String>,
    pub message_sid: Option<String>,
    pub media_urls: Vec<String>,
}

pub async fn simulate(admin: Result<Admin, CliError>, s: SimulateArgs, json: bool) -> Result<(), CliError> {
    let from = number("--from", &s.from)?;
    let to = s.to.as_deref().map(|t| number("--to", t)).transpose()?;
    let message_sid = s
        .message_sid
        .map(|m| MessageSid::parse(&m).map_err(|e| CliError::Usage(format!("--message-sid: {}", e.reason))))
        .transpose()?;
    let simulation = |port: u16| Simulation {
        from: from.clone(),
        body: s.body.clone(),
        to: to.clone(),
        message_sid: message_sid.clone(),
        media_urls: s.media_urls.clone(),
        url: s.url.clone().unwrap_or_else(|| format!("http://127.0.0.1:{port}")),
    };
    let signed: SignedWebhook = match local_channel(s.channel.as_deref()) {
        Ok((c, port)) => webhook::simulate(&c, simulation(port)).map_err(|e| CliError::Usage(e.to_string()))?,
        Err(local) => {
            let Some(id) = s.channel.as_deref() else { return Err(local) };
            let path = format!("/api/v1/channels/{}/simulate", channel_id(id)?);
            let body = serde_json::to_value(simulation(ingress_port())).map_err(|e| CliError::Failed(e.to_string()))?;
            api::parse(ask_running(admin, local, (Method::POST, &path, Some(&body))).await?)?
        }
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| CliError::Failed(format!("cannot build the HTTP client: {e}")))?;
    let response = http
        .post(&signed.post_url)
        .header(signature::HEADER, &signed.signature)
        .header("I-Twilio-Idempotency-Token", format!("smsgate-simulate-{}", signed.message_sid))
        .form(&signed.params)
        .send()
        .await
        .map_err(|source| CliError::Unreachable {
            what: "ingress",
            url: webhook::elide_token(&signed.post_url),
            hint: " (is ingress running? pass --url)",
            // reqwest prints the URL, which holds the secret path token.
            source: source.without_url(),
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let sid = &signed.message_sid;
    if json {
        print_json(&json!({"message_sid": sid, "status": status.as_u16(), "body": text}))?;
    } else {
        println!("MessageSid {sid}: {} → {} on channel {}", signed.from, signed.to, signed.channel_id);
        println!("ingress answered {status}");
        if !text.is_empty() {
            println!("{text}");
        }
    }
    if status.is_success() {
        Ok(())
    } else {
        let hint = match status.as_u16() {
            403 => {
                ": the signature was refused; ingress must know the same public URL (SMSGATE_PUBLIC_BASE_URL) and auth token"
            }
            404 => ": unknown path token; is this ingress using the same channel file?",
            _ => "",
        };
        Err(CliError::Failed(format!("ingress refused the webhook with {status}{hint}")))
    }
}
