//! Twilio's errors: 429, 5xx, permanent codes, an unreachable API.

use smsgate_shared::bus::SentKey;
use std::time::Duration;

use smsgate_sender::Tuning;
use smsgate_shared::envelope::NoteReason;
use smsgate_shared::topology::Topology;
use smsgate_testkit::nats::{NatsServer, free_port};
use smsgate_testkit::twilio::{Reply, TwilioStub};

use crate::helpers::*;

#[tokio::test]
async fn a_429_is_retried_after_retry_after_and_then_delivered() {
    let mut t = TestSender::start("").await;
    t.twilio.push(Reply::TooManyRequests { retry_after: Some(1) });
    let to = peer(10);
    t.publish(&outbound("reply.SM10", &to, "Hello after a pause")).await;
    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    let calls = t.twilio.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].status, calls[0].code), (429, Some(20429)));
    assert_eq!(calls[1].status, 201);
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(950), "Retry-After honoured");
    assert_eq!(outbound_pieces(&history)[0].sid, calls[1].sid);
    assert!(t.dead().await.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn a_500_is_retried_once_and_counted_as_a_possible_duplicate() {
    let mut t = TestSender::start("").await;
    t.twilio.push(Reply::ServerError);
    let to = peer(11);
    t.publish(&outbound("reply.SM11", &to, "Once more")).await;
    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    let calls = t.twilio.calls();
    assert_eq!(calls.iter().map(|c| c.status).collect::<Vec<_>>(), vec![500, 201]);
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(250), "after a delay");
    assert_eq!(outbound_pieces(&history)[0].sid, calls[1].sid);
    let metrics = reqwest::get(format!("http://{}/metrics", t.addr)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("smsgate_sender_possible_duplicates_total"), "{metrics}");
    t.stop().await;
}

#[tokio::test]
async fn a_500_twice_is_dead_lettered_without_a_third_try() {
    let mut t = TestSender::start("").await;
    t.twilio.push(Reply::ServerError);
    t.twilio.push(Reply::ServerError);
    let to = peer(12);
    t.publish(&outbound("reply.SM12", &to, "Unlucky")).await;
    let dead = t.wait_dead(1).await;
    assert_eq!(dead[0].stage, "sender");
    assert_eq!(dead[0].code, Some(20500));
    assert!(dead[0].reason.contains("outcome unknown"), "{}", dead[0].reason);
    assert!(dead[0].payload.contains("reply.SM12"));
    let history = t.wait_history(&to, "the failure note", |h| !h.is_empty()).await;
    assert_eq!(notes(&history)[0].0, NoteReason::SendFailed);
    t.wait_outbound_empty().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.twilio.calls().len(), 2);
    assert!(t.sent(&SentKey::Piece { outbound: "reply.SM12", index: 0 }.to_string()).await.is_none());
    t.stop().await;
}

#[tokio::test]
async fn permanent_codes_are_dead_lettered_at_once_and_21610_opts_out() {
    let mut t = TestSender::start("").await;
    for (k, code) in [21211, 21408, 21610, 21614, 21617].into_iter().enumerate() {
        let to = peer(20 + k as u32);
        t.twilio.push(Reply::code(code));
        let id = format!("reply.SMp{code}");
        t.publish(&outbound(&id, &to, "Refused")).await;
        let dead = t.wait_dead(k + 1).await;
        let letter = dead.iter().find(|d| d.payload.contains(&id)).expect("this message's dead letter");
        assert_eq!(letter.code, Some(code));
        assert!(letter.reason.contains(&code.to_string()), "{}", letter.reason);
        let history = t.wait_history(&to, "the failure note", |h| !h.is_empty()).await;
        let (reason, detail) = &notes(&history)[0];
        assert_eq!(*reason, NoteReason::SendFailed);
        assert!(detail.contains(&code.to_string()), "{detail}");
        let opted_out = t.bus.optout.get(Topology::optout_key(&t.channel.id, &to)).await.unwrap();
        assert_eq!(opted_out.is_some(), code == 21610, "{code}");
        assert_eq!(t.twilio.calls().len(), k + 1, "never retried");
    }
    // After 21610 nothing more goes to that number.
    let stopped = peer(22);
    t.publish(&outbound("reply.SMafter", &stopped, "Still there?")).await;
    t.wait_history(&stopped, "the opted-out note", |h| notes(h).iter().any(|(r, _)| *r == NoteReason::OptedOut)).await;
    assert_eq!(t.twilio.calls().len(), 5);
    t.stop().await;
}

#[tokio::test]
async fn an_unreachable_api_is_retried_then_dead_lettered_after_max_deliver() {
    let nats = NatsServer::start();
    let stub = TwilioStub::start().await;
    let closed = format!(r#""twilio_api_base": "http://127.0.0.1:{}""#, free_port());
    let tuning = Tuning { max_deliver: 2, attempts: 2, ..fast_tuning() };
    let mut t = TestSender::start_on(nats, stub, &closed, "", tuning).await;
    let to = peer(30);
    t.publish(&outbound("reply.SM30", &to, "Nobody home")).await;
    let dead = t.wait_dead(1).await;
    assert!(dead[0].reason.contains("gave up after 2 deliveries"), "{}", dead[0].reason);
    assert!(dead[0].reason.contains("connect"), "{}", dead[0].reason);
    let history = t.wait_history(&to, "the failure note", |h| !h.is_empty()).await;
    assert_eq!(notes(&history)[0].0, NoteReason::SendFailed);
    t.wait_outbound_empty().await;
    t.stop().await;
}

#[tokio::test]
async fn a_failure_after_some_pieces_keeps_them_in_history() {
    let mut t = TestSender::start(r#""sms_max_len": 40"#).await;
    t.twilio.push(Reply::Created);
    t.twilio.push(Reply::code(21614));
    let to = peer(31);
    t.publish(&outbound("reply.SM31", &to, "First piece goes out fine. Second piece is refused by Twilio.")).await;
    t.wait_dead(1).await;
    let history = t.wait_history(&to, "outbound and note", |h| h.len() >= 2).await;
    let pieces = outbound_pieces(&history);
    assert_eq!(pieces.len(), 1);
    assert_eq!(pieces[0].sid, t.twilio.created()[0].sid);
    assert!(notes(&history)[0].1.contains("piece 2/2"), "{:?}", notes(&history));
    t.stop().await;
}
