//! The time zones of a phone number, from libphonenumber's prefix map
//! (`shared/data/libphonenumber/`, vendored; nothing is fetched at run time).
//!
//! The map gives the zones of the number's *area*, not where the person is:
//! the guard treats it as a best guess and, where a prefix spans several
//! zones, requires the window to be open in all of them.

use std::collections::HashMap;
use std::sync::OnceLock;

use jiff::tz::TimeZone;

use crate::domain::E164;

static MAP_DATA: &str = include_str!("../../data/libphonenumber/timezones_map_data.txt");

/// The continental US zones: a +1 number whose area the map does not narrow
/// down is treated as possibly in any of them.
pub const CONTINENTAL_US: [&str; 4] = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"];

/// Where a number's zones came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneSource {
    /// The longest matching prefix of the map.
    Prefix(String),
    /// The map knew only the country, or nothing: a fallback set.
    Fallback,
}

/// The zones a number may be in, each a loaded IANA zone.
#[derive(Debug, Clone)]
pub struct Zones {
    pub zones: Vec<(String, TimeZone)>,
    pub source: ZoneSource,
}

fn map() -> &'static HashMap<&'static str, Vec<&'static str>> {
    static MAP: OnceLock<HashMap<&'static str, Vec<&'static str>>> = OnceLock::new();
    MAP.get_or_init(|| {
        MAP_DATA
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once('|'))
            .map(|(prefix, zones)| (prefix, zones.split('&').filter(|z| !z.is_empty()).collect()))
            .collect()
    })
}

/// The map's zones for the longest prefix of `digits` (an E.164 number
/// without `+`), with that prefix.
pub fn lookup(digits: &str) -> Option<(&'static str, &'static [&'static str])> {
    let map = map();
    (1..=digits.len()).rev().find_map(|n| map.get_key_value(&digits[..n]).map(|(k, v)| (*k, v.as_slice())))
}

/// The zones of `number`. A match on the country alone with several zones
/// (`1|` lists every NANP zone) says nothing about the area: NANP numbers
/// then get the continental US zones, others `default_zone` if the channel
/// set one, else every zone the country has.
pub fn for_number(number: &E164, default_zone: Option<&str>) -> Zones {
    let digits = number.subject_token();
    let code = number.calling_code();
    let found = lookup(digits);
    // A country-level line with several zones narrows nothing down.
    let narrows = |prefix: &str, zones: &[&str]| !zones.is_empty() && (prefix != code || zones.len() == 1);
    let (names, source): (Vec<&str>, ZoneSource) = match found {
        Some((prefix, zones)) if narrows(prefix, zones) => (zones.to_vec(), ZoneSource::Prefix(prefix.to_owned())),
        _ if code == "1" => (CONTINENTAL_US.to_vec(), ZoneSource::Fallback),
        found => match (default_zone, found) {
            (Some(z), _) => (vec![z], ZoneSource::Fallback),
            (None, Some((_, zones))) if !zones.is_empty() => (zones.to_vec(), ZoneSource::Fallback),
            _ => (CONTINENTAL_US.to_vec(), ZoneSource::Fallback),
        },
    };
    let mut zones: Vec<(String, TimeZone)> =
        names.iter().filter_map(|n| TimeZone::get(n).ok().map(|tz| ((*n).to_owned(), tz))).collect();
    if zones.is_empty() {
        // A zone name the bundled database lacks: the strict US fallback.
        zones = CONTINENTAL_US.iter().filter_map(|n| TimeZone::get(n).ok().map(|tz| ((*n).to_owned(), tz))).collect();
    }
    Zones { zones, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &str) -> Vec<String> {
        let number = E164::parse(n).unwrap();
        for_number(&number, None).zones.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn an_area_code_gives_its_zone() {
        assert_eq!(names("+12125550100"), ["America/New_York"]);
        assert_eq!(names("+13055550100"), ["America/New_York"]);
        assert_eq!(names("+14155550100"), ["America/Los_Angeles"]);
        assert_eq!(names("+442079460000"), ["Europe/London"]);
    }

    #[test]
    fn a_split_area_code_gives_every_zone_of_its_prefix() {
        // 208 (Idaho) spans Mountain and Pacific time; some exchanges are known.
        assert_eq!(
            lookup("12082999").map(|(p, z)| (p, z.to_vec())),
            Some(("12082", vec!["America/Boise", "America/Los_Angeles"]))
        );
        assert_eq!(names("+12082150000"), ["America/Los_Angeles"]);
    }

    #[test]
    fn a_country_level_match_on_nanp_is_the_continental_us() {
        // 555 is not a real area code: the map knows only "1".
        assert_eq!(names("+15555550100"), CONTINENTAL_US);
    }

    #[test]
    fn the_longest_prefix_wins_over_the_country() {
        assert_eq!(names("+79161234567"), ["Europe/Moscow"]);
    }
}
