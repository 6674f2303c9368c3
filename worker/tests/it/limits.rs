//! The channel's abuse and cost limits: `limits` (replies per minute and
//! per day, all senders together) and `reply_countries`, with many distinct
//! senders and across two worker processes on one NATS; and HELP, which
//! costs a reply like any other, behind the per-sender rate limit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smsgate_shared::envelope::{HistoryEvent, NoteReason, Origin};
use smsgate_testkit::channel;

use crate::helpers::{Second, TestWorker, inbound, kinds, test_tuning};

fn sender(n: usize) -> String {
    format!("+1415555{n:04}")
}

/// Notes of `reason` across the conversations of `peers`.
async fn notes(w: &TestWorker, peers: &[String], reason: NoteReason) -> Vec<String> {
    let mut found = Vec::new();
    for p in peers {
        for e in w.bus.history("test", p).await {
            if let HistoryEvent::Note { reason: r, detail, .. } = e.event
                && r == reason
            {
                found.push(detail);
            }
        }
    }
    found
}

/// Waits until the current minute has at least `need` seconds left, so a
/// per-minute window does not roll over in the middle of a test.
async fn fresh_minute(need: u64) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() % 60;
    if 60 - secs < need {
        tokio::time::sleep(Duration::from_secs(60 - secs)).await;
    }
}

#[tokio::test]
async fn twelve_helps_from_one_sender_are_rate_limited_like_any_message() {
    let mut w = TestWorker::start(vec![channel(r#""rate_limit": {"per_minute": 10, "burst": 5}"#)]).await;
    const BOB: &str = "+14155550102";
    fresh_minute(20).await;
    for i in 0..12 {
        w.bus.send(&inbound("test", &format!("SMhelp{i:02}"), BOB, "HELP")).await;
    }
    w.bus.wait_drained().await;
    let out = w.bus.outbound().await;
    let helps = out.iter().filter(|o| o.origin == Origin::Help).count();
    let notices = out.iter().filter(|o| o.origin == Origin::RateLimitNotice).count();
    assert_eq!(
        (helps, notices),
        (5, 1),
        "the burst of HELPs, then one notice: {:?}",
        kinds(&w.bus.history("test", BOB).await)
    );
    w.stop().await;
}

#[tokio::test]
async fn country_codes_outside_reply_countries_get_a_recorded_skip_and_no_reply() {
    let mut w = TestWorker::start(vec![channel(r#""reply_countries": ["44", "353"]"#)]).await;
    let (us, uk, ie) = ("+14155550111", "+447911123456", "+353861234567");
    w.bus.send(&inbound("test", "SMus", us, "hello")).await;
    w.bus.send(&inbound("test", "SMushelp", us, "HELP")).await;
    w.bus.send(&inbound("test", "SMuk", uk, "hello")).await;
    w.bus.send(&inbound("test", "SMie", ie, "hello")).await;
    w.bus.wait_drained().await;
    let out = w.bus.outbound().await;
    let mut to: Vec<&str> = out.iter().map(|o| o.to.as_str()).collect();
    to.sort_unstable();
    assert_eq!(to, [ie, uk]);
    let note = w.bus.wait_note("test", us, "SMus", NoteReason::CountryNotAllowed).await;
    let HistoryEvent::Note { detail, .. } = note.event else { unreachable!() };
    assert!(detail.contains("country code 1 ") && detail.contains("44, 353"), "{detail}");
    w.bus.wait_note("test", us, "SMushelp", NoteReason::CountryNotAllowed).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_limits_hold_across_two_workers_and_many_senders() {
    let limits = r#""limits": {"replies_per_minute": 6, "replies_per_day": 6}"#;
    let mut w = TestWorker::start_with(vec![channel(limits)], test_tuning()).await;
    let second = Second::start(&w, limits).await;

    // Forty distinct senders, one message each: a per-sender limit sees
    // nothing wrong; the channel's budget must.
    let peers: Vec<String> = (0..40).map(sender).collect();
    for (i, p) in peers.iter().enumerate() {
        w.bus.send(&inbound("test", &format!("SMmany{i:02}"), p, "hi")).await;
    }
    w.bus.wait_drained().await;
    let out = w.bus.outbound().await;
    assert_eq!(out.len(), 6, "exactly the day's budget, whichever worker answered");
    let over = notes(&w, &peers, NoteReason::OverLimit).await;
    assert_eq!(over.len(), 34, "every other message has its reason recorded");
    assert!(over.iter().all(|d| d.contains("limits.replies_per")), "{over:?}");

    second.stop().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_rate_limit_holds_across_two_workers_in_order() {
    let limit = r#""rate_limit": {"per_minute": 3, "burst": 3}"#;
    let mut w = TestWorker::start_with(vec![channel(limit)], test_tuning()).await;
    let second = Second::start(&w, limit).await;
    const CAROL: &str = "+14155550103";
    // Ten messages, 20 s into a 3-a-minute limit at most: the burst of three
    // and one notice, whichever worker took which message.
    for i in 0..10 {
        w.bus.send(&inbound("test", &format!("SMrate{i:02}"), CAROL, &format!("message {i}"))).await;
    }
    w.bus.wait_drained().await;
    let out = w.bus.outbound().await;
    let answered: Vec<String> = out
        .iter()
        .filter(|o| o.origin != Origin::RateLimitNotice)
        .map(|o| o.in_reply_to.as_ref().map(ToString::to_string).unwrap_or_default())
        .collect();
    let notices = out.iter().filter(|o| o.origin == Origin::RateLimitNotice).count();
    let history = kinds(&w.bus.history("test", CAROL).await);
    assert_eq!(answered, ["SMrate00", "SMrate01", "SMrate02"], "the first three, in order: {history:?}");
    assert_eq!(notices, 1, "{history:?}");
    let limited = notes(&w, &[CAROL.to_owned()], NoteReason::RateLimited).await;
    assert_eq!(limited.len(), 7, "every message over the limit has its note: {history:?}");
    second.stop().await;
    w.stop().await;
}

#[tokio::test]
async fn replies_per_minute_stops_a_burst_of_distinct_senders() {
    let mut w =
        TestWorker::start(vec![channel(r#""limits": {"replies_per_minute": 3, "replies_per_day": 1000}"#)]).await;
    fresh_minute(20).await;
    let peers: Vec<String> = (100..110).map(sender).collect();
    for (i, p) in peers.iter().enumerate() {
        w.bus.send(&inbound("test", &format!("SMmin{i:02}"), p, "hi")).await;
    }
    w.bus.wait_drained().await;
    assert_eq!(w.bus.outbound().await.len(), 3);
    let over = notes(&w, &peers, NoteReason::OverLimit).await;
    assert_eq!(over.len(), 7);
    assert!(over[0].contains("3 replies of this minute"), "{over:?}");
    w.stop().await;
}
