//! The compliance guard: the one door every text or call passes that is not
//! the direct reply to an inbound message (docs/COMPLIANCE.md).
//!
//! # Layout
//!
//! - this file: [`decide`], a pure function of the request ([`Ask`]), what
//!   is known about the recipient ([`Facts`]) and the clock, answering a
//!   [`Verdict`]: Send, Defer(until) or Deny(reason). Callers turn the
//!   verdict into a status code, a tool result or a note; none re-implements
//!   a check.
//! - [`window`]: quiet hours in the recipient's local time, the next allowed
//!   minute.
//! - [`zones`]: a number's time zones from libphonenumber's prefix map.
//! - [`rules`]: federal and state rows (hours, caps), each with its source.
//! - [`config`]: the channel's `compliance` key.
//! - [`door`]: [`door::submit`], what every sending caller does with the
//!   verdict (queue, schedule, or refuse, noted in the conversation).
//! - [`facts`]: reading [`Facts`] from NATS (opt-out, consent, pause, the
//!   recipient's recent agent texts, their last inbound).
//!
//! The checks run in this order: opt-out, block list, `reply_countries`,
//! the channel's daily budget, consent for the purpose, the pause for a
//! human (agent texts only), quiet hours, the per-recipient cap. The API runs the guard to answer at once;
//! the sender runs it again just before the text goes out, so a STOP that
//! arrives in between wins.

pub mod config;
pub mod door;
pub mod facts;
pub mod rules;
pub mod window;
pub mod zones;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::config::Channel;
use crate::domain::E164;
use crate::envelope::{Guarded, Outbound};

pub use config::Compliance;
pub use facts::{Claim, ConsentRecord, FactsError, GuardStore};
pub use window::Window;

/// What a text is for: decides the consent it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Answers the person, who texted within the conversation window.
    Conversational,
    /// Alerts, reminders: consent on record or an inbound from the number.
    Informational,
    /// Promotion: written consent on record.
    Marketing,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conversational => "conversational",
            Self::Informational => "informational",
            Self::Marketing => "marketing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "conversational" => Some(Self::Conversational),
            "informational" => Some(Self::Informational),
            "marketing" => Some(Self::Marketing),
            _ => None,
        }
    }
}

/// Who originates the text. An operator's own message is not held back by a
/// pause for a human (that is how the human answers); an agent's is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    Operator,
    Agent,
}

/// A text, or an (AI voice) call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Call,
}

/// The kind of consent on record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentKind {
    Express,
    Written,
}

/// What is known about the recipient when the guard runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub opted_out: bool,
    pub consent: Option<ConsentKind>,
    /// Their last inbound on this channel, if history still has one.
    pub last_inbound: Option<OffsetDateTime>,
    /// They texted (or called) this channel at least once.
    pub ever_inbound: bool,
    pub paused_until: Option<OffsetDateTime>,
    /// Agent-initiated texts to them in the 24 h before the send, not
    /// counting this one.
    pub sent_last_24h: u32,
    /// The channel has spent its `limits.usd_per_day` today (`crate::cost`).
    pub budget_exceeded: bool,
}

/// The text the guard is asked about.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub channel: &'a Channel,
    pub to: &'a E164,
    pub purpose: Purpose,
    pub initiator: Initiator,
    pub kind: Kind,
    /// Announced by a reply (`in_reply_to`): a follow-up to the person's
    /// own message.
    pub follow_up: bool,
    /// When it would go out: now, or the time it was scheduled for.
    pub at: OffsetDateTime,
}

/// Why the guard refuses a text outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Denial {
    OptedOut,
    Blocked,
    CountryNotAllowed,
    NoConsent,
    Paused,
    RecipientCap,
    /// No allowed minute within a week (windows that never overlap).
    QuietHours,
    /// The channel spent its `limits.usd_per_day` today.
    Budget,
}

impl Denial {
    /// The machine-readable code (the admin API's `error`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OptedOut => "opted_out",
            Self::Blocked => "blocked",
            Self::CountryNotAllowed => "country_not_allowed",
            Self::NoConsent => "no_consent",
            Self::Paused => "paused",
            Self::RecipientCap => "recipient_cap",
            Self::QuietHours => "quiet_hours",
            Self::Budget => "budget",
        }
    }

    /// A sentence for a person (or a model) reading the refusal.
    pub fn explain(self) -> &'static str {
        match self {
            Self::OptedOut => "the number has opted out of this channel",
            Self::Blocked => "the number is not allowed on this channel (allow/block list)",
            Self::CountryNotAllowed => "the number's country is not in the channel's reply_countries",
            Self::NoConsent => "no consent on record for this purpose",
            Self::Paused => "the conversation is paused for a person; agent texts are held back",
            Self::RecipientCap => "the recipient already got the most agent texts allowed in 24 hours",
            Self::QuietHours => "no allowed sending time in the recipient's time zones",
            Self::Budget => "the channel has spent its limits.usd_per_day for today (UTC)",
        }
    }
}

/// The guard's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Outside the recipient's allowed hours: the next allowed minute.
    Defer {
        until: OffsetDateTime,
    },
    Deny(Denial),
}

