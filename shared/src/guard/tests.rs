//! The guard as a table (zones, DST, several zones, unknown prefixes, each
//! state row, caps, purposes) and a property: it never answers Send for a
//! moment outside the window in any of the number's zones.

use jiff::tz::TimeZone;
use proptest::prelude::*;
use time::macros::datetime;

use super::*;

fn channel(compliance: serde_json::Value) -> Channel {
    let mut c = crate::config::test_channel();
    let mut fail = |k: &str, m: String| panic!("{k}: {m}");
    c.compliance = config::parse(Some(compliance), &mut fail);
    c.reply_countries = crate::config::ReplyCountries::All;
    c
}

fn ask<'a>(channel: &'a Channel, to: &'a E164, at: OffsetDateTime) -> Ask<'a> {
    Ask {
        channel,
        to,
        purpose: Purpose::Informational,
        initiator: Initiator::Operator,
        kind: Kind::Text,
        follow_up: false,
        at,
    }
}

fn consented() -> Facts {
    Facts { consent: Some(ConsentKind::Express), ..Facts::default() }
}

fn n(s: &str) -> E164 {
    E164::parse(s).unwrap()
}

#[test]
fn quiet_hours_in_the_recipients_zone() {
    let c = channel(serde_json::json!({}));
    let ny = n("+12125550100");
    // 02:00 in New York (EST, UTC-5) on a Tuesday → 08:00 the same day.
    let at = datetime!(2026-12-08 07:00 UTC);
    assert_eq!(decide(&ask(&c, &ny, at), &consented()), Verdict::Defer { until: datetime!(2026-12-08 13:00 UTC) });
    // 10:00 in New York: send.
    assert_eq!(decide(&ask(&c, &ny, datetime!(2026-12-08 15:00 UTC)), &consented()), Verdict::Send);
    // 20:00 sharp is closed (the window's end is exclusive): next morning.
    assert_eq!(
        decide(&ask(&c, &ny, datetime!(2026-12-09 01:00 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-12-09 13:00 UTC) }
    );
    // Los Angeles: 10:00 New York time is 07:00 there.
    let la = n("+14155550100");
    assert_eq!(
        decide(&ask(&c, &la, datetime!(2026-12-08 15:00 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-12-08 16:00 UTC) }
    );
}

#[test]
fn daylight_saving_changes_move_the_window_with_the_clock() {
    let c = channel(serde_json::json!({}));
    let ny = n("+12125550100");
    // 2026-03-08: US clocks go from 02:00 to 03:00. At 07:30 EDT (11:30 UTC)
    // the window opens at 08:00 EDT = 12:00 UTC (not 13:00 as in winter).
    assert_eq!(
        decide(&ask(&c, &ny, datetime!(2026-03-08 11:30 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-03-08 12:00 UTC) }
    );
    // 2026-11-01: back to EST; 08:00 EST = 13:00 UTC.
    assert_eq!(
        decide(&ask(&c, &ny, datetime!(2026-11-01 12:30 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-11-01 13:00 UTC) }
    );
    // A window starting inside the spring gap (02:30 does not exist) opens
    // when the gap ends, at 03:00 EDT.
    let early = channel(serde_json::json!({"quiet_hours": {"start": "02:30", "end": "20:00"}, "state_rules": false}));
    assert_eq!(
        decide(&ask(&early, &ny, datetime!(2026-03-08 06:00 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-03-08 07:00 UTC) }
    );
}

#[test]
fn a_prefix_with_several_zones_needs_the_window_open_in_all() {
    let c = channel(serde_json::json!({}));
    // 12082 is Boise (Mountain) and Los Angeles (Pacific): 08:00 Mountain
    // is 07:00 Pacific, so it opens at 08:00 Pacific = 16:00 UTC in winter.
    let idaho = n("+12082990000");
    assert_eq!(
        decide(&ask(&c, &idaho, datetime!(2026-12-08 15:00 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-12-08 16:00 UTC) }
    );
    // And it closes at 20:00 Mountain = 03:00 UTC.
    assert_eq!(
        decide(&ask(&c, &idaho, datetime!(2026-12-09 03:10 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-12-09 16:00 UTC) }
    );
}

#[test]
fn an_unknown_nanp_prefix_uses_the_continental_us_intersection() {
    let c = channel(serde_json::json!({}));
    let unknown = n("+15555550100");
    // Open from 08:00 Pacific (16:00 UTC) to 20:00 Eastern (01:00 UTC).
    assert_eq!(
        decide(&ask(&c, &unknown, datetime!(2026-12-08 14:00 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-12-08 16:00 UTC) }
    );
    assert_eq!(decide(&ask(&c, &unknown, datetime!(2026-12-09 00:30 UTC)), &consented()), Verdict::Send);
    assert_eq!(
        decide(&ask(&c, &unknown, datetime!(2026-12-09 01:00 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-12-09 16:00 UTC) }
    );
}

#[test]
fn state_rows_narrow_the_window() {
    // The channel allows 07:00-22:00; federal law clamps to 08:00-21:00.
    let wide = channel(serde_json::json!({"quiet_hours": {"start": "07:00", "end": "22:00"}}));
    let ny = n("+12125550100");
    assert!(matches!(decide(&ask(&wide, &ny, datetime!(2026-12-08 12:30 UTC)), &consented()), Verdict::Defer { .. }));
    assert_eq!(decide(&ask(&wide, &ny, datetime!(2026-12-09 01:30 UTC)), &consented()), Verdict::Send);
    // Connecticut: 09:00-20:00 (EST: 14:00-01:00 UTC).
    let ct = n("+12035550100");
    assert_eq!(
        decide(&ask(&wide, &ct, datetime!(2026-12-08 13:30 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-12-08 14:00 UTC) }
    );
    // Florida (Miami, EST): 20:00 is closed even with the wide channel window.
    let fl = n("+13055550100");
    assert!(matches!(decide(&ask(&wide, &fl, datetime!(2026-12-09 01:30 UTC)), &consented()), Verdict::Defer { .. }));
    // Texas (Austin, CST): Sunday opens at 12:00 (18:00 UTC); Monday at 09:00.
    let tx = n("+15125550100");
    assert_eq!(
        decide(&ask(&wide, &tx, datetime!(2026-12-06 16:00 UTC)), &consented()),
        Verdict::Defer { until: datetime!(2026-12-06 18:00 UTC) }
    );
    assert_eq!(decide(&ask(&wide, &tx, datetime!(2026-12-07 15:30 UTC)), &consented()), Verdict::Send);
    // Without state rules the channel's own window holds.
    let own = channel(serde_json::json!({"quiet_hours": {"start": "07:00", "end": "22:00"}, "state_rules": false}));
    assert_eq!(decide(&ask(&own, &fl, datetime!(2026-12-09 01:30 UTC)), &consented()), Verdict::Send);
}

#[test]
fn quiet_hours_off_sends_at_any_hour() {
    let c = channel(serde_json::json!({"quiet_hours": null}));
    assert_eq!(decide(&ask(&c, &n("+12125550100"), datetime!(2026-12-08 07:00 UTC)), &consented()), Verdict::Send);
}

#[test]
fn caps_count_agent_texts_per_24_hours_with_state_rows_stricter() {
    let c = channel(serde_json::json!({"per_recipient_per_day": 5}));
    let noon = datetime!(2026-12-08 18:00 UTC);
    let sent = |k| Facts { sent_last_24h: k, ..consented() };
    let fl = n("+13055550100");
    assert_eq!(decide(&ask(&c, &fl, noon), &sent(2)), Verdict::Send);
    assert_eq!(decide(&ask(&c, &fl, noon), &sent(3)), Verdict::Deny(Denial::RecipientCap));
    let ca = n("+14155550100");
    assert_eq!(decide(&ask(&c, &ca, noon), &sent(4)), Verdict::Send);
    assert_eq!(decide(&ask(&c, &ca, noon), &sent(5)), Verdict::Deny(Denial::RecipientCap));
}

#[test]
fn purposes_need_their_consent() {
    let c = channel(serde_json::json!({}));
    let to = n("+12125550100");
    let at = datetime!(2026-12-08 18:00 UTC);
    let with = |purpose| Ask { purpose, ..ask(&c, &to, at) };
    let nothing = Facts::default();
    let texted_recently = Facts { last_inbound: Some(at - Duration::hours(2)), ever_inbound: true, ..Facts::default() };
    let texted_long_ago = Facts { last_inbound: Some(at - Duration::days(30)), ever_inbound: true, ..Facts::default() };
    let written = Facts { consent: Some(ConsentKind::Written), ..Facts::default() };
    assert_eq!(decide(&with(Purpose::Informational), &nothing), Verdict::Deny(Denial::NoConsent));
    assert_eq!(decide(&with(Purpose::Conversational), &nothing), Verdict::Deny(Denial::NoConsent));
    assert_eq!(decide(&with(Purpose::Conversational), &texted_recently), Verdict::Send);
    assert_eq!(decide(&with(Purpose::Informational), &texted_long_ago), Verdict::Send);
    assert_eq!(decide(&with(Purpose::Marketing), &texted_recently), Verdict::Deny(Denial::NoConsent));
    assert_eq!(decide(&with(Purpose::Marketing), &consented()), Verdict::Deny(Denial::NoConsent));
    assert_eq!(decide(&with(Purpose::Marketing), &written), Verdict::Send);
    // An AI call needs consent on record or a recent conversation.
    let call = Ask { kind: Kind::Call, ..ask(&c, &to, at) };
    assert_eq!(decide(&call, &texted_long_ago), Verdict::Deny(Denial::NoConsent));
    assert_eq!(decide(&call, &texted_recently), Verdict::Send);
    assert_eq!(default_purpose(&c.compliance, &texted_recently, at), Purpose::Conversational);
    assert_eq!(default_purpose(&c.compliance, &texted_long_ago, at), Purpose::Informational);
}

#[test]
fn checks_run_in_order_and_pauses_hold_back_only_agents() {
    let mut c = channel(serde_json::json!({}));
    let to = n("+12125550100");
    let at = datetime!(2026-12-08 07:00 UTC); // 02:00 in New York
    let everything_wrong =
        Facts { opted_out: true, paused_until: Some(at + Duration::hours(1)), sent_last_24h: 9, ..Facts::default() };
    assert_eq!(decide(&ask(&c, &to, at), &everything_wrong), Verdict::Deny(Denial::OptedOut));
    let paused = Facts { paused_until: Some(at + Duration::hours(1)), ..consented() };
    let agent = Ask { initiator: Initiator::Agent, ..ask(&c, &to, at) };
    assert_eq!(decide(&agent, &paused), Verdict::Deny(Denial::Paused));
    assert!(matches!(decide(&ask(&c, &to, at), &paused), Verdict::Defer { .. }));
    c.block_from = vec![to.clone()];
    assert_eq!(decide(&ask(&c, &to, at), &consented()), Verdict::Deny(Denial::Blocked));
    c.block_from.clear();
    c.reply_countries = crate::config::ReplyCountries::Codes(vec!["44".to_owned()]);
    assert_eq!(decide(&ask(&c, &to, at), &consented()), Verdict::Deny(Denial::CountryNotAllowed));
}

#[test]
fn a_follow_up_within_the_window_skips_quiet_hours_and_the_cap() {
    let c = channel(serde_json::json!({}));
    let to = n("+12125550100");
    let at = datetime!(2026-12-08 07:00 UTC); // 02:00 in New York
    let facts = Facts {
        last_inbound: Some(at - Duration::minutes(5)),
        ever_inbound: true,
        sent_last_24h: 9,
        ..Facts::default()
    };
    let follow_up =
        Ask { follow_up: true, initiator: Initiator::Agent, purpose: Purpose::Conversational, ..ask(&c, &to, at) };
    assert_eq!(decide(&follow_up, &facts), Verdict::Send);
    // Past the window it is an ordinary agent text again.
    let stale = Facts { last_inbound: Some(at - Duration::hours(30)), ..facts.clone() };
    assert!(matches!(decide(&follow_up, &stale), Verdict::Defer { .. }));
    // An operator answering a live conversation is not deferred either; an
    // agent starting a conversational text on its own is.
    let operator = Ask { purpose: Purpose::Conversational, ..ask(&c, &to, at) };
    assert_eq!(decide(&operator, &facts), Verdict::Send);
    let agent = Ask { initiator: Initiator::Agent, ..operator.clone() };
    assert!(matches!(decide(&agent, &facts), Verdict::Defer { .. }));
    let informational = Ask { purpose: Purpose::Informational, ..operator };
    assert!(matches!(decide(&informational, &facts), Verdict::Defer { .. }));
}

#[test]
fn windows_that_never_overlap_deny_rather_than_loop() {
    // Guam (UTC+10) and Honolulu (UTC-10) are 20 hours apart: a 1-hour
    // window never opens in both.
    let mut w = Window::for_number(
        &Compliance { quiet_hours: Some((600, 660)), state_rules: false, ..Compliance::default() },
        &n("+16715550100"),
    );
    assert!(w.zone_names().count() >= 1);
    w = Window::test_zones(w, &["Pacific/Guam", "Pacific/Honolulu"]);
    assert_eq!(w.next_open(datetime!(2026-12-08 07:00 UTC)), None);
}

const NUMBERS: [&str; 10] = [
    "+12125550100",
    "+14155550100",
    "+12082990000",
    "+15555550100",
    "+13055550100",
    "+15125550100",
    "+12035550100",
    "+442079460000",
    "+61255550100",
    "+79161234567",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn send_is_never_outside_the_window_and_defer_is_the_next_open_minute(
        secs in 1_767_225_600i64..1_830_297_600, // 2026..2028
        which in 0usize..NUMBERS.len(),
        start in 0u16..12,
        len in 1u16..12,
    ) {
        let c = channel(serde_json::json!({"quiet_hours": {"start": format!("{:02}:00", start + 6), "end": format!("{:02}:00", (start + 6 + len).min(24))}}));
        let to = n(NUMBERS[which]);
        let at = OffsetDateTime::from_unix_timestamp(secs).unwrap();
        let window = Window::for_number(&c.compliance, &to);
        let zones: Vec<TimeZone> = window.zone_names().map(|z| TimeZone::get(z).unwrap()).collect();
        // An independent reading of the window: local hour in each zone.
        let inside = |t: OffsetDateTime| {
            let ts = jiff::Timestamp::from_second(t.unix_timestamp()).unwrap();
            zones.iter().all(|tz| {
                let local = tz.to_datetime(ts);
                let minute = i32::from(local.hour()) * 60 + i32::from(local.minute());
                let (s, e) = c.compliance.quiet_hours.unwrap();
                let mut s = i32::from(s);
                let mut e = i32::from(e);
                for rule in rules::rules_for(to.subject_token(), to.calling_code()) {
                    if let Some((rs, re)) = rule.hours.on(local.weekday()) { s = s.max(i32::from(rs)); e = e.min(i32::from(re)); } else { e = s; }
                }
                s <= minute && minute < e
            })
        };
        match decide(&ask(&c, &to, at), &consented()) {
            Verdict::Send => prop_assert!(inside(at), "Send at {at} for {}", NUMBERS[which]),
            Verdict::Defer { until } => {
                prop_assert!(!inside(at));
                prop_assert!(until > at);
                prop_assert!(inside(until), "Defer to {until} is closed for {}", NUMBERS[which]);
                prop_assert!(!inside(until - Duration::minutes(1)) || until - Duration::minutes(1) < at);
            }
            Verdict::Deny(d) => prop_assert_eq!(d, Denial::QuietHours),
        }
    }
}

#[test]
fn a_spent_budget_stops_agent_texts_and_operator_texts_that_count_but_not_live_answers() {
    let c = channel(serde_json::json!({}));
    let to = n("+12125550100");
    let at = datetime!(2026-12-08 18:00 UTC);
    let spent = Facts { budget_exceeded: true, ..consented() };
    let agent = Ask { initiator: Initiator::Agent, ..ask(&c, &to, at) };
    assert_eq!(decide(&agent, &spent), Verdict::Deny(Denial::Budget));
    let operator = Ask { initiator: Initiator::Operator, purpose: Purpose::Informational, ..ask(&c, &to, at) };
    assert_eq!(decide(&operator, &spent), Verdict::Deny(Denial::Budget));
    let live = Facts { last_inbound: Some(at - Duration::hours(1)), ever_inbound: true, ..spent.clone() };
    let answer = Ask { initiator: Initiator::Operator, purpose: Purpose::Conversational, ..ask(&c, &to, at) };
    assert_eq!(decide(&answer, &live), Verdict::Send);
    // An opt-out still comes first.
    assert_eq!(decide(&agent, &Facts { opted_out: true, ..spent }), Verdict::Deny(Denial::OptedOut));
    assert_eq!(Denial::Budget.as_str(), "budget");
}
