//! A key-value bucket kept in this process's memory by a watch, for a read
//! made on every message that may be a moment behind the bucket: a read of
//! the bucket itself costs a NATS round trip, and nats-server's CPU is what
//! limits the pipeline (deploy/BENCHMARKS.md, "The NATS operations of one
//! SMS").
//!
//! - A watch delivers every key's last value, then every change. Until it
//!   has caught up, reads go to the bucket.
//! - While the client is not connected, and after it has reconnected
//!   (its `connects` count moved since the watch was opened), reads go to
//!   the bucket until a new watch has caught up: changes made meanwhile may
//!   reach the old watch only after messages that depend on them.
//! - What this process writes through [`Mirror::put`] is applied at once,
//!   so its own next read sees it; the watch's copy of the same write is
//!   then ignored (entries only move to a newer revision).
//!
//! What is left is the watch's delay for another process's write (about a
//! millisecond on one machine): a read here may not see a change another
//! process made that long ago. docs/ARCHITECTURE.md §3.7 says where a
//! mirror is used and why that is acceptable there (and why the worker's
//! own opt-out check does not use one).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// A bucket's entries as the watch last delivered them.
#[derive(Clone)]
pub struct Mirror {
    store: kv::Store,
    /// The client the watch runs on: its connection state and how often it
    /// has connected.
    client: async_nats::Client,
    inner: Arc<RwLock<State>>,
}

#[derive(Default)]
struct State {
    /// The client's connect count when the current watch was opened, once
    /// that watch has caught up; `None` while it has not.
    current_as_of: Option<u64>,
    /// Key → (revision, value); a deleted key keeps its revision, so a
    /// late older write cannot bring it back.
    entries: HashMap<String, (u64, Option<Bytes>)>,
}

impl Mirror {
    /// A mirror of `store` (opened on `client`), empty and not yet caught
    /// up: reads go to the bucket until [`Mirror::follow`] has caught up.
    pub fn new(store: kv::Store, client: async_nats::Client) -> Self {
        Self { store, client, inner: Arc::default() }
    }

    /// How often the client has connected (the first time included).
    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether memory answers now: the watch caught up, and the client is
    /// connected on the connection the watch was opened on.
    fn answers(&self, state: &State) -> bool {
        state.current_as_of == Some(self.connects())
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The bucket itself, for what the mirror does not do.
    pub fn store(&self) -> &kv::Store {
        &self.store
    }

    /// Whether reads are answered from memory now.
    pub fn is_current(&self) -> bool {
        self.answers(&self.read())
    }

    /// The value of `key`: from memory while the watch is current, else
    /// from the bucket.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, kv::EntryError> {
        {
            let state = self.read();
            if self.answers(&state) {
                return Ok(state.entries.get(key).and_then(|(_, v)| v.clone()));
            }
        }
        self.store.get(key).await
    }

    /// Writes `value` under `key` in the bucket and, once it is stored, here.
    pub async fn put(&self, key: &str, value: Bytes) -> Result<u64, kv::PutError> {
        let revision = self.store.put(key, value.clone()).await?;
        self.apply(key, revision, Some(value));
        Ok(revision)
    }

    /// Keeps the mirror current until `shutdown`: opens a watch, applies
    /// what it delivers, and opens a new one after an error, the end of the
    /// watch or a NATS disconnect.
    pub async fn follow(self, shutdown: CancellationToken) {
        let bucket = self.store.name.clone();
        let mut delay = Duration::from_millis(250);
        loop {
            {
                let mut state = self.write();
                state.current_as_of = None;
                state.entries.clear();
            }
            let epoch = self.connects();
            let opened = tokio::select! {
                _ = shutdown.cancelled() => return,
                w = self.store.watch_with_history(">") => w,
            };
            match opened {
                Ok(mut watch) => {
                    delay = Duration::from_millis(250);
                    // An empty bucket has nothing to catch up on (a write
                    // after the watch opened still comes through it).
                    if self.store.status().await.is_ok_and(|s| s.values() == 0) {
                        self.write().current_as_of = Some(epoch);
                    }
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            entry = watch.next() => match entry {
                                Some(Ok(entry)) => {
                                    let value = matches!(entry.operation, kv::Operation::Put).then_some(entry.value);
                                    self.apply(&entry.key, entry.revision, value);
                                    if entry.seen_current {
                                        let mut state = self.write();
                                        if state.current_as_of.is_none() {
                                            state.current_as_of = Some(epoch);
                                        }
                                    }
                                }
                                Some(Err(e)) => {
                                    tracing::warn!(bucket, error = %e, "the watch on a mirrored bucket failed; opening it again");
                                    break;
                                }
                                None => break,
                            },
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                                if self.connects() != epoch {
                                    tracing::info!(bucket, "NATS reconnected; watching the mirrored bucket again");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(bucket, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot watch a mirrored bucket yet");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Moves `key` to `revision` (a put's value, or `None` for a delete)
    /// unless it already holds a newer one.
    fn apply(&self, key: &str, revision: u64, value: Option<Bytes>) {
        let mut state = self.write();
        if state.entries.get(key).is_some_and(|(held, _)| *held >= revision) {
            return;
        }
        state.entries.insert(key.to_owned(), (revision, value));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
