//! What a conversation costs (docs/ARCHITECTURE.md, "Observability and cost";
//! the facts are in docs/OBSERVABILITY.md).
//!
//! # Layout
//!
//! - [`RATES`]: outbound SMS list prices per segment by calling code, with
//!   their source: the estimate at send time, unless the channel's
//!   `pricing.sms_usd_per_segment` says otherwise ([`sms_rate`]).
//! - [`Pricing`]: the channel's `pricing` key, parsed and checked.
//! - [`parse_twilio_price`]: Twilio's `price` (`"-0.00790"`, negative, a
//!   string, null until Twilio has billed the message).
//! - [`Usage`] and [`model_usd`]: a chat answer's tokens × `pricing.model`.
//! - [`DailySpend`]: what a channel spent in the current UTC day, a counter in
//!   the `P_budget` bucket changed with compare-and-set, so `limits.usd_per_day`
//!   holds across every worker and sender.
//! - [`record_metric`] / [`render_metrics`]: `smsgate_cost_usd_total{channel_id,kind}`,
//!   a Prometheus counter in dollars (the `metrics` crate's counters are
//!   integers, so this one is kept here and appended to `/metrics`).
//!
//! A cost figure is one history entry ([`crate::envelope::HistoryEvent::Cost`])
//! per billable thing, keyed by a reference: the estimate at send under the
//! piece's Twilio SID, Twilio's own figure later under the same SID. Sums
//! take Twilio's figure where there is one, else the estimate ([`CostSum`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cas::{Cas, CasError, Write, parse_u64};
use crate::config::Channel;
use crate::domain::{ChannelId, E164};
use crate::envelope::HistoryEvent;
use crate::topology::Topology;

/// Outbound SMS list prices in USD per segment, by calling code, for the
/// estimate at send time. Source: Twilio's public SMS pricing pages
/// (twilio.com/en-us/sms/pricing/<country>, read 2026-11; US/CA include no
/// carrier fees, which Twilio bills separately as `sms-messages-carrierfees`).
/// These are list prices, not an account's: Twilio's own `price` replaces
/// each estimate once the message is billed. The authoritative, current
/// figures are Pricing v1 (`GET https://pricing.twilio.com/v1/Messaging/Countries/{IsoCountry}`).
pub const RATES: [(&str, f64, &str); 12] = [
    ("1", 0.0083, "US/CA"),
    ("44", 0.0524, "GB"),
    ("61", 0.0515, "AU"),
    ("49", 0.0878, "DE"),
    ("33", 0.0798, "FR"),
    ("34", 0.0814, "ES"),
    ("39", 0.0850, "IT"),
    ("31", 0.1100, "NL"),
    ("52", 0.0480, "MX"),
    ("55", 0.0575, "BR"),
    ("91", 0.0830, "IN"),
    ("81", 0.0800, "JP"),
];

/// The estimate for a country not in [`RATES`] and not priced by the
/// channel: on the high side, so a budget errs towards stopping early.
pub const FALLBACK_USD_PER_SEGMENT: f64 = 0.10;

/// The channel's `pricing` key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    /// `sms_usd_per_segment.default`.
    pub sms_default: Option<f64>,
    /// `sms_usd_per_segment.<calling code>`.
    pub sms_by_code: BTreeMap<String, f64>,
    /// `model` prices per million tokens.
    pub model: Option<ModelPrices>,
}

/// `pricing.model`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrices {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

