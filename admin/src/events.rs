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
//!
//! Limits: at most [`MAX_EVENT_STREAMS`] streams are open at once on the
//! listener (past it 503 with the reason and `Retry-After`, so the CLI and
//! the console's other requests still find connections); a stream opened
//! with the console's session cookie ends when that session ends (signed
//! out, expired); each stream's two consumers are deleted when it closes,
//! not left to the server's inactivity timer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::Stream as JsStream;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use smsgate_shared::envelope::{self, DeadLetter, HistoryEntry, HistoryEvent, NoteReason};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::console::ConsoleSession;
use crate::{AdminError, AdminState, NATS_TIMEOUT, bounded};

/// Event streams open at once on the admin listener: each holds a
/// connection and two NATS consumers. Far under the listener's connection
/// cap (512), so the CLI and the console are served past it.
pub const MAX_EVENT_STREAMS: usize = 64;
/// The `Retry-After` of a stream refused past the cap.
const RETRY_AFTER_S: u64 = 5;

/// The slots of [`MAX_EVENT_STREAMS`], shared by the listener's requests.
pub fn stream_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_EVENT_STREAMS))
}

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

    /// Where each stream is read from: right after this position; None
    /// when that is past the last sequence a stream can have (an id this
    /// server never sent).
    fn next(self) -> Option<Self> {
        Some(Self { history: self.history.checked_add(1)?, dead: self.dead.checked_add(1)? })
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
            | NoteReason::Refused
            | NoteReason::Budget => "message.skipped",
            NoteReason::Scheduled => "message.scheduled",
            NoteReason::Canceled => "message.canceled",
            NoteReason::Consent => "conversation.consent",
            NoteReason::Handoff => "conversation.handoff",
            // Where a reply ended: sent and delivered, written to the log,
            // or failed for good.
            NoteReason::SendFailed | NoteReason::Delivered | NoteReason::Logged => "message.status",
            // What happened to a message's pictures; the message itself
            // was answered.
            NoteReason::MediaSkipped | NoteReason::MediaDeleted | NoteReason::MediaRefused => "message.media",
        },
        HistoryEvent::Call { status, .. } if envelope::call_ended(status) => "call.ended",
        HistoryEvent::Call { status, .. } if status == envelope::STREAM_STARTED => "call.stream.started",
        HistoryEvent::Call { status, .. } if status == envelope::STREAM_ENDED => "call.stream.ended",
        HistoryEvent::Call { .. } => "call.started",
        HistoryEvent::CallTurn { .. } => "call.turn",
        HistoryEvent::Cost { .. } => "cost.recorded",
    }
}

enum Source {
    History,
    Dead,
}

pub(crate) async fn events(
    State(state): State<AdminState>,
    Query(query): Query<EventsQuery>,
    session: Option<Extension<ConsoleSession>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AdminError> {
    let channel = match query.channel_id.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(state.known_channel(c)?),
        None => None,
    };
    let resume = match headers.get("last-event-id") {
        Some(v) => {
            let position = v.to_str().ok().and_then(Position::parse).ok_or_else(|| {
                AdminError::invalid("invalid_last_event_id", "Last-Event-ID must be an id this stream sent")
            })?;
            position.next().ok_or_else(|| {
                AdminError::invalid(
                    "last_event_id_out_of_range",
                    "Last-Event-ID is out of range: no stream sequence follows it (not an id this stream sent)",
                )
            })?;
            Some(position)
        }
        None => None,
    };
    let slot = state.event_streams.clone().try_acquire_owned().map_err(|_| {
        tracing::warn!(
            service = "ingress",
            stage = "admin",
            outcome = "refused",
            why = "event_stream_cap",
            max = MAX_EVENT_STREAMS,
            "an event stream was refused: the cap of open streams is reached"
        );
        AdminError::Limited {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "too_many_event_streams",
            detail: format!("{MAX_EVENT_STREAMS} event streams are open, the most this server serves at once"),
            retry_after: RETRY_AFTER_S,
        }
    })?;
    let history = state.stream(state.topology.history_stream()).await?;
    let dead = state.stream(state.topology.dead_stream()).await?;
    let start = resume.unwrap_or(Position {
        history: history.cached_info().state.last_sequence,
        dead: dead.cached_info().state.last_sequence,
    });
    let (history_filter, dead_filter) =
        (state.topology.history_filter(channel.as_ref()), state.topology.dead_filter(channel.as_ref()));
    // Made before the consumers, so one made before a failure is deleted too.
    let mut guard = Open::new(slot);
    let history_messages =
        follow(&mut guard, &history, history_filter, start.history).await?.map(|m| (Source::History, m));
    let dead_messages = follow(&mut guard, &dead, dead_filter, start.dead).await?.map(|m| (Source::Dead, m));
    let ends = {
        let shutdown = state.shutdown.clone();
        async move {
            match session {
                Some(Extension(session)) => tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = session.over() => {}
                },
                None => shutdown.cancelled().await,
            }
        }
    };
    let events = futures::stream::select(history_messages, dead_messages)
        // A consumer that fails ends the answer: the client reconnects with
        // Last-Event-ID and loses nothing.
        .take_while(|(_, m)| std::future::ready(m.is_ok()))
        .filter_map(|(source, m)| {
            std::future::ready(m.ok().and_then(|m| Some((source, m.info().ok()?.stream_sequence, m.payload.clone()))))
        })
        .scan(start, move |position, (source, seq, payload)| {
            let _open = &guard;
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
        // The server's shutdown, or the end of the console session that
        // opened it, ends the answer: nothing more is delivered.
        .take_until(Box::pin(ends));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One open event stream: its slot of [`MAX_EVENT_STREAMS`], the gauge,
/// and its consumers, deleted when it closes (the client went, the session
/// or the server ended).
struct Open {
    _slot: OwnedSemaphorePermit,
    consumers: Vec<(JsStream, String)>,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("smsgate_admin_event_streams").increment(1.0);
        Self { _slot: slot, consumers: Vec::new() }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("smsgate_admin_event_streams").decrement(1.0);
        let consumers = std::mem::take(&mut self.consumers);
        if consumers.is_empty() {
            return;
        }
        // Dropped inside the runtime (the answer's body); without one the
        // server's inactivity timer removes them.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for (stream, name) in consumers {
                    match tokio::time::timeout(NATS_TIMEOUT, stream.delete_consumer(&name)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::debug!(service = "ingress", stage = "admin", error = %e, "events: cannot delete a reader"),
                        Err(_) => tracing::debug!(service = "ingress", stage = "admin", "events: deleting a reader timed out"),
                    }
                }
            });
        }
    }
}

