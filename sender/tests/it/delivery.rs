//! Normal delivery, log delivery, opt-outs, redelivery.

use smsgate_shared::bus::SentKey;
use smsgate_shared::envelope::{HistoryEvent, NoteReason};
use smsgate_shared::topology::Topology;
use smsgate_testkit::{self as testkit, eventually};

use crate::helpers::*;

#[tokio::test]
async fn a_reply_goes_to_twilio_as_one_message_with_every_form_field() {
    let mut t = TestSender::start("").await;
    let to = peer(1);
    let mut out =
        outbound("reply.SM1", &to, "**Thanks!** It\u{2019}s on its way \u{2014} see [tracking](https://t.example/x).");
    out.media_urls = vec!["https://m.example/a.png".to_owned(), "https://m.example/b.png".to_owned()];
    t.publish(&out).await;

    let calls = t.twilio.wait_for_calls(1, WAIT).await;
    assert_eq!(t.twilio.unauthorized(), 0, "Basic auth AccountSid:AuthToken");
    let call = &calls[0];
    assert_eq!(call.account_sid, testkit::ACCOUNT_SID);
    assert_eq!(call.get("To"), Some(to.as_str()));
    assert_eq!(call.get("From"), Some(testkit::FROM_NUMBER));
    assert_eq!(call.get("Body"), Some("Thanks! It's on its way - see tracking https://t.example/x."));
    assert_eq!(call.all("MediaUrl"), vec!["https://m.example/a.png", "https://m.example/b.png"]);
    assert_eq!(call.get("StatusCallback"), t.channel.status_url().as_deref());
    assert!(call.get("StatusCallback").unwrap().contains("/api/channels/sms/twilio/status/"));
    let spec = testkit::twilio_spec::load_spec();
    assert_eq!(testkit::twilio_spec::check_create_message(&spec, &call.account_sid, &call.form), Ok(()));

    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    let pieces = outbound_pieces(&history);
    assert_eq!(pieces.len(), 1);
    assert_eq!(pieces[0].sid, call.sid);
    assert_eq!((pieces[0].segments, pieces[0].encoding.as_str()), (1, "GSM-7"));
    match &history[0].event {
        HistoryEvent::Outbound { delivery, id, .. } => {
            assert_eq!((delivery.as_str(), id.as_str()), ("twilio", "reply.SM1"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.sent(&SentKey::Piece { outbound: "reply.SM1", index: 0 }.to_string()).await, call.sid);
    t.wait_outbound_empty().await;
    t.stop().await;
}

#[tokio::test]
async fn a_long_reply_goes_as_marked_pieces_in_order() {
    let mut t = TestSender::start(r#""sms_max_len": 100, "max_parts": 4"#).await;
    let to = peer(2);
    let body = "The first sentence is about the weather today. The second one says it will rain later on. \
                The third sentence suggests an umbrella. The fourth asks whether you need anything else. \
                A fifth one closes the message politely.";
    t.publish(&outbound("reply.SM2", &to, body)).await;

    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    let pieces = outbound_pieces(&history);
    let calls = t.twilio.created();
    assert_eq!(calls.len(), pieces.len());
    let n = pieces.len();
    assert!((3..=4).contains(&n), "{pieces:?}");
    for (i, (call, piece)) in calls.iter().zip(&pieces).enumerate() {
        let body = call.get("Body").unwrap();
        assert!(body.ends_with(&format!(" ({}/{n})", i + 1)), "{body}");
        assert!(body.chars().count() <= 100);
        assert_eq!(piece.body, body);
        assert_eq!(piece.sid, call.sid);
    }
    assert!(calls[0].get("Body").unwrap().starts_with("The first sentence is about the weather today."));
    t.stop().await;
}

#[tokio::test]
async fn an_mms_is_one_message_with_its_media_never_split_and_valid_by_twilios_spec() {
    let mut t = TestSender::start(r#""sms_max_len": 100, "max_parts": 4"#).await;
    let to = peer(6);
    let body = "A picture of the plant you asked about, with notes. ".repeat(40);
    let mut out = outbound("reply.SMmms", &to, &body);
    out.media_urls = vec!["https://m.example/a.png".to_owned(), "https://m.example/b.jpg".to_owned()];
    t.publish(&out).await;

    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    let calls = t.twilio.created();
    assert_eq!(calls.len(), 1, "an MMS is one message, whatever sms_max_len says");
    let call = &calls[0];
    let sent = call.get("Body").unwrap();
    assert!(sent.chars().count() <= 1600, "within Twilio's body limit: {}", sent.chars().count());
    assert!(sent.ends_with("..."), "cut, not split: {sent}");
    assert!(!sent.contains("(1/"), "no (i/n) marker: {sent}");
    assert_eq!(call.all("MediaUrl"), ["https://m.example/a.png", "https://m.example/b.jpg"]);
    let spec = testkit::twilio_spec::load_spec();
    testkit::twilio_spec::check_create_message(&spec, &call.account_sid, &call.form)
        .unwrap_or_else(|p| panic!("not a valid CreateMessage request: {p:?}\n{:?}", call.form));
    match &history[0].event {
        HistoryEvent::Outbound { media, pieces, .. } => {
            assert_eq!(media, &out.media_urls, "the history shows the media");
            assert_eq!(pieces.len(), 1);
        }
        other => panic!("{other:?}"),
    }

    // Media alone: one message without a body.
    let mut bare = outbound("reply.SMbare", &to, "");
    bare.media_urls = vec!["https://m.example/c.gif".to_owned()];
    t.publish(&bare).await;
    let calls = t.twilio.wait_for_calls(2, WAIT).await;
    assert_eq!(calls[1].get("Body"), None);
    assert_eq!(calls[1].all("MediaUrl"), ["https://m.example/c.gif"]);
    testkit::twilio_spec::check_create_message(&spec, &calls[1].account_sid, &calls[1].form).unwrap();
    t.stop().await;
}

#[tokio::test]
async fn a_log_channel_writes_the_log_and_history_and_never_calls_twilio() {
    let mut t = TestSender::start(r#""delivery": "log", "sms_max_len": 60"#).await;
    let to = peer(3);
    t.publish(&outbound("reply.SM3", &to, &"Local runs need no Twilio account at all. ".repeat(3))).await;
    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    match &history[0].event {
        HistoryEvent::Outbound { delivery, pieces, .. } => {
            assert_eq!(delivery, "log");
            assert!(pieces.len() >= 2);
            assert!(pieces.iter().all(|p| p.sid.is_none()));
        }
        other => panic!("{other:?}"),
    }
    t.wait_outbound_empty().await;
    assert!(t.twilio.calls().is_empty());
    t.stop().await;
}

#[tokio::test]
async fn an_opted_out_number_is_never_sent_to() {
    let mut t = TestSender::start("").await;
    let to = peer(4);
    t.bus.optout.put(Topology::optout_key(&t.channel.id, &to), "{\"source\":\"stop\"}".into()).await.unwrap();
    t.publish(&outbound("reply.SM4", &to, "Hello")).await;
    let history = t.wait_history(&to, "the opted-out note", |h| !h.is_empty()).await;
    assert_eq!(notes(&history)[0].0, NoteReason::OptedOut);
    t.wait_outbound_empty().await;
    assert!(t.twilio.calls().is_empty());
    t.stop().await;
}

#[tokio::test]
async fn the_same_outbound_delivered_again_sends_nothing_twice() {
    let mut t = TestSender::start(r#""sms_max_len": 50"#).await;
    let to = peer(5);
    let out = outbound("api.key-5", &to, &"Pieces are remembered by outbound id and index. ".repeat(3));
    t.publish(&out).await;
    let history = t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    let sent = t.twilio.created().len();
    assert_eq!(outbound_pieces(&history).len(), sent);
    assert_eq!(t.sent("api.key-5.done").await.as_deref(), Some("delivered"));

    // The same message again (a replay, or JetStream redelivering after a
    // lost ack): a new stream message, same outbound id.
    publish_outbound(&t.bus, &out, "api.key-5.again").await;
    t.wait_outbound_empty().await;
    // Give it time to (wrongly) send; nothing may arrive.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(t.twilio.created().len(), sent);
    let history = t.history(&to).await;
    outbound_pieces(&history);
    t.stop().await;
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let mut t = TestSender::start("").await;
    let to = peer(6);
    t.publish(&outbound("reply.SM6", &to, "Count me")).await;
    t.wait_history(&to, "the outbound entry", |h| !h.is_empty()).await;
    let http = reqwest::Client::new();
    let health = http.get(format!("http://{}/api/health", t.addr)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = eventually(WAIT, "sender metrics", || async {
        let text = http.get(format!("http://{}/metrics", t.addr)).send().await.ok()?.text().await.ok()?;
        text.contains("smsgate_sender_sends_total").then_some(text)
    })
    .await;
    assert!(metrics.contains("smsgate_sender_segments_total"), "{metrics}");
    assert!(metrics.contains("smsgate_sender_twilio_seconds"), "{metrics}");
    t.stop().await;
}

#[tokio::test]
async fn a_messaging_service_sends_instead_of_the_from_number() {
    let mut t = TestSender::start(r#""twilio_messaging_service_sid": "MG0123456789abcdef0123456789abcdef""#).await;
    t.publish(&outbound("reply.SM7", &peer(7), "Via the service")).await;
    let calls = t.twilio.wait_for_calls(1, WAIT).await;
    assert_eq!(calls[0].get("MessagingServiceSid"), Some("MG0123456789abcdef0123456789abcdef"));
    assert_eq!(calls[0].get("From"), None);
    t.stop().await;
}

#[tokio::test]
async fn shutdown_interrupts_a_wait_and_hands_the_message_back() {
    let mut t = TestSender::start("").await;
    t.twilio.push(smsgate_testkit::twilio::Reply::TooManyRequests { retry_after: Some(60) });
    t.publish(&outbound("reply.SM8", &peer(8), "Later")).await;
    t.twilio.wait_for_calls(1, WAIT).await;
    let started = std::time::Instant::now();
    t.stop().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "stopped in {:?}", started.elapsed());
    // Naked, not acked: it is still there for the next sender.
    assert_eq!(t.outbound_pending().await, 1);
    assert_eq!(t.twilio.calls().len(), 1);
}