/// Reads `pricing` ({`sms_usd_per_segment` {`default`, or per calling
/// code}, `model` {`input_usd_per_mtok`, `output_usd_per_mtok`}}); each
/// problem is reported with its key, the rest kept.
pub fn parse_pricing(value: Option<Value>, fail: &mut dyn FnMut(&str, String)) -> Pricing {
    let mut pricing = Pricing::default();
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return pricing;
    };
    let Value::Object(map) = value else {
        fail("config.pricing", "must be an object".to_owned());
        return pricing;
    };
    for (key, value) in map {
        match key.as_str() {
            "sms_usd_per_segment" => {
                let Value::Object(rates) = value else {
                    fail("config.pricing.sms_usd_per_segment", "must be an object of prices".to_owned());
                    continue;
                };
                for (code, price) in rates {
                    let at = format!("config.pricing.sms_usd_per_segment.{code}");
                    let Some(price) = price.as_f64().filter(|p| p.is_finite() && *p >= 0.0) else {
                        fail(&at, "must be a price in USD, 0 or more".to_owned());
                        continue;
                    };
                    if code == "default" {
                        pricing.sms_default = Some(price);
                    } else if (1..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()) {
                        pricing.sms_by_code.insert(code, price);
                    } else {
                        fail(&at, "keys are `default` or a calling code of 1 to 3 digits without +".to_owned());
                    }
                }
            }
            "model" => match serde_json::from_value::<ModelPrices>(value) {
                Ok(m) if [m.input_usd_per_mtok, m.output_usd_per_mtok].iter().all(|p| p.is_finite() && *p >= 0.0) => {
                    pricing.model = Some(m);
                }
                Ok(_) => fail("config.pricing.model", "prices must be 0 or more".to_owned()),
                Err(e) => fail("config.pricing.model", e.to_string()),
            },
            other => fail(&format!("config.pricing.{other}"), "unknown key".to_owned()),
        }
    }
    pricing
}

/// The price per segment used for an estimate, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub usd_per_segment: f64,
    /// `pricing`, `rate table` or `fallback`.
    pub basis: &'static str,
}

/// The estimate's price per segment for a text to `to`: the channel's
/// price for the calling code, its default, the rate table, the fallback.
pub fn sms_rate(pricing: &Pricing, to: &E164) -> Rate {
    let code = to.calling_code();
    if let Some(p) = pricing.sms_by_code.get(code) {
        return Rate { usd_per_segment: *p, basis: "pricing" };
    }
    if let Some(p) = pricing.sms_default {
        return Rate { usd_per_segment: p, basis: "pricing" };
    }
    match RATES.iter().find(|(c, _, _)| *c == code) {
        Some((_, p, _)) => Rate { usd_per_segment: *p, basis: "rate table" },
        None => Rate { usd_per_segment: FALLBACK_USD_PER_SEGMENT, basis: "fallback" },
    }
}

/// Twilio's `price` as a cost in USD: Twilio writes charges negative
/// (`"-0.00790"`). None for null, empty or unreadable (not billed yet).
pub fn parse_twilio_price(price: Option<&Value>) -> Option<f64> {
    let text = match price? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let usd: f64 = text.parse().ok()?;
    usd.is_finite().then_some(usd.abs())
}

/// A chat answer's token counts (OpenAI's `usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Tokens × the channel's model prices; None when the channel has none.
pub fn model_usd(pricing: &Pricing, usage: &Usage) -> Option<f64> {
    let m = pricing.model?;
    Some(
        (usage.prompt_tokens as f64 * m.input_usd_per_mtok + usage.completion_tokens as f64 * m.output_usd_per_mtok)
            / 1_000_000.0,
    )
}

/// What a cost entry is for (the metric's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Item {
    Sms,
    Call,
    Model,
}

impl Item {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Call => "call",
            Self::Model => "model",
        }
    }
}

/// Where a figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Segments × a rate, at send time.
    Estimate,
    /// Twilio's `price` for the message or call.
    Twilio,
    /// Tokens × the channel's model prices.
    Usage,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Estimate => "estimate",
            Self::Twilio => "twilio",
            Self::Usage => "usage",
        }
    }
}

/// Sums of a conversation's cost entries: Twilio's figure for a reference
/// where there is one, else its estimate.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CostSum {
    pub total_usd: f64,
    pub sms_usd: f64,
    pub call_usd: f64,
    pub model_usd: f64,
    /// References still priced by estimate.
    pub estimated: u32,
    /// Model answers whose token counts the server did not give.
    pub usage_unknown: u32,
}

