//! The guard again, just before a message that is not a direct reply goes
//! out (`Outbound.guard` set): a STOP, a revoked consent or a pause that
//! came in since the API accepted it wins; quiet hours defer it to the
//! schedule; the recipient's cap is counted here, atomically across
//! senders, so two texts accepted at once cannot both be the third.

use smsgate_shared::config::Channel;
use smsgate_shared::envelope::{Guarded, NoteReason, Outbound};
use smsgate_shared::guard::{self, Claim, Denial, Verdict};
use smsgate_shared::schedule::{Scheduled, Why};
use time::OffsetDateTime;

use crate::Ctx;
use crate::deliver::{Disposition, note_then_ack};

/// What the guard decided for this delivery.
pub(crate) enum Gate {
    /// Send it now.
    Go,
    /// Done with it (refused or deferred, and recorded): this disposition.
    Stop(Disposition),
}

pub(crate) async fn gate(ctx: &Ctx, channel: &Channel, out: &Outbound, guarded: Guarded) -> Gate {
    let now = OffsetDateTime::now_utc();
    let checked = match guard::check(&ctx.guard, channel, out, guarded, now).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = &e as &dyn std::error::Error, "cannot read what the guard needs; retrying later");
            return Gate::Stop(Disposition::Retry(ctx.tuning.redelivery_delay));
        }
    };
    match checked.verdict {
        Verdict::Send if !checked.counts => Gate::Go,
        Verdict::Send => {
            let cap = channel.compliance.cap_for(&out.to);
            match ctx.guard.claim(&channel.id, &out.to, out.id.as_str(), cap, now).await {
                Ok(Claim::Counted) => Gate::Go,
                Ok(Claim::Full) => refuse(ctx, out, Denial::RecipientCap).await,
                Err(e) => {
                    tracing::warn!(
                        error = &e as &dyn std::error::Error,
                        "cannot count the text against the cap; retrying later"
                    );
                    Gate::Stop(Disposition::Retry(ctx.tuning.redelivery_delay))
                }
            }
        }
        Verdict::Defer { until } => {
            let entry = Scheduled::new(out.clone(), until, Why::QuietHours);
            if let Err(e) = ctx.schedule.put(&entry).await {
                tracing::warn!(error = &e as &dyn std::error::Error, "cannot defer the message; retrying later");
                return Gate::Stop(Disposition::Retry(ctx.tuning.redelivery_delay));
            }
            tracing::info!(outcome = "deferred", send_at = %until, "outside the recipient's allowed hours; deferred");
            metrics::counter!("smsgate_guard_total", "stage" => "send", "verdict" => "defer").increment(1);
            let detail = guard::scheduled_note(until, Why::QuietHours.as_str(), guarded.purpose);
            Gate::Stop(note_then_ack(ctx, out, NoteReason::Scheduled, &detail).await)
        }
        Verdict::Deny(denial) => refuse(ctx, out, denial).await,
    }
}

async fn refuse(ctx: &Ctx, out: &Outbound, denial: Denial) -> Gate {
    tracing::info!(outcome = "refused", reason = denial.as_str(), "the guard refused the message at send time");
    metrics::counter!("smsgate_guard_total", "stage" => "send", "verdict" => denial.as_str()).increment(1);
    Gate::Stop(note_then_ack(ctx, out, NoteReason::Refused, &guard::refusal_note(denial)).await)
}
