//! Writing to the bus: history entries and dead letters, each published
//! with a `Nats-Msg-Id` so that a redelivered message does not write twice
//! (within the streams' duplicate window), and awaited: a message is acked
//! only after what it recorded is stored.

use async_nats::jetstream::{Message, message::PublishMessage};
use smsgate_shared::consume::Stranded;
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, DeadLetter, HistoryEntry, HistoryEvent};
use smsgate_shared::topology::{Bus, Stage};
use time::OffsetDateTime;

/// Publishing to JetStream failed (the caller naks and retries later).
#[derive(Debug, thiserror::Error)]
#[error("cannot publish to {subject}")]
pub struct PublishError {
    pub subject: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

async fn publish(bus: &Bus, subject: String, msg_id: &str, payload: bytes::Bytes) -> Result<(), PublishError> {
    let message = PublishMessage::build().payload(payload).message_id(msg_id);
    let ack = bus
        .js
        .send_publish(subject.clone(), message)
        .await
        .map_err(|e| PublishError { subject: subject.clone(), source: Box::new(e) })?;
    ack.await.map_err(|e| PublishError { subject, source: Box::new(e) })?;
    Ok(())
}

/// Appends an entry to `P.history.<channel>.<peer>`.
pub async fn history(
    bus: &Bus,
    channel: &ChannelId,
    peer: &E164,
    event: HistoryEvent,
    msg_id: &str,
) -> Result<(), PublishError> {
    let subject = bus.topology.history_subject(channel, peer);
    let entry = HistoryEntry::now(channel.clone(), peer.clone(), event);
    publish(bus, subject, msg_id, envelope::encode(&entry)).await
}

/// What went wrong, for a dead letter.
pub struct Failure<'a> {
    pub stage: Stage,
    pub reason: String,
    pub code: Option<i64>,
    /// The channel, when known; else the last token of the subject.
    pub channel: Option<&'a ChannelId>,
}

/// Publishes the original message to `P.dead.<stage>.<channel>` with the
/// reason, so that it can be replayed to its subject.
pub async fn dead_letter(bus: &Bus, msg: &Message, failure: Failure<'_>) -> Result<(), PublishError> {
    let msg_id =
        msg.headers.as_ref().and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)).map(|v| v.as_str().to_owned());
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
    let original = Stranded {
        subject: &msg.subject,
        payload: &msg.payload,
        msg_id: msg_id.as_deref(),
        seq,
        reason: String::new(),
    };
    dead_letter_of(bus, &original, failure).await
}

/// [`dead_letter`] for a message known by its parts (the consumer runtime
/// hands those over for panics and exhausted deliveries).
pub async fn dead_letter_of(bus: &Bus, original: &Stranded<'_>, failure: Failure<'_>) -> Result<(), PublishError> {
    let channel = match failure.channel {
        Some(c) => c.clone(),
        None => channel_of_subject(original.subject)
            .unwrap_or_else(|| ChannelId::parse("unknown").unwrap_or_else(|e| unreachable!("{e}"))),
    };
    let letter = DeadLetter {
        v: envelope::VERSION,
        stage: failure.stage.as_str().to_owned(),
        channel_id: channel.to_string(),
        reason: failure.reason,
        code: failure.code,
        subject: original.subject.to_owned(),
        msg_id: original.msg_id.map(str::to_owned),
        payload: String::from_utf8_lossy(original.payload).into_owned(),
        at: OffsetDateTime::now_utc(),
    };
    // One dead letter per stored message, however often it is redelivered;
    // a replay is a new stored message and may dead-letter again.
    let dedupe = format!("dead.{}.{}.{}", failure.stage.as_str(), original.subject, original.seq);
    metrics::counter!("smsgate_sender_dead_letters_total", "stage" => failure.stage.as_str()).increment(1);
    publish(bus, bus.topology.dead_subject(failure.stage, &channel), &dedupe, envelope::encode(&letter)).await
}

/// `P.<what>.<channel>` → the channel.
pub fn channel_of_subject(subject: &str) -> Option<ChannelId> {
    subject.rsplit('.').next().and_then(|c| ChannelId::parse(c).ok())
}
