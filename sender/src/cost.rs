//! What the sender's texts cost (`smsgate_shared::cost`).
//!
//! 1. At send ([`estimate`]): one `cost` history entry per piece Twilio
//!    took, segments × the rate ([`cost::sms_rate`]), under the piece's SID;
//!    the day's spend and `smsgate_cost_usd_total` grow by it.
//! 2. After a piece's final status ([`fetch_price_later`]): Twilio's `price`
//!    is null at create and in callbacks (docs/TWILIO.md), so the Message is
//!    fetched once the status is final, again on the schedule
//!    [`crate::Tuning::price_fetch`] while `price` is still null. Twilio's
//!    figure is recorded under the same SID, which replaces the estimate in
//!    every sum, and the day's spend is corrected by the difference.
//!
//! The fetch runs beside the status consumer, not in it: the callback is
//! acked at once. A sender that stops before the price comes leaves the
//! estimate standing, which is what the sums then show (marked estimated).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::config::Channel;
use smsgate_shared::cost::{self, Basis, DailySpend, Item};
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::HistoryEvent;

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
        let figure = Figure { sid, units, usd, basis: Basis::Estimate, detail };
        if let Err(e) = record(ctx, &channel.id, to, figure).await {
            // The text went out; a missing figure is logged, never a resend.
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot record a piece's cost estimate");
        }
        total += usd;
        segments += units;
    }
    if total > 0.0 {
        add_spend(&ctx.spend, &channel.id, Item::Sms, total).await;
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

/// One SMS cost figure of a piece.
struct Figure<'a> {
    sid: &'a str,
    units: u64,
    usd: f64,
    basis: Basis,
    detail: String,
}

/// Appends `figure` to the conversation (`Nats-Msg-Id`
/// `cost.sms.<basis>.<sid>`: each figure once).
async fn record(ctx: &Ctx, channel: &ChannelId, peer: &E164, figure: Figure<'_>) -> Result<(), bus::PublishError> {
    let event = HistoryEvent::Cost {
        item: Item::Sms,
        reference: figure.sid.to_owned(),
        units: figure.units,
        usd: Some(figure.usd),
        basis: figure.basis,
        detail: Some(figure.detail),
    };
    let id = MsgId::HistoryCost { item: Item::Sms, basis: figure.basis, reference: figure.sid };
    bus::append_history(&ctx.bus.js, &ctx.bus.topology, (channel, peer), id, event).await
}

/// Adds to the day's spend and the metric; a NATS failure is logged (the
/// budget then lags, the text is not held for it).
pub(crate) async fn add_spend(spend: &DailySpend, channel: &ChannelId, item: Item, usd: f64) {
    cost::record_metric(channel, item, usd);
    if let Err(e) = spend.add(channel, usd, SystemTime::now()).await {
        tracing::warn!(error = &e as &dyn std::error::Error, "cannot add to the channel's spend today");
    }
}

/// After piece `sid`'s final status: fetches Twilio's price in the
/// background (see the module's doc).
pub(crate) fn fetch_price_later(ctx: &Arc<Ctx>, channel_id: &ChannelId, peer: &E164, sid: &str) {
    if sid.is_empty() || sid == "unknown" || ctx.tuning.price_fetch.is_empty() {
        return;
    }
    let Some(live) = ctx.channels.get(channel_id) else { return };
    let (ctx, channel, peer, sid) = (ctx.clone(), live.channel.clone(), peer.clone(), sid.to_owned());
    tokio::spawn(async move {
        let shutdown = ctx.shutdown.clone();
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = fetch_price(&ctx, &channel, &peer, &sid) => {}
        }
    });
}

async fn fetch_price(ctx: &Ctx, channel: &Channel, peer: &E164, sid: &str) {
    let schedule: Vec<Duration> = ctx.tuning.price_fetch.clone();
    for (attempt, wait) in schedule.iter().enumerate() {
        tokio::time::sleep(*wait).await;
        let fetched = match ctx.twilio.fetch(channel, "Messages", sid).await {
            Ok(f) => f,
            Err(e) => {
                tracing::info!(
                    attempt = attempt + 1,
                    error = &e as &dyn std::error::Error,
                    outcome = "retry",
                    "cannot fetch the message's price yet"
                );
                continue;
            }
        };
        let Some(usd) = fetched.price_usd() else { continue };
        if let Some(unit) = fetched.price_unit.as_deref().filter(|u| !u.eq_ignore_ascii_case("USD")) {
            // Sums are in USD; a figure in another currency is not mixed in.
            tracing::warn!(price_unit = unit, outcome = "not_usd", "Twilio priced the message in another currency");
            return;
        }
        let rate = cost::sms_rate(&channel.pricing, peer);
        let units = fetched.segments().filter(|s| *s > 0).unwrap_or(1);
        let estimated = units as f64 * rate.usd_per_segment;
        let price = fetched.price.as_ref().map(ToString::to_string).unwrap_or_default();
        let detail = format!("Twilio price {price} {}", fetched.price_unit.as_deref().unwrap_or("USD"));
        let figure = Figure { sid, units, usd, basis: Basis::Twilio, detail };
        if let Err(e) = record(ctx, &channel.id, peer, figure).await {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot record Twilio's price");
            return;
        }
        let delta = usd - estimated;
        cost::record_metric(&channel.id, Item::Sms, delta);
        if let Err(e) = ctx.spend.add(&channel.id, delta, SystemTime::now()).await {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot correct the channel's spend today");
        }
        tracing::info!(
            event = "cost.recorded",
            channel_id = channel.id.as_str(),
            kind = "sms",
            basis = "twilio",
            message_sid = sid,
            segments = units,
            cost_usd = usd,
            estimate_usd = estimated,
            "Twilio's price recorded"
        );
        return;
    }
    tracing::info!(message_sid = sid, outcome = "unpriced", "Twilio gave no price in time; the estimate stands");
}
