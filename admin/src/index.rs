//! The conversation list's read model: one summary per conversation (entries,
//! messages, last time, last message), kept in memory as history entries are
//! recorded, sorted newest first, so a page of the list costs a walk of an
//! ordered set and never a scan of the history stream.
//!
//! One task per process follows `P_HISTORY` with an ordered consumer: at
//! start it reads the stream once from its first entry (the stream holds at
//! most `history_max_per_subject` entries per conversation and ages them
//! out), then every new entry as it is stored. A lost consumer is made again
//! from the last sequence applied, so nothing is counted twice or skipped.
//! Requests wait (bounded) for that first read before they answer, so a list
//! is never silently partial.
//!
//! Bounded: a conversation whose last entry is older than the history's
//! retention (`P_HISTORY`'s max age) is dropped, as the stream drops its
//! entries, and past [`MAX_ENTRIES`] conversations the one quiet longest
//! goes (a warning says so once); `smsgate_conversation_index_entries`
//! is the size.
//!
//! The cursor of a page is the sort key of its last conversation
//! (newest-first time, channel, peer): the next page starts after it, and a
//! conversation that moves to the top in between is not shown twice.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use smsgate_shared::envelope::{self, HistoryEntry, HistoryEvent};
use smsgate_shared::redact::clip;
use smsgate_shared::topology::Topology;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The longest preview of a conversation's last message.
const PREVIEW_CHARS: usize = 160;
/// Conversations the index keeps at most (about 1 kB each).
pub const MAX_ENTRIES: usize = 100_000;
/// How often entries past the retention are looked for when nothing is
/// recorded.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// The gauge of the index's size.
const ENTRIES_GAUGE: &str = "smsgate_conversation_index_entries";

/// One conversation in the list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ConversationSummary {
    pub channel_id: String,
    pub peer: String,
    /// History entries recorded for this conversation (messages, delivery
    /// statuses and notes) that this process has read.
    pub count: u64,
    /// Inbound plus outbound messages among them.
    pub messages: u64,
    /// When the latest entry was recorded (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>")]
    pub last_at: Option<OffsetDateTime>,
    /// The latest message, in or out.
    pub last_message: Option<LastMessage>,
}

/// A conversation's latest message, clipped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct LastMessage {
    /// `inbound` or `outbound`.
    pub direction: String,
    pub body: String,
    /// Attachments it carried.
    pub media: usize,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

/// (channel, peer in E.164).
type Key = (String, String);
/// Newest first, then channel and peer.
type Order = (Reverse<i128>, String, String);

#[derive(Default)]
struct Inner {
    by_key: HashMap<Key, ConversationSummary>,
    order: BTreeSet<Order>,
    /// The last `P_HISTORY` sequence folded in.
    applied: u64,
    /// Which conversation each call (CallSid) belongs to, so that
    /// `GET /api/v1/calls/{CallSid}` reads one subject, not the stream.
    calls: HashMap<String, Key>,
    /// The calls in the order first seen: past [`MAX_CALLS`] the oldest goes.
    call_order: VecDeque<String>,
}

/// Calls whose conversation the index remembers (about 100 bytes each).
pub const MAX_CALLS: usize = 100_000;

/// What a page request asks for.
#[derive(Debug, Default, Clone)]
pub struct PageQuery<'a> {
    pub channel: Option<&'a str>,
    /// Digits (or any part) of the number.
    pub q: Option<&'a str>,
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

/// Where the next page starts: after this sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Order);

impl Cursor {
    /// The opaque text form used in `next_cursor` and `cursor=`.
    pub fn encode(&self) -> String {
        let (Reverse(ns), channel, peer) = &self.0;
        URL_SAFE_NO_PAD.encode(format!("{ns}|{channel}|{peer}"))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut parts = raw.splitn(3, '|');
        let ns = parts.next()?.parse::<i128>().ok()?;
        let (channel, peer) = (parts.next()?.to_owned(), parts.next()?.to_owned());
        Some(Self((Reverse(ns), channel, peer)))
    }
}

/// One page, newest first.
#[derive(Debug)]
pub struct Page {
    pub conversations: Vec<ConversationSummary>,
    pub next_cursor: Option<Cursor>,
    /// Conversations that match the filters, over all pages.
    pub total: usize,
}

/// The in-memory conversation list, fed by [`ConversationIndex::follow`].
pub struct ConversationIndex {
    inner: RwLock<Inner>,
    loaded: watch::Sender<bool>,
    applied_seq: watch::Sender<u64>,
    /// Conversations quiet longer than this are dropped (the history's max age).
    retention: Duration,
    max_entries: usize,
    /// Whether the size bound has dropped a conversation yet (warned once).
    evicted: std::sync::atomic::AtomicBool,
}