/// Makes a consumer reading `stream` after `after` (checked by the caller
/// not to overflow) and records it in `open` to be deleted with it. An
/// ephemeral pull consumer with a name of our own and no acks: the
/// server's inactivity timer removes it should the delete never come.
async fn follow(
    open: &mut Open,
    stream: &JsStream,
    filter: String,
    after: u64,
) -> Result<consumer::pull::Stream, AdminError> {
    let name = format!("events_{}", hex::encode(rand::random::<[u8; 8]>()));
    let consumer = bounded(
        "create an event reader",
        stream.create_consumer(consumer::pull::Config {
            name: Some(name.clone()),
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after.saturating_add(1) },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        }),
    )
    .await?;
    open.consumers.push((stream.clone(), name));
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
    fn relay_sockets_and_interrupted_turns_have_their_events() {
        let call = |status: &str| HistoryEvent::Call {
            call_sid: "CA0123456789abcdef0123456789abcdef".to_owned(),
            status: status.to_owned(),
            direction: "inbound".to_owned(),
            duration_secs: None,
            detail: None,
        };
        assert_eq!(event_name(&call(envelope::STREAM_STARTED)), "call.stream.started");
        assert_eq!(event_name(&call(envelope::STREAM_ENDED)), "call.stream.ended");
        assert_eq!(event_name(&call("answered")), "call.started");
        assert_eq!(event_name(&call("completed")), "call.ended");
        let turn = HistoryEvent::CallTurn {
            call_sid: "CA0123456789abcdef0123456789abcdef".to_owned(),
            turn: 1,
            heard: "tell me".to_owned(),
            said: "Sure,".to_owned(),
            origin: envelope::Origin::Chat,
            interrupted: true,
        };
        assert_eq!(event_name(&turn), "call.turn");
        let json = serde_json::to_value(&turn).unwrap();
        assert_eq!(json["interrupted"], true);
        let plain = HistoryEvent::CallTurn {
            call_sid: String::new(),
            turn: 1,
            heard: String::new(),
            said: String::new(),
            origin: envelope::Origin::Chat,
            interrupted: false,
        };
        assert!(serde_json::to_value(&plain).unwrap().get("interrupted").is_none(), "absent when false");
    }

    #[test]
    fn positions_round_trip_and_junk_is_refused() {
        let p = Position { history: 42, dead: 7 };
        assert_eq!(Position::parse(&p.encode()), Some(p));
        assert_eq!(Position::parse("x-1"), None);
        assert_eq!(Position::parse("12"), None);
        assert_eq!(Position { history: 4, dead: 9 }.next(), Some(Position { history: 5, dead: 10 }));
        let last = Position::parse(&format!("{}-0", u64::MAX)).unwrap();
        assert_eq!(last.next(), None, "nothing follows u64::MAX");
        assert_eq!(Position::parse("18446744073709551616-0"), None, "over u64: not an id");
    }
}
