//! The JetStream topology of docs/ARCHITECTURE.md, in one place: stream and bucket
//! names, subjects, and [`Topology::ensure`], which creates all of them
//! idempotently.
//!
//! Key-value buckets are created as their backing `KV_<bucket>` streams and
//! then opened with `get_key_value`, because `create_key_value` needs
//! nats-server 2.10 and smsgate must run on Debian's 2.9.

use std::time::Duration;

use async_nats::jetstream::{
    self, kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::domain::{ChannelId, E164};

/// How long processed MessageSids are remembered (≥ 24 h by contract).
pub const SEEN_TTL: Duration = Duration::from_secs(7 * 86_400);
/// How long a piece's Twilio SID is remembered (≥ 48 h by contract).
pub const SENT_TTL: Duration = Duration::from_secs(7 * 86_400);
/// How long reply counters live: a day's window and some margin.
pub const BUDGET_TTL: Duration = Duration::from_secs(2 * 86_400);
/// How long a call turn's reply is kept (contract: `P_calls` max age 1 h).
pub const CALLS_TTL: Duration = Duration::from_secs(3600);
/// How long dead letters are kept.
pub const DEAD_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);

/// Names and subjects under one prefix (`SMSGATE_NATS_PREFIX`).
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    upper: String,
    pub duplicate_window: Duration,
    pub history_per_peer: i64,
    pub history_max_age: Duration,
    /// Replicas of every stream and bucket (`SMSGATE_NATS_REPLICAS`).
    pub replicas: usize,
}

/// The three work-queue streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkQueue {
    Inbound,
    Outbound,
    Status,
}

impl WorkQueue {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Status => "status",
        }
    }
}

/// The processing stage a dead letter comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Worker,
    Sender,
    Status,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Worker => "worker",
            Stage::Sender => "sender",
            Stage::Status => "status",
        }
    }
}

/// A channel's work-queue subjects, built once when the channel is loaded
/// so the webhook path formats nothing.
#[derive(Debug, Clone)]
pub struct ChannelSubjects {
    pub inbound: String,
    pub status: String,
}

impl ChannelSubjects {
    pub fn new(topology: &Topology, channel: &ChannelId) -> Self {
        Self { inbound: topology.inbound_subject(channel), status: topology.status_subject(channel) }
    }
}

