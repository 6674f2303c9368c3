use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::StreamExt;
use smsgate_shared::envelope::{self, Inbound, StatusUpdate};
use smsgate_testkit::{self as testkit, nats::NatsServer};

use crate::helpers::{TestApp, inbound_params, without};

#[tokio::test]
async fn signed_webhook_is_acked_and_lands_in_inbound_with_its_sid_as_msg_id() {
    let nats = NatsServer::start();
    let app = TestApp::start(&nats).await;
    let params = inbound_params("SM00000000000000000000000000000001", "Hello there");

    let resp = app.post_signed(&app.webhook_path(), &params).await;

    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/xml");
    assert!(resp.text().await.unwrap().contains("<Response></Response>"));
    let stream = app.js.get_stream(app.topology.inbound_stream()).await.unwrap();
    let msg = stream.get_last_raw_message_by_subject(&app.topology.inbound_subject(&app.channel.id)).await.unwrap();
    let msg_id = msg.headers.get("Nats-Msg-Id").map(|v| v.to_string());
    assert_eq!(msg_id.as_deref(), Some("SM00000000000000000000000000000001"));
    let inbound: Inbound = envelope::decode(&msg.payload).unwrap();
    assert_eq!(inbound.body, "Hello there");
    assert_eq!(inbound.from, "+14155550100");
    assert_eq!(inbound.channel_id, app.channel.id);
    // Every parameter Twilio sent is kept, known or not.
    assert_eq!(inbound.params.len(), params.len());
}

#[tokio::test]
async fn the_same_webhook_posted_twice_leaves_one_stream_message() {
    let nats = NatsServer::start();
    let app = TestApp::start(&nats).await;
    let params = inbound_params("SM00000000000000000000000000000002", "twice");
    assert_eq!(app.post_signed(&app.webhook_path(), &params).await.status(), 200);
    assert_eq!(app.post_signed(&app.webhook_path(), &params).await.status(), 200);
    assert_eq!(app.count(&app.topology.inbound_stream()).await, 1);
}