impl Default for ConversationIndex {
    /// The history stream's default retention and [`MAX_ENTRIES`].
    fn default() -> Self {
        Self::new(smsgate_shared::topology::Topology::new("smsgate").history_max_age, MAX_ENTRIES)
    }
}

fn sort_key(summary: &ConversationSummary) -> Order {
    let ns = summary.last_at.map_or(i128::MIN, OffsetDateTime::unix_timestamp_nanos);
    (Reverse(ns), summary.channel_id.clone(), summary.peer.clone())
}

impl ConversationIndex {
    /// An empty index that keeps conversations active within `retention`,
    /// at most `max_entries` of them.
    pub fn new(retention: Duration, max_entries: usize) -> Self {
        // The gauge is there from the start, not from the first prune: a
        // scrape right after start sees the (empty) index, not no gauge.
        metrics::gauge!(ENTRIES_GAUGE).set(0.0);
        Self {
            inner: RwLock::new(Inner::default()),
            loaded: watch::Sender::new(false),
            applied_seq: watch::Sender::new(0),
            retention,
            max_entries: max_entries.max(1),
            evicted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Drops the conversations quiet for longer than the retention at
    /// `now`, then the quietest ones past the size bound; sets the gauge.
    pub fn prune(&self, now: OffsetDateTime) {
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.prune_locked(&mut inner, now);
    }

    fn prune_locked(&self, inner: &mut Inner, now: OffsetDateTime) {
        let cutoff = time::Duration::try_from(self.retention)
            .ok()
            .and_then(|r| now.checked_sub(r))
            .map_or(i128::MIN, OffsetDateTime::unix_timestamp_nanos);
        let mut over_size = 0usize;
        // The set is newest first: the quietest conversation is the last.
        while let Some((Reverse(ns), _, _)) = inner.order.last() {
            let expired = *ns < cutoff;
            if !expired && inner.order.len() <= self.max_entries {
                break;
            }
            if let Some((_, channel, peer)) = inner.order.pop_last() {
                inner.by_key.remove(&(channel, peer));
            }
            if !expired {
                over_size += 1;
            }
        }
        if over_size > 0 && !self.evicted.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                service = "ingress",
                stage = "admin",
                max_entries = self.max_entries,
                "conversation index: more conversations than it keeps; the quietest leave the list (their history stays)"
            );
        }
        metrics::gauge!(ENTRIES_GAUGE).set(inner.by_key.len() as f64);
    }

    /// Folds one stored history entry in (`stored`: when the stream stored
    /// it, which orders the list). Entries at or below the last applied
    /// sequence are ignored (a remade consumer may repeat some).
    pub fn apply(&self, seq: u64, stored: OffsetDateTime, entry: &HistoryEntry) {
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seq != 0 && seq <= inner.applied {
            return;
        }
        inner.applied = inner.applied.max(seq);
        let key = (entry.channel_id.to_string(), entry.peer.to_string());
        let old = inner.by_key.get(&key).cloned();
        let mut summary = old.clone().unwrap_or_else(|| ConversationSummary {
            channel_id: key.0.clone(),
            peer: key.1.clone(),
            count: 0,
            messages: 0,
            last_at: None,
            last_message: None,
        });
        summary.count += 1;
        summary.last_at = Some(summary.last_at.map_or(stored, |t| t.max(stored)));
        let message = match &entry.event {
            HistoryEvent::Inbound { body, media, .. } => Some(("inbound", body, media.len())),
            HistoryEvent::Outbound { body, .. } => Some(("outbound", body, 0)),
            HistoryEvent::CallTurn { heard, .. } => Some(("call", heard, 0)),
            HistoryEvent::Status { .. }
            | HistoryEvent::Note { .. }
            | HistoryEvent::Call { .. }
            | HistoryEvent::Cost { .. } => None,
        };
        if let Some((direction, body, media)) = message {
            summary.messages += 1;
            if summary.last_message.as_ref().is_none_or(|m| m.at <= entry.at) {
                summary.last_message = Some(LastMessage {
                    direction: direction.to_owned(),
                    body: clip(body, PREVIEW_CHARS).into_owned(),
                    media,
                    at: entry.at,
                });
            }
        }
        if let HistoryEvent::Call { call_sid, .. } | HistoryEvent::CallTurn { call_sid, .. } = &entry.event
            && !inner.calls.contains_key(call_sid)
        {
            inner.calls.insert(call_sid.clone(), key.clone());
            inner.call_order.push_back(call_sid.clone());
            if inner.call_order.len() > MAX_CALLS
                && let Some(gone) = inner.call_order.pop_front()
            {
                inner.calls.remove(&gone);
            }
        }
        if let Some(old) = &old {
            inner.order.remove(&sort_key(old));
        }
        inner.order.insert(sort_key(&summary));
        inner.by_key.insert(key, summary);
        self.prune_locked(&mut inner, OffsetDateTime::now_utc());
        let applied = inner.applied;
        drop(inner);
        self.applied_seq.send_replace(applied);
    }

