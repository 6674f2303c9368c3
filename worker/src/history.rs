//! The conversation log (`P.history.<channel>.<peer>`): what the worker
//! appends (every inbound message, a note for every outcome that is not a
//! reply) and the recent turns it reads for the chat pipeline's context.
//!
//! The sender appends the `Outbound` entries when it delivers; the worker
//! reads them back as the assistant's turns.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::DirectGetErrorKind};
use futures::StreamExt;
use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{self, HistoryEntry, HistoryEvent, Inbound, NoteReason, Origin};
use smsgate_shared::topology::Topology;

use crate::Error;
use crate::chat::{Role, Turn};
use crate::keywords;
use tracing::debug;

/// What reading a conversation found.
#[derive(Debug, Default)]
pub struct Recent {
    /// The last turns before the current message, oldest first.
    pub turns: Vec<Turn>,
    /// Whether the current message's inbound entry is already there (a
    /// redelivery after it was recorded).
    pub has_current: bool,
}

/// A conversation's recent turns as this worker last saw them, and the
/// stream sequence they reach up to.
struct Cached {
    last_seq: u64,
    /// Turns with the inbound MessageSid they came from (for users' turns).
    turns: VecDeque<(Option<MessageSid>, Turn)>,
    /// Recent inbound MessageSids, keywords included (for `has_current`).
    sids: VecDeque<MessageSid>,
    used: u64,
}

/// Inbound MessageSids remembered per conversation.
const SIDS_KEPT: usize = 8;

#[derive(Clone)]
pub struct History {
    js: jetstream::Context,
    topology: Topology,
    /// `P_HISTORY`, opened once.
    stream: jetstream::stream::Stream,
    /// Per conversation (history subject). One conversation is handled by
    /// one task at a time, so an entry is taken out while it is brought up
    /// to date and put back after.
    cache: Arc<Mutex<CacheMap>>,
}

struct CacheMap {
    entries: HashMap<String, Cached>,
    capacity: usize,
    clock: u64,
}

impl History {
    pub async fn open(js: jetstream::Context, topology: Topology, capacity: usize) -> Result<Self, Error> {
        let stream = js.get_stream(topology.history_stream()).await.map_err(|e| Error::HistoryRead(Box::new(e)))?;
        let cache = CacheMap { entries: HashMap::new(), capacity, clock: 0 };
        Ok(Self { js, topology, stream, cache: Arc::new(Mutex::new(cache)) })
    }

    /// Appends one entry to the conversation (`shared::bus::append_history`).
    pub(crate) async fn append(
        &self,
        channel: &ChannelId,
        peer: &E164,
        id: MsgId<'_>,
        event: HistoryEvent,
    ) -> Result<(), Error> {
        bus::append_history(&self.js, &self.topology, (channel, peer), id, event)
            .await
            .map_err(|e| Error::Publish { what: "history", source: Box::new(e) })
    }

    /// Records an inbound message (`Nats-Msg-Id: in.<sid>`).
    pub async fn inbound(&self, inbound: &Inbound, peer: &E164) -> Result<(), Error> {
        let event = HistoryEvent::Inbound {
            message_sid: inbound.message_sid.clone(),
            body: inbound.body.clone(),
            media: inbound.media.clone(),
        };
        self.append(&inbound.channel_id, peer, MsgId::HistoryInbound(&inbound.message_sid), event).await
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
        let event =
            HistoryEvent::Note { reason, message_sid: Some(sid.clone()), outbound_id: None, detail: detail.into() };
        self.append(channel, peer, MsgId::WorkerNote { sid, reason, seq }, event).await
    }

