//! `GET /api/v1/events`: the message events as Server-Sent Events, read
//! from the history and dead-letter streams (nothing is kept in memory for
//! a client that is away).
//!
//! Each client gets two ordered consumers, one per stream, filtered by
//! channel when `channel_id` is given. An event's `id` is the position in
//! both streams after it, `<history seq>-<dead seq>`; a client that comes
//! back with `Last-Event-ID` (browsers' `EventSource` does this by itself)
//! starts right after it and misses nothing the streams still hold.
//! Without it, the stream starts with what is recorded from now on.
//!
//! Names: history entries are `message.received` (inbound),
//! `message.sent` (outbound), `message.status` (a delivery status),
//! `conversation.paused` / `conversation.resumed` (takeover notes),
//! `message.skipped` (the notes of a message not answered by the model:
//! duplicate, rate-limited, opted out, keyword, blocked, paused, chat error,
//! no reply), `message.status` also for the notes where a reply ended (sent
//! failed, delivered, logged) and `message.media` (a picture skipped,
//! deleted from Twilio, or refused in a reply); `P_DEAD` entries are
//! `dead.letter`. The data is the
//! stored entry as JSON with `type`, `seq`, `channel_id` and `peer` (the
//! full number: this is the private side).

use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::Stream as JsStream;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use smsgate_shared::envelope::{self, DeadLetter, HistoryEntry, HistoryEvent, NoteReason};

use crate::{AdminError, AdminState, bounded};

/// A comment line this often keeps proxies and our own idle timer from
/// closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    pub channel_id: Option<String>,
}

/// Where a client is in both streams: the last sequence it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub history: u64,
    pub dead: u64,
}

impl Position {
    pub fn encode(self) -> String {
        format!("{}-{}", self.history, self.dead)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (h, d) = text.trim().split_once('-')?;
        Some(Self { history: h.parse().ok()?, dead: d.parse().ok()? })
    }
}

/// The event name of a history entry. Every note reason is placed here by
/// name, so a new one has to be given its event.
pub fn event_name(event: &HistoryEvent) -> &'static str {
    match event {
        HistoryEvent::Inbound { .. } => "message.received",
        HistoryEvent::Outbound { .. } => "message.sent",
        HistoryEvent::Status { .. } => "message.status",
        HistoryEvent::Note { reason, message_sid, .. } => match reason {
            // The operator's pause; the worker's "not answered while
            // paused" notes name the message they skipped.
            NoteReason::Paused if message_sid.is_none() => "conversation.paused",
            NoteReason::Resumed => "conversation.resumed",
            NoteReason::Paused
            | NoteReason::Duplicate
            | NoteReason::RateLimited
            | NoteReason::OverLimit
            | NoteReason::CountryNotAllowed
            | NoteReason::OptedOut
            | NoteReason::OptOutKeyword
            | NoteReason::OptInKeyword
            | NoteReason::HelpKeyword
            | NoteReason::Blocked
            | NoteReason::ChatError
            | NoteReason::NoReply
            | NoteReason::Refused => "message.skipped",
            NoteReason::Scheduled => "message.scheduled",
            NoteReason::Canceled => "message.canceled",
            NoteReason::Consent => "conversation.consent",
            // Where a reply ended: sent and delivered, written to the log,
            // or failed for good.
            NoteReason::SendFailed | NoteReason::Delivered | NoteReason::Logged => "message.status",
            // What happened to a message's pictures; the message itself
            // was answered.
            NoteReason::MediaSkipped | NoteReason::MediaDeleted | NoteReason::MediaRefused => "message.media",
        },
        HistoryEvent::Call { status, .. } if envelope::call_ended(status) => "call.ended",
        HistoryEvent::Call { .. } => "call.started",
        HistoryEvent::CallTurn { .. } => "call.turn",
    }
}

enum Source {
    History,
    Dead,
}