/// The purpose a request gets when it names none: conversational when the
/// person texted within the window, else informational.
pub fn default_purpose(compliance: &Compliance, facts: &Facts, now: OffsetDateTime) -> Purpose {
    if within_window(compliance, facts, now) { Purpose::Conversational } else { Purpose::Informational }
}

fn within_window(compliance: &Compliance, facts: &Facts, at: OffsetDateTime) -> bool {
    let window = Duration::hours(i64::from(compliance.conversation_window_hours));
    facts.last_inbound.is_some_and(|t| at - t <= window)
}

/// Whether consent covers the purpose (and the kind: an AI voice call needs
/// consent on record or a recent conversation, FCC 24-17).
fn consented(ask: &Ask<'_>, compliance: &Compliance, facts: &Facts) -> bool {
    let recent = within_window(compliance, facts, ask.at);
    match (ask.purpose, ask.kind) {
        (Purpose::Marketing, _) => facts.consent == Some(ConsentKind::Written),
        (_, Kind::Call) => recent || facts.consent.is_some(),
        // A conversational text whose window has closed is still fine as an
        // informational one.
        (Purpose::Conversational | Purpose::Informational, Kind::Text) => {
            recent || facts.consent.is_some() || facts.ever_inbound
        }
    }
}

/// Whether `ask` is held to quiet hours and counted against the cap: all
/// but a text that is part of a live conversation (the person texted
/// within the window) and either follows up their message (announced by a
/// reply: `in_reply_to`) or is a person's own conversational answer (an
/// operator chatting with them). What the agent starts on its own counts.
pub fn counts(ask: &Ask<'_>, facts: &Facts) -> bool {
    let live = within_window(&ask.channel.compliance, facts, ask.at);
    let answers = ask.follow_up || (ask.initiator == Initiator::Operator && ask.purpose == Purpose::Conversational);
    !(live && answers)
}

/// The guard for an outbound message marked [`Guarded`], as of `at`: the
/// recipient's facts read from NATS, then [`decide`].
pub async fn check(
    store: &GuardStore,
    channel: &Channel,
    out: &Outbound,
    guarded: Guarded,
    at: OffsetDateTime,
) -> Result<Checked, FactsError> {
    let window = channel.compliance.conversation_window_hours;
    let mut facts = store.facts(&channel.id, &out.to, window, at, Some(out.id.as_str())).await?;
    facts.budget_exceeded = store.budget_exceeded(channel).await?;
    let ask = Ask {
        channel,
        to: &out.to,
        purpose: guarded.purpose,
        initiator: guarded.initiator,
        kind: if out.call.is_some() { Kind::Call } else { Kind::Text },
        follow_up: out.in_reply_to.is_some(),
        at,
    };
    Ok(Checked { verdict: decide(&ask, &facts), counts: counts(&ask, &facts), facts })
}

/// What [`check`] found.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: Verdict,
    /// Counted against the recipient's cap when sent.
    pub counts: bool,
    pub facts: Facts,
}

/// The detail of a `refused` note: the code first, then why.
pub fn refusal_note(denial: Denial) -> String {
    format!("{}: {}", denial.as_str(), denial.explain())
}

/// The detail of a `scheduled` note.
pub fn scheduled_note(send_at: OffsetDateTime, why: &str, purpose: Purpose) -> String {
    let at = send_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    format!("{why}: send at {at} ({})", purpose.as_str())
}

/// The guard: Send, Defer(until) or Deny(reason) for `ask`, given `facts`.
pub fn decide(ask: &Ask<'_>, facts: &Facts) -> Verdict {
    let channel = ask.channel;
    let compliance = &channel.compliance;
    if facts.opted_out {
        return Verdict::Deny(Denial::OptedOut);
    }
    if !channel.admits(ask.to) {
        return Verdict::Deny(Denial::Blocked);
    }
    if !channel.reply_countries.admits(ask.to) {
        return Verdict::Deny(Denial::CountryNotAllowed);
    }
    // The day's budget stops what the agent starts, and what an operator
    // starts on their own; an operator answering a live conversation goes.
    if facts.budget_exceeded && (ask.initiator == Initiator::Agent || counts(ask, facts)) {
        return Verdict::Deny(Denial::Budget);
    }
    if !consented(ask, compliance, facts) {
        return Verdict::Deny(Denial::NoConsent);
    }
    if ask.initiator == Initiator::Agent && facts.paused_until.is_some_and(|until| ask.at < until) {
        return Verdict::Deny(Denial::Paused);
    }
    if !counts(ask, facts) {
        return Verdict::Send;
    }
    let window = Window::for_number(compliance, ask.to);
    if !window.open_at(ask.at) {
        return match window.next_open(ask.at) {
            Some(until) => Verdict::Defer { until },
            None => Verdict::Deny(Denial::QuietHours),
        };
    }
    if facts.sent_last_24h >= compliance.cap_for(ask.to) {
        return Verdict::Deny(Denial::RecipientCap);
    }
    Verdict::Send
}

#[cfg(test)]
mod tests;
