//! Small pieces of state that every replica shares, kept in a key-value
//! bucket and changed with compare-and-set (docs/ARCHITECTURE.md §7,
//! "Limits across replicas").
//!
//! [`Cas::update`] is a read-modify-write: it reads a key's value and
//! revision, asks the caller's `decide` for the new value, and writes it
//! only if the key is still at that revision. When another process wrote
//! first, JetStream refuses the write and the update starts again from the
//! fresh value. The channel's reply budget, the per-sender rate limit and
//! the per-number pacing all use it, so each holds for the whole
//! deployment however many workers and senders there are.
//!
//! Two things keep it cheap on the hot path:
//! - A process remembers the value and revision it last wrote for a key.
//!   While nobody else writes that key (the usual case: the runtime keeps
//!   one conversation on one process at a time), an update is one round trip,
//!   the write; a stale memory costs one refused write and a read.
//! - Updates of one key inside a process wait for each other (a striped
//!   lock), so a process never races its own tasks; conflicts only come
//!   from other processes.
//!
//! A decision to write nothing is never taken on remembered data alone:
//! the key is read again first, so a refusal always reflects the bucket.
//!
//! Reads go to the stream's leader when the bucket has replicas (see
//! `allow_direct` in [`crate::topology`]): a follower that is catching up
//! would answer with an old revision and every write would be refused.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::Mutex;

/// How often a write may lose to another process before the update gives
/// up (the caller then retries its message through redelivery).
const MAX_CONFLICTS: usize = 32;
/// Lock stripes: updates of keys in different stripes run concurrently.
const STRIPES: usize = 64;
/// Remembered keys per stripe before the stripe forgets them all.
const REMEMBERED_PER_STRIPE: usize = 2048;

/// What `decide` wants done with the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Leave the key as it is.
    Keep,
    /// Store this value.
    Put(Bytes),
}

/// A key's value as last written by this process.
#[derive(Clone)]
struct Known {
    value: Bytes,
    revision: u64,
}

/// Shared state in one bucket.
pub struct Cas {
    store: kv::Store,
    hasher: RandomState,
    stripes: Box<[Mutex<HashMap<String, Known>>]>,
}

#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("cannot read or write {key} in the key-value bucket")]
    Nats {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{key} kept changing under {MAX_CONFLICTS} attempts to update it")]
    Contended { key: String },
}

impl Cas {
    pub fn new(store: kv::Store) -> Self {
        Self { store, hasher: RandomState::new(), stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    /// Reads `key` (`None`: absent or deleted), lets `decide` pick the new
    /// value, and writes it with compare-and-set, starting again when
    /// another process wrote in between. Returns what `decide` returned
    /// alongside the write that took effect. `decide` may run more than
    /// once, so it must not have side effects.
    pub async fn update<T>(
        &self,
        key: &str,
        mut decide: impl FnMut(Option<&[u8]>) -> (Write, T),
    ) -> Result<T, CasError> {
        let stripe = &self.stripes[(self.hasher.hash_one(key) as usize) % STRIPES];
        let mut known = stripe.lock().await;
        let mut remembered = known.get(key).cloned();
        for _ in 0..MAX_CONFLICTS {
            let (value, revision, fresh) = match remembered.take() {
                Some(k) => (Some(k.value), Some(k.revision), false),
                None => {
                    let (value, revision) = self.read(key).await?;
                    (value, revision, true)
                }
            };
            let (write, out) = decide(value.as_deref());
            let Write::Put(new) = write else {
                if fresh {
                    return Ok(out);
                }
                // Refuse only on what the bucket says now.
                continue;
            };
            match self.write(key, new.clone(), revision).await? {
                Some(revision) => {
                    if known.len() >= REMEMBERED_PER_STRIPE {
                        known.clear();
                    }
                    known.insert(key.to_owned(), Known { value: new, revision });
                    return Ok(out);
                }
                None => {
                    // Another process wrote first: read it and decide again.
                    known.remove(key);
                }
            }
        }
        Err(CasError::Contended { key: key.to_owned() })
    }

    /// The key's value as the bucket has it now (`None` when absent or deleted).
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, CasError> {
        Ok(self.read(key).await?.0)
    }

    /// The key's value (`None` when absent or deleted) and the revision a
    /// write must name (`None` when the key never existed).
    async fn read(&self, key: &str) -> Result<(Option<Bytes>, Option<u64>), CasError> {
        let entry = self.store.entry(key).await.map_err(|e| nats_error(key, e))?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => (Some(e.value), Some(e.revision)),
            // Deleted or purged: start again from nothing at its revision.
            Some(e) => (None, Some(e.revision)),
            None => (None, None),
        })
    }

    /// Writes `value` if the key is still at `revision`; `None` when another
    /// process wrote first.
    async fn write(&self, key: &str, value: Bytes, revision: Option<u64>) -> Result<Option<u64>, CasError> {
        match revision {
            Some(rev) => match self.store.update(key, value, rev).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(nats_error(key, e)),
            },
            None => match self.store.create(key, value).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(nats_error(key, e)),
            },
        }
    }
}

fn nats_error(key: &str, e: impl std::error::Error + Send + Sync + 'static) -> CasError {
    CasError::Nats { key: key.to_owned(), source: Box::new(e) }
}

/// Reads an ASCII number stored by a [`Cas`] user; anything unreadable is 0.
pub fn parse_u64(value: &[u8]) -> u64 {
    std::str::from_utf8(value).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_numbers_count_as_zero() {
        assert_eq!(parse_u64(b"41"), 41);
        assert_eq!(parse_u64(b" 7 "), 7);
        assert_eq!(parse_u64(b""), 0);
        assert_eq!(parse_u64(b"x"), 0);
    }
}
