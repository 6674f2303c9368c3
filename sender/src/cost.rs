//! What the sender's texts cost (`smsgate_shared::cost`).
//!
//! 1. At send ([`estimate`]): one `cost` history entry per piece Twilio
//!    took, segments × the rate ([`cost::sms_rate`]), under the piece's SID;
//!    `smsgate_cost_usd_total` grows by it at once, the day's spend within
//!    a second ([`cost::DailySpend::add_soon`], written by the sender's
//!    flusher).
//! 2. After a piece's final status ([`fetch_price_later`]): Twilio's `price`
//!    is null at create and in callbacks (docs/TWILIO.md), so the Message is
//!    fetched once the status is final, again on the schedule
//!    [`crate::Tuning::price_fetch`] while `price` is still null. Twilio's
//!    figure is recorded under the same SID, which replaces the estimate in
//!    every sum, and the day's spend is corrected by the difference.
//!
//! 3. A call the sender placed ([`fetch_call_price_later`]): fetched on the
//!    same schedule until Twilio reports it ended with a `price`; recorded
//!    with its `duration` (seconds) as units. Calls get no estimate.
//!
//! The fetch runs beside the consumers, not in them: the message is
//! acked at once. A sender that stops before the price comes leaves the
//! estimate standing, which is what the sums then show (marked estimated).

use std::time::{Duration, SystemTime};

use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::config::Channel;
use smsgate_shared::cost::{self, Basis, DailySpend, Item};
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, HistoryEvent};

use crate::Ctx;
use crate::sms::SmsPiece;

/// Records the estimate of each piece sent (those with a SID).
pub(crate) async fn estimate(ctx: &Ctx, channel: &Channel, to: &E164, pieces: &[SmsPiece], sids: &[Option<String>]) {
    let rate = cost::sms_rate(&channel.pricing, to);
    let mut total = 0.0;
    let mut segments = 0u64;
    for (piece, sid) in pieces.iter().zip(sids) {
        let Some(sid) = sid.as_deref().filter(|s| *s != "unknown") else { continue };
        // A media-only piece has no text segments; Twilio bills it as one message.
        let units = u64::from(piece.segments.max(1));
        let usd = units as f64 * rate.usd_per_segment;
        let detail = format!("{units} × {} USD ({}, +{})", rate.usd_per_segment, rate.basis, to.calling_code());
        let figure = Figure { item: Item::Sms, sid, units, usd, basis: Basis::Estimate, detail };
        if let Err(e) = record((&ctx.bus.js, &ctx.bus.topology), &channel.id, to, figure).await {
            // The text went out; a missing figure is logged, never a resend.
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot record a piece's cost estimate");
        }
        total += usd;
        segments += units;
    }
    if total > 0.0 {
        // Written within a second with the others' (`DailySpend::add_soon`):
        // not a request per text.
        cost::record_metric(&channel.id, Item::Sms, total);
        ctx.spend.add_soon(&channel.id, total, SystemTime::now());
        tracing::info!(
            event = "cost.recorded",
            channel_id = channel.id.as_str(),
            kind = "sms",
            basis = "estimate",
            segments,
            cost_usd = total,
            "text cost estimated"
        );
    }
}

/// One cost figure of a piece or a call.
struct Figure<'a> {
    item: Item,
    sid: &'a str,
    units: u64,
    usd: f64,
    basis: Basis,
    detail: String,
}

/// Appends `figure` to the conversation (`Nats-Msg-Id`
/// `cost.<item>.<basis>.<sid>`: each figure once).
async fn record(
    (js, topology): (&async_nats::jetstream::Context, &smsgate_shared::topology::Topology),
    channel: &ChannelId,
    peer: &E164,
    figure: Figure<'_>,
) -> Result<(), bus::PublishError> {
    let event = HistoryEvent::Cost {
        item: figure.item,
        reference: figure.sid.to_owned(),
        units: figure.units,
        usd: Some(figure.usd),
        basis: figure.basis,
        detail: Some(figure.detail),
    };
    let id = MsgId::HistoryCost { item: figure.item, basis: figure.basis, reference: figure.sid };
    bus::append_history(js, topology, (channel, peer), id, event).await
}

/// After piece `sid`'s final status: fetches Twilio's price in the
/// background (see the module's doc).
pub(crate) fn fetch_price_later(ctx: &Ctx, channel_id: &ChannelId, peer: &E164, sid: &str) {
    let Some(live) = ctx.channels.get(channel_id) else { return };
    Pricer::of(ctx).later(live.channel.clone(), peer.clone(), sid.to_owned(), Item::Sms);
}