#[tokio::test]
async fn mms_media_are_carried_in_the_envelope() {
    let nats = NatsServer::start();
    let app = TestApp::start(&nats).await;
    let mut params = without(&inbound_params("MM00000000000000000000000000000003", ""), "NumMedia");
    params.extend(
        [("NumMedia", "1"), ("MediaUrl0", "https://api.twilio.com/media/1"), ("MediaContentType0", "image/png")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    assert_eq!(app.post_signed(&app.webhook_path(), &params).await.status(), 200);
    let stream = app.js.get_stream(app.topology.inbound_stream()).await.unwrap();
    let msg = stream.get_last_raw_message_by_subject(&app.topology.inbound_subject(&app.channel.id)).await.unwrap();
    let inbound: Inbound = envelope::decode(&msg.payload).unwrap();
    assert_eq!(inbound.media.len(), 1);
    assert_eq!(inbound.media[0].content_type.as_deref(), Some("image/png"));
}

#[tokio::test]
async fn twilio_signing_with_the_default_port_is_accepted() {
    let nats = NatsServer::start();
    let params = inbound_params("SM00000000000000000000000000000004", "port");
    // Twilio signed https://host:443/..., we are configured with https://host.
    let mut channel = testkit::channel("");
    channel.public_base_url = Some("https://sms.example.com".to_owned());
    let app = TestApp::start_with(&nats, channel).await;
    let url = format!("https://sms.example.com:443{}", app.webhook_path());
    let sig = smsgate_shared::signature::sign(testkit::AUTH_TOKEN, &url, &params);
    assert_eq!(app.post(&app.webhook_path(), &params, Some(&sig)).await.status(), 200);
}

#[tokio::test]
async fn every_rejection_has_its_status_code_and_nothing_is_published() {
    let nats = NatsServer::start();
    let app = TestApp::start(&nats).await;
    let good = inbound_params("SM00000000000000000000000000000005", "hi");

    // 404: unknown path token, whatever else is right.
    let public = format!("http://127.0.0.1:8000/api/channels/sms/twilio/webhook/{}", "x".repeat(40));
    let sig = smsgate_shared::signature::sign(testkit::AUTH_TOKEN, &public, &good);
    let path = format!("/api/channels/sms/twilio/webhook/{}", "x".repeat(40));
    assert_eq!(app.post(&path, &good, Some(&sig)).await.status(), 404);

    // 403: no signature, a wrong one, one made with another token.
    assert_eq!(app.post(&app.webhook_path(), &good, None).await.status(), 403);
    assert_eq!(app.post(&app.webhook_path(), &good, Some("bm90IGl0")).await.status(), 403);
    let url = format!("http://127.0.0.1:8000{}", app.webhook_path());
    let other = smsgate_shared::signature::sign("another-token", &url, &good);
    assert_eq!(app.post(&app.webhook_path(), &good, Some(&other)).await.status(), 403);
    // A signed body altered on the way.
    let sig = smsgate_shared::signature::sign(testkit::AUTH_TOKEN, &url, &good);
    let mut altered = good.clone();
    altered[5].1 = "hi!".to_owned();
    assert_eq!(app.post(&app.webhook_path(), &altered, Some(&sig)).await.status(), 403);

    // 413: over 64 KiB.
    let mut big = good.clone();
    big.push(("Body".to_owned(), "x".repeat(70 * 1024)));
    assert_eq!(app.post_signed(&app.webhook_path(), &big).await.status(), 413);

    // 415: not a form.
    let resp = app
        .http
        .post(format!("http://{}{}", app.addr, app.webhook_path()))
        .header("content-type", "application/json")
        .header("X-Twilio-Signature", &sig)
        .body(r#"{"MessageSid": "SM1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);

    // 400: a required field missing (signed correctly), or another account.
    for key in ["MessageSid", "From", "To", "AccountSid"] {
        let resp = app.post_signed(&app.webhook_path(), &without(&good, key)).await;
        assert_eq!(resp.status(), 400, "without {key}");
    }
    let mut other_account = without(&good, "AccountSid");
    other_account.push(("AccountSid".to_owned(), "ACffffffffffffffffffffffffffffffff".to_owned()));
    assert_eq!(app.post_signed(&app.webhook_path(), &other_account).await.status(), 400);

    assert_eq!(app.count(&app.topology.inbound_stream()).await, 0);
    // ...and the good one still goes through.
    assert_eq!(app.post_signed(&app.webhook_path(), &good).await.status(), 200);
}

#[tokio::test]
async fn unsigned_webhooks_pass_only_with_insecure_skip_signature() {
    let nats = NatsServer::start();
    let app = TestApp::start_with(&nats, testkit::channel(r#""insecure_skip_signature": true"#)).await;
    let params = inbound_params("SM00000000000000000000000000000006", "unsigned");
    assert_eq!(app.post(&app.webhook_path(), &params, None).await.status(), 200);
}

#[tokio::test]
async fn status_callbacks_land_in_status_with_an_empty_200() {
    let nats = NatsServer::start();
    let app = TestApp::start(&nats).await;
    let params: Vec<(String, String)> = [
        ("AccountSid", testkit::ACCOUNT_SID),
        ("From", testkit::FROM_NUMBER),
        ("To", "+14155550100"),
        ("MessageSid", "SM00000000000000000000000000000007"),
        ("MessageStatus", "delivered"),
        ("SmsSid", "SM00000000000000000000000000000007"),
        ("SmsStatus", "delivered"),
        ("RawDlrDoneDate", "2611211030"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let resp = app.post_signed(&app.status_path(), &params).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().is_empty());
    // The same status twice is one message; another status is another.
    assert_eq!(app.post_signed(&app.status_path(), &params).await.status(), 200);
    let stream = app.js.get_stream(app.topology.status_stream()).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config { deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await
        .unwrap();
    let mut batch =
        consumer.fetch().max_messages(10).expires(std::time::Duration::from_secs(1)).messages().await.unwrap();
    let mut seen = Vec::new();
    while let Some(Ok(m)) = batch.next().await {
        let update: StatusUpdate = envelope::decode(&m.payload).unwrap();
        seen.push((update.status, update.to));
    }
    assert_eq!(seen, vec![("delivered".to_owned(), Some("+14155550100".to_owned()))]);

    let missing_status = crate::helpers::without(&params, "MessageStatus");
    assert_eq!(app.post_signed(&app.status_path(), &missing_status).await.status(), 400);
}

#[tokio::test]
async fn health_and_ready_answer_and_nothing_else_is_public() {
    let nats = NatsServer::start();
    let app = TestApp::start(&nats).await;
    let get = |p: &str| app.http.get(format!("http://{}{p}", app.addr)).send();
    assert_eq!(get("/api/health").await.unwrap().status(), 200);
    assert_eq!(get("/api/ready").await.unwrap().status(), 200);
    app.post_signed(&app.webhook_path(), &inbound_params("SM00000000000000000000000000000008", "m")).await;
    // Metrics and the admin API live on the admin listener only.
    for path in ["/metrics", "/api/v1/channels", "/api/v1/conversations"] {
        assert_eq!(get(path).await.unwrap().status(), 404, "{path}");
    }
}
