//! Pacing per sending number at `mps`, checked on the stub's arrival times.

use std::time::Duration;

use smsgate_sender::Tuning;
use smsgate_testkit::{self as testkit, twilio::TwilioStub};

use crate::helpers::*;

#[tokio::test]
async fn pieces_are_paced_at_the_channels_mps() {
    let mut t = TestSender::start(r#""mps": 2, "sms_max_len": 40, "max_parts": 4"#).await;
    let to = peer(50);
    let body = "One short sentence here. Two short sentences here. Three short sentences. Four short sentences.";
    t.publish(&outbound("reply.SM50", &to, body)).await;
    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    assert_eq!(outbound_pieces(&history).len(), 4);
    let calls = t.twilio.created();
    assert_eq!(calls.len(), 4);
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // 1/mps = 500 ms; a lower bound only (a loaded machine is slower, never faster).
        assert!(gap >= Duration::from_millis(450), "gap {gap:?} at mps 2");
    }
    t.stop().await;
}

#[tokio::test]
async fn two_recipients_share_the_sending_numbers_pace() {
    let mut t = TestSender::start(r#""mps": 4"#).await;
    for k in 0..4 {
        t.publish(&outbound(&format!("reply.SMp{k}"), &peer(60 + k), "Paced across lanes")).await;
    }
    let calls = t.twilio.wait_for_calls(4, WAIT).await;
    let mut times: Vec<_> = calls.iter().map(|c| c.at).collect();
    times.sort();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(200), "{:?}", pair[1] - pair[0]);
    }
    t.stop().await;
}

#[tokio::test]
async fn twilio_calls_overlap_across_recipients_and_keep_each_recipients_order() {
    let tuning = Tuning { max_in_flight: Some(64), ..fast_tuning() };
    let mut t = TestSender::start_with(r#""mps": 200"#, tuning).await;
    // A Twilio that takes 250 ms per call: 80 calls one at a time take 20 s.
    t.twilio.set_chaos(smsgate_testkit::twilio::Chaos {
        slow: 1.0,
        slow_delay: Duration::from_millis(250),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    for k in 0..40 {
        for n in 1..=2 {
            t.publish(&outbound(&format!("reply.SMov{k}n{n}"), &peer(100 + k), &format!("part {n}"))).await;
        }
    }
    let calls = t.twilio.wait_for_calls(80, WAIT).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "80 calls took {took:?}: not overlapped");
    for k in 0..40 {
        let to = peer(100 + k).to_string();
        let bodies: Vec<&str> =
            calls.iter().filter(|c| c.get("To") == Some(to.as_str())).filter_map(|c| c.get("Body")).collect();
        assert_eq!(bodies, ["part 1", "part 2"], "replies to {to} out of order");
    }
    t.wait_outbound_empty().await;
    t.stop().await;
}

/// Two sender processes on one number at `mps` 5 take turns through the
/// shared slot: 200 sends take 40 s, not 20, and each recipient's two
/// replies keep their order although either process may send either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_on_one_number_keep_its_mps_together() {
    const N: u32 = 100;
    let tuning = || Tuning { max_in_flight: Some(32), ..fast_tuning() };
    let mut first = TestSender::start_with(r#""mps": 5"#, tuning()).await;
    let other_stub = TwilioStub::start().await;
    let second = first.another(&other_stub, r#""mps": 5"#, tuning()).await;
    for k in 0..N {
        for n in 1..=2 {
            first.publish(&outbound(&format!("reply.SMtw{k}n{n}"), &peer(300 + k), &format!("part {n}"))).await;
        }
    }
    let wait = Duration::from_secs(120);
    let mut calls = testkit::eventually(wait, "200 sends across both senders", || async {
        let calls = [first.twilio.created(), other_stub.created()].concat();
        (calls.len() >= 2 * N as usize).then_some(calls)
    })
    .await;
    let (a, b) = (first.twilio.created().len(), other_stub.created().len());
    assert!(a > 0 && b > 0, "both senders took part: {a} and {b}");
    calls.sort_by_key(|c| c.at);
    let span = calls.last().unwrap().at - calls[0].at;
    // 199 gaps of 200 ms: 39.8 s. The slots are exact, the arrivals carry
    // the machine's scheduling delay on top (a late first send shortens the
    // span), so the bounds leave room for a loaded CI machine; the figures
    // are printed for deploy/BENCHMARKS.md.
    assert!(span >= Duration::from_millis(38_500), "200 sends in {span:?}: faster than 5 per second");
    let busiest = calls
        .iter()
        .enumerate()
        .map(|(i, c)| calls[i..].iter().take_while(|d| d.at - c.at < Duration::from_secs(1)).count())
        .max()
        .unwrap();
    assert!(busiest <= 8, "{busiest} sends within one second at mps 5");
    let closest = calls.windows(2).map(|w| w[1].at - w[0].at).min().unwrap();
    for k in 0..N {
        let to = peer(300 + k).to_string();
        let bodies: Vec<&str> =
            calls.iter().filter(|c| c.get("To") == Some(to.as_str())).filter_map(|c| c.get("Body")).collect();
        assert_eq!(bodies, ["part 1", "part 2"], "replies to {to} out of order");
    }
    eprintln!(
        "two senders at mps 5: 200 sends in {span:?} ({a} + {b}), busiest second {busiest}, closest two {closest:?}"
    );
    second.stop().await;
    first.stop().await;
}
