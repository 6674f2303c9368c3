//! `POST /api/v1/calls` on the admin listener: an outbound call put on the
//! outbound stream with its idempotency key, the request's errors, opted-out
//! numbers refused by the guard.

use reqwest::StatusCode;
use serde_json::json;
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, HistoryEvent, Origin, Outbound};
use smsgate_shared::topology::Topology;
use smsgate_testkit::nats::NatsServer;

use crate::admin::{Admin, PEER, TOKEN, read_events};

#[tokio::test]
async fn a_call_is_accepted_once_per_key_and_bad_requests_are_400_with_a_code() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    admin.consent(PEER).await;
    let request = json!({"channel_id": "test", "to": PEER, "say": "Your table is ready", "idempotency_key": "table-7"});
    let (status, body) = admin.post("/api/v1/calls", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"id": "api.table-7", "status": "queued", "purpose": "informational", "duplicate": false}));
    let (_, again) = admin.post("/api/v1/calls", &request).await;
    assert_eq!(again, json!({"id": "api.table-7", "status": "queued", "purpose": "informational", "duplicate": true}));
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 1);

    let test = ChannelId::parse("test").unwrap();
    let stream = admin.js.get_stream(admin.topology.outbound_stream()).await.unwrap();
    let stored = stream.get_last_raw_message_by_subject(&admin.topology.outbound_subject(&test)).await.unwrap();
    let outbound: Outbound = envelope::decode(&stored.payload).unwrap();
    assert_eq!((outbound.body.as_str(), outbound.origin), ("Your table is ready", Origin::Api));
    assert_eq!(outbound.call.unwrap().twiml, None);

    let twiml = r#"<?xml version="1.0"?><Response><Say>Hi</Say></Response>"#;
    let (status, _) = admin.post("/api/v1/calls", &json!({"channel_id": "test", "to": PEER, "twiml": twiml})).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let cases = [
        (json!({"channel_id": "test", "to": PEER}), "say_or_twiml"),
        (json!({"channel_id": "test", "to": PEER, "say": "a", "twiml": twiml}), "say_or_twiml"),
        (json!({"channel_id": "test", "to": PEER, "twiml": "hello"}), "invalid_twiml"),
        (json!({"channel_id": "test", "to": PEER, "say": "x".repeat(4001)}), "too_long"),
        (json!({"channel_id": "test", "to": "5550100", "say": "a"}), "invalid_number"),
        (json!({"channel_id": "off", "to": PEER, "say": "a"}), "channel_disabled"),
        (json!({"channel_id": "test", "to": PEER, "say": "a", "body": "x"}), "invalid_json"),
    ];
    for (request, code) in cases {
        let (status, body) = admin.post("/api/v1/calls", &request).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{request}");
    }

    let optout = admin.js.get_key_value(admin.topology.optout_bucket()).await.unwrap();
    optout.put(Topology::optout_key(&test, &E164::parse(PEER).unwrap()), "{}".into()).await.unwrap();
    let (status, body) = admin.post("/api/v1/calls", &json!({"channel_id": "test", "to": PEER, "say": "a"})).await;
    // The guard's refusal: 403 with the code as `error` too.
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("opted_out")), "{body}");
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 2);
}

#[tokio::test]
async fn call_history_streams_as_call_started_turn_and_ended_events() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let mut stream = admin.http.get(format!("{}/api/v1/events", admin.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let now = time::OffsetDateTime::now_utc();
    let call = |status: &str, duration_secs| HistoryEvent::Call {
        call_sid: "CA0123456789abcdef0123456789abcdef".to_owned(),
        status: status.to_owned(),
        direction: "inbound".to_owned(),
        duration_secs,
        detail: None,
    };
    admin.history(PEER, now, call("answered", None)).await;
    let turn = HistoryEvent::CallTurn {
        call_sid: "CA0123456789abcdef0123456789abcdef".to_owned(),
        turn: 1,
        heard: "when are you open".to_owned(),
        said: "From nine to five.".to_owned(),
        origin: Origin::Chat,
        interrupted: false,
    };
    admin.history(PEER, now, turn).await;
    admin.history(PEER, now, call("no-answer", None)).await;
    admin.history(PEER, now, call("completed", Some(42))).await;
    let events = read_events(&mut stream, 4).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["call.started", "call.turn", "call.ended", "call.ended"]);
    let turn: serde_json::Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!((turn["peer"].as_str(), turn["heard"].as_str()), (Some(PEER), Some("when are you open")));
    let ended: serde_json::Value = serde_json::from_str(&events[3].data).unwrap();
    assert_eq!(ended["duration_secs"], 42);
}
