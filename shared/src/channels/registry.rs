//! [`Registry`]: the live set of channels one service serves, the file's and
//! those connected at run time, kept current by watching `P_channels`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::{FutureExt, StreamExt, TryStreamExt};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::stored;
use crate::config::{Channel, parse_runtime_channel};
use crate::domain::ChannelId;
use crate::http::token_digest;
use crate::secret_key::SecretKey;

/// A full re-read of the bucket this often, whatever the watch says: a
/// watch that silently stopped (a server restart, a lost consumer) costs at
/// most this much delay, never a channel that is never picked up.
pub const RESYNC: Duration = Duration::from_secs(30);
/// The longest one re-read of the bucket may take.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a channel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The channel file (or the `TWILIO_*` variables): read-only at run time.
    File,
    /// Connected at run time, kept in `P_channels`.
    Runtime,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Runtime => "runtime",
        }
    }
}

/// One channel as a service holds it: the validated config, where it came
/// from, and what the service built from it once (`local`: the worker's
/// chat backend, ingress's subjects, …).
pub struct Live<T> {
    pub channel: Channel,
    pub source: Source,
    /// The `P_channels` revision (0 for a file channel).
    pub revision: u64,
    /// When a runtime channel was connected.
    pub connected_at: Option<OffsetDateTime>,
    pub local: T,
    token_digest: [u8; 32],
}

/// The channels at one moment; cheap to hold while a request runs.
pub struct Snapshot<T> {
    list: Vec<Arc<Live<T>>>,
    by_id: HashMap<ChannelId, Arc<Live<T>>>,
}

impl<T> Snapshot<T> {
    fn new(list: Vec<Arc<Live<T>>>) -> Self {
        let by_id = list.iter().map(|l| (l.channel.id.clone(), l.clone())).collect();
        Self { list, by_id }
    }

    /// Every channel: the file's first, in file order, then the runtime
    /// ones in the order they were connected.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Live<T>>> {
        self.list.iter()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, id: &ChannelId) -> Option<&Arc<Live<T>>> {
        self.by_id.get(id)
    }

    /// The channel with this id (as typed by an operator).
    pub fn get_str(&self, id: &str) -> Option<&Arc<Live<T>>> {
        self.list.iter().find(|l| l.channel.id.as_str() == id)
    }

    /// The channel whose webhook path token is `token`. Compares the
    /// token's digest with every channel's, always all of them, so neither
    /// the answer's timing nor a partial match tells anything (invariant 4).
    pub fn find_token(&self, token: &str) -> Option<&Arc<Live<T>>> {
        let digest = token_digest(token);
        let mut found = None;
        for live in &self.list {
            if bool::from(live.token_digest.ct_eq(&digest)) {
                found = Some(live);
            }
        }
        found
    }
}

/// What a registry reads runtime channels from.
#[derive(Clone)]
pub struct RuntimeSource {
    /// `P_channels`.
    pub store: kv::Store,
    /// `SMSGATE_SECRET_KEY`; without it, stored channels are skipped (and
    /// said so in the log).
    pub key: Option<Arc<SecretKey>>,
    /// `SMSGATE_PUBLIC_BASE_URL`: a channel's default, as for the file's.
    pub public_base_url: Option<String>,
}

