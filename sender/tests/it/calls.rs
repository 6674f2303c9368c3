//! Outbound calls: placed through the Calls API stub, valid against the
//! `CreateCall` operation of Twilio's OpenAPI spec, placed once however
//! often delivered, refused for opted-out and blocked numbers.

use smsgate_shared::bus::SentKey;
use smsgate_shared::envelope::{HistoryEvent, NoteReason, OutboundCall};
use smsgate_shared::topology::Topology;
use smsgate_testkit::{self as testkit, eventually, twilio::Reply, twilio_spec};

use crate::helpers::*;

#[tokio::test]
async fn an_outbound_call_is_placed_once_with_a_request_valid_against_twilios_spec() {
    let mut t = TestSender::start("").await;
    let to = peer(7);
    let mut out = outbound("api.call-1", &to, "Your table is ready </Say><Dial>+19005550100</Dial>");
    out.call = Some(OutboundCall { twiml: None });
    t.publish(&out).await;

    let requests = t.twilio.wait_for_calls(1, WAIT).await;
    let r = &requests[0];
    assert_eq!(r.resource, "Calls");
    let spec = twilio_spec::load_spec();
    assert_eq!(twilio_spec::check_create_call(&spec, &r.account_sid, &r.form), Ok(()), "{:?}", r.form);
    assert_eq!(r.get("To"), Some(to.as_str()));
    assert_eq!(r.get("From"), Some(testkit::FROM_NUMBER));
    let twiml = r.get("Twiml").unwrap();
    assert!(twiml.contains("Your table is ready &lt;/Say&gt;&lt;Dial&gt;"), "{twiml}");
    assert!(r.get("StatusCallback").unwrap().contains("/api/channels/voice/twilio/status/"));
    assert_eq!(r.all("StatusCallbackEvent"), ["initiated", "ringing", "answered", "completed"]);
    let sid = r.sid.clone().unwrap();
    assert!(sid.starts_with("CA"));

    let history = t.wait_history(&to, "the call entry", |h| !h.is_empty()).await;
    match &history[0].event {
        HistoryEvent::Call { call_sid, status, direction, .. } => {
            assert_eq!((call_sid, status.as_str(), direction.as_str()), (&sid, "queued", "outbound-api"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.sent(&SentKey::Piece { outbound: "api.call-1", index: 0 }.to_string()).await, Some(sid));

    // Delivered again (a redelivery after a crash, or a replay): not placed twice.
    publish_outbound(&t.bus, &out, "replay.1.api.call-1").await;
    t.wait_outbound_empty().await;
    assert_eq!(t.twilio.call_count(), 1);
    t.stop().await;
}

#[tokio::test]
async fn calls_to_opted_out_or_blocked_numbers_are_not_placed_and_refusals_are_recorded() {
    let blocked = peer(9);
    let mut t = TestSender::start(&format!(r#""block_from": ["{blocked}"]"#)).await;
    let opted = peer(8);
    t.bus.optout.put(Topology::optout_key(&t.channel.id, &opted), "{}".into()).await.unwrap();
    for (id, to) in [("api.c-opted", &opted), ("api.c-blocked", &blocked)] {
        let mut out = outbound(id, to, "hello");
        out.call = Some(OutboundCall { twiml: None });
        t.publish(&out).await;
    }
    let h = t.wait_history(&opted, "the opted-out note", |h| !h.is_empty()).await;
    assert_eq!(notes(&h)[0].0, NoteReason::OptedOut);
    let h = t.wait_history(&blocked, "the blocked note", |h| !h.is_empty()).await;
    assert_eq!(notes(&h)[0].0, NoteReason::Blocked);
    assert_eq!(t.twilio.call_count(), 0);

    // A permanent refusal is a note and a dead letter, never a retry.
    t.twilio.push(Reply::code(21211));
    let mut out = outbound("api.c-bad", &peer(10), "hello");
    out.call = Some(OutboundCall { twiml: None });
    t.publish(&out).await;
    let dead = t.wait_dead(1).await;
    assert_eq!(dead[0].code, Some(21211));
    eventually(WAIT, "one attempt", || async { (t.twilio.call_count() == 1).then_some(()) }).await;
    t.stop().await;
}
