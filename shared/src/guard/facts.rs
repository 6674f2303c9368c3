//! What the guard knows about a recipient, read from NATS: the opt-out and
//! consent buckets, the conversation's pause, the recipient's recent agent
//! texts (a compare-and-set list in `P_budget`, so the cap holds across
//! senders), and their last inbound from the conversation's history.

use std::time::Duration as StdDuration;

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{ConsentKind, Facts};
use crate::cas::{Cas, CasError, Write};
use crate::domain::{ChannelId, E164};
use crate::envelope::{self, ConversationState, HistoryEntry, HistoryEvent};
use crate::topology::{Bus, Topology};

/// Each NATS read of the guard is bounded by this.
const READ_TIMEOUT: StdDuration = StdDuration::from_secs(5);
/// History entries read at most when looking for an inbound.
const MAX_SCAN: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("cannot {what}")]
    Nats {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot {what}: no answer from NATS within {READ_TIMEOUT:?}")]
    Timeout { what: &'static str },
    #[error(transparent)]
    Cas(#[from] CasError),
}

fn nats(what: &'static str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> FactsError {
    move |source| FactsError::Nats { what, source }
}

async fn bounded<T, E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, FactsError> {
    match tokio::time::timeout(READ_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| nats(what)(Box::new(e))),
        Err(_) => Err(FactsError::Timeout { what }),
    }
}

/// A consent record in `P_consent` (key `<channel>.<digits>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentRecord {
    #[serde(default = "v1")]
    pub v: u32,
    pub kind: ConsentKind,
    /// Where it was given ("web form", "START keyword", …).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

fn v1() -> u32 {
    envelope::VERSION
}

/// One agent-initiated text counted against the recipient's cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counted {
    id: String,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
}

/// The buckets and stream the guard reads.
#[derive(Clone)]
pub struct GuardStore {
    js: jetstream::Context,
    topology: Topology,
    optout: kv::Store,
    consent: kv::Store,
    conversations: kv::Store,
    budget: kv::Store,
    cas: std::sync::Arc<Cas>,
}

/// Whether the cap let a text through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Counted now (or already counted under the same id: a redelivery).
    Counted,
    /// The recipient is at the cap.
    Full,
}

impl GuardStore {
    pub fn new(bus: &Bus) -> Self {
        Self {
            js: bus.js.clone(),
            topology: bus.topology.clone(),
            optout: bus.optout.clone(),
            consent: bus.consent.clone(),
            conversations: bus.conversations.clone(),
            budget: bus.budget.clone(),
            cas: std::sync::Arc::new(Cas::new(bus.budget.clone())),
        }
    }

    /// Opens the buckets by name (the admin side, which holds no [`Bus`]).
    pub async fn open(js: &jetstream::Context, topology: &Topology) -> Result<Self, FactsError> {
        let open = |name: String| {
            let js = js.clone();
            async move { bounded("open a key-value bucket", js.get_key_value(name)).await }
        };
        let budget = open(topology.budget_bucket()).await?;
        Ok(Self {
            js: js.clone(),
            topology: topology.clone(),
            optout: open(topology.optout_bucket()).await?,
            consent: open(topology.consent_bucket()).await?,
            conversations: open(topology.conversations_bucket()).await?,
            cas: std::sync::Arc::new(Cas::new(budget.clone())),
            budget,
        })
    }

    pub fn optout_store(&self) -> &kv::Store {
        &self.optout
    }

    pub fn consent_store(&self) -> &kv::Store {
        &self.consent
    }

