//! What the worker's model calls cost, and the channel's day budget
//! (`smsgate_shared::cost`, `limits.usd_per_day`).
//!
//! - [`Spend::over_budget`]: asked before each model call; when the channel
//!   has spent its `limits.usd_per_day` today (UTC) the message is not given
//!   to the model: a `budget` note, no reply. STOP, START and HELP are
//!   handled before it and still answered.
//! - [`Spend::model_answer`]: the answer's `usage` × `pricing.model`, as a
//!   `cost` history entry under the inbound's MessageSid, added to the day's
//!   spend and `smsgate_cost_usd_total{kind="model"}`. An OpenAI-compatible
//!   server that gives no `usage` is recorded as "usage unknown", never 0.
//!   A channel without `pricing.model` gets no model figure (tokens are logged).

use std::time::SystemTime;

use smsgate_shared::bus::{self, MsgId};
use smsgate_shared::config::Channel;
use smsgate_shared::cost::{self, Basis, DailySpend, Item, Usage};
use smsgate_shared::domain::{E164, MessageSid};
use smsgate_shared::envelope::HistoryEvent;
use smsgate_shared::topology::Topology;

use crate::Error;

/// The day's spend, and where cost entries are written.
pub struct Spend {
    pub spend: DailySpend,
    pub js: async_nats::jetstream::Context,
    pub topology: Topology,
}

impl Spend {
    /// Whether the channel has spent its `limits.usd_per_day` today.
    /// Also sets the gauges the budget alert compares:
    /// `smsgate_cost_today_usd{channel_id}` and `smsgate_cost_budget_usd{channel_id}`.
    pub async fn over_budget(&self, channel: &Channel) -> Result<bool, Error> {
        let Some(limit) = channel.limits.usd_per_day else {
            return Ok(false);
        };
        let today = self.spend.today(&channel.id, SystemTime::now()).await.map_err(|e| Error::Budget(Box::new(e)))?;
        let id = channel.id.to_string();
        metrics::gauge!("smsgate_cost_today_usd", "channel_id" => id.clone()).set(today);
        metrics::gauge!("smsgate_cost_budget_usd", "channel_id" => id).set(limit);
        Ok(today >= limit)
    }

    /// Records what answering `sid` cost. `kind` is the backend's kind:
    /// only `openai` calls a model smsgate pays for; an agent webhook's
    /// costs are its own.
    pub async fn model_answer(
        &self,
        channel: &Channel,
        peer: &E164,
        sid: &MessageSid,
        kind: &str,
        usage: Option<Usage>,
    ) {
        if kind != "openai" {
            return;
        }
        if channel.pricing.model.is_none() {
            // No prices, no figure: the tokens go to the log only.
            if let Some(u) = usage {
                tracing::info!(tokens = u.total(), "model tokens (no pricing.model configured)");
            }
            return;
        }
        let (units, usd, detail) = match usage {
            Some(u) => {
                let usd = cost::model_usd(&channel.pricing, &u);
                (u.total(), usd, format!("{} prompt + {} completion tokens", u.prompt_tokens, u.completion_tokens))
            }
            None => (0, None, "usage unknown: the model server gave no token counts".to_owned()),
        };
        let event = HistoryEvent::Cost {
            item: Item::Model,
            reference: sid.to_string(),
            units,
            usd,
            basis: Basis::Usage,
            detail: Some(detail),
        };
        let id = MsgId::HistoryCost { item: Item::Model, basis: Basis::Usage, reference: sid.as_str() };
        if let Err(e) = bus::append_history(&self.js, &self.topology, (&channel.id, peer), id, event).await {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot record the model answer's cost");
        }
        let Some(usd) = usd else {
            tracing::info!(
                event = "cost.recorded",
                channel_id = channel.id.as_str(),
                kind = "model",
                tokens = units,
                cost_usd = 0.0,
                usage = if usage.is_some() { "known" } else { "unknown" },
                "model cost not priced"
            );
            return;
        };
        cost::record_metric(&channel.id, Item::Model, usd);
        if let Err(e) = self.spend.add(&channel.id, usd, SystemTime::now()).await {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot add to the channel's spend today");
        }
        tracing::info!(
            event = "cost.recorded",
            channel_id = channel.id.as_str(),
            kind = "model",
            tokens = units,
            cost_usd = usd,
            "model cost recorded"
        );
    }
}
