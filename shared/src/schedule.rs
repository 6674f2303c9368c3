//! Texts and calls to send later: scheduled by the API (`send_at`) or
//! deferred by the guard (quiet hours), kept in KV `P_schedule` and fired by
//! [`Scheduler`], which every sender runs.
//!
//! One entry per outbound id. Firing is exactly once across schedulers and
//! restarts:
//! - a scheduler claims a due entry with compare-and-set (a lease of
//!   [`LEASE`]), so of several schedulers only one publishes it;
//! - it publishes the `Outbound` to `P_OUTBOUND` with a `Nats-Msg-Id` of
//!   the id and the due time ([`MsgId::Scheduled`]): a scheduler that died
//!   after publishing and before deleting the entry is covered by the
//!   stream's duplicate window when the lease runs out and another fires it
//!   again, and the sender's `P_sent` keys cover the rest;
//! - then deletes the entry (expecting its own revision).
//!
//! The entry is what `GET /api/v1/scheduled` lists and what `DELETE`
//! cancels (refused with "firing" while a lease is held). The sender runs
//! the guard again when the fired text reaches it.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration as StdDuration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tokio_util::sync::CancellationToken;

use crate::bus::{self, MsgId};
use crate::envelope::{self, Outbound};
use crate::topology::Topology;

/// How long a claim holds before another scheduler may fire the entry.
pub const LEASE: Duration = Duration::seconds(2);
/// A full re-read of the bucket this often, whatever the watch says.
const RESYNC: StdDuration = StdDuration::from_secs(30);
/// Each NATS call of the scheduler is bounded by this.
const NATS_TIMEOUT: StdDuration = StdDuration::from_secs(5);

/// Why an entry waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The request named `send_at`.
    Requested,
    /// The guard deferred it to the recipient's next allowed minute.
    QuietHours,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::QuietHours => "quiet_hours",
        }
    }
}

/// A scheduler's hold on an entry while it fires it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// An entry of `P_schedule` (key: the outbound id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduled {
    #[serde(default = "v1")]
    pub v: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub send_at: OffsetDateTime,
    pub why: Why,
    #[serde(with = "time::serde::rfc3339")]
    pub scheduled_at: OffsetDateTime,
    pub outbound: Outbound,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

fn v1() -> u32 {
    envelope::VERSION
}

impl Scheduled {
    pub fn new(outbound: Outbound, send_at: OffsetDateTime, why: Why) -> Self {
        Self { v: envelope::VERSION, send_at, why, scheduled_at: OffsetDateTime::now_utc(), outbound, lease: None }
    }

    pub fn id(&self) -> &str {
        self.outbound.id.as_str()
    }

    /// A lease held now.
    pub fn leased(&self, now: OffsetDateTime) -> bool {
        self.lease.as_ref().is_some_and(|l| l.until > now)
    }

    /// When a scheduler should look at it next.
    fn next_look(&self, now: OffsetDateTime) -> OffsetDateTime {
        match &self.lease {
            Some(l) if l.until > now => l.until,
            _ => self.send_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("cannot {what}")]
    Nats {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot {what}: no answer from NATS within {NATS_TIMEOUT:?}")]
    Timeout { what: &'static str },
}

async fn bounded<T, E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ScheduleError> {
    match tokio::time::timeout(NATS_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| ScheduleError::Nats { what, source: Box::new(e) }),
        Err(_) => Err(ScheduleError::Timeout { what }),
    }
}

/// What adding an entry did.
#[derive(Debug, Clone, PartialEq)]
pub enum Added {
    New,
    /// An entry with this id was there already (an idempotent repeat).
    Exists(Box<Scheduled>),
}

/// What canceling an entry did.
#[derive(Debug, Clone, PartialEq)]
pub enum Canceled {
    Canceled(Box<Scheduled>),
    NotFound,
    /// A scheduler is sending it right now.
    Firing,
}

/// The `P_schedule` bucket.
#[derive(Clone)]
pub struct Schedule {
    kv: kv::Store,
}

fn decode(value: &[u8]) -> Option<Scheduled> {
    envelope::decode(value).ok()
}

impl Schedule {
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Adds `entry` unless its id is there already.
    pub async fn add(&self, entry: &Scheduled) -> Result<Added, ScheduleError> {
        match tokio::time::timeout(NATS_TIMEOUT, self.kv.create(entry.id(), envelope::encode(entry))).await {
            Ok(Ok(_)) => Ok(Added::New),
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => match self.get(entry.id()).await? {
                Some((existing, _)) => Ok(Added::Exists(Box::new(existing))),
                // Deleted in between (it fired): take the new one as new.
                None => Ok(Added::New),
            },
            Ok(Err(e)) => Err(ScheduleError::Nats { what: "add to the schedule", source: Box::new(e) }),
            Err(_) => Err(ScheduleError::Timeout { what: "add to the schedule" }),
        }
    }

    /// Puts `entry` whatever was there (a deferral of a text that was
    /// already on its way: its id is not scheduled otherwise).
    pub async fn put(&self, entry: &Scheduled) -> Result<(), ScheduleError> {
        bounded("write the schedule", self.kv.put(entry.id(), envelope::encode(entry))).await.map(|_| ())
    }

    /// The entry `id` and its revision.
    pub async fn get(&self, id: &str) -> Result<Option<(Scheduled, u64)>, ScheduleError> {
        let entry = bounded("read the schedule", self.kv.entry(id)).await?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).and_then(|e| decode(&e.value).map(|s| (s, e.revision))))
    }