    /// The last `turns` turns of the conversation with `peer` before
    /// `current`. A conversation seen before is brought up to date from its
    /// cached stream sequence with direct gets (usually one or two: the last
    /// reply and the last inbound), so no consumer is created per message;
    /// the first time, or when the cache lost it, the conversation's subject
    /// is read once with a short-lived consumer (bounded: the stream keeps at
    /// most `history_per_peer` entries per subject).
    pub async fn recent(
        &self,
        channel: &ChannelId,
        peer: &E164,
        current: &MessageSid,
        turns: usize,
    ) -> Result<Recent, Error> {
        let subject = self.topology.history_subject(channel, peer);
        let keep = turns + 2;
        let taken = self.lock().entries.remove(&subject);
        let mut cached = match taken {
            Some(mut c) => match self.catch_up(&subject, &mut c, keep).await {
                Ok(()) => {
                    metrics::counter!("smsgate_worker_history_reads_total", "source" => "cache").increment(1);
                    c
                }
                Err(e) => {
                    debug!(error = &e as &dyn std::error::Error, "history catch-up failed; reading the conversation");
                    self.read_all(&subject, keep).await?
                }
            },
            None => self.read_all(&subject, keep).await?,
        };
        let recent = view(&cached, current, turns);
        let mut map = self.lock();
        if map.capacity == 0 {
            return Ok(recent);
        }
        map.clock += 1;
        cached.used = map.clock;
        map.entries.insert(subject, cached);
        if map.entries.len() > map.capacity {
            // Forget the least recently used tenth in one pass.
            let mut ages: Vec<u64> = map.entries.values().map(|c| c.used).collect();
            let cut = ages.len() / 10;
            let (_, nth, _) = ages.select_nth_unstable(cut);
            let nth = *nth;
            map.entries.retain(|_, c| c.used > nth);
        }
        Ok(recent)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheMap> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies what was appended after `cached.last_seq`.
    async fn catch_up(&self, subject: &str, cached: &mut Cached, keep: usize) -> Result<(), Error> {
        loop {
            let next = self.stream.direct_get_next_for_subject(subject, Some(cached.last_seq + 1)).await;
            match next {
                Ok(msg) => {
                    cached.last_seq = msg.sequence;
                    if let Ok(entry) = envelope::decode::<HistoryEntry>(&msg.payload) {
                        remember(cached, entry, keep);
                    }
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::HistoryRead(Box::new(e))),
            }
        }
    }

    /// Reads the whole conversation (a filtered, short-lived consumer).
    async fn read_all(&self, subject: &str, keep: usize) -> Result<Cached, Error> {
        metrics::counter!("smsgate_worker_history_reads_total", "source" => "stream").increment(1);
        let read_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::HistoryRead(e);
        let stream = self.stream.clone();
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_owned(),
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
        let mut cached = Cached { last_seq: 0, turns: VecDeque::new(), sids: VecDeque::new(), used: 0 };
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
                if let Ok(info) = msg.info() {
                    pending = info.pending;
                    cached.last_seq = cached.last_seq.max(info.stream_sequence);
                } else {
                    pending = 0;
                }
                if let Ok(entry) = envelope::decode::<HistoryEntry>(&msg.payload) {
                    remember(&mut cached, entry, keep);
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
        Ok(cached)
    }
}

/// The last `turns` turns before `current`, and whether `current` is there.
fn view(cached: &Cached, current: &MessageSid, turns: usize) -> Recent {
    let before: Vec<&Turn> =
        cached.turns.iter().filter(|(sid, _)| sid.as_ref() != Some(current)).map(|(_, t)| t).collect();
    Recent {
        has_current: cached.sids.contains(current),
        turns: before[before.len().saturating_sub(turns)..].iter().map(|t| (*t).clone()).collect(),
    }
}

/// Adds an entry to a conversation's cached turns.
fn remember(cached: &mut Cached, entry: HistoryEntry, keep: usize) {
    if let HistoryEvent::Inbound { message_sid, .. } = &entry.event {
        if cached.sids.len() == SIDS_KEPT {
            cached.sids.pop_front();
        }
        cached.sids.push_back(message_sid.clone());
    }
    let sid = match &entry.event {
        HistoryEvent::Inbound { message_sid, .. } => Some(message_sid.clone()),
        _ => None,
    };
    for turn in as_turns(entry) {
        if cached.turns.len() == keep {
            cached.turns.pop_front();
        }
        cached.turns.push_back((sid.clone(), turn));
    }
}

/// The turns an entry is, if any: a user's message (keywords excluded,
/// they are not conversation), a reply from the chat pipeline or an
/// operator, or a call's turn (what the caller said and the spoken reply:
/// texts and calls are one conversation).
fn as_turns(entry: HistoryEntry) -> Vec<Turn> {
    let at = entry.at;
    match entry.event {
        HistoryEvent::Inbound { body, media, .. } if keywords::classify(&body).is_none() => {
            vec![Turn { role: Role::User, body, media, at }]
        }
        HistoryEvent::Outbound { body, origin: Origin::Chat | Origin::Api, .. } => {
            vec![Turn { role: Role::Assistant, body, media: vec![], at }]
        }
        HistoryEvent::CallTurn { heard, said, origin: Origin::Chat, .. } => vec![
            Turn { role: Role::User, body: heard, media: vec![], at },
            Turn { role: Role::Assistant, body: said, media: vec![], at },
        ],
        HistoryEvent::CallTurn { heard, .. } => vec![Turn { role: Role::User, body: heard, media: vec![], at }],
        _ => Vec::new(),
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
        let inbound =
            |s: &str, body: &str| HistoryEvent::Inbound { message_sid: sid(s), body: body.into(), media: vec![] };
        let outbound = |origin| HistoryEvent::Outbound {
            id: "reply.SM1".into(),
            body: "answer".into(),
            in_reply_to: None,
            origin,
            pieces: vec![],
            delivery: "log".into(),
            media: vec![],
        };
        let mut c = Cached { last_seq: 0, turns: VecDeque::new(), sids: VecDeque::new(), used: 0 };
        for event in [inbound("SM1", "hi"), inbound("SM2", "HELP"), outbound(Origin::Chat), outbound(Origin::Help)] {
            remember(&mut c, entry(event), 4);
        }
        let before = view(&c, &sid("SM3"), 10);
        assert!(!before.has_current);
        let roles: Vec<Role> = before.turns.iter().map(|t| t.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant], "HELP and the help text are not conversation");
        remember(&mut c, entry(inbound("SM3", "now")), 4);
        let after = view(&c, &sid("SM3"), 10);
        assert!(after.has_current);
        assert_eq!(after.turns.len(), 2, "the current message is not its own context");
        assert_eq!(view(&c, &sid("SM3"), 1).turns.len(), 1, "only the last turns are kept");
    }

    #[test]
    fn the_cache_keeps_only_the_turns_it_needs() {
        let sid = |s: &str| MessageSid::parse(s).unwrap();
        let mut c = Cached { last_seq: 0, turns: VecDeque::new(), sids: VecDeque::new(), used: 0 };
        for n in 0..100 {
            let event = HistoryEvent::Inbound { message_sid: sid(&format!("SM{n}")), body: "x".into(), media: vec![] };
            remember(&mut c, entry(event), 5);
        }
        assert_eq!(c.turns.len(), 5);
        assert_eq!(c.sids.len(), SIDS_KEPT);
        assert!(view(&c, &sid("SM99"), 10).has_current);
    }
}