impl RuntimeSource {
    /// The bucket, with the key and default base URL of these settings.
    pub fn new(store: kv::Store, settings: &crate::config::Settings) -> Self {
        Self { store, key: settings.secret_key.clone(), public_base_url: settings.public_base_url.clone() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the channels bucket")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("reading the channels bucket took over {RELOAD_TIMEOUT:?}")]
    TimedOut,
}

type Prepare<T> = Box<dyn Fn(&Channel) -> T + Send + Sync>;

struct Inner<T> {
    service: &'static str,
    file: Vec<Arc<Live<T>>>,
    current: RwLock<Arc<Snapshot<T>>>,
    prepare: Prepare<T>,
    runtime: OnceLock<RuntimeSource>,
    /// Serialises re-reads; remembers the (key, revision) pairs already
    /// logged as unusable, so a bad entry is reported once, not every resync.
    reload: tokio::sync::Mutex<HashSet<(String, u64)>>,
    /// Re-reads begun so far: a caller that waited for the lock while
    /// another re-read began has a fresh enough answer without its own.
    reads_begun: AtomicU64,
}

/// The live channel set of one service: the file's channels, fixed, plus
/// the runtime channels of `P_channels`, re-read whenever the bucket
/// changes (within about a second: [`Registry::watch`]). Every service
/// holds one; `T` is what the service builds from a channel once.
pub struct Registry<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Registry<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<T: Send + Sync + 'static> Registry<T> {
    /// The file's channels; runtime ones join once a source is attached.
    pub fn new(
        service: &'static str,
        file: Vec<Channel>,
        prepare: impl Fn(&Channel) -> T + Send + Sync + 'static,
    ) -> Self {
        let file: Vec<Arc<Live<T>>> =
            file.into_iter().map(|channel| Arc::new(live(&prepare, channel, Source::File, 0, None))).collect();
        let snapshot = Arc::new(Snapshot::new(file.clone()));
        Self {
            inner: Arc::new(Inner {
                service,
                file,
                current: RwLock::new(snapshot),
                prepare: Box::new(prepare),
                runtime: OnceLock::new(),
                reload: tokio::sync::Mutex::new(HashSet::new()),
                reads_begun: AtomicU64::new(0),
            }),
        }
    }

    /// Reads runtime channels from `source` from now on (the first call wins).
    pub fn attach(&self, source: RuntimeSource) {
        let _ = self.inner.runtime.set(source);
    }

    /// Attaches `source` and reads it once; a failed read is logged (the
    /// watch reads again), so a service starts with its file channels.
    pub async fn load(&self, source: RuntimeSource) {
        self.attach(source);
        if let Err(e) = self.reload().await {
            tracing::warn!(service = self.inner.service, error = %e, "cannot read the channels connected at run time yet");
        }
    }

    /// The source attached, if any.
    pub fn runtime_source(&self) -> Option<&RuntimeSource> {
        self.inner.runtime.get()
    }

    /// The channels now.
    pub fn snapshot(&self) -> Arc<Snapshot<T>> {
        self.inner.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get(&self, id: &ChannelId) -> Option<Arc<Live<T>>> {
        self.snapshot().get(id).cloned()
    }

    pub fn find_token(&self, token: &str) -> Option<Arc<Live<T>>> {
        self.snapshot().find_token(token).cloned()
    }

    /// Like [`Registry::get`], but a miss re-reads the bucket first: a
    /// message for a channel connected a moment ago may reach this service
    /// before the watch does.
    pub async fn get_fresh(&self, id: &ChannelId) -> Option<Arc<Live<T>>> {
        if let Some(found) = self.get(id) {
            return Some(found);
        }
        // Many messages for one unknown channel arriving at once cost one
        // re-read, not one each.
        let asked = self.inner.reads_begun.load(Ordering::Acquire);
        if self.inner.runtime.get().is_some()
            && let Err(e) = self.refresh(Some(asked)).await
        {
            tracing::warn!(service = self.inner.service, error = %e, "cannot re-read the channels bucket");
        }
        self.get(id)
    }

    /// Re-reads `P_channels` and swaps in the new set. Entries that did not
    /// change keep what was built from them.
    pub async fn reload(&self) -> Result<(), RegistryError> {
        self.refresh(None).await
    }

    /// [`Registry::reload`]; with `asked` (the re-reads begun when the
    /// caller asked), nothing when one has begun since.
    async fn refresh(&self, asked: Option<u64>) -> Result<(), RegistryError> {
        let Some(source) = self.inner.runtime.get() else { return Ok(()) };
        let mut reported = self.inner.reload.lock().await;
        if asked.is_some_and(|a| self.inner.reads_begun.load(Ordering::Acquire) > a) {
            return Ok(());
        }
        self.inner.reads_begun.fetch_add(1, Ordering::AcqRel);
        let entries = tokio::time::timeout(RELOAD_TIMEOUT, read_all(&source.store))
            .await
            .map_err(|_| RegistryError::TimedOut)??;
        let old = self.snapshot();
        let mut list = self.inner.file.clone();
        let mut ids: HashSet<ChannelId> = list.iter().map(|l| l.channel.id.clone()).collect();
        let mut tokens: HashSet<[u8; 32]> = list.iter().map(|l| l.token_digest).collect();
        let mut skip = |key: &str, revision: u64, why: String| {
            if reported.insert((key.to_owned(), revision)) {
                tracing::error!(
                    service = self.inner.service,
                    channel_id = %crate::redact::clip(key, 64),
                    revision,
                    reason = %why,
                    outcome = "skipped",
                    "a channel connected at run time cannot be used; it is skipped"
                );
            }
        };
        for entry in entries {
            let reused = old
                .iter()
                .find(|l| {
                    l.source == Source::Runtime && l.revision == entry.revision && l.channel.id.as_str() == entry.key
                })
                .cloned();
            let live = match reused {
                Some(l) => l,
                None => match self.decode(source, &entry) {
                    Ok(l) => Arc::new(l),
                    Err(why) => {
                        skip(&entry.key, entry.revision, why);
                        continue;
                    }
                },
            };
            if !ids.insert(live.channel.id.clone()) {
                skip(&entry.key, entry.revision, "a channel of the file has this channel_id".to_owned());
                continue;
            }
            if !tokens.insert(live.token_digest) {
                skip(&entry.key, entry.revision, "another channel has the same webhook_path_token".to_owned());
                continue;
            }
            list.push(live);
        }
        let before: HashSet<(&str, u64)> = old.iter().map(|l| (l.channel.id.as_str(), l.revision)).collect();
        let after: HashSet<(&str, u64)> = list.iter().map(|l| (l.channel.id.as_str(), l.revision)).collect();
        if before == after {
            return Ok(());
        }
        for l in list.iter().filter(|l| !before.contains(&(l.channel.id.as_str(), l.revision))) {
            tracing::info!(service = self.inner.service, channel_id = %l.channel.id, revision = l.revision, source = "runtime", outcome = "connected", "channel connected");
        }
        let kept: HashSet<&str> = list.iter().map(|l| l.channel.id.as_str()).collect();
        for l in old.iter().filter(|l| !kept.contains(l.channel.id.as_str())) {
            tracing::info!(service = self.inner.service, channel_id = %l.channel.id, source = "runtime", outcome = "disconnected", "channel disconnected");
        }
        let snapshot = Arc::new(Snapshot::new(list));
        *self.inner.current.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
        Ok(())
    }

    fn decode(&self, source: &RuntimeSource, entry: &kv::Entry) -> Result<Live<T>, String> {
        let opened = stored::open(&entry.value, &entry.key, source.key.as_deref()).map_err(|e| e.to_string())?;
        let (channel, _) = parse_runtime_channel(opened.channel, "P_channels", source.public_base_url.as_deref())
            .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
        Ok(live(&self.inner.prepare, channel, Source::Runtime, entry.revision, opened.connected_at))
    }

    /// Keeps the set current until `shutdown`: a watch on the bucket
    /// triggers a re-read on every change, plus one every [`RESYNC`]; a
    /// failed watch is opened again with backoff. Returns at once without
    /// an attached source.
    pub async fn watch(self, shutdown: CancellationToken) {
        let Some(source) = self.inner.runtime.get().cloned() else { return };
        let service = self.inner.service;
        let mut delay = Duration::from_millis(250);
        loop {
            let opened = tokio::select! {
                _ = shutdown.cancelled() => return,
                w = source.store.watch_all() => w,
            };
            match opened {
                Ok(mut changes) => {
                    delay = Duration::from_millis(250);
                    self.reload_logged().await;
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            change = changes.next() => match change {
                                Some(Ok(_)) => {
                                    // Several changes at once cost one re-read.
                                    while let Some(Some(Ok(_))) = changes.next().now_or_never() {}
                                    self.reload_logged().await;
                                }
                                Some(Err(e)) => {
                                    tracing::warn!(service, error = %e, "the watch on the channels bucket failed; opening it again");
                                    break;
                                }
                                None => break,
                            },
                            _ = tokio::time::sleep(RESYNC) => self.reload_logged().await,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(service, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot watch the channels bucket yet")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn reload_logged(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(service = self.inner.service, error = %e, "cannot re-read the channels bucket");
        }
    }
}

fn live<T>(
    prepare: &dyn Fn(&Channel) -> T,
    channel: Channel,
    source: Source,
    revision: u64,
    connected_at: Option<OffsetDateTime>,
) -> Live<T> {
    let local = prepare(&channel);
    let token_digest = token_digest(channel.path_token.expose_secret());
    Live { channel, source, revision, connected_at, local, token_digest }
}

/// Every live entry of the bucket (deleted and purged keys left out),
/// oldest revision first.
async fn read_all(store: &kv::Store) -> Result<Vec<kv::Entry>, RegistryError> {
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(|e| RegistryError::Read(Box::new(e)))?
        .try_collect()
        .await
        .map_err(|e| RegistryError::Read(Box::new(e)))?;
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        match store.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => entries.push(e),
            Ok(_) => {}
            Err(e) => return Err(RegistryError::Read(Box::new(e))),
        }
    }
    entries.sort_by_key(|e| e.revision);
    Ok(entries)
}