    /// Every entry, soonest first.
    pub async fn list(&self) -> Result<Vec<Scheduled>, ScheduleError> {
        let mut keys = bounded("list the schedule", self.kv.keys()).await?;
        let mut out = Vec::new();
        while let Some(key) = tokio::time::timeout(NATS_TIMEOUT, keys.next())
            .await
            .map_err(|_| ScheduleError::Timeout { what: "list the schedule" })?
        {
            let key = key.map_err(|e| ScheduleError::Nats { what: "list the schedule", source: Box::new(e) })?;
            if let Some((s, _)) = self.get(&key).await? {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.send_at.cmp(&b.send_at).then_with(|| a.id().cmp(b.id())));
        Ok(out)
    }

    /// Cancels `id` unless a scheduler is firing it.
    pub async fn cancel(&self, id: &str) -> Result<Canceled, ScheduleError> {
        let Some((entry, revision)) = self.get(id).await? else { return Ok(Canceled::NotFound) };
        if entry.leased(OffsetDateTime::now_utc()) {
            return Ok(Canceled::Firing);
        }
        match tokio::time::timeout(NATS_TIMEOUT, self.kv.delete_expect_revision(id, Some(revision))).await {
            Ok(Ok(())) => Ok(Canceled::Canceled(Box::new(entry))),
            // Changed in between: a scheduler claimed it, or it was canceled.
            Ok(Err(_)) => Ok(match self.get(id).await? {
                Some(_) => Canceled::Firing,
                None => Canceled::NotFound,
            }),
            Err(_) => Err(ScheduleError::Timeout { what: "cancel a scheduled message" }),
        }
    }
}

/// Fires due entries: every sender runs one.
pub struct Scheduler {
    schedule: Schedule,
    js: jetstream::Context,
    topology: Topology,
    /// This scheduler's name in leases.
    name: String,
}

impl Scheduler {
    pub fn new(schedule: Schedule, js: jetstream::Context, topology: Topology, name: String) -> Self {
        Self { schedule, js, topology, name }
    }

