//! The conversation log (`P.history.<channel>.<peer>`): what the worker
//! appends (every inbound message, a note for every outcome that is not a
//! reply) and the recent turns it reads for the chat pipeline's context.
//!
//! The sender appends the `Outbound` entries when it delivers; the worker
//! reads them back as the assistant's turns.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{self, HistoryEntry, HistoryEvent, Inbound, NoteReason, Origin};
use smsgate_shared::topology::Topology;

use crate::Error;
use crate::chat::{Role, Turn};
use crate::keywords;

/// What reading a conversation found.
#[derive(Debug, Default)]
pub struct Recent {
    /// The last turns before the current message, oldest first.
    pub turns: Vec<Turn>,
    /// Whether the current message's inbound entry is already there (a
    /// redelivery after it was recorded).
    pub has_current: bool,
}

#[derive(Clone)]
pub struct History {
    js: jetstream::Context,
    topology: Topology,
    /// `P_HISTORY`, opened once (its consumers are created per read).
    stream: jetstream::stream::Stream,
}

impl History {
    pub async fn open(js: jetstream::Context, topology: Topology) -> Result<Self, Error> {
        let stream = js.get_stream(topology.history_stream()).await.map_err(|e| Error::HistoryRead(Box::new(e)))?;
        Ok(Self { js, topology, stream })
    }

    async fn append(&self, channel: &ChannelId, peer: &E164, msg_id: String, event: HistoryEvent) -> Result<(), Error> {
        let entry = HistoryEntry::now(channel.clone(), peer.clone(), event);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let subject = self.topology.history_subject(channel, peer);
        self.js
            .publish_with_headers(subject, headers, envelope::encode(&entry))
            .await
            .map_err(|e| Error::Publish { what: "history", source: Box::new(e) })?
            .await
            .map_err(|e| Error::Publish { what: "history", source: Box::new(e) })?;
        Ok(())
    }

    /// Records an inbound message (`Nats-Msg-Id: in.<sid>`).
    pub async fn inbound(&self, inbound: &Inbound, peer: &E164) -> Result<(), Error> {
        let event = HistoryEvent::Inbound {
            message_sid: inbound.message_sid.clone(),
            body: inbound.body.clone(),
            media: inbound.media.clone(),
        };
        self.append(&inbound.channel_id, peer, format!("in.{}", inbound.message_sid), event).await
    }

    /// Records why a message got no chat reply (`Nats-Msg-Id:
    /// note.<sid>.<reason>.<seq>`: the sequence tells duplicates apart).
    pub async fn note(
        &self,
        channel: &ChannelId,
        peer: &E164,
        sid: &MessageSid,
        seq: u64,
        reason: NoteReason,
        detail: impl Into<String>,
    ) -> Result<(), Error> {
        let tag = serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let event =
            HistoryEvent::Note { reason, message_sid: Some(sid.clone()), outbound_id: None, detail: detail.into() };
        self.append(channel, peer, format!("note.{sid}.{tag}.{seq}"), event).await
    }

    /// Reads the conversation with `peer` and keeps its last `turns` turns
    /// before `current`. Only that conversation's subject is read (a filtered
    /// consumer; the stream keeps at most `history_per_peer` entries per
    /// subject, so the read is bounded whatever the stream's size).
    pub async fn recent(
        &self,
        channel: &ChannelId,
        peer: &E164,
        current: &MessageSid,
        turns: usize,
    ) -> Result<Recent, Error> {
        let subject = self.topology.history_subject(channel, peer);
        let read_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::HistoryRead(e);
        let stream = self.stream.clone();
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject,
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| read_err(Box::new(e)))?;
        let mut pending = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        let mut recent = Recent::default();
        let mut window: VecDeque<Turn> = VecDeque::with_capacity(turns + 1);
        while pending > 0 {
            let mut batch = consumer
                .fetch()
                .max_messages(256)
                .expires(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| read_err(Box::new(e)))?;
            let mut got = 0;
            while let Some(msg) = batch.next().await {
                let msg = msg.map_err(Error::HistoryRead)?;
                got += 1;
                pending = msg.info().map(|i| i.pending).unwrap_or(0);
                let Ok(entry) = envelope::decode::<HistoryEntry>(&msg.payload) else { continue };
                if let Some(turn) = as_turn(entry, current, &mut recent.has_current) {
                    if window.len() == turns {
                        window.pop_front();
                    }
                    if turns > 0 {
                        window.push_back(turn);
                    }
                }
            }
            if got == 0 {
                break;
            }
        }
        // The consumer would go away by itself; deleting it now keeps the
        // server's consumer list short.
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
        recent.turns = window.into();
        Ok(recent)
    }
}

/// The turn an entry is, if it is one: a user's message (keywords excluded,
/// they are not conversation) or a reply from the chat pipeline or an
/// operator.
fn as_turn(entry: HistoryEntry, current: &MessageSid, has_current: &mut bool) -> Option<Turn> {
    match entry.event {
        HistoryEvent::Inbound { message_sid, .. } if &message_sid == current => {
            *has_current = true;
            None
        }
        HistoryEvent::Inbound { body, media, .. } if keywords::classify(&body).is_none() => {
            Some(Turn { role: Role::User, body, media, at: entry.at })
        }
        HistoryEvent::Outbound { body, origin: Origin::Chat | Origin::Api, .. } => {
            Some(Turn { role: Role::Assistant, body, media: vec![], at: entry.at })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event: HistoryEvent) -> HistoryEntry {
        HistoryEntry::now(ChannelId::parse("c").unwrap(), E164::parse("+14155550100").unwrap(), event)
    }

    #[test]
    fn only_conversation_turns_count_and_the_current_message_is_left_out() {
        let sid = |s: &str| MessageSid::parse(s).unwrap();
        let current = sid("SM3");
        let mut has = false;
        let inbound =
            |s: &str, body: &str| HistoryEvent::Inbound { message_sid: sid(s), body: body.into(), media: vec![] };
        let outbound = |origin| HistoryEvent::Outbound {
            id: "reply.SM1".into(),
            body: "answer".into(),
            in_reply_to: None,
            origin,
            pieces: vec![],
            delivery: "log".into(),
        };
        assert_eq!(as_turn(entry(inbound("SM1", "hi")), &current, &mut has).unwrap().role, Role::User);
        assert!(as_turn(entry(inbound("SM2", "HELP")), &current, &mut has).is_none());
        assert_eq!(as_turn(entry(outbound(Origin::Chat)), &current, &mut has).unwrap().role, Role::Assistant);
        assert!(as_turn(entry(outbound(Origin::Help)), &current, &mut has).is_none());
        assert!(!has);
        assert!(as_turn(entry(inbound("SM3", "now")), &current, &mut has).is_none());
        assert!(has);
    }
}