    /// The consent on record for `to` on `channel`.
    pub async fn consent(&self, channel: &ChannelId, to: &E164) -> Result<Option<ConsentRecord>, FactsError> {
        let key = Topology::consent_key(channel, to);
        let value = bounded("read the consent bucket", self.consent.get(&key)).await?;
        // An unreadable record grants nothing.
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Everything [`super::decide`] needs about `to`, as of `at`. `own_id`:
    /// the text's own id, not counted against the cap (a redelivery).
    pub async fn facts(
        &self,
        channel: &ChannelId,
        to: &E164,
        window_hours: u32,
        at: OffsetDateTime,
        own_id: Option<&str>,
    ) -> Result<Facts, FactsError> {
        let key = Topology::optout_key(channel, to);
        let opted_out = bounded("read the opt-out bucket", self.optout.get(&key)).await?.is_some();
        let consent = self.consent(channel, to).await?.map(|r| r.kind);
        let conversation =
            bounded("read the conversations bucket", self.conversations.get(Topology::conversation_key(channel, to)))
                .await?;
        let paused_until = conversation
            .and_then(|v| serde_json::from_slice::<ConversationState>(&v).ok())
            .map(|s| s.paused_until)
            .filter(|until| *until > OffsetDateTime::now_utc().min(at));
        let sent_last_24h = self.sent_last_24h(channel, to, at, own_id).await?;
        let since = at.min(OffsetDateTime::now_utc()) - Duration::hours(i64::from(window_hours));
        let (last_inbound, ever_inbound) = self.inbound(channel, to, since, consent.is_none()).await?;
        // The budget is the channel's, not the recipient's: `GuardStore::budget_exceeded`.
        Ok(Facts {
            opted_out,
            consent,
            last_inbound,
            ever_inbound,
            paused_until,
            sent_last_24h,
            budget_exceeded: false,
        })
    }

    async fn sent_last_24h(
        &self,
        channel: &ChannelId,
        to: &E164,
        at: OffsetDateTime,
        own_id: Option<&str>,
    ) -> Result<u32, FactsError> {
        let key = Topology::agent_sends_key(channel, to);
        let value = bounded("read the recipient's agent texts", self.budget.get(&key)).await?;
        let list: Vec<Counted> = value.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default();
        Ok(list.iter().filter(|c| c.at > at - Duration::hours(24) && Some(c.id.as_str()) != own_id).count() as u32)
    }

    /// Whether `channel` has spent its `limits.usd_per_day` today.
    pub async fn budget_exceeded(&self, channel: &crate::config::Channel) -> Result<bool, FactsError> {
        let spend = crate::cost::DailySpend::new(self.cas.clone());
        Ok(spend.exceeded(channel, std::time::SystemTime::now()).await?)
    }

    /// Counts text `id` against `to`'s cap of `cap` per 24 h, atomically
    /// across processes; a repeat of the same id is counted once.
    pub async fn claim(
        &self,
        channel: &ChannelId,
        to: &E164,
        id: &str,
        cap: u32,
        at: OffsetDateTime,
    ) -> Result<Claim, FactsError> {
        let key = Topology::agent_sends_key(channel, to);
        let claim = self
            .cas
            .update(&key, |value| {
                let mut list: Vec<Counted> = value.and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
                list.retain(|c| c.at > at - Duration::hours(24));
                if list.iter().any(|c| c.id == id) {
                    return (Write::Keep, Claim::Counted);
                }
                if list.len() as u32 >= cap {
                    return (Write::Keep, Claim::Full);
                }
                list.push(Counted { id: id.to_owned(), at });
                (Write::Put(serde_json::to_vec(&list).unwrap_or_default().into()), Claim::Counted)
            })
            .await?;
        Ok(claim)
    }

    /// The time of `to`'s last inbound since `since`, and whether they ever
    /// texted or called (looked up only when `need_ever` and nothing recent
    /// was found), from the conversation's history.
    async fn inbound(
        &self,
        channel: &ChannelId,
        to: &E164,
        since: OffsetDateTime,
        need_ever: bool,
    ) -> Result<(Option<OffsetDateTime>, bool), FactsError> {
        let subject = self.topology.history_subject(channel, to);
        let stream = bounded("open the history stream", self.js.get_stream(self.topology.history_stream())).await?;
        let recent = scan(&stream, &subject, consumer::DeliverPolicy::ByStartTime { start_time: since }, false).await?;
        if recent.is_some() {
            return Ok((recent, true));
        }
        if !need_ever {
            return Ok((None, false));
        }
        let ever = scan(&stream, &subject, consumer::DeliverPolicy::All, true).await?;
        Ok((None, ever.is_some()))
    }
}

/// Whether a history entry is the person reaching the channel.
fn is_inbound(entry: &HistoryEntry) -> bool {
    match &entry.event {
        HistoryEvent::Inbound { .. } => true,
        HistoryEvent::CallTurn { heard, .. } => !heard.trim().is_empty(),
        HistoryEvent::Call { direction, .. } => direction == "inbound",
        _ => false,
    }
}

/// The time of the last inbound entry on `subject` from `policy` on (the
/// first one found when `first`).
async fn scan(
    stream: &jetstream::stream::Stream,
    subject: &str,
    policy: consumer::DeliverPolicy,
    first: bool,
) -> Result<Option<OffsetDateTime>, FactsError> {
    let consumer = bounded(
        "read the conversation's history",
        stream.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: policy,
            ..Default::default()
        }),
    )
    .await?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(None);
    }
    let mut messages = bounded("read the conversation's history", consumer.messages()).await?;
    let mut last = None;
    for _ in 0..MAX_SCAN {
        let message = match tokio::time::timeout(READ_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(nats("read the conversation's history")(Box::new(e))),
            Ok(None) => break,
            Err(_) => return Err(FactsError::Timeout { what: "read the conversation's history" }),
        };
        if let Ok(entry) = envelope::decode::<HistoryEntry>(&message.payload)
            && is_inbound(&entry)
        {
            last = Some(entry.at);
            if first {
                break;
            }
        }
        if message.info().map(|i| i.pending == 0).unwrap_or(true) {
            break;
        }
    }
    Ok(last)
}