    /// Runs until `shutdown`: watches the bucket, keeps a due-index in
    /// memory (rebuilt from the bucket every [`RESYNC`]), fires what is due.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(e) = self.watch_and_fire(&shutdown).await {
                tracing::warn!(error = &e as &dyn std::error::Error, "scheduler: NATS failed; starting over");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(StdDuration::from_secs(1)) => {}
                }
            }
        }
    }

    async fn watch_and_fire(&self, shutdown: &CancellationToken) -> Result<(), ScheduleError> {
        // The watch first, then the read: nothing written in between is missed.
        let mut watch = bounded("watch the schedule", self.schedule.kv.watch_all()).await?;
        let mut index = DueIndex::default();
        for entry in self.schedule.list().await? {
            index.upsert(entry.id().to_owned(), entry.next_look(OffsetDateTime::now_utc()));
        }
        let resync_at = tokio::time::Instant::now() + RESYNC;
        loop {
            let now = OffsetDateTime::now_utc();
            while let Some(id) = index.pop_due(now) {
                if let Some(next) = self.fire(&id).await? {
                    index.upsert(id, next);
                }
            }
            let wait = index
                .next()
                .map_or(RESYNC, |t| StdDuration::try_from(t - OffsetDateTime::now_utc()).unwrap_or(StdDuration::ZERO));
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(resync_at) => return Ok(()),
                () = tokio::time::sleep(wait) => {}
                entry = watch.next() => match entry {
                    Some(Ok(e)) if e.operation == kv::Operation::Put => match decode(&e.value) {
                        Some(s) => index.upsert(e.key, s.next_look(OffsetDateTime::now_utc())),
                        None => tracing::warn!(key = %e.key, "scheduler: an unreadable entry; skipped"),
                    },
                    Some(Ok(e)) => index.remove(&e.key),
                    Some(Err(e)) => return Err(ScheduleError::Nats { what: "watch the schedule", source: Box::new(e) }),
                    None => return Ok(()),
                },
            }
        }
    }

    /// Fires entry `id` if it is due and free: claim, publish, delete.
    /// `Some(t)`: look again at `t` (another scheduler holds it).
    async fn fire(&self, id: &str) -> Result<Option<OffsetDateTime>, ScheduleError> {
        let now = OffsetDateTime::now_utc();
        let Some((mut entry, revision)) = self.schedule.get(id).await? else { return Ok(None) };
        if entry.send_at > now || entry.leased(now) {
            return Ok(Some(entry.next_look(now)));
        }
        entry.lease = Some(Lease { by: self.name.clone(), until: now + LEASE });
        let claimed =
            tokio::time::timeout(NATS_TIMEOUT, self.schedule.kv.update(id, envelope::encode(&entry), revision)).await;
        let revision = match claimed {
            Ok(Ok(rev)) => rev,
            // Another scheduler claimed it (or it was canceled): the watch
            // says what became of it.
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(None),
            Ok(Err(e)) => return Err(ScheduleError::Nats { what: "claim a scheduled message", source: Box::new(e) }),
            Err(_) => return Err(ScheduleError::Timeout { what: "claim a scheduled message" }),
        };
        let out = &entry.outbound;
        let subject = self.topology.outbound_subject(&out.channel_id);
        let msg_id = MsgId::Scheduled { id: out.id.as_str(), at: entry.send_at.unix_timestamp() };
        if let Err(e) = bus::publish(&self.js, subject, msg_id, envelope::encode(out)).await {
            // The lease runs out and it is fired again.
            tracing::warn!(error = &e as &dyn std::error::Error, outbound_id = %out.id, "scheduler: cannot publish; retrying after the lease");
            return Ok(Some(now + LEASE));
        }
        let late_ms = (OffsetDateTime::now_utc() - entry.send_at).whole_milliseconds();
        metrics::counter!("smsgate_scheduled_fired_total", "channel_id" => out.channel_id.to_string()).increment(1);
        tracing::info!(
            channel_id = %out.channel_id,
            outbound_id = %out.id,
            peer = %out.to.masked(),
            why = entry.why.as_str(),
            late_ms,
            outcome = "fired",
            "scheduled message put on the outbound stream"
        );
        if let Err(e) =
            tokio::time::timeout(NATS_TIMEOUT, self.schedule.kv.delete_expect_revision(id, Some(revision))).await
        {
            tracing::debug!(error = %e, "scheduler: entry changed before its delete");
        }
        Ok(None)
    }
}

/// Due times in memory: what to look at next.
#[derive(Default)]
struct DueIndex {
    by_time: BTreeSet<(OffsetDateTime, String)>,
    by_id: HashMap<String, OffsetDateTime>,
}

impl DueIndex {
    fn upsert(&mut self, id: String, at: OffsetDateTime) {
        if let Some(old) = self.by_id.insert(id.clone(), at) {
            self.by_time.remove(&(old, id.clone()));
        }
        self.by_time.insert((at, id));
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_time.remove(&(old, id.to_owned()));
        }
    }

    fn next(&self) -> Option<OffsetDateTime> {
        self.by_time.first().map(|(t, _)| *t)
    }

    fn pop_due(&mut self, now: OffsetDateTime) -> Option<String> {
        let (at, _) = self.by_time.first()?;
        if *at > now {
            return None;
        }
        let (_, id) = self.by_time.pop_first()?;
        self.by_id.remove(&id);
        Some(id)
    }
}