pub(crate) async fn events(
    State(state): State<AdminState>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AdminError> {
    let channel = match query.channel_id.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(state.known_channel(c)?),
        None => None,
    };
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().ok().and_then(Position::parse).ok_or_else(|| {
            AdminError::invalid("invalid_last_event_id", "Last-Event-ID must be an id this stream sent")
        })?),
        None => None,
    };
    let history = state.stream(state.topology.history_stream()).await?;
    let dead = state.stream(state.topology.dead_stream()).await?;
    let start = resume.unwrap_or(Position {
        history: history.cached_info().state.last_sequence,
        dead: dead.cached_info().state.last_sequence,
    });
    let (history_filter, dead_filter) =
        (state.topology.history_filter(channel.as_ref()), state.topology.dead_filter(channel.as_ref()));
    let history_messages = follow(&history, history_filter, start.history).await?.map(|m| (Source::History, m));
    let dead_messages = follow(&dead, dead_filter, start.dead).await?.map(|m| (Source::Dead, m));
    metrics::gauge!("smsgate_admin_event_streams").increment(1.0);
    let guard = StreamCount;
    let events = futures::stream::select(history_messages, dead_messages)
        // A consumer that fails ends the answer: the client reconnects with
        // Last-Event-ID and loses nothing.
        .take_while(|(_, m)| std::future::ready(m.is_ok()))
        .filter_map(|(source, m)| {
            std::future::ready(m.ok().and_then(|m| Some((source, m.info().ok()?.stream_sequence, m.payload.clone()))))
        })
        .scan(start, move |position, (source, seq, payload)| {
            let _alive = &guard;
            let event = match source {
                Source::History => {
                    position.history = seq;
                    history_event(seq, &payload)
                }
                Source::Dead => {
                    position.dead = seq;
                    dead_event(seq, &payload)
                }
            };
            let event =
                event.map(|(name, data)| Event::default().id(position.encode()).event(name).data(data.to_string()));
            std::future::ready(Some(event))
        })
        .filter_map(|event| std::future::ready(event.map(Ok)))
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Counts open event streams in a gauge while it lives.
struct StreamCount;

impl Drop for StreamCount {
    fn drop(&mut self) {
        metrics::gauge!("smsgate_admin_event_streams").decrement(1.0);
    }
}

async fn follow(stream: &JsStream, filter: String, after: u64) -> Result<consumer::pull::Ordered, AdminError> {
    let consumer = bounded(
        "create an event reader",
        stream.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        }),
    )
    .await?;
    bounded("read events", consumer.messages()).await
}

fn history_event(seq: u64, payload: &[u8]) -> Option<(&'static str, Value)> {
    let Ok(entry) = envelope::decode::<HistoryEntry>(payload) else {
        tracing::warn!(
            service = "ingress",
            stage = "admin",
            seq,
            "events: skipping a history entry this build cannot read"
        );
        return None;
    };
    let name = event_name(&entry.event);
    let mut data = serde_json::to_value(&entry).ok()?;
    if let Value::Object(map) = &mut data {
        map.insert("type".to_owned(), json!(name));
        map.insert("seq".to_owned(), json!(seq));
    }
    Some((name, data))
}

fn dead_event(seq: u64, payload: &[u8]) -> Option<(&'static str, Value)> {
    let Ok(letter) = envelope::decode::<DeadLetter>(payload) else {
        tracing::warn!(
            service = "ingress",
            stage = "admin",
            seq,
            "events: skipping a dead letter this build cannot read"
        );
        return None;
    };
    // The peer is in the original payload: the sender of an inbound
    // message, the recipient of anything going out.
    let original: Value = serde_json::from_str(&letter.payload).unwrap_or(Value::Null);
    let peer = if letter.stage == "inbound" { original.get("from") } else { original.get("to") };
    Some((
        "dead.letter",
        json!({
            "type": "dead.letter",
            "seq": seq,
            "channel_id": letter.channel_id,
            "peer": peer.and_then(Value::as_str),
            "stage": letter.stage,
            "reason": letter.reason,
            "code": letter.code,
            "subject": letter.subject,
            "msg_id": letter.msg_id,
            "at": letter.at.format(&time::format_description::well_known::Rfc3339).ok(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_junk_is_refused() {
        let p = Position { history: 42, dead: 7 };
        assert_eq!(Position::parse(&p.encode()), Some(p));
        assert_eq!(Position::parse("x-1"), None);
        assert_eq!(Position::parse("12"), None);
    }
}