/// Everything [`Topology::ensure`] opened, ready to use.
#[derive(Clone)]
pub struct Bus {
    pub js: jetstream::Context,
    pub topology: Topology,
    pub seen: kv::Store,
    pub optout: kv::Store,
    pub sent: kv::Store,
    /// Reply counters per channel and window (the worker's `limits`).
    pub budget: kv::Store,
    /// Per-conversation state: the bot paused (human takeover).
    pub conversations: kv::Store,
    /// Channels connected at run time, secrets sealed (`crate::channels`).
    pub channels: kv::Store,
    /// Voice: each call turn's reply, read by ingress to answer Twilio.
    pub calls: kv::Store,
    /// Consent on record per channel and number (the guard).
    pub consent: kv::Store,
    /// Scheduled and deferred texts and calls, due-indexed (`crate::schedule`).
    pub schedule: kv::Store,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            upper: prefix.to_uppercase(),
            duplicate_window: Duration::from_secs(600),
            history_per_peer: 1000,
            history_max_age: Duration::from_secs(90 * 86_400),
            replicas: 1,
        }
    }

    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            duplicate_window: s.duplicate_window,
            history_per_peer: s.history_per_peer,
            history_max_age: s.history_max_age,
            replicas: s.nats.replicas,
            ..Self::new(&s.nats_prefix)
        }
    }

    /// The same names with `replicas` replicas per stream and bucket.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn inbound_stream(&self) -> String {
        format!("{}_INBOUND", self.upper)
    }
    pub fn outbound_stream(&self) -> String {
        format!("{}_OUTBOUND", self.upper)
    }
    pub fn status_stream(&self) -> String {
        format!("{}_STATUS", self.upper)
    }
    pub fn history_stream(&self) -> String {
        format!("{}_HISTORY", self.upper)
    }
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.upper)
    }
    pub fn seen_bucket(&self) -> String {
        format!("{}_seen", self.upper)
    }
    pub fn optout_bucket(&self) -> String {
        format!("{}_optout", self.upper)
    }
    pub fn sent_bucket(&self) -> String {
        format!("{}_sent", self.upper)
    }
    pub fn conversations_bucket(&self) -> String {
        format!("{}_conversations", self.upper)
    }
    pub fn budget_bucket(&self) -> String {
        format!("{}_budget", self.upper)
    }
    pub fn channels_bucket(&self) -> String {
        format!("{}_channels", self.upper)
    }
    pub fn calls_bucket(&self) -> String {
        format!("{}_calls", self.upper)
    }
    pub fn consent_bucket(&self) -> String {
        format!("{}_consent", self.upper)
    }
    pub fn schedule_bucket(&self) -> String {
        format!("{}_schedule", self.upper)
    }

    pub fn inbound_subject(&self, channel: &ChannelId) -> String {
        format!("{}.inbound.{channel}", self.prefix)
    }
    pub fn outbound_subject(&self, channel: &ChannelId) -> String {
        format!("{}.outbound.{channel}", self.prefix)
    }
    pub fn status_subject(&self, channel: &ChannelId) -> String {
        format!("{}.status.{channel}", self.prefix)
    }
    /// `P.history.<channel_id>.<e164 digits>`: one subject per conversation,
    /// so a conversation is read without scanning the others.
    pub fn history_subject(&self, channel: &ChannelId, peer: &E164) -> String {
        format!("{}.history.{channel}.{}", self.prefix, peer.subject_token())
    }
    /// All conversations (`channel` = None) or one channel's.
    pub fn history_filter(&self, channel: Option<&ChannelId>) -> String {
        match channel {
            Some(c) => format!("{}.history.{c}.*", self.prefix),
            None => format!("{}.history.>", self.prefix),
        }
    }
    /// Splits a history subject back into channel and peer.
    pub fn parse_history_subject(&self, subject: &str) -> Option<(ChannelId, E164)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".history.")?;
        let (channel, peer) = rest.split_once('.')?;
        Some((ChannelId::parse(channel).ok()?, E164::from_subject_token(peer).ok()?))
    }
    pub fn dead_subject(&self, stage: Stage, channel: &ChannelId) -> String {
        format!("{}.dead.{}.{channel}", self.prefix, stage.as_str())
    }
    /// Every dead letter (`channel` = None) or one channel's, of any stage.
    pub fn dead_filter(&self, channel: Option<&ChannelId>) -> String {
        match channel {
            Some(c) => format!("{}.dead.*.{c}", self.prefix),
            None => format!("{}.dead.>", self.prefix),
        }
    }
    /// The subjects of a work queue's stream: what its durable consumer takes.
    pub fn work_filter(&self, queue: WorkQueue) -> String {
        format!("{}.{}.>", self.prefix, queue.as_str())
    }
    /// The channel of a work-queue subject of this prefix (where a dead
    /// letter may be replayed), or None for any other subject.
    pub fn parse_work_subject(&self, subject: &str) -> Option<(WorkQueue, ChannelId)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let (queue, channel) = rest.split_once('.')?;
        let queue =
            [WorkQueue::Inbound, WorkQueue::Outbound, WorkQueue::Status].into_iter().find(|q| q.as_str() == queue)?;
        Some((queue, ChannelId::parse(channel).ok()?))
    }

    /// Key in the `seen` bucket for an inbound MessageSid.
    pub fn seen_key(sid: &crate::domain::MessageSid) -> String {
        sid.to_string()
    }
    /// Key in the `calls` bucket for the reply of a call's turn `n`:
    /// `<CallSid>.<n>`.
    pub fn call_key(call_sid: &crate::domain::CallSid, turn: u32) -> String {
        format!("{call_sid}.{turn}")
    }
    /// `P.voice.tokens.<CallSid>.<n>`: a relay turn's answer, token by token
    /// (core NATS, not stored; worker → ingress).
    pub fn voice_tokens_subject(&self, call_sid: &crate::domain::CallSid, turn: u32) -> String {
        format!("{}.voice.tokens.{call_sid}.{turn}", self.prefix)
    }
    /// `P.voice.cancel.<CallSid>.<n>`: a relay turn cancelled (core NATS;
    /// ingress → worker).
    pub fn voice_cancel_subject(&self, call_sid: &crate::domain::CallSid, turn: u32) -> String {
        format!("{}.voice.cancel.{call_sid}.{turn}", self.prefix)
    }
    /// Key in the `conversations` bucket for a conversation (the same shape
    /// as an opt-out key: `<channel>.<digits>`).
    pub fn conversation_key(channel: &ChannelId, peer: &E164) -> String {
        format!("{channel}.{}", peer.subject_token())
    }
    /// Key in the `optout` bucket for a number on a channel.
    pub fn optout_key(channel: &ChannelId, peer: &E164) -> String {
        format!("{channel}.{}", peer.subject_token())
    }
    /// Key in the `consent` bucket for a number on a channel.
    pub fn consent_key(channel: &ChannelId, peer: &E164) -> String {
        format!("{channel}.{}", peer.subject_token())
    }
    /// Key in the `budget` bucket for the agent-initiated texts a number got
    /// in the last 24 h (the guard's per-recipient cap; `agent` is never a
    /// window or `rate`, so never another counter's key).
    pub fn agent_sends_key(channel: &ChannelId, peer: &E164) -> String {
        format!("{channel}.agent.{}", peer.subject_token())
    }
    /// Key in the `budget` bucket: replies of `channel` in one window
    /// (`m<unix minute>` or `d<unix day>`). One counter per channel and
    /// window, shared by every worker, so `limits` hold across processes.
    pub fn budget_key(channel: &ChannelId, window: &str) -> String {
        format!("{channel}.{window}")
    }
    /// Key in the `budget` bucket: what `channel` spent in UTC day `day`,
    /// in millionths of a USD (`usd.<day>`: `usd` is never a window, `rate`,
    /// `agent` or a number, so never another counter's key).
    pub fn spend_key(channel: &ChannelId, day: u64) -> String {
        format!("{channel}.usd.{day}")
    }
    /// Key in the `budget` bucket for the rate-limit state of a sender on
    /// a channel (three tokens, so never a window counter's key).
    pub fn rate_key(channel: &ChannelId, from: &E164) -> String {
        format!("{channel}.rate.{}", from.subject_token())
    }
    /// Key in the `budget` bucket for the next free send slot of a sending
    /// number or messaging service (`pace.<sender>.next`: its last token is
    /// never a number, so never a rate key).
    pub fn pace_key(sender: &str) -> String {
        let token: String = sender.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).collect();
        let token = if token.is_empty() { "_" } else { token.as_str() };
        format!("pace.{token}.next")
    }

    fn stream_configs(&self) -> Vec<stream::Config> {
        let work_queue = |name: String, what: &str| stream::Config {
            name,
            num_replicas: self.replicas,
            subjects: vec![format!("{}.{what}.>", self.prefix)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            duplicate_window: self.duplicate_window,
            description: Some(format!("smsgate {what} work queue")),
            ..Default::default()
        };
        vec![
            work_queue(self.inbound_stream(), "inbound"),
            work_queue(self.outbound_stream(), "outbound"),
            work_queue(self.status_stream(), "status"),
            stream::Config {
                name: self.history_stream(),
                num_replicas: self.replicas,
                subjects: vec![format!("{}.history.>", self.prefix)],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                max_messages_per_subject: self.history_per_peer,
                max_age: self.history_max_age,
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                description: Some("smsgate conversation history".to_owned()),
                ..Default::default()
            },
            stream::Config {
                name: self.dead_stream(),
                num_replicas: self.replicas,
                subjects: vec![format!("{}.dead.>", self.prefix)],
                retention: RetentionPolicy::Limits,
                storage: StorageType::File,
                max_age: DEAD_MAX_AGE,
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                description: Some("smsgate dead letters".to_owned()),
                ..Default::default()
            },
        ]
    }

    /// Every key-value bucket with its max age, in the order of [`Bus`]'s
    /// fields: what `ensure` creates and `present` looks for.
    fn buckets(&self) -> [(String, Duration); 9] {
        [
            (self.seen_bucket(), SEEN_TTL),
            (self.optout_bucket(), Duration::ZERO),
            (self.sent_bucket(), SENT_TTL),
            (self.budget_bucket(), BUDGET_TTL),
            (self.conversations_bucket(), Duration::ZERO),
            (self.channels_bucket(), Duration::ZERO),
            (self.calls_bucket(), CALLS_TTL),
            (self.consent_bucket(), Duration::ZERO),
            (self.schedule_bucket(), Duration::ZERO),
        ]
    }

    fn kv_config(&self, bucket: &str, max_age: Duration) -> stream::Config {
        stream::Config {
            num_replicas: self.replicas,
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            // The KV layer relies on these exactly as `create_key_value` sets them.
            allow_rollup: true,
            deny_delete: true,
            // Direct gets may be answered by any replica, and a node that has
            // just rejoined answers from what it has caught up on so far: a
            // stale `P_sent` would send a piece twice, a stale counter would
            // fail every compare-and-set. With replicas, reads go to the
            // stream's leader instead (docs/ARCHITECTURE.md §7).
            allow_direct: self.replicas <= 1,
            discard: DiscardPolicy::New,
            storage: StorageType::File,
            // A bucket's duplicate window must not exceed its max age.
            duplicate_window: if max_age.is_zero() {
                Duration::from_secs(120)
            } else {
                max_age.min(Duration::from_secs(120))
            },
            ..Default::default()
        }
    }

    /// Creates every stream and bucket that is missing (existing ones are
    /// left as they are) and opens the buckets.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<Bus, TopologyError> {
        for config in self.stream_configs() {
            self.ensure_stream(js, config).await?;
        }
        let mut stores = Vec::new();
        for (bucket, ttl) in self.buckets() {
            self.ensure_stream(js, self.kv_config(&bucket, ttl)).await?;
            let store = js
                .get_key_value(bucket.clone())
                .await
                .map_err(|e| TopologyError::Bucket { name: bucket, source: Box::new(e) })?;
            stores.push(store);
        }
        let mut stores = stores.into_iter();
        let mut next = || stores.next().ok_or(TopologyError::Internal);
        Ok(Bus {
            js: js.clone(),
            topology: self.clone(),
            seen: next()?,
            optout: next()?,
            sent: next()?,
            budget: next()?,
            conversations: next()?,
            channels: next()?,
            calls: next()?,
            consent: next()?,
            schedule: next()?,
        })
    }

    /// Creates a stream that is missing; brings an existing one to the
    /// replica count asked for (JetStream moves the data), or says what an
    /// operator must do where the server cannot.
    async fn ensure_stream(&self, js: &jetstream::Context, config: stream::Config) -> Result<(), TopologyError> {
        let name = config.name.clone();
        let wanted = config.num_replicas.max(1);
        let config_direct = config.allow_direct;
        // Services starting together race to create the same stream: the
        // loser's create can fail ("subjects overlap", seen on 2.9.10) while
        // the winner's is being applied. Look again before giving up.
        let mut attempt = 0;
        let mut stream = loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(stream) => break stream,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(stream = %name, attempt, error = %e, "cannot create or open the stream yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(TopologyError::Stream { name: name.clone(), source: Box::new(e) }),
            }
        };
        let info =
            stream.info().await.map_err(|e| TopologyError::Stream { name: name.clone(), source: Box::new(e) })?;
        let have = info.config.num_replicas.max(1);
        if have == wanted && info.config.allow_direct == config_direct {
            return Ok(());
        }
        let mut updated = info.config.clone();
        updated.num_replicas = wanted;
        updated.allow_direct = config_direct;
        match js.update_stream(updated).await {
            Ok(_) => tracing::info!(
                stream = %name,
                from = have,
                to = wanted,
                allow_direct = config_direct,
                outcome = "updated",
                "stream replicas changed"
            ),
            Err(e) => tracing::warn!(
                stream = %name,
                have,
                wanted,
                error = &e as &dyn std::error::Error,
                "cannot change the stream's replicas; run `nats stream edit {name} --replicas {wanted}` on a cluster \
                 with enough JetStream servers"
            ),
        }
        Ok(())
    }

    /// Whether every stream exists (for readiness checks).
    pub async fn present(&self, js: &jetstream::Context) -> bool {
        let mut names: Vec<String> = self.stream_configs().into_iter().map(|c| c.name).collect();
        // Every bucket `ensure` makes: ready must not be said while the
        // last ones (consent, schedule) are still being created.
        names.extend(self.buckets().map(|(b, _)| format!("KV_{b}")));
        for name in names {
            if js.get_stream(&name).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot create or open stream {name}")]
    Stream {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot open key-value bucket {name}")]
    Bucket {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("internal: bucket list out of step")]
    Internal,
}

/// Connects to the NATS server(s) at `url` without credentials (tests and
/// tools); services connect with [`crate::nats::connect`] and their settings.
pub async fn connect(url: &str, service: &str) -> Result<async_nats::Client, crate::nats::ConnectError> {
    crate::nats::connect(&crate::nats::NatsOptions::url(url), service).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_the_prefix_upper_cased_and_subjects_as_is() {
        let t = Topology::new("smsgate");
        assert_eq!(t.inbound_stream(), "SMSGATE_INBOUND");
        assert_eq!(t.seen_bucket(), "SMSGATE_seen");
        let c = ChannelId::parse("sms_prod").unwrap();
        let n = E164::parse("+14155550100").unwrap();
        assert_eq!(t.inbound_subject(&c), "smsgate.inbound.sms_prod");
        assert_eq!(t.history_subject(&c, &n), "smsgate.history.sms_prod.14155550100");
        assert_eq!(t.parse_history_subject("smsgate.history.sms_prod.14155550100"), Some((c.clone(), n)));
        assert_eq!(t.dead_subject(Stage::Sender, &c), "smsgate.dead.sender.sms_prod");
        assert_eq!(t.dead_filter(Some(&c)), "smsgate.dead.*.sms_prod");
        assert_eq!(t.work_filter(WorkQueue::Status), "smsgate.status.>");
        assert_eq!(t.parse_work_subject("smsgate.outbound.sms_prod"), Some((WorkQueue::Outbound, c.clone())));
        assert_eq!(t.parse_work_subject("smsgate.history.sms_prod.14155550100"), None);
        assert_eq!(t.parse_work_subject("other.inbound.sms_prod"), None);
    }
}
