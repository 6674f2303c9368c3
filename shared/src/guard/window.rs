//! Quiet hours in the recipient's local time: whether a moment is inside the
//! allowed window in every zone the number may be in, and the next minute
//! that is.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use time::OffsetDateTime;

use super::Compliance;
use super::rules::{self, Week};
use super::zones;
use crate::domain::E164;

/// How far ahead the next allowed minute is looked for.
const HORIZON_DAYS: i64 = 8;

/// The allowed hours of one recipient.
#[derive(Debug, Clone)]
pub struct Window {
    /// `None`: quiet hours are off for the channel.
    week: Option<Week>,
    zones: Vec<(String, TimeZone)>,
}

fn to_jiff(t: OffsetDateTime) -> Timestamp {
    // Every OffsetDateTime the guard sees is within jiff's range (years
    // -9999..=9999); the epoch is a harmless fallback for the impossible.
    Timestamp::from_nanosecond(t.unix_timestamp_nanos()).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn from_jiff(t: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Window {
    /// The channel's window, narrowed by every rule row for the number, in
    /// the number's zones.
    pub fn for_number(compliance: &Compliance, to: &E164) -> Self {
        let zones = zones::for_number(to, compliance.default_time_zone.as_deref()).zones;
        let week = compliance.quiet_hours.map(|(start, end)| {
            let mut week = Week::every_day(start, end);
            if compliance.state_rules {
                for rule in rules::rules_for(to.subject_token(), to.calling_code()) {
                    week = week.intersect(&rule.hours);
                }
            }
            week
        });
        Self { week, zones }
    }

    /// The same window evaluated in other zones (tests).
    #[cfg(test)]
    pub(crate) fn test_zones(self, names: &[&str]) -> Self {
        let zones = names.iter().map(|n| ((*n).to_owned(), TimeZone::get(n).expect("a known zone"))).collect();
        Self { zones, ..self }
    }

    /// The zone names the window is evaluated in.
    pub fn zone_names(&self) -> impl Iterator<Item = &str> {
        self.zones.iter().map(|(n, _)| n.as_str())
    }

    /// Whether `at` is inside the window in every zone.
    pub fn open_at(&self, at: OffsetDateTime) -> bool {
        let Some(week) = &self.week else { return true };
        let t = to_jiff(at);
        self.zones.iter().all(|(_, tz)| open_in(week, t, tz))
    }

    /// The first moment at or after `at` inside the window in every zone;
    /// `None` when there is none within a week (windows that never overlap).
    pub fn next_open(&self, at: OffsetDateTime) -> Option<OffsetDateTime> {
        let Some(week) = &self.week else { return Some(at) };
        let start = to_jiff(at);
        let limit = start.checked_add(jiff::SignedDuration::from_hours(24 * HORIZON_DAYS)).ok()?;
        let mut t = start;
        // Each pass moves `t` forward to the next opening in a zone where
        // it is closed; when no zone moves it, it is open in all of them.
        while t <= limit {
            let mut moved = false;
            for (_, tz) in &self.zones {
                if !open_in(week, t, tz) {
                    t = next_start(week, t, tz)?;
                    moved = true;
                }
            }
            if !moved {
                return Some(from_jiff(t));
            }
        }
        None
    }
}

/// Whether `t` is inside `week`'s window in `tz`.
fn open_in(week: &Week, t: Timestamp, tz: &TimeZone) -> bool {
    let local = tz.to_datetime(t);
    let Some((start, end)) = week.on(local.weekday()) else { return false };
    let second = i32::from(local.hour()) * 3600 + i32::from(local.minute()) * 60 + i32::from(local.second());
    i32::from(start) * 60 <= second && second < i32::from(end) * 60
}

/// The next start of a window in `tz` strictly after `t` (`t` is closed).
fn next_start(week: &Week, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
    let today: Date = tz.to_datetime(t).date();
    for d in 0..=HORIZON_DAYS {
        let day = today.checked_add(jiff::Span::new().days(d)).ok()?;
        let Some((start, _)) = week.on(day.weekday()) else { continue };
        let local = day.at((start / 60) as i8, (start % 60) as i8, 0, 0);
        let ambiguous = tz.to_ambiguous_timestamp(local);
        let at = if ambiguous.is_ambiguous() && ambiguous.earlier().ok()? < ambiguous.later().ok()? {
            match ambiguous.offset() {
                // A start inside a DST gap (02:30 on the spring day does not
                // exist): the window opens when the gap ends.
                jiff::tz::AmbiguousOffset::Gap { .. } => {
                    let before = ambiguous.earlier().ok()?;
                    tz.following(before).next().map(|t| t.timestamp()).unwrap_or(ambiguous.later().ok()?)
                }
                // A start repeated by a fold: its first occurrence.
                _ => ambiguous.earlier().ok()?,
            }
        } else {
            ambiguous.compatible().ok()?
        };
        if at > t {
            return Some(at);
        }
    }
    None
}
