//! Quiet hours and frequency rules as data: one row per rule, each with its
//! source (docs/COMPLIANCE.md). Not legal advice: the rows encode common US rules
//! conservatively, and an area code is not where a person is.

use jiff::civil::Weekday;

/// Minutes after local midnight.
pub type Minute = u16;

/// An allowed window per weekday, Monday first; `None` = no texts that day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Week(pub [Option<(Minute, Minute)>; 7]);

const fn hm(h: u16, m: u16) -> Minute {
    h * 60 + m
}

impl Week {
    pub const fn every_day(start: Minute, end: Minute) -> Self {
        Week([Some((start, end)); 7])
    }

    /// The window on `day`.
    pub fn on(&self, day: Weekday) -> Option<(Minute, Minute)> {
        self.0[day.to_monday_zero_offset() as usize]
    }

    /// Both windows at once: the later start, the earlier end, per day.
    pub fn intersect(&self, other: &Week) -> Week {
        let mut out = [None; 7];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = match (self.0[i], other.0[i]) {
                (Some((a0, a1)), Some((b0, b1))) if a0.max(b0) < a1.min(b1) => Some((a0.max(b0), a1.min(b1))),
                _ => None,
            };
        }
        Week(out)
    }
}

/// Who a row applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Every number with this calling code.
    Country(&'static str),
    /// NANP numbers with one of these area codes.
    AreaCodes(&'static [&'static str]),
}

/// One rule: where it applies, its hours, its cap, and where it comes from.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub name: &'static str,
    pub applies: Applies,
    pub hours: Week,
    /// At most this many agent-initiated texts per recipient per 24 h.
    pub per_day: Option<u32>,
    pub source: &'static str,
}

const TX_HOURS: Week = Week([
    Some((hm(9, 0), hm(21, 0))),
    Some((hm(9, 0), hm(21, 0))),
    Some((hm(9, 0), hm(21, 0))),
    Some((hm(9, 0), hm(21, 0))),
    Some((hm(9, 0), hm(21, 0))),
    Some((hm(9, 0), hm(21, 0))),
    Some((hm(12, 0), hm(21, 0))),
]);

/// The rules. Area codes: every prefix of the code geocoded to the state in
/// libphonenumber's `resources/geocoding/en/1.txt` (shared/data/libphonenumber).
pub const RULES: &[Rule] = &[
    Rule {
        name: "US federal",
        applies: Applies::Country("1"),
        hours: Week::every_day(hm(8, 0), hm(21, 0)),
        per_day: None,
        source: "47 CFR 64.1200(c)(1): no solicitation before 8:00 or after 21:00 at the called party's location",
    },
    Rule {
        name: "FL",
        applies: Applies::AreaCodes(&[
            "239", "305", "321", "324", "352", "386", "407", "448", "561", "645", "656", "689", "727", "728", "754",
            "772", "786", "813", "850", "863", "904", "941", "954",
        ]),
        hours: Week::every_day(hm(8, 0), hm(20, 0)),
        per_day: Some(3),
        source: "Fla. Stat. 501.616(6) as amended by SB 1120 (2021): 8-20, at most 3 per 24 h on one subject",
    },
    Rule {
        name: "OK",
        applies: Applies::AreaCodes(&["405", "539", "572", "580", "918"]),
        hours: Week::every_day(hm(8, 0), hm(20, 0)),
        per_day: Some(3),
        source: "Oklahoma Telephone Solicitation Act 2022: 8-20, at most 3 per 24 h, same subject (secondary source)",
    },
    Rule {
        name: "MD",
        applies: Applies::AreaCodes(&["227", "240", "301", "410", "443", "667"]),
        hours: Week::every_day(hm(8, 0), hm(20, 0)),
        per_day: Some(3),
        source: "Maryland Stop the Spam Calls Act, from 2024-01-01: 8-20, at most 3 per 24 h, same subject (secondary source)",
    },
    Rule {
        name: "WA",
        // 564 overlays 360 (NANPA, 2017); the geocoding file predates it.
        applies: Applies::AreaCodes(&["206", "253", "360", "425", "509", "564"]),
        hours: Week::every_day(hm(8, 0), hm(20, 0)),
        per_day: None,
        source: "RCW 19.158.040(2): 8-20",
    },
    Rule {
        name: "CT",
        applies: Applies::AreaCodes(&["203", "475", "860", "959"]),
        hours: Week::every_day(hm(9, 0), hm(20, 0)),
        per_day: None,
        source: "Connecticut telemarketing hours, 9-20 (secondary source; docs/COMPLIANCE.md)",
    },
    Rule {
        name: "TX",
        applies: Applies::AreaCodes(&[
            "210", "214", "254", "281", "325", "346", "361", "409", "430", "432", "469", "512", "682", "713", "726",
            "737", "806", "817", "830", "832", "903", "915", "936", "940", "945", "956", "972", "979",
        ]),
        hours: TX_HOURS,
        per_day: None,
        source: "Texas SB 140: Mon-Sat 9-21, Sun 12-21 (secondary source; docs/COMPLIANCE.md)",
    },
];

/// The rules that apply to the number with these digits (E.164 without `+`)
/// and calling code.
pub fn rules_for<'a>(digits: &'a str, calling_code: &'a str) -> impl Iterator<Item = &'static Rule> + 'a {
    RULES.iter().filter(move |r| match r.applies {
        Applies::Country(c) => c == calling_code,
        Applies::AreaCodes(codes) => calling_code == "1" && digits.len() >= 4 && codes.contains(&&digits[1..4]),
    })
}

/// The strictest common floor for a US number whose state is unknown is
/// already the channel's default (8-20, 3 a day); rows only ever narrow it.
pub const DEFAULT_WINDOW: (Minute, Minute) = (hm(8, 0), hm(20, 0));
pub const DEFAULT_PER_DAY: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &str) -> Vec<&'static str> {
        rules_for(n, &n[..1]).map(|r| r.name).collect()
    }

    #[test]
    fn each_state_row_is_found_by_its_area_code() {
        assert_eq!(names("13055550100"), ["US federal", "FL"]);
        assert_eq!(names("14055550100"), ["US federal", "OK"]);
        assert_eq!(names("14105550100"), ["US federal", "MD"]);
        assert_eq!(names("12065550100"), ["US federal", "WA"]);
        assert_eq!(names("12035550100"), ["US federal", "CT"]);
        assert_eq!(names("15125550100"), ["US federal", "TX"]);
        assert_eq!(names("14155550100"), ["US federal"]);
        assert!(rules_for("442079460000", "44").next().is_none());
    }

    #[test]
    fn no_area_code_is_in_two_states_and_every_row_has_a_source() {
        let mut seen = std::collections::HashSet::new();
        for r in RULES {
            assert!(!r.source.is_empty(), "{} has no source", r.name);
            if let Applies::AreaCodes(codes) = r.applies {
                for c in codes {
                    assert!(seen.insert(*c), "{c} is in two rows");
                    assert!(c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()));
                }
            }
        }
    }

    #[test]
    fn windows_intersect_per_day() {
        let a = Week::every_day(hm(8, 0), hm(20, 0));
        let w = a.intersect(&TX_HOURS);
        assert_eq!(w.on(Weekday::Monday), Some((hm(9, 0), hm(20, 0))));
        assert_eq!(w.on(Weekday::Sunday), Some((hm(12, 0), hm(20, 0))));
        let night = Week::every_day(hm(21, 0), hm(22, 0));
        assert_eq!(a.intersect(&night).on(Weekday::Monday), None);
    }
}
