//! Status callbacks: out of order, failures with codes, bad ones.

use smsgate_shared::envelope::{HistoryEntry, HistoryEvent};
use smsgate_testkit::eventually;

use crate::helpers::*;

fn statuses(history: &[HistoryEntry]) -> Vec<(String, String, Option<String>)> {
    history
        .iter()
        .filter_map(|e| match &e.event {
            HistoryEvent::Status { sid, status, error_code } => Some((sid.clone(), status.clone(), error_code.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_late_sent_never_overwrites_delivered() {
    let mut t = TestSender::start("").await;
    let to = peer(40);
    t.publish(&outbound("reply.SM40", &to, "Track me")).await;
    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    let sid = outbound_pieces(&history)[0].sid.clone().unwrap();

    // Twilio's callbacks, out of order: delivered overtakes sent.
    t.publish_status(&status_update(&sid, "queued", Some(&to), None)).await;
    t.wait_history(&to, "queued", |h| statuses(h).len() == 1).await;
    t.publish_status(&status_update(&sid, "delivered", Some(&to), None)).await;
    t.wait_history(&to, "delivered", |h| statuses(h).len() == 2).await;
    t.publish_status(&status_update(&sid, "sent", Some(&to), None)).await;
    eventually(WAIT, "the stale status to be consumed", || async {
        let mut s = t.bus.js.get_stream(t.bus.topology.status_stream()).await.unwrap();
        (s.info().await.unwrap().state.messages == 0).then_some(())
    })
    .await;

    let got = statuses(&t.history(&to).await);
    let order: Vec<&str> = got.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(order, vec!["queued", "delivered"]);
    assert!(got.iter().all(|(s, _, _)| *s == sid));
    let state = t.bus.sent.get(format!("status.{sid}")).await.unwrap().unwrap();
    assert_eq!(&state[..], b"delivered");
    t.stop().await;
}

#[tokio::test]
async fn an_undelivered_status_is_recorded_with_its_error_code() {
    let mut t = TestSender::start("").await;
    let to = peer(41);
    t.publish_status(&status_update("SMfailed0001", "sent", Some(&to), None)).await;
    t.publish_status(&status_update("SMfailed0001", "undelivered", Some(&to), Some("30006"))).await;
    let history = t.wait_history(&to, "both statuses", |h| statuses(h).len() == 2).await;
    assert_eq!(statuses(&history)[1], ("SMfailed0001".to_owned(), "undelivered".to_owned(), Some("30006".to_owned())));
    // The same callback again (ingress dedupes by id; a replay gets through): no second entry.
    publish_raw(
        &t.bus,
        t.bus.topology.status_subject(&t.channel.id),
        "replayed",
        smsgate_shared::envelope::encode(&status_update("SMfailed0001", "undelivered", Some(&to), Some("30006"))),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(statuses(&t.history(&to).await).len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn a_callback_without_a_usable_to_is_dead_lettered() {
    let mut t = TestSender::start("").await;
    t.publish_status(&status_update("SMnoto0001", "delivered", None, None)).await;
    let mut bad = status_update("SMbadto0001", "delivered", None, None);
    bad.to = Some("not a number".to_owned());
    t.publish_status(&bad).await;
    publish_raw(&t.bus, t.bus.topology.status_subject(&t.channel.id), "garbage", "{\"v\": 9}".into()).await;
    let dead = t.wait_dead(3).await;
    assert!(dead.iter().all(|d| d.stage == "status" && d.channel_id == "test"), "{dead:?}");
    assert!(dead.iter().any(|d| d.reason.contains("version 9")), "{dead:?}");
    t.stop().await;
}
