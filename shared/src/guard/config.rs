//! The channel's `compliance` key (DESIGN "Channel config JSON").

use serde::Deserialize;
use serde_json::Value;

use super::rules::{self, DEFAULT_PER_DAY, DEFAULT_WINDOW, Minute};
use crate::domain::E164;

/// How the guard treats a channel's agent-initiated texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compliance {
    /// The allowed window in the recipient's local time; `None` turns quiet
    /// hours off (`"quiet_hours": null`, the operator's responsibility).
    pub quiet_hours: Option<(Minute, Minute)>,
    /// The zone of numbers outside NANP whose zone the prefix map cannot tell.
    pub default_time_zone: Option<String>,
    pub per_recipient_per_day: u32,
    pub conversation_window_hours: u32,
    /// Apply the state rows (rules.rs) where stricter than the channel.
    pub state_rules: bool,
}

impl Default for Compliance {
    fn default() -> Self {
        Self {
            quiet_hours: Some(DEFAULT_WINDOW),
            default_time_zone: None,
            per_recipient_per_day: DEFAULT_PER_DAY,
            conversation_window_hours: 24,
            state_rules: true,
        }
    }
}

impl Compliance {
    /// The per-recipient cap for `to`: the channel's, or a stricter state row's.
    pub fn cap_for(&self, to: &E164) -> u32 {
        let state = if self.state_rules {
            rules::rules_for(to.subject_token(), to.calling_code()).filter_map(|r| r.per_day).min()
        } else {
            None
        };
        state.map_or(self.per_recipient_per_day, |s| s.min(self.per_recipient_per_day))
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompliance {
    #[serde(default)]
    quiet_hours: Option<RawWindow>,
    #[serde(default)]
    default_time_zone: Option<String>,
    #[serde(default)]
    per_recipient_per_day: Option<u32>,
    #[serde(default)]
    conversation_window_hours: Option<u32>,
    #[serde(default)]
    state_rules: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    start: String,
    end: String,
}

/// `"HH:MM"` as minutes after midnight (`"24:00"` for the end of the day).
fn minute(s: &str) -> Option<Minute> {
    let s = s.trim();
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !s.bytes().filter(|b| *b != b':').all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    let total = h * 60 + m;
    (m < 60 && total <= 24 * 60).then_some(total)
}

/// The `compliance` key: its problems reported through `fail`, defaults for
/// what is absent.
pub fn parse(value: Option<Value>, fail: &mut dyn FnMut(&str, String)) -> Compliance {
    let quiet_off = matches!(&value, Some(Value::Object(o)) if o.get("quiet_hours") == Some(&Value::Null));
    let raw: RawCompliance = crate::config::section(value, "config.compliance", fail);
    let mut out = Compliance::default();
    if quiet_off {
        out.quiet_hours = None;
    } else if let Some(w) = raw.quiet_hours {
        match (minute(&w.start), minute(&w.end)) {
            (Some(s), Some(e)) if s < e => out.quiet_hours = Some((s, e)),
            (Some(_), Some(_)) => {
                fail("config.compliance.quiet_hours", "start must be before end (\"08:00\" to \"20:00\")".to_owned())
            }
            _ => fail("config.compliance.quiet_hours", "start and end are \"HH:MM\" times, e.g. \"08:00\"".to_owned()),
        }
    }
    if let Some(z) = raw.default_time_zone {
        if jiff::tz::TimeZone::get(z.trim()).is_err() {
            fail(
                "config.compliance.default_time_zone",
                format!("{:?} is not an IANA time zone (e.g. \"Europe/Berlin\")", crate::redact::clip(&z, 40)),
            );
        } else {
            out.default_time_zone = Some(z.trim().to_owned());
        }
    }
    if let Some(n) = raw.per_recipient_per_day {
        if n == 0 {
            fail("config.compliance.per_recipient_per_day", "must be at least 1".to_owned());
        }
        out.per_recipient_per_day = n;
    }
    if let Some(h) = raw.conversation_window_hours {
        if !(1..=24 * 30).contains(&h) {
            fail("config.compliance.conversation_window_hours", "must be 1 to 720".to_owned());
        }
        out.conversation_window_hours = h;
    }
    if let Some(s) = raw.state_rules {
        out.state_rules = s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(v: Value) -> (Compliance, Vec<String>) {
        let mut problems = Vec::new();
        let c = parse(Some(v), &mut |k, m| problems.push(format!("{k}: {m}")));
        (c, problems)
    }

    #[test]
    fn absent_keys_take_the_defaults_and_null_turns_quiet_hours_off() {
        assert_eq!(parse(None, &mut |_, _| panic!()), Compliance::default());
        let (c, p) = parsed(serde_json::json!({"quiet_hours": null}));
        assert!(p.is_empty());
        assert_eq!(c.quiet_hours, None);
        let (c, p) =
            parsed(serde_json::json!({"quiet_hours": {"start": "09:30", "end": "19:00"}, "per_recipient_per_day": 2}));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.quiet_hours, Some((570, 1140)));
        assert_eq!(c.per_recipient_per_day, 2);
    }

    #[test]
    fn bad_values_name_their_key() {
        let (_, p) = parsed(serde_json::json!({"quiet_hours": {"start": "20:00", "end": "08:00"}}));
        assert!(p[0].starts_with("config.compliance.quiet_hours"), "{p:?}");
        let (_, p) = parsed(serde_json::json!({"quiet_hours": {"start": "8", "end": "20:00"}}));
        assert!(p[0].starts_with("config.compliance.quiet_hours"), "{p:?}");
        let (_, p) = parsed(serde_json::json!({"default_time_zone": "Mars/Olympus"}));
        assert!(p[0].starts_with("config.compliance.default_time_zone"), "{p:?}");
        let (_, p) = parsed(serde_json::json!({"quiet_hour": {}}));
        assert!(p[0].starts_with("config.compliance"), "{p:?}");
    }

    #[test]
    fn a_state_cap_is_stricter_than_the_channel() {
        let c = Compliance { per_recipient_per_day: 10, ..Compliance::default() };
        assert_eq!(c.cap_for(&E164::parse("+13055550100").unwrap()), 3);
        assert_eq!(c.cap_for(&E164::parse("+14155550100").unwrap()), 10);
        let off = Compliance { per_recipient_per_day: 10, state_rules: false, ..Compliance::default() };
        assert_eq!(off.cap_for(&E164::parse("+13055550100").unwrap()), 10);
    }
}
