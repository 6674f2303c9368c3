//! The compliance guard through the admin API: refusals as 403 with the
//! code (and a note in the conversation), quiet hours as a scheduled text or
//! 409 with the next allowed time, the schedule listed and canceled, consent
//! added, shown and revoked (an opt-out).

use reqwest::StatusCode;
use serde_json::{Value, json};
use smsgate_testkit::{self as testkit, nats::NatsServer};

use crate::admin::{Admin, PEER, TOKEN};

const LONDON: &str = "+442079460123";

/// A channel whose quiet-hours window for a London number is closed now:
/// it opens in two to three hours.
fn quiet_channel() -> smsgate_shared::config::Channel {
    let tz = jiff::tz::TimeZone::get("Europe/London").unwrap();
    let hour = tz.to_datetime(jiff::Timestamp::now()).hour();
    let start = (hour + 2) % 24;
    let end = start + 1;
    let extra = format!(
        r#""reply_countries": ["*"], "compliance": {{"quiet_hours": {{"start": "{start:02}:30", "end": "{end:02}:00"}}}}"#
    );
    testkit::channel_with_id("quiet", "quiet-path-token-abcdefghijklmnopqrstuvwxyz", &extra)
}

async fn delete(admin: &Admin, path: &str) -> (StatusCode, Value) {
    let r =
        admin.http.delete(format!("{}{path}", admin.base)).bearer_auth(TOKEN).json(&json!({})).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn refusals_are_403_with_the_code_and_noted_in_the_conversation() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    // Never texted, no consent: nothing may be sent.
    let send = json!({"channel_id": "test", "to": PEER, "body": "Big sale!", "purpose": "marketing"});
    let (status, body) = admin.post("/api/v1/messages", &send).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("no_consent")), "{body}");
    // Express consent is not enough for marketing; written consent is.
    admin.consent(PEER).await;
    let (status, body) = admin.post("/api/v1/messages", &send).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("no_consent")), "{body}");
    let written = json!({"channel_id": "test", "to": PEER, "kind": "written", "source": "signed form 12"});
    assert_eq!(admin.post("/api/v1/consent", &written).await.0, StatusCode::OK);
    let (status, body) = admin.post("/api/v1/messages", &send).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{body}");
    assert_eq!(body["purpose"], "marketing");
    // A bad purpose is a 400 before the guard.
    let bad = json!({"channel_id": "test", "to": PEER, "body": "x", "purpose": "spam"});
    assert_eq!(admin.post("/api/v1/messages", &bad).await.1["code"], "invalid_purpose");

    // Revoked by the operator: an opt-out.
    let (status, shown) = delete(&admin, &format!("/api/v1/consent/test/{PEER}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((shown["consent"].clone(), shown["opted_out"].clone()), (Value::Null, json!(true)));
    let plain = json!({"channel_id": "test", "to": PEER, "body": "hello"});
    let (status, body) = admin.post("/api/v1/messages", &plain).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("opted_out")), "{body}");

    let (_, conversation) = admin.get(&format!("/api/v1/conversations/test/{PEER}")).await;
    let text = conversation.to_string();
    assert!(text.contains("no_consent") && text.contains("opted_out"), "the refusals are in the conversation: {text}");
}

#[tokio::test]
async fn quiet_hours_schedule_the_text_or_answer_409_and_the_schedule_can_be_canceled() {
    let nats = NatsServer::start();
    let admin = Admin::start_with(&nats, vec![testkit::channel(""), quiet_channel()]).await;
    let consent = json!({"channel_id": "quiet", "to": LONDON, "kind": "express", "source": "test"});
    assert_eq!(admin.post("/api/v1/consent", &consent).await.0, StatusCode::OK);

    let send = json!({"channel_id": "quiet", "to": LONDON, "body": "Your parcel arrives today", "defer": false});
    let (status, body) = admin.post("/api/v1/messages", &send).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("quiet_hours")), "{body}");
    let next = body["next_allowed_at"].as_str().unwrap().to_owned();
    assert!(next.ends_with(":30:00Z"), "the window's first minute: {next}");

    let send = json!({"channel_id": "quiet", "to": LONDON, "body": "Your parcel arrives today", "idempotency_key": "parcel-1"});
    let (status, body) = admin.post("/api/v1/messages", &send).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::ACCEPTED, Some("scheduled")), "{body}");
    assert_eq!(body["send_at"].as_str(), Some(next.as_str()));
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 0, "nothing goes out now");
    // The same key again: the same schedule, flagged.
    let (_, again) = admin.post("/api/v1/messages", &send).await;
    assert_eq!((again["duplicate"].as_bool(), again["send_at"].as_str()), (Some(true), Some(next.as_str())));

    let (status, list) = admin.get("/api/v1/scheduled?channel_id=quiet").await;
    assert_eq!(status, StatusCode::OK);
    let items = list["scheduled"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!((items[0]["id"].as_str(), items[0]["why"].as_str()), (Some("api.parcel-1"), Some("quiet_hours")));
    assert_eq!(items[0]["to"], LONDON);
    assert_eq!(admin.get("/api/v1/scheduled?channel_id=test").await.1["scheduled"], json!([]));

    // A text for a set time, then canceled.
    let later = json!({"channel_id": "test", "to": PEER, "body": "see you", "send_at": "2099-01-01T10:00:00Z"});
    assert_eq!(admin.post("/api/v1/messages", &later).await.1["code"], "invalid_send_at", "more than a year ahead");
    admin.consent(PEER).await;
    let at = (time::OffsetDateTime::now_utc() + time::Duration::hours(5))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let later = json!({"channel_id": "test", "to": PEER, "body": "see you", "send_at": at, "idempotency_key": "later"});
    let (status, body) = admin.post("/api/v1/messages", &later).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::ACCEPTED, Some("scheduled")), "{body}");
    let (status, body) = delete(&admin, "/api/v1/scheduled/api.later").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("canceled")), "{body}");
    assert_eq!(delete(&admin, "/api/v1/scheduled/api.later").await.0, StatusCode::NOT_FOUND);
    let (_, conversation) = admin.get(&format!("/api/v1/conversations/test/{PEER}")).await;
    let text = conversation.to_string();
    assert!(text.contains("canceled before it was sent"), "{text}");
}