impl CostSum {
    /// The sum of every `Cost` event among `events`.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a HistoryEvent>) -> Self {
        /// A reference's estimate, and Twilio's figure.
        type Figures = (Option<f64>, Option<f64>);
        let mut by_ref: HashMap<(Item, &str), Figures> = HashMap::new();
        let mut sum = CostSum::default();
        for event in events {
            let HistoryEvent::Cost { item, reference, usd, basis, .. } = event else { continue };
            let Some(usd) = usd else {
                sum.usage_unknown += 1;
                continue;
            };
            let slot = by_ref.entry((*item, reference.as_str())).or_default();
            match basis {
                Basis::Twilio => slot.1 = Some(*usd),
                Basis::Estimate | Basis::Usage => slot.0 = Some(slot.0.unwrap_or(0.0) + usd),
            }
        }
        for ((item, _), (estimate, twilio)) in by_ref {
            let usd = match (twilio, estimate) {
                (Some(t), _) => t,
                (None, Some(e)) => {
                    if item != Item::Model {
                        sum.estimated += 1;
                    }
                    e
                }
                (None, None) => 0.0,
            };
            match item {
                Item::Sms => sum.sms_usd += usd,
                Item::Call => sum.call_usd += usd,
                Item::Model => sum.model_usd += usd,
            }
            sum.total_usd += usd;
        }
        sum
    }
}

/// USD as the counter stores it: millionths, rounded.
fn micro(usd: f64) -> i64 {
    (usd * 1_000_000.0).round() as i64
}

/// The current UTC day's number (days since 1970-01-01).
pub fn utc_day(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}