/// After call `sid` is placed: fetches its price and duration in the
/// background once Twilio reports it ended and billed (Twilio's call
/// `price` covers connectivity only; no estimate is made for calls).
pub(crate) fn fetch_call_price_later(ctx: &Ctx, channel: &Channel, peer: &E164, sid: &str) {
    Pricer::of(ctx).later(channel.clone(), peer.clone(), sid.to_owned(), Item::Call);
}

/// What a background price fetch needs, cloned out of the sender's context.
#[derive(Clone)]
struct Pricer {
    twilio: crate::twilio::TwilioClient,
    js: async_nats::jetstream::Context,
    topology: smsgate_shared::topology::Topology,
    spend: DailySpend,
    schedule: Vec<Duration>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Pricer {
    fn of(ctx: &Ctx) -> Self {
        Self {
            twilio: ctx.twilio.clone(),
            js: ctx.bus.js.clone(),
            topology: ctx.bus.topology.clone(),
            spend: ctx.spend.clone(),
            schedule: ctx.tuning.price_fetch.clone(),
            shutdown: ctx.shutdown.clone(),
        }
    }

    fn later(self, channel: Channel, peer: E164, sid: String, item: Item) {
        if sid.is_empty() || sid == "unknown" || self.schedule.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let shutdown = self.shutdown.clone();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.fetch(&channel, &peer, &sid, item) => {}
            }
        });
    }

    async fn fetch(&self, channel: &Channel, peer: &E164, sid: &str, item: Item) {
        let resource = if item == Item::Call { "Calls" } else { "Messages" };
        for (attempt, wait) in self.schedule.iter().enumerate() {
            tokio::time::sleep(*wait).await;
            let fetched = match self.twilio.fetch(channel, resource, sid).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::info!(
                        attempt = attempt + 1,
                        error = &e as &dyn std::error::Error,
                        outcome = "retry",
                        "cannot fetch the price yet"
                    );
                    continue;
                }
            };
            // A call is billed once it has ended.
            let ended = item != Item::Call || fetched.status.as_deref().is_some_and(envelope::call_ended);
            let Some(usd) = fetched.price_usd().filter(|_| ended) else { continue };
            if let Some(unit) = fetched.price_unit.as_deref().filter(|u| !u.eq_ignore_ascii_case("USD")) {
                // Sums are in USD; a figure in another currency is not mixed in.
                tracing::warn!(price_unit = unit, outcome = "not_usd", "Twilio priced it in another currency");
                return;
            }
            let (units, estimated) = match item {
                Item::Call => (fetched.duration_secs().unwrap_or(0), 0.0),
                _ => {
                    let units = fetched.segments().filter(|s| *s > 0).unwrap_or(1);
                    (units, units as f64 * cost::sms_rate(&channel.pricing, peer).usd_per_segment)
                }
            };
            let price = fetched.price.as_ref().map(ToString::to_string).unwrap_or_default();
            let detail = match item {
                Item::Call => {
                    format!("Twilio price {price} {}, {units} s", fetched.price_unit.as_deref().unwrap_or("USD"))
                }
                _ => format!("Twilio price {price} {}", fetched.price_unit.as_deref().unwrap_or("USD")),
            };
            let figure = Figure { item, sid, units, usd, basis: Basis::Twilio, detail };
            if let Err(e) = record((&self.js, &self.topology), &channel.id, peer, figure).await {
                tracing::warn!(error = &e as &dyn std::error::Error, "cannot record Twilio's price");
                return;
            }
            let delta = usd - estimated;
            cost::record_metric(&channel.id, item, delta);
            if let Err(e) = self.spend.add(&channel.id, delta, SystemTime::now()).await {
                tracing::warn!(error = &e as &dyn std::error::Error, "cannot correct the channel's spend today");
            }
            tracing::info!(
                event = "cost.recorded",
                channel_id = channel.id.as_str(),
                kind = item.as_str(),
                basis = "twilio",
                message_sid = sid,
                units,
                cost_usd = usd,
                estimate_usd = estimated,
                "Twilio's price recorded"
            );
            return;
        }
        tracing::info!(message_sid = sid, outcome = "unpriced", "Twilio gave no price in time; the estimate stands");
    }
}
