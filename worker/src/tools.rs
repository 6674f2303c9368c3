//! Tools the model may call (`chat.tools` of an `openai` channel), run by
//! smsgate: `handoff` pauses the conversation for a person, `followup`
//! schedules a later text through the guard (`smsgate_shared::guard::door`).
//!
//! The conversation with the model is driven here ([`converse`]): the
//! request carries the tool definitions, each `tool_calls` answer is run and
//! its result sent back, until the model answers in text. Nothing depends
//! on `tool_choice` (Ollama and some vLLM setups ignore it): what the model
//! may do is decided in code, with its arguments validated. A server that
//! refuses `tools` gets the request again without them (logged once).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use smsgate_shared::bus::OutboundId;
use smsgate_shared::config::{Channel, ChatTool};
use smsgate_shared::domain::E164;
use smsgate_shared::envelope::{self, ConversationState, Inbound, NoteReason, Origin, Outbound};
use smsgate_shared::guard::Initiator;
use smsgate_shared::guard::door::{self, Door, Submission, Submitted};
use smsgate_shared::redact::clip;
use smsgate_shared::topology::Topology;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{info, warn};

use crate::chat::{ChatError, check_status, openai_reply, transport};
use crate::process::Processor;

/// Rounds of tool calls before the model must answer in text.
const MAX_ROUNDS: usize = 4;
/// Follow-ups one inbound may schedule.
const MAX_FOLLOWUPS: usize = 3;
/// The furthest ahead a follow-up may be.
const MAX_AHEAD: time::Duration = time::Duration::days(30);

/// What a tool runs against: the message being answered and the worker.
pub struct ToolBox<'a> {
    pub p: &'a Processor,
    pub channel: &'a Channel,
    pub inbound: &'a Inbound,
    pub peer: &'a E164,
    pub seq: u64,
    followups: AtomicUsize,
}

impl std::fmt::Debug for ToolBox<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolBox").field("channel", &self.channel.id).field("seq", &self.seq).finish()
    }
}

impl<'a> ToolBox<'a> {
    pub fn new(p: &'a Processor, channel: &'a Channel, inbound: &'a Inbound, peer: &'a E164, seq: u64) -> Self {
        Self { p, channel, inbound, peer, seq, followups: AtomicUsize::new(0) }
    }
}

/// The OpenAI-style definitions of `tools`.
pub fn definitions(tools: &[ChatTool]) -> Value {
    let defs: Vec<Value> = tools
        .iter()
        .map(|t| match t {
            ChatTool::Handoff => json!({"type": "function", "function": {
                "name": "handoff",
                "description": "Hand this conversation to a human. The bot stops answering this person until \
                                a human hands it back; tell the person a human will follow up.",
                "parameters": {"type": "object", "properties": {
                    "reason": {"type": "string", "description": "Why a human is needed, for the operator."}
                }, "required": ["reason"], "additionalProperties": false}
            }}),
            ChatTool::Followup => json!({"type": "function", "function": {
                "name": "followup",
                "description": "Schedule a text to this person later (a reminder, the result of a long task). \
                                It passes the compliance guard: quiet hours may move it, an opt-out refuses it. \
                                Give either `at` (RFC 3339) or `in_minutes`.",
                "parameters": {"type": "object", "properties": {
                    "text": {"type": "string", "description": "The text to send (at most 1600 characters)."},
                    "at": {"type": "string", "description": "When, RFC 3339, e.g. 2026-12-07T09:00:00-05:00."},
                    "in_minutes": {"type": "number", "description": "When, in minutes from now."}
                }, "required": ["text"], "additionalProperties": false}
            }}),
        })
        .collect();
    Value::Array(defs)
}

/// The endpoint of an `openai` backend.
pub struct Endpoint<'a> {
    pub http: &'a reqwest::Client,
    pub url: &'a str,
    pub api_key: Option<&'a SecretString>,
    pub timeout: std::time::Duration,
}

async fn post(endpoint: &Endpoint<'_>, body: &Value) -> Result<bytes::Bytes, ChatError> {
    let mut request = endpoint.http.post(endpoint.url).timeout(endpoint.timeout).json(body);
    if let Some(key) = endpoint.api_key {
        request = request.bearer_auth(key.expose_secret());
    }
    let response = check_status(request.send().await.map_err(transport)?)?;
    response.bytes().await.map_err(transport)
}

/// Asks the model with `tools` until it answers in text, running each tool
/// call with `toolbox`. `refused` remembers a server that does not take
/// tools, so that it is asked without them from then on.
pub async fn converse(
    endpoint: &Endpoint<'_>,
    mut body: Value,
    tools: &[ChatTool],
    toolbox: &ToolBox<'_>,
    refused: &AtomicBool,
) -> Result<Option<String>, ChatError> {
    if !refused.load(Ordering::Relaxed) {
        body["tools"] = definitions(tools);
    }
    for _ in 0..MAX_ROUNDS {
        let answer = match post(endpoint, &body).await {
            Err(ChatError::Status { status, .. })
                if (status.as_u16() == 400 || status.as_u16() == 422) && body.get("tools").is_some() =>
            {
                if !refused.swap(true, Ordering::Relaxed) {
                    warn!(
                        status = status.as_u16(),
                        outcome = "tools_refused",
                        "the model server refuses tools; asking without them from now on"
                    );
                }
                if let Some(b) = body.as_object_mut() {
                    b.remove("tools");
                }
                continue;
            }
            other => other?,
        };
        let parsed: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        let message = &parsed["choices"][0]["message"];
        let calls = message["tool_calls"].as_array().filter(|c| !c.is_empty());
        let Some(calls) = calls else { return openai_reply(&answer) };
        let mut assistant = message.clone();
        if assistant.get("content").is_none() {
            assistant["content"] = Value::Null;
        }
        let Some(messages) = body["messages"].as_array_mut() else {
            return Err(ChatError::BadAnswer("the request has no messages".to_owned()));
        };
        messages.push(assistant);
        for call in calls {
            let id = call["id"].as_str().unwrap_or_default().to_owned();
            let name = call["function"]["name"].as_str().unwrap_or_default();
            let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
            let result = toolbox.run(name, arguments, tools).await;
            if let Some(messages) = body["messages"].as_array_mut() {
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": result.to_string()}));
            }
        }
    }
    Err(ChatError::BadAnswer(format!("the model called tools {MAX_ROUNDS} times without answering in text")))
}

