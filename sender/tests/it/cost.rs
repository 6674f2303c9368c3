//! Cost figures: the estimate at send, Twilio's price fetched after the
//! final status (null on the first fetch, as Twilio's is until billed),
//! the sums, and the day's budget at the guard.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use smsgate_shared::cas::Cas;
use smsgate_shared::cost::{Basis, CostSum, DailySpend, Item};
use smsgate_shared::envelope::{Guarded, HistoryEntry, HistoryEvent, NoteReason};
use smsgate_shared::guard::{Initiator, Purpose};
use smsgate_testkit::twilio::Pricing;

use smsgate_sender::Tuning;

use crate::helpers::*;

fn costs(history: &[HistoryEntry]) -> Vec<(Item, String, Option<f64>, Basis)> {
    history
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::Cost { item, reference, usd, basis, .. } => Some((*item, reference.clone(), *usd, *basis)),
            _ => None,
        })
        .collect()
}

fn sum(history: &[HistoryEntry]) -> CostSum {
    CostSum::of(history.iter().map(|e| &e.event))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn pricing_tuning() -> Tuning {
    Tuning { price_fetch: vec![Duration::from_millis(100); 4], ..fast_tuning() }
}

#[tokio::test]
async fn a_text_is_estimated_at_send_then_priced_by_twilio_after_its_final_status() {
    let mut t =
        TestSender::start_with(r#""pricing": {"sms_usd_per_segment": {"default": 0.01}}"#, pricing_tuning()).await;
    t.twilio.set_pricing(Pricing { usd_per_segment: 0.0079, null_fetches: 1 });
    let to = peer(60);
    // 200 GSM-7 characters: one message, two segments.
    t.publish(&outbound("reply.SM60", &to, &"a".repeat(200))).await;
    let history = t.wait_history(&to, "the estimate", |h| !costs(h).is_empty()).await;
    let sid = outbound_pieces(&history)[0].sid.clone().unwrap();
    assert_eq!(costs(&history), vec![(Item::Sms, sid.clone(), Some(0.02), Basis::Estimate)]);
    let estimated = sum(&history);
    assert!(close(estimated.total_usd, 0.02) && estimated.estimated == 1, "{estimated:?}");
    assert_eq!(t.twilio.fetches(&sid), 0, "no fetch before the final status");

    t.publish_status(&status_update(&sid, "sent", Some(&to), None)).await;
    t.publish_status(&status_update(&sid, "delivered", Some(&to), None)).await;
    let history = t.wait_history(&to, "Twilio's price", |h| costs(h).len() == 2).await;
    assert_eq!(costs(&history)[1], (Item::Sms, sid.clone(), Some(0.0158), Basis::Twilio));
    assert!(t.twilio.fetches(&sid) >= 2, "price was null on the first fetch");
    let billed = sum(&history);
    assert!(close(billed.total_usd, 0.0158) && close(billed.sms_usd, 0.0158) && billed.estimated == 0, "{billed:?}");

    // The day's spend follows: the estimate, then corrected to Twilio's figure.
    let spend = DailySpend::new(Arc::new(Cas::new(t.bus.budget.clone())));
    let today = spend.today(&t.channel.id, SystemTime::now()).await.unwrap();
    assert!(close(today, 0.0158), "{today}");
    let metrics = smsgate_shared::telemetry::render(&smsgate_shared::telemetry::metrics_handle());
    assert!(metrics.contains("smsgate_cost_usd_total{channel_id=\"test\",kind=\"sms\"}"), "{metrics}");

    // A later status (read) fetches nothing more.
    let fetched = t.twilio.fetches(&sid);
    t.publish_status(&status_update(&sid, "read", Some(&to), None)).await;
    t.wait_history(&to, "read", |h| {
        h.iter().any(|e| matches!(&e.event, HistoryEvent::Status { status, .. } if status == "read"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.twilio.fetches(&sid), fetched);
    assert_eq!(costs(&t.history(&to).await).len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn a_spent_day_budget_refuses_agent_texts_while_replies_still_go() {
    let mut t = TestSender::start_with(
        r#""limits": {"replies_per_minute": 1000, "replies_per_day": 1000, "usd_per_day": 0.05}"#,
        pricing_tuning(),
    )
    .await;
    let spend = DailySpend::new(Arc::new(Cas::new(t.bus.budget.clone())));
    spend.add(&t.channel.id, 0.06, SystemTime::now()).await.unwrap();
    let to = peer(61);
    let mut agent = outbound("api.agent61", &to, "Your order shipped");
    agent.in_reply_to = None;
    agent.guard = Some(Guarded { purpose: Purpose::Informational, initiator: Initiator::Agent });
    t.publish(&agent).await;
    let history = t.wait_history(&to, "the refusal", |h| !notes(h).is_empty()).await;
    let (reason, detail) = notes(&history).remove(0);
    assert_eq!(reason, NoteReason::Refused);
    assert!(detail.starts_with("budget:"), "{detail}");
    let sent = |h: &[HistoryEntry]| h.iter().filter(|e| matches!(e.event, HistoryEvent::Outbound { .. })).count();
    assert_eq!(sent(&history), 0);

    // A reply (to a STOP, a HELP, an answer already decided) is not guarded: it goes.
    t.publish(&outbound("reply.SM61", &to, "You are unsubscribed.")).await;
    t.wait_history(&to, "the reply", |h| sent(h) == 1).await;
    t.stop().await;
}

#[tokio::test]
async fn a_placed_call_gets_twilios_price_and_duration_once_it_has_ended() {
    let mut t = TestSender::start_with("", pricing_tuning()).await;
    let to = peer(62);
    let mut out = outbound("api.call-62", &to, "Your table is ready");
    out.call = Some(smsgate_shared::envelope::OutboundCall { twiml: None });
    t.publish(&out).await;
    let history = t.wait_history(&to, "the call's price", |h| !costs(h).is_empty()).await;
    let sid = t.twilio.created().into_iter().find_map(|c| c.sid.filter(|s| s.starts_with("CA"))).unwrap();
    assert_eq!(costs(&history), vec![(Item::Call, sid.clone(), Some(0.014), Basis::Twilio)]);
    let units = history.iter().find_map(|e| match &e.event {
        HistoryEvent::Cost { units, .. } => Some(*units),
        _ => None,
    });
    assert_eq!(units, Some(42), "the call's duration in seconds");
    assert!(t.twilio.fetches(&sid) >= 2, "no price before the call ended");
    let sum = sum(&history);
    assert!(close(sum.call_usd, 0.014) && close(sum.total_usd, 0.014) && sum.estimated == 0, "{sum:?}");
    t.stop().await;
}
