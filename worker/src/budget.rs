//! The channel's abuse and cost limits (docs/ARCHITECTURE.md §6, "Channel config JSON":
//! `limits` and `reply_countries`).
//!
//! SMS pumping comes from many distinct senders, which the per-sender rate
//! limit ([`crate::limiter`]) cannot stop: one inbound can cost a model call
//! and up to `max_parts` segments. So every reply of a channel, whoever it
//! goes to, takes one unit of two windows: the current UTC minute and the
//! current UTC day. The counters live in the `P_budget` key-value bucket
//! (one key per channel and window, see [`Topology::budget_key`]) and are
//! advanced with compare-and-set ([`smsgate_shared::cas`]), so the limits hold however many worker
//! processes share the channel. A unit taken is never given back: a crash
//! after taking it costs one unit, never a reply above the limit.
//!
//! [`Budget::check`] is the one call `process/steps.rs` makes: country first (no
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
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smsgate_shared::cas::{Cas, Write, parse_u64};
use smsgate_shared::config::{Channel, ReplyCountries};
use smsgate_shared::domain::E164;
use smsgate_shared::envelope::NoteReason;
use smsgate_shared::topology::Topology;

use crate::Error;

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
    cells: Arc<Cas>,
    /// Units this process took from a counter and has not used yet, by key.
    reserved: tokio::sync::Mutex<HashMap<String, u64>>,
}

impl Budget {
    pub fn new(cells: Arc<Cas>) -> Self {
        Self { cells, reserved: tokio::sync::Mutex::new(HashMap::new()) }
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
        let max = u64::from(max);
        self.cells
            .update(key, |value| {
                let count = value.map_or(0, parse_u64);
                if count >= max {
                    return (Write::Keep, 0);
                }
                let taken = block.min(max - count);
                (Write::Put(Bytes::from((count + taken).to_string())), taken)
            })
            .await
            .map_err(|e| Error::Budget(Box::new(e)))
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}