    /// The conversation (channel, peer) of a call the index has seen.
    pub fn call(&self, call_sid: &str) -> Option<(String, String)> {
        let inner = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.calls.get(call_sid).cloned()
    }

    /// Waits up to `within` until entries through `seq` are folded in, so a
    /// list answers with what was recorded before it was asked for.
    pub async fn wait_applied(&self, seq: u64, within: Duration) -> bool {
        let mut rx = self.applied_seq.subscribe();
        tokio::time::timeout(within, rx.wait_for(|applied| *applied >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    /// The last `P_HISTORY` sequence folded in.
    pub fn applied(&self) -> u64 {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).applied
    }

    /// Marks the first read of the stream as done.
    pub fn set_loaded(&self) {
        self.loaded.send_replace(true);
    }

    /// Waits up to `within` for the first read of the stream.
    pub async fn wait_loaded(&self, within: Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        tokio::time::timeout(within, rx.wait_for(|loaded| *loaded)).await.is_ok_and(|r| r.is_ok())
    }

    /// Conversations known, over every channel.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One page, newest first, after `query.cursor`.
    pub fn page(&self, query: &PageQuery<'_>) -> Page {
        let inner = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let q = query.q.map(|q| q.trim().trim_start_matches('+')).filter(|q| !q.is_empty());
        let matches = |(_, channel, peer): &Order| {
            query.channel.is_none_or(|c| c == channel) && q.is_none_or(|q| peer.contains(q))
        };
        let total = if query.channel.is_none() && q.is_none() {
            inner.order.len()
        } else {
            inner.order.iter().filter(|k| matches(k)).count()
        };
        let after = match &query.cursor {
            Some(Cursor(key)) => {
                inner.order.range((std::ops::Bound::Excluded(key.clone()), std::ops::Bound::Unbounded))
            }
            None => inner.order.range::<Order, _>(..),
        };
        let mut conversations = Vec::with_capacity(query.limit.min(256));
        let mut last = None;
        let mut more = false;
        for key in after.filter(|k| matches(k)) {
            if conversations.len() == query.limit {
                more = true;
                break;
            }
            if let Some(summary) = inner.by_key.get(&(key.1.clone(), key.2.clone())) {
                conversations.push(summary.clone());
                last = Some(key.clone());
            }
        }
        Page { conversations, next_cursor: if more { last.map(Cursor) } else { None }, total }
    }

    /// Follows `P_HISTORY` until `shutdown`: the whole stream once, then
    /// every new entry. Made again from the last applied sequence whenever
    /// the consumer fails (NATS down, the stream not yet made).
    pub async fn follow(self: Arc<Self>, js: jetstream::Context, topology: Topology, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.follow_once(&js, &topology, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(
                        service = "ingress",
                        stage = "admin",
                        error = %e,
                        applied = self.applied(),
                        "conversation index: reading history failed; trying again"
                    );
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow_once(
        &self,
        js: &jetstream::Context,
        topology: &Topology,
        shutdown: &CancellationToken,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let stream = js.get_stream(topology.history_stream()).await?;
        let from = self.applied() + 1;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: topology.history_filter(None),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
                ..Default::default()
            })
            .await?;
        if consumer.cached_info().num_pending == 0 {
            self.mark_loaded();
        }
        let mut messages = consumer.messages().await?;
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = prune.tick() => {
                    self.prune(OffsetDateTime::now_utc());
                    continue;
                }
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the history consumer ended".into()),
            };
            let info = message.info()?;
            let (seq, pending, stored) = (info.stream_sequence, info.pending, info.published);
            match envelope::decode::<HistoryEntry>(&message.payload) {
                Ok(entry) => self.apply(seq, stored, &entry),
                Err(e) => {
                    tracing::warn!(service = "ingress", stage = "admin", seq, error = %e, "conversation index: skipping an entry this build cannot read");
                }
            }
            if pending == 0 {
                self.mark_loaded();
            }
        }
    }