/// A channel's spend in the current UTC day, shared by every process
/// through the `P_budget` bucket (key [`Topology::spend_key`]).
///
/// The sender adds every text's estimate with [`DailySpend::add_soon`]:
/// kept here and written once a second ([`DailySpend::follow`]) rather than
/// with a compare-and-set per text, which was one of the NATS requests of
/// every SMS. The budget is a soft limit, checked before a model call or an
/// agent's text: another process sees this one's texts up to a second
/// late, and a sender killed outright loses at most that second's
/// estimates from the day's figure (history keeps every estimate).
#[derive(Clone)]
pub struct DailySpend {
    cells: Arc<Cas>,
    /// Millionths of a USD added with `add_soon` and not written yet, per key.
    pending: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl DailySpend {
    pub fn new(cells: Arc<Cas>) -> Self {
        Self { cells, pending: Arc::default() }
    }

    /// Adds `usd` (negative for a correction down, never below 0) to the
    /// day's spend, with what `add_soon` kept for it; returns the new total
    /// in USD.
    pub async fn add(&self, channel: &ChannelId, usd: f64, now: SystemTime) -> Result<f64, CasError> {
        let key = Topology::spend_key(channel, utc_day(now));
        let kept = self.take(&key);
        match self.write(&key, micro(usd).saturating_add(kept)).await {
            Ok(total) => Ok(total as f64 / 1_000_000.0),
            Err(e) => {
                self.keep(key, kept);
                Err(e)
            }
        }
    }

    /// Adds `usd` to the day's spend at the next write (within a second
    /// while [`DailySpend::follow`] runs).
    pub fn add_soon(&self, channel: &ChannelId, usd: f64, now: SystemTime) {
        self.keep(Topology::spend_key(channel, utc_day(now)), micro(usd));
    }

    /// Writes what `add_soon` kept, key by key; what cannot be written now
    /// is kept for the next time.
    pub async fn flush(&self) -> Result<(), CasError> {
        let kept = std::mem::take(&mut *self.lock());
        let mut failed = None;
        for (key, delta) in kept {
            if let Err(e) = self.write(&key, delta).await {
                self.keep(key, delta);
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Writes what `add_soon` keeps every `every` until `stop`, then once more.
    pub async fn follow(self, every: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            let stopped = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(every) => false,
            };
            if let Err(e) = self.flush().await {
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "cannot write the channels' spend today; kept for the next try"
                );
            }
            if stopped {
                return;
            }
        }
    }

    /// The day's spend so far, in USD (with what this process has not written yet).
    pub async fn today(&self, channel: &ChannelId, now: SystemTime) -> Result<f64, CasError> {
        let key = Topology::spend_key(channel, utc_day(now));
        let value = self.cells.get(&key).await?;
        let kept = self.lock().get(&key).copied().unwrap_or(0);
        let stored = i64::try_from(value.as_deref().map_or(0, parse_u64)).unwrap_or(i64::MAX);
        Ok(stored.saturating_add(kept).max(0) as f64 / 1_000_000.0)
    }

    /// Adds `delta` millionths to the stored figure (never below 0).
    async fn write(&self, key: &str, delta: i64) -> Result<i64, CasError> {
        self.cells
            .update(key, |value| {
                let current = i64::try_from(value.map_or(0, parse_u64)).unwrap_or(i64::MAX);
                let next = current.saturating_add(delta).max(0);
                (Write::Put(Bytes::from(next.to_string())), next)
            })
            .await
    }

    fn take(&self, key: &str) -> i64 {
        self.lock().remove(key).unwrap_or(0)
    }

    fn keep(&self, key: String, delta: i64) {
        let mut pending = self.lock();
        let held = pending.entry(key).or_insert(0);
        *held = held.saturating_add(delta);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, i64>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `channel` has reached its `limits.usd_per_day` (false when it
    /// has none).
    pub async fn exceeded(&self, channel: &Channel, now: SystemTime) -> Result<bool, CasError> {
        let Some(limit) = channel.limits.usd_per_day else {
            return Ok(false);
        };
        Ok(self.today(&channel.id, now).await? >= limit)
    }
}

fn counters() -> &'static Mutex<BTreeMap<(String, Item), f64>> {
    static COUNTERS: OnceLock<Mutex<BTreeMap<(String, Item), f64>>> = OnceLock::new();
    COUNTERS.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Adds `usd` to `smsgate_cost_usd_total{channel_id,kind}` (a counter: only
/// what is positive is added; a correction down shows in history's sums, not here).
pub fn record_metric(channel: &ChannelId, item: Item, usd: f64) {
    if !(usd.is_finite() && usd > 0.0) {
        return;
    }
    let mut map = counters().lock().unwrap_or_else(|p| p.into_inner());
    *map.entry((channel.to_string(), item)).or_insert(0.0) += usd;
}

/// The cost counter in Prometheus' text format (nothing before the first figure).
pub fn render_metrics() -> String {
    let map = counters().lock().unwrap_or_else(|p| p.into_inner());
    if map.is_empty() {
        return String::new();
    }
    let mut text = String::from(
        "# HELP smsgate_cost_usd_total Estimated and billed cost in USD (estimates at send, Twilio's price added when higher)\n# TYPE smsgate_cost_usd_total counter\n",
    );
    for ((channel, item), usd) in map.iter() {
        // Channel ids are [A-Za-z0-9_-] (ChannelId), so nothing to escape.
        text.push_str(&format!(
            "smsgate_cost_usd_total{{channel_id=\"{channel}\",kind=\"{}\"}} {usd}\n",
            item.as_str()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cost(item: Item, reference: &str, usd: Option<f64>, basis: Basis) -> HistoryEvent {
        HistoryEvent::Cost { item, reference: reference.to_owned(), units: 1, usd, basis, detail: None }
    }

    #[test]
    fn twilio_prices_are_negative_strings_and_null_until_billed() {
        assert_eq!(parse_twilio_price(Some(&json!("-0.00790"))), Some(0.0079));
        assert_eq!(parse_twilio_price(Some(&json!(-0.0158))), Some(0.0158));
        assert_eq!(parse_twilio_price(Some(&Value::Null)), None);
        assert_eq!(parse_twilio_price(Some(&json!(""))), None);
        assert_eq!(parse_twilio_price(Some(&json!("n/a"))), None);
        assert_eq!(parse_twilio_price(None), None);
    }

    #[test]
    fn the_channel_price_wins_over_the_rate_table_and_unknown_countries_get_the_fallback() {
        let us = E164::parse("+14155550100").unwrap();
        let uk = E164::parse("+447700900123").unwrap();
        let nz = E164::parse("+64211234567").unwrap();
        let none = Pricing::default();
        assert_eq!(sms_rate(&none, &us), Rate { usd_per_segment: 0.0083, basis: "rate table" });
        assert_eq!(sms_rate(&none, &nz).basis, "fallback");
        let mut p = Pricing { sms_default: Some(0.01), ..Pricing::default() };
        p.sms_by_code.insert("44".to_owned(), 0.04);
        assert_eq!(sms_rate(&p, &uk), Rate { usd_per_segment: 0.04, basis: "pricing" });
        assert_eq!(sms_rate(&p, &us), Rate { usd_per_segment: 0.01, basis: "pricing" });
    }

    #[test]
    fn pricing_problems_name_their_key() {
        let mut problems = vec![];
        let p = parse_pricing(
            Some(
                json!({"sms_usd_per_segment": {"default": 0.0079, "44": -1, "x1": 0.1}, "model": {"input_usd_per_mtok": 0.15}, "tokens": 1}),
            ),
            &mut |k, m| problems.push(format!("{k}: {m}")),
        );
        assert_eq!(p.sms_default, Some(0.0079));
        let keys: Vec<&str> = problems.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "config.pricing.model",
                "config.pricing.sms_usd_per_segment.44",
                "config.pricing.sms_usd_per_segment.x1",
                "config.pricing.tokens"
            ]
        );
        let ok = parse_pricing(
            Some(json!({"model": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6}})),
            &mut |k, m| panic!("{k}: {m}"),
        );
        let usage = Usage { prompt_tokens: 1_000, completion_tokens: 500 };
        assert!((model_usd(&ok, &usage).unwrap() - 0.00045).abs() < 1e-12);
        assert_eq!(model_usd(&Pricing::default(), &usage), None);
    }

    #[test]
    fn sums_take_twilios_figure_over_the_estimate_of_the_same_piece() {
        let events = [
            cost(Item::Sms, "SM1", Some(0.0166), Basis::Estimate),
            cost(Item::Sms, "SM2", Some(0.0083), Basis::Estimate),
            cost(Item::Model, "SMin", Some(0.0004), Basis::Usage),
            cost(Item::Sms, "SM1", Some(0.0158), Basis::Twilio),
            cost(Item::Model, "SMin2", None, Basis::Usage),
        ];
        let sum = CostSum::of(&events);
        assert!((sum.sms_usd - (0.0158 + 0.0083)).abs() < 1e-12, "{sum:?}");
        assert!((sum.total_usd - (0.0158 + 0.0083 + 0.0004)).abs() < 1e-12, "{sum:?}");
        assert_eq!((sum.estimated, sum.usage_unknown), (1, 1));
    }

    #[test]
    fn the_metric_renders_as_a_counter_in_dollars() {
        let channel = ChannelId::parse("cost_metric_test").unwrap();
        record_metric(&channel, Item::Sms, 0.0083);
        record_metric(&channel, Item::Sms, 0.0083);
        record_metric(&channel, Item::Model, -1.0);
        let text = render_metrics();
        assert!(text.contains("# TYPE smsgate_cost_usd_total counter"), "{text}");
        assert!(text.contains("smsgate_cost_usd_total{channel_id=\"cost_metric_test\",kind=\"sms\"} 0.0166"), "{text}");
        assert!(!text.contains("channel_id=\"cost_metric_test\",kind=\"model\""), "{text}");
    }
}
