//! One function per command. Offline commands read the configuration the
//! services read (`SMSGATE_CHANNELS` or the `TWILIO_*` variables), and
//! `webhook-url` and `simulate` fall back on the admin API for a channel it
//! does not have; the others go through the admin API.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};
use smsgate_shared::config::{self, Channel, Config};
use smsgate_shared::domain::{ChannelId, E164};
use time::{OffsetDateTime, UtcOffset};

use crate::api::{self, Admin};
use crate::args::{ChannelsCommand, Cli, Command, ConsentCommand, DeadCommand, ScheduledCommand};
use crate::error::CliError;
use crate::render;
use crate::webhook;

pub async fn run(cli: Cli, offset: UtcOffset) -> Result<(), CliError> {
    let json = cli.json;
    let admin_args = cli.command.admin().cloned();
    let admin = || match &admin_args {
        Some(a) => Admin::new(&a.admin_url, a.token.clone().or_else(api::stored_token)),
        None => Err(CliError::Failed("this command does not use the admin API".to_owned())),
    };
    match cli.command {
        Command::GenToken { secret_key } => {
            if secret_key {
                println!("{}", smsgate_shared::secret_key::SecretKey::generate());
            } else {
                println!("{}", config::generate_token());
            }
            Ok(())
        }
        Command::CheckConfig { file } => check_config(file.as_deref(), json),
        Command::WebhookUrl { channel, voice, .. } => {
            webhook::webhook_url(admin(), channel.as_deref(), voice, json).await
        }
        Command::Simulate { channel, from, body, url, to, message_sid, media_urls, .. } => {
            let s = webhook::SimulateArgs { channel, from, body, url, to, message_sid, media_urls };
            webhook::simulate(admin(), s, json).await
        }
        Command::Send { channel, to, body, media_urls, idempotency_key, at, purpose, no_defer, .. } => {
            let to = number("--to", &to)?;
            let mut request = json!({"channel_id": channel, "to": to, "body": body, "media_urls": media_urls});
            if let Some(k) = idempotency_key {
                request["idempotency_key"] = Value::String(k);
            }
            if let Some(at) = at {
                request["send_at"] = Value::String(send_at(&at, OffsetDateTime::now_utc())?);
            }
            if let Some(p) = purpose {
                request["purpose"] = Value::String(p);
            }
            if no_defer {
                request["defer"] = Value::Bool(false);
            }
            let answer = admin()?.call(Method::POST, "/api/v1/messages", Some(&request)).await?;
            print_accepted(answer, json, "sent")
        }
        Command::Call { channel, to, say, twiml, idempotency_key, .. } => {
            let to = number("--to", &to)?;
            let mut request = json!({"channel_id": channel, "to": to});
            for (key, value) in [("say", say), ("twiml", twiml), ("idempotency_key", idempotency_key)] {
                if let Some(v) = value {
                    request[key] = Value::String(v);
                }
            }
            let answer = admin()?.call(Method::POST, "/api/v1/calls", Some(&request)).await?;
            print_accepted(answer, json, "called")
        }
        Command::Conversations { channel, search, limit, cursor, all, .. } => {
            let admin = admin()?;
            let mut query = vec![("limit", limit.to_string())];
            if let Some(c) = channel {
                query.push(("channel_id", channel_id(&c)?.to_string()));
            }
            if let Some(q) = search {
                query.push(("q", q.trim().to_owned()));
            }
            let mut cursor = cursor;
            let mut pages = Vec::new();
            loop {
                let mut params = query.clone();
                if let Some(c) = &cursor {
                    params.push(("cursor", c.clone()));
                }
                let path = format!("/api/v1/conversations?{}", api::query_string(&params));
                let answer = admin.call(Method::GET, &path, None).await?;
                let page: api::ConversationList = api::parse(answer.clone())?;
                cursor = page.next_cursor.clone();
                pages.push((answer, page));
                if !all || cursor.is_none() {
                    break;
                }
            }
            if json {
                for (answer, _) in &pages {
                    print_json(answer)?;
                }
                return Ok(());
            }
            let total = pages.first().map_or(0, |(_, p)| p.total);
            let rows: Vec<Vec<String>> = pages
                .iter()
                .flat_map(|(_, p)| p.conversations.iter())
                .map(|c| {
                    vec![
                        c.channel_id.clone(),
                        c.peer.clone(),
                        c.messages.to_string(),
                        c.last_at.map_or_else(|| "—".to_owned(), |t| render::date_time(t, offset)),
                        c.last_message.as_ref().map_or_else(String::new, render::last_message),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("No conversations yet.");
                return Ok(());
            }
            print!("{}", render::table(&["CHANNEL", "PEER", "MESSAGES", "LAST", "LAST MESSAGE"], &rows));
            if let Some(next) = &cursor {
                println!(
                    "{} of {total} shown; next page: smsgate conversations --cursor {next} (or --all)",
                    rows.len()
                );
            }
            Ok(())
        }
        Command::Mcp { admin } => {
            let token = admin.token.clone().or_else(api::stored_token);
            crate::mcp::serve_stdio(&admin.admin_url, token).await
        }
        Command::Events { channel, .. } => {
            let channel = channel.as_deref().map(channel_id).transpose()?;
            admin()?.follow_events(channel.as_ref().map(ToString::to_string).as_deref()).await
        }
        Command::Conversation { channel, peer, limit, .. } => {
            let peer = number("PEER", &peer)?;
            // '+' must be escaped in a URL path segment to survive every proxy.
            let path =
                format!("/api/v1/conversations/{}/%2B{}?limit={limit}", channel_id(&channel)?, peer.subject_token());
            let answer = admin()?.call(Method::GET, &path, None).await?;
            if json {
                return print_json(&answer);
            }
            let conversation: api::Conversation = api::parse(answer)?;
            print!("{}", render::conversation(&conversation, offset));
            Ok(())
        }
        Command::Pause { channel, peer, minutes, .. } => {
            let body = match minutes {
                Some(m) => json!({"minutes": m}),
                None => json!({}),
            };
            takeover(&admin()?, (&channel, &peer), "pause", body, (json, offset)).await
        }
        Command::Resume { channel, peer, .. } => {
            takeover(&admin()?, (&channel, &peer), "resume", json!({}), (json, offset)).await
        }
        Command::Channels { command: Some(ChannelsCommand::Connect { file, set_webhook }), .. } => {
            connect_channels(&admin()?, &file, set_webhook, json).await
        }
        Command::Channels { command: Some(ChannelsCommand::Disconnect { channel_id }), .. } => {
            let path = format!("/api/v1/channels/{}", channel_arg(&channel_id)?);
            let answer = admin()?.call(Method::DELETE, &path, None).await?;
            if json {
                return print_json(&answer);
            }
            println!("disconnected {channel_id}: ingress, worker and sender drop it within about a second");
            Ok(())
        }
        Command::Channels { command: Some(ChannelsCommand::Status { channel_id }), .. } => {
            let path = format!("/api/v1/channels/{}/status", channel_arg(&channel_id)?);
            let answer = admin()?.call(Method::GET, &path, None).await?;
            let status: api::ChannelStatus = api::parse(answer.clone())?;
            if json {
                print_json(&answer)?;
            } else {
                print!("{}", render::channel_status(&status));
            }
            if status.ok {
                Ok(())
            } else {
                Err(CliError::Failed(format!("channel {} is not ready: {}", status.channel_id, status.verdict)))
            }
        }
        Command::Channels { command: None, .. } => {
            let answer = admin()?.call(Method::GET, "/api/v1/channels", None).await?;
            if json {
                return print_json(&answer);
            }
            let view: api::ChannelsView = api::parse(answer)?;
            println!(
                "NATS: {}, streams: {}\n",
                if view.nats.connected { "connected" } else { "NOT CONNECTED" },
                if view.nats.streams_present { "present" } else { "MISSING" }
            );
            let rows: Vec<Vec<String>> = view
                .channels
                .iter()
                .map(|c| {
                    vec![
                        c.channel_id.clone(),
                        c.source.clone().unwrap_or_default(),
                        if c.enabled { "yes" } else { "no" }.to_owned(),
                        c.from_number.clone().or_else(|| c.messaging_service_sid.clone()).unwrap_or_default(),
                        c.chat.clone(),
                        c.delivery.clone(),
                        c.dead_letters.map_or_else(|| "?".to_owned(), |n| n.to_string()),
                        c.health.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render::table(&["CHANNEL", "SOURCE", "ENABLED", "FROM", "CHAT", "DELIVERY", "DEAD", "HEALTH"], &rows)
            );
            for c in &view.channels {
                for p in &c.problems {
                    println!("  {}: {p}", c.channel_id);
                }
            }
            Ok(())
        }
        Command::Dead { command: DeadCommand::List { channel, limit }, .. } => {
            let admin = admin()?;
            let mut path = format!("/api/v1/dead?limit={limit}");
            let channel = channel.as_deref().map(channel_id).transpose()?;
            if let Some(c) = &channel {
                path.push_str(&format!("&channel_id={c}"));
            }
            let answer = admin.call(Method::GET, &path, None).await?;
            let list: api::DeadList = api::parse(answer.clone())?;
            if let (true, Some(c)) = (list.entries.is_empty(), &channel) {
                // Nothing for a channel that does not exist is a typo, not good news.
                let view: api::ChannelsView = api::parse(admin.call(Method::GET, "/api/v1/channels", None).await?)?;
                if !view.channels.iter().any(|v| v.channel_id == c.as_str()) {
                    let known: Vec<&str> = view.channels.iter().map(|v| v.channel_id.as_str()).collect();
                    return Err(CliError::Failed(format!(
                        "no channel {:?} (channels: {})",
                        c.as_str(),
                        known.join(", ")
                    )));
                }
            }
            if json {
                return print_json(&answer);
            }
            if list.entries.is_empty() {
                println!("No dead letters.");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .entries
                .iter()
                .map(|d| {
                    vec![
                        d.seq.to_string(),
                        render::date_time(d.at, offset),
                        d.stage.clone(),
                        d.channel_id.clone(),
                        d.code.map(|c| c.to_string()).unwrap_or_default(),
                        render::truncate(&d.reason, 70),
                    ]
                })
                .collect();
            print!("{}", render::table(&["SEQ", "AT", "STAGE", "CHANNEL", "CODE", "REASON"], &rows));
            Ok(())
        }
        Command::Dead { command: DeadCommand::Replay { seq }, .. } => {
            let answer = admin()?.call(Method::POST, &format!("/api/v1/dead/{seq}/replay"), None).await?;
            if json {
                return print_json(&answer);
            }
            let r: api::Replayed = api::parse(answer)?;
            let again = if r.duplicate { " (it had been replayed already; not published twice)" } else { "" };
            println!("replayed dead letter {} to {} as {}{again}", r.seq, r.subject, r.msg_id);
            Ok(())
        }
        Command::Scheduled { command: Some(ScheduledCommand::Cancel { id }), .. } => {
            let path = format!("/api/v1/scheduled/{}", id.trim());
            let answer = admin()?.call(Method::DELETE, &path, None).await?;
            if json {
                return print_json(&answer);
            }
            println!("canceled {}: it will not be sent", id.trim());
            Ok(())
        }
        Command::Scheduled { command: None, channel, to, .. } => {
            let mut query = Vec::new();
            if let Some(c) = channel {
                query.push(("channel_id", channel_id(&c)?.to_string()));
            }
            if let Some(t) = to {
                query.push(("to", number("--to", &t)?.to_string()));
            }
            let path = format!("/api/v1/scheduled{}", api::query_string(&query));
            let answer = admin()?.call(Method::GET, &path, None).await?;
            if json {
                return print_json(&answer);
            }
            let list: api::ScheduledList = api::parse(answer)?;
            if list.scheduled.is_empty() {
                println!("Nothing scheduled.");
                return Ok(());
            }
            println!("{:<34} {:<26} {:<10} {:<16} {:<12} {:<5} BODY", "ID", "SEND AT", "CHANNEL", "TO", "WHY", "KIND");
            for s in list.scheduled {
                let body: String = s.body.chars().take(40).collect();
                println!(
                    "{:<34} {:<26} {:<10} {:<16} {:<12} {:<5} {body}",
                    s.id, s.send_at, s.channel_id, s.to, s.why, s.kind
                );
            }
            Ok(())
        }
        Command::Consent { command, .. } => {
            let admin = admin()?;
            let answer = match command {
                ConsentCommand::Add { channel, peer, kind, source, evidence } => {
                    let to = number("PEER", &peer)?;
                    let mut request = json!({"channel_id": channel, "to": to, "kind": kind, "source": source});
                    if let Some(e) = evidence {
                        request["evidence"] = Value::String(e);
                    }
                    admin.call(Method::POST, "/api/v1/consent", Some(&request)).await?
                }
                ConsentCommand::Revoke { channel, peer } => {
                    let to = number("PEER", &peer)?;
                    let path = format!("/api/v1/consent/{}/{to}", channel_id(&channel)?);
                    admin.call(Method::DELETE, &path, None).await?
                }
                ConsentCommand::Show { channel, peer } => {
                    let to = number("PEER", &peer)?;
                    let path = format!("/api/v1/consent/{}/{to}", channel_id(&channel)?);
                    admin.call(Method::GET, &path, None).await?
                }
            };
            if json {
                return print_json(&answer);
            }
            let c: api::ConsentView = api::parse(answer)?;
            let consent = match (&c.consent, &c.source, &c.at) {
                (Some(kind), Some(source), Some(at)) => format!("{kind} consent since {at} ({source})"),
                _ => "no consent on record".to_owned(),
            };
            let opted = if c.opted_out { "opted out" } else { "not opted out" };
            println!("{} on {}: {consent}; {opted}", c.to, c.channel_id);
            Ok(())
        }
    }
}

/// `smsgate channels connect FILE`: the file is checked here first, as
/// `check-config` would (exit 64 with every problem), with `${VAR}` read
/// from this environment; each channel is then posted as it is.
async fn connect_channels(admin: &Admin, file: &Path, set_webhook: bool, json: bool) -> Result<(), CliError> {
    let source = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::BadConfig(format!("{source}: cannot read the file: {e}")))?;
    let env = |k: &str| std::env::var(k).ok();
    let public_base_url = env("SMSGATE_PUBLIC_BASE_URL");
    config::parse_channels(&text, &source, &env, public_base_url.as_deref())?;
    let channels = config::expand_channels(&text, &source, &env)?;
    let path = if set_webhook { "/api/v1/channels?set_webhook=true" } else { "/api/v1/channels" };
    let mut answers = Vec::new();
    for channel in &channels {
        let answer = admin.call(Method::POST, path, Some(channel)).await?;
        if !json {
            let connected: api::Connected = api::parse(answer.clone())?;
            let c = &connected.channel;
            println!(
                "connected {} (runtime): served by ingress, worker and sender within about a second",
                c.channel_id
            );
            if c.webhook_url.is_some() {
                println!("  webhook URL to paste into Twilio: smsgate webhook-url --channel {}", c.channel_id);
            }
            for key in &connected.ignored_keys {
                println!("  warning: {key} is not a key smsgate knows; it was not stored");
            }
            match &connected.webhook_set {
                Some(w) => println!(
                    "  Twilio now sends this number's SMS to {} ({})",
                    w.url.as_deref().unwrap_or("?"),
                    w.method.as_deref().unwrap_or("?")
                ),
                None => println!("  check what Twilio has for the number: smsgate channels status {}", c.channel_id),
            }
        }
        answers.push(answer);
    }
    if json {
        return print_json(&Value::Array(answers));
    }
    Ok(())
}

pub(crate) fn print_json(value: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// A channel id given as an argument (it goes into the URL path as it is).
fn channel_arg(s: &str) -> Result<ChannelId, CliError> {
    ChannelId::parse(s).map_err(|e| CliError::Usage(format!("CHANNEL_ID: {}", e.reason)))
}

pub(crate) fn channel_id(s: &str) -> Result<ChannelId, CliError> {
    ChannelId::parse(s).map_err(|e| CliError::Usage(format!("--channel: {}", e.reason)))
}

/// The configuration as the services would load it; `file` replaces
/// `SMSGATE_CHANNELS`.
pub(crate) fn load_config(file: Option<&Path>) -> Result<Config, config::ConfigError> {
    let file = file.map(|f| f.to_string_lossy().into_owned());
    Config::from_lookup(&|k| match (k, &file) {
        ("SMSGATE_CHANNELS", Some(f)) => Some(f.clone()),
        _ => std::env::var(k).ok(),
    })
}

pub(crate) fn pick_channel<'a>(channels: &'a [Channel], id: Option<&str>) -> Result<&'a Channel, CliError> {
    let known = || channels.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ");
    match id {
        Some(id) => channels
            .iter()
            .find(|c| c.id.as_str() == id)
            .ok_or_else(|| CliError::Usage(format!("no channel {id:?} in the configuration (channels: {})", known()))),
        None if channels.len() == 1 => Ok(&channels[0]),
        None => Err(CliError::Usage(format!("several channels are configured; pick one with --channel ({})", known()))),
    }
}

fn reply_countries(c: &Channel) -> Vec<String> {
    match &c.reply_countries {
        config::ReplyCountries::All => vec!["*".to_owned()],
        config::ReplyCountries::Codes(codes) => codes.clone(),
    }
}

/// `pause` or `resume` one conversation.
async fn takeover(
    admin: &Admin,
    (channel, peer): (&str, &str),
    action: &str,
    body: Value,
    (json, offset): (bool, UtcOffset),
) -> Result<(), CliError> {
    let peer = number("PEER", peer)?;
    let path = format!("/api/v1/conversations/{}/%2B{}/{action}", channel_id(channel)?, peer.subject_token());
    let answer = admin.call(Method::POST, &path, Some(&body)).await?;
    if json {
        return print_json(&answer);
    }
    let until = answer
        .get("paused_until")
        .and_then(Value::as_str)
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
    match until {
        Some(t) => {
            println!("{peer}: the bot is paused until {}; answer with `smsgate send`", render::date_time(t, offset))
        }
        None => println!("{peer}: the bot answers again"),
    }
    Ok(())
}

fn check_config(file: Option<&Path>, json: bool) -> Result<(), CliError> {
    let config = match load_config(file) {
        Ok(c) => c,
        Err(e) => {
            if json {
                let problems: Vec<Value> =
                    e.0.iter()
                        .map(|p| json!({"source": p.source, "channel": p.channel, "key": p.key, "message": p.message}))
                        .collect();
                print_json(&json!({"ok": false, "problems": problems}))?;
            }
            return Err(e.into());
        }
    };
    let channels = &config.channels;
    if json {
        let list: Vec<Value> = channels
            .iter()
            .map(|c| {
                json!({
                    "channel_id": c.id.as_str(),
                    "enabled": c.enabled,
                    "from_number": c.from_number.as_ref().map(E164::as_str),
                    "messaging_service_sid": c.messaging_service_sid,
                    "chat": c.chat.kind(),
                    "delivery": c.delivery.as_str(),
                    "webhook_url": c.webhook_url(),
                    "status_url": c.status_url(),
                    "insecure_skip_signature": c.insecure_skip_signature,
                    "limits": {
                        "replies_per_minute": c.limits.replies_per_minute,
                        "replies_per_day": c.limits.replies_per_day,
                        "usd_per_day": c.limits.usd_per_day,
                    },
                    "reply_countries": reply_countries(c),
                    "unknown_keys": c.unknown_keys,
                })
            })
            .collect();
        return print_json(&json!({"ok": true, "channels": list}));
    }
    let plural = if channels.len() == 1 { "" } else { "s" };
    let (source, from_variables) = match (file, std::env::var("SMSGATE_CHANNELS").ok().filter(|f| !f.trim().is_empty()))
    {
        (Some(f), _) => (f.display().to_string(), false),
        (None, Some(f)) => (f, false),
        (None, None) => ("the TWILIO_* variables".to_owned(), true),
    };
    println!("configuration OK: {} channel{plural} from {source}\n", channels.len());
    if from_variables {
        println!("warning: {}", config::DEFAULT_CHANNEL_NOTE);
    }
    for c in channels {
        for key in &c.unknown_keys {
            println!("warning: channel {}: unknown key {key}, ignored", c.id);
        }
    }
    let rows: Vec<Vec<String>> = channels
        .iter()
        .map(|c| {
            vec![
                c.id.to_string(),
                if c.enabled { "yes" } else { "no" }.to_owned(),
                c.from_number
                    .as_ref()
                    .map(ToString::to_string)
                    .or_else(|| c.messaging_service_sid.clone())
                    .unwrap_or_default(),
                c.chat.kind().to_owned(),
                c.delivery.as_str().to_owned(),
                c.webhook_url().unwrap_or_else(|| "(no public base URL: set SMSGATE_PUBLIC_BASE_URL)".to_owned()),
            ]
        })
        .collect();
    print!("{}", render::table(&["CHANNEL", "ENABLED", "FROM", "CHAT", "DELIVERY", "WEBHOOK URL"], &rows));
    for c in channels {
        println!(
            "{}: at most {} replies a minute, {} a UTC day; replies to calling codes {}",
            c.id,
            c.limits.replies_per_minute,
            c.limits.replies_per_day,
            reply_countries(c).join(", ")
        );
        if let Some(usd) = c.limits.usd_per_day {
            println!("{}: no model call or agent text after {usd} USD spent in a UTC day", c.id);
        }
    }
    for c in channels.iter().filter(|c| c.insecure_skip_signature) {
        println!("warning: channel {}: insecure_skip_signature is on; anyone who knows the URL can post", c.id);
    }
    Ok(())
}

/// The answer to a send or a call: 202 `{id, duplicate}`.
fn print_accepted(answer: Value, json: bool, done: &str) -> Result<(), CliError> {
    if json {
        return print_json(&answer);
    }
    let accepted: api::Accepted = api::parse(answer)?;
    let purpose = accepted.purpose.map(|p| format!(" ({p})")).unwrap_or_default();
    match (accepted.duplicate, accepted.status.as_deref(), accepted.send_at) {
        (true, _, _) => println!("already accepted as {} ({done} once, not again)", accepted.id),
        (false, Some("scheduled"), Some(at)) => println!("scheduled: {} at {at}{purpose}", accepted.id),
        _ => println!("accepted: {}{purpose}", accepted.id),
    }
    Ok(())
}

/// `--at`: an RFC 3339 time, or a delay from `now` (`30m`, `2h`, `1d`).
pub(crate) fn send_at(typed: &str, now: OffsetDateTime) -> Result<String, CliError> {
    use time::format_description::well_known::Rfc3339;
    let t = typed.trim();
    if let Ok(at) = OffsetDateTime::parse(t, &Rfc3339) {
        return Ok(at.format(&Rfc3339).unwrap_or_default());
    }
    let unit = t.chars().last().unwrap_or(' ');
    let amount: Option<i64> = t[..t.len().saturating_sub(unit.len_utf8())].parse().ok();
    let delay = match (amount, unit) {
        (Some(n), 'm') if n > 0 => time::Duration::minutes(n),
        (Some(n), 'h') if n > 0 => time::Duration::hours(n),
        (Some(n), 'd') if n > 0 => time::Duration::days(n),
        _ => {
            return Err(CliError::Usage(format!(
                "--at: {typed:?} is not an RFC 3339 time (2026-12-07T09:00:00-05:00) or a delay (30m, 2h, 1d)"
            )));
        }
    };
    Ok((now + delay).format(&Rfc3339).unwrap_or_default())
}

/// A number the operator typed: a usage error quotes it as typed (the
/// masking of numbers is for logs and third-party texts, not for the
/// operator's own input).
pub(crate) fn number(what: &str, typed: &str) -> Result<E164, CliError> {
    E164::parse(typed.trim()).map_err(|_| {
        let problem = E164::problem(typed.trim()).unwrap_or("is not an E.164 number");
        CliError::Usage(format!("{what}: {typed:?} {problem} (e.g. +14155550100)"))
    })
}