    fn mark_loaded(&self) {
        if !*self.loaded.borrow() {
            tracing::info!(
                service = "ingress",
                stage = "admin",
                conversations = self.len(),
                applied = self.applied(),
                "conversation index loaded"
            );
            self.set_loaded();
        }
    }
}

#[cfg(test)]
mod tests {
    use smsgate_shared::domain::{ChannelId, E164, MessageSid};

    use super::*;

    fn entry(channel: &str, peer: &str, at_s: i64, body: &str) -> HistoryEntry {
        HistoryEntry {
            v: 1,
            channel_id: ChannelId::parse(channel).unwrap(),
            peer: E164::parse(peer).unwrap(),
            at: OffsetDateTime::from_unix_timestamp(at_s).unwrap(),
            event: HistoryEvent::Inbound {
                message_sid: MessageSid::parse(&format!("SM{:032x}", at_s)).unwrap(),
                body: body.to_owned(),
                media: Vec::new(),
            },
        }
    }

    fn index_of(n: usize) -> ConversationIndex {
        // Entries of 1970: a retention that keeps them.
        let index = ConversationIndex::new(Duration::from_secs(100 * 366 * 86_400), MAX_ENTRIES);
        for i in 0..n {
            let e = entry("c1", &format!("+1415555{:04}", i), 1_000 + i as i64, "hi");
            index.apply(i as u64 + 1, e.at, &e);
        }
        index
    }

    #[test]
    fn pages_walk_every_conversation_once_newest_first() {
        let index = index_of(25);
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = index.page(&PageQuery { limit: 10, cursor: cursor.clone(), ..Default::default() });
            assert_eq!(page.total, 25);
            seen.extend(page.conversations.iter().map(|c| c.peer.clone()));
            match page.next_cursor {
                Some(c) => cursor = Some(Cursor::decode(&c.encode()).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        assert_eq!(seen[0], "+14155550024");
        assert_eq!(seen[24], "+14155550000");
    }

    #[test]
    fn a_new_entry_moves_its_conversation_to_the_top_and_repeats_are_ignored() {
        let index = index_of(3);
        let newer = entry("c1", "+14155550000", 5_000, "again");
        index.apply(10, newer.at, &newer);
        index.apply(10, newer.at, &newer);
        let page = index.page(&PageQuery { limit: 10, ..Default::default() });
        assert_eq!(page.conversations[0].peer, "+14155550000");
        assert_eq!(page.conversations[0].count, 2);
        assert_eq!(page.conversations[0].last_message.as_ref().unwrap().body, "again");
        assert_eq!(page.total, 3);
    }

    #[test]
    fn conversations_past_retention_leave_and_the_size_is_bounded() {
        let index = ConversationIndex::new(Duration::from_secs(3600), 3);
        let now = OffsetDateTime::now_utc();
        let at = |secs_ago: i64| now - time::Duration::seconds(secs_ago);
        let old = entry("c1", "+14155550900", 1, "long ago");
        index.apply(1, at(7200), &old);
        assert_eq!(index.len(), 0, "quiet for longer than the retention: dropped");
        for i in 0..5 {
            let e = entry("c1", &format!("+1415555091{i}"), 10 + i, "hi");
            index.apply(10 + i as u64, at(600 - i), &e);
        }
        assert_eq!(index.len(), 3, "bounded");
        let page = index.page(&PageQuery { limit: 10, ..Default::default() });
        let peers: Vec<&str> = page.conversations.iter().map(|c| c.peer.as_str()).collect();
        assert_eq!(peers, ["+14155550914", "+14155550913", "+14155550912"], "the quietest left");
        index.prune(now + time::Duration::seconds(3600));
        assert_eq!(index.len(), 0, "all quiet for an hour since");
    }

    #[test]
    fn search_and_channel_filter() {
        let index = index_of(12);
        let uk = entry("c2", "+442071234567", 9_000, "uk");
        index.apply(100, uk.at, &uk);
        let page = index.page(&PageQuery { q: Some("+1415555001"), limit: 50, ..Default::default() });
        assert_eq!(page.total, 2, "+14155550010 and +14155550011");
        let page = index.page(&PageQuery { channel: Some("c2"), limit: 50, ..Default::default() });
        assert_eq!(page.conversations.len(), 1);
        assert_eq!(page.conversations[0].peer, "+442071234567");
        assert!(Cursor::decode("not a cursor").is_none());
    }
}
