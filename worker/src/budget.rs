//! The channel's abuse and cost limits (docs/ARCHITECTURE.md §6, "Channel config JSON":
//! `limits` and `reply_countries`).
//!
//! SMS pumping comes from many distinct senders, which the per-sender rate
//! limit ([`crate::limiter`]) cannot stop: one inbound can cost a model call
//! and up to `max_parts` segments. So every reply of a channel, whoever it
//! goes to, takes one unit of two windows: the current UTC minute and the
//! current UTC day. The counters live in the `P_budget` key-value bucket
//! (one key per channel and window, see [`Topology::budget_key`]) and are
//! advanced with compare-and-set, so the limits hold however many worker
//! processes share the channel. A unit taken is never given back: a crash
//! after taking it costs one unit, never a reply above the limit.
//!
//! [`Budget::check`] is the one call `process.rs` makes: country first (no
//! counter is touched for a number that may never get a reply), then the
//! minute, then the day.
//!
//! Hundreds of replies run at once in one worker, so a process does not
//! race its own tasks for the counters: it takes units under one lock, and
//! when the limit is large it takes them in blocks (up to 16, a hundredth of
//! the limit) and hands them out locally. Units a process reserved and did
//! not use are lost when their window ends; that errs on the side of fewer
//! replies, never more than the limit.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;
use smsgate_shared::config::{Channel, ReplyCountries};
use smsgate_shared::domain::E164;
use smsgate_shared::envelope::NoteReason;
use smsgate_shared::topology::Topology;

use crate::Error;

/// How often a compare-and-set may lose to another worker before giving up
/// (the message is then retried through redelivery).
const MAX_CONFLICTS: usize = 32;

/// Why a reply may not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: NoteReason,
    /// `reply_countries`, `replies_per_minute` or `replies_per_day`: the metric label.
    pub limit: &'static str,
    /// For the history note and the log.
    pub detail: String,
}

/// The shared reply counters.
pub struct Budget {
    store: kv::Store,
    /// Units this process took from a counter and has not used yet, by key.
    reserved: tokio::sync::Mutex<HashMap<String, u64>>,
}

impl Budget {
    pub fn new(store: kv::Store) -> Self {
        Self { store, reserved: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Whether `channel` may send one more reply to `to`: the country, and
    /// when `count` the minute's and the day's budget, taking one unit of
    /// each when it may (a redelivery passes `count = false`: its unit was
    /// taken the first time). `Ok(Some(_))` is a refusal to record; `Err` is
    /// NATS failing (retry the message).
    pub async fn check(&self, channel: &Channel, to: &E164, count: bool) -> Result<Option<Refusal>, Error> {
        self.check_at(channel, to, count.then(unix_now)).await
    }

    async fn check_at(&self, channel: &Channel, to: &E164, now: Option<Duration>) -> Result<Option<Refusal>, Error> {
        if !channel.reply_countries.admits(to) {
            let allowed = match &channel.reply_countries {
                ReplyCountries::All => "all".to_owned(),
                ReplyCountries::Codes(codes) => codes.join(", "),
            };
            return Ok(Some(self.refused(
                channel,
                NoteReason::CountryNotAllowed,
                "reply_countries",
                format!("country code {} is not in reply_countries ({allowed})", to.calling_code()),
            )));
        }
        let Some(now) = now else {
            return Ok(None);
        };
        let secs = now.as_secs();
        let windows = [
            ("replies_per_minute", format!("m{}", secs / 60), channel.limits.replies_per_minute, "minute"),
            ("replies_per_day", format!("d{}", secs / 86_400), channel.limits.replies_per_day, "UTC day"),
        ];
        // The minute is checked before the day is charged, so a refused
        // message takes nothing from a window it did not pass.
        for (limit, window, max, what) in windows {
            let key = Topology::budget_key(&channel.id, &window);
            if !self.take(&key, max).await? {
                return Ok(Some(self.refused(
                    channel,
                    NoteReason::OverLimit,
                    limit,
                    format!("the channel sent its {max} replies of this {what} (limits.{limit})"),
                )));
            }
        }
        Ok(None)
    }

    fn refused(&self, channel: &Channel, reason: NoteReason, limit: &'static str, detail: String) -> Refusal {
        metrics::counter!("smsgate_worker_over_limit_total", "channel_id" => channel.id.to_string(), "limit" => limit)
            .increment(1);
        Refusal { reason, limit, detail }
    }

    /// Takes one unit of the counter at `key` unless it has reached `max`:
    /// from this process's reserve, or from the shared counter.
    async fn take(&self, key: &str, max: u32) -> Result<bool, Error> {
        let mut reserved = self.reserved.lock().await;
        if let Some(left) = reserved.get_mut(key)
            && *left > 0
        {
            *left -= 1;
            return Ok(true);
        }
        let block = u64::from(max / 100).clamp(1, 16);
        match self.take_shared(key, max, block).await? {
            0 => Ok(false),
            taken => {
                if reserved.len() > 1024 {
                    // Old windows' leftovers: losing them only means fewer replies.
                    reserved.clear();
                }
                reserved.insert(key.to_owned(), taken - 1);
                Ok(true)
            }
        }
    }

    /// Adds up to `block` to the counter at `key` without passing `max`;
    /// returns how many units it took (0: the limit is reached).
    async fn take_shared(&self, key: &str, max: u32, block: u64) -> Result<u64, Error> {
        for _ in 0..MAX_CONFLICTS {
            let entry = self.store.entry(key).await.map_err(|e| Error::Budget(Box::new(e)))?;
            let (count, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (parse_count(&e.value), Some(e.revision)),
                // Deleted or purged: start again from zero at its revision.
                Some(e) => (0, Some(e.revision)),
                None => (0, None),
            };
            if count >= u64::from(max) {
                return Ok(0);
            }
            let taken = block.min(u64::from(max) - count);
            let value = Bytes::from((count + taken).to_string());
            let written = match revision {
                Some(rev) => self.store.update(key, value, rev).await.map(|_| ()).map_err(|e| {
                    (e.kind() == kv::UpdateErrorKind::WrongLastRevision).then_some(()).ok_or(Box::new(e) as BoxError)
                }),
                None => self.store.create(key, value).await.map(|_| ()).map_err(|e| {
                    (e.kind() == kv::CreateErrorKind::AlreadyExists).then_some(()).ok_or(Box::new(e) as BoxError)
                }),
            };
            match written {
                Ok(()) => return Ok(taken),
                // Another worker moved the counter first: read it again.
                Err(Ok(())) => continue,
                Err(Err(e)) => return Err(Error::Budget(e)),
            }
        }
        Err(Error::Budget(format!("the counter {key} kept changing under {MAX_CONFLICTS} attempts").into()))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn parse_count(value: &[u8]) -> u64 {
    std::str::from_utf8(value).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_counters_count_as_zero() {
        assert_eq!(parse_count(b"41"), 41);
        assert_eq!(parse_count(b""), 0);
        assert_eq!(parse_count(b"x"), 0);
    }
}