impl ToolBox<'_> {
    /// Runs one tool call; every failure is an `{"error": …}` result the
    /// model can read, never a failed message.
    pub async fn run(&self, name: &str, arguments: &str, enabled: &[ChatTool]) -> Value {
        let tool = match name {
            "handoff" => ChatTool::Handoff,
            "followup" => ChatTool::Followup,
            _ => return json!({"error": format!("no tool named {:?}", clip(name, 40))}),
        };
        if !enabled.contains(&tool) {
            return json!({"error": format!("the tool {name} is not enabled on this channel")});
        }
        let args: Value = match serde_json::from_str(arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ => return json!({"error": "the arguments are not a JSON object"}),
        };
        let result = match tool {
            ChatTool::Handoff => self.handoff(&args).await,
            ChatTool::Followup => self.followup(&args).await,
        };
        let outcome = result.get("status").and_then(|s| s.as_str()).unwrap_or("error");
        info!(tool = name, outcome, "model tool call");
        metrics::counter!("smsgate_worker_tool_calls_total", "tool" => name.to_owned()).increment(1);
        result
    }

    async fn handoff(&self, args: &Value) -> Value {
        let reason =
            args["reason"].as_str().map(str::trim).filter(|r| !r.is_empty()).unwrap_or("the model asked for a person");
        let now = OffsetDateTime::now_utc();
        let record = ConversationState::pause(now, self.channel.pause_minutes);
        let key = Topology::conversation_key(&self.channel.id, self.peer);
        // Through the mirror: this worker's next message of the conversation sees it.
        if let Err(e) = self.p.conversations.put(&key, envelope::encode(&record)).await {
            warn!(error = &e as &dyn std::error::Error, "cannot pause the conversation for the handoff");
            return json!({"error": "the handoff could not be recorded; try again"});
        }
        let until = envelope::note_time(record.paused_until);
        let detail = format!("the model handed the conversation to a person until {until}: {}", clip(reason, 300));
        if let Err(e) = self
            .p
            .history
            .note(&self.channel.id, self.peer, &self.inbound.message_sid, self.seq, NoteReason::Handoff, detail)
            .await
        {
            warn!(error = &e as &dyn std::error::Error, "cannot note the handoff");
        }
        json!({"status": "handed_off", "detail": "A person now has this conversation; the bot will not answer until they hand it back."})
    }

    async fn followup(&self, args: &Value) -> Value {
        let text = args["text"].as_str().map(str::trim).unwrap_or_default();
        if text.is_empty() || text.chars().count() > smsgate_shared::config::TWILIO_MAX_BODY {
            return json!({"error": "text must be 1 to 1600 characters"});
        }
        let now = OffsetDateTime::now_utc();
        let send_at = match (args["at"].as_str(), args["in_minutes"].as_f64()) {
            (Some(at), _) => match OffsetDateTime::parse(at.trim(), &Rfc3339) {
                Ok(t) => t,
                Err(_) => return json!({"error": "at must be an RFC 3339 time, e.g. 2026-12-07T09:00:00-05:00"}),
            },
            (None, Some(m)) if m.is_finite() && m >= 0.0 => now + time::Duration::seconds_f64(m * 60.0),
            _ => return json!({"error": "give `at` (RFC 3339) or `in_minutes`"}),
        };
        if send_at - now > MAX_AHEAD {
            return json!({"error": "a follow-up may be at most 30 days ahead"});
        }
        let n = self.followups.fetch_add(1, Ordering::Relaxed) + 1;
        if n > MAX_FOLLOWUPS {
            return json!({"error": format!("at most {MAX_FOLLOWUPS} follow-ups per message")});
        }
        let out = Outbound {
            v: envelope::VERSION,
            id: OutboundId::followup_of(&self.inbound.message_sid, n),
            channel_id: self.channel.id.clone(),
            to: self.peer.clone(),
            body: text.to_owned(),
            media_urls: Vec::new(),
            in_reply_to: Some(self.inbound.message_sid.clone()),
            origin: Origin::Agent,
            created_at: now,
            call: None,
            guard: None,
        };
        let door =
            Door { js: &self.p.js, topology: &self.p.topology, store: &self.p.guard, schedule: &self.p.schedule };
        let submission = Submission {
            purpose: None,
            send_at: (send_at > now).then_some(send_at),
            defer: true,
            initiator: Initiator::Agent,
        };
        match door::submit(&door, self.channel, out, submission).await {
            Ok(Submitted::Queued { .. }) => json!({"status": "queued"}),
            Ok(Submitted::Scheduled { send_at, why, .. }) => json!({
                "status": "scheduled",
                "send_at": send_at.format(&Rfc3339).unwrap_or_default(),
                "why": why.as_str(),
            }),
            Ok(Submitted::Refused { denial, .. }) => {
                json!({"status": "refused", "reason": denial.as_str(), "detail": denial.explain()})
            }
            Err(e) => {
                warn!(error = &e as &dyn std::error::Error, "cannot schedule the follow-up");
                json!({"error": "the follow-up could not be scheduled; it was not sent"})
            }
        }
    }
}
