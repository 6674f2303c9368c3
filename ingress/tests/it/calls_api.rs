//! `POST /api/v1/calls` on the admin listener: an outbound call put on the
//! outbound stream with its idempotency key, the request's errors, opted-out
//! numbers refused.

use reqwest::StatusCode;
use serde_json::json;
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, Origin, Outbound};
use smsgate_shared::topology::Topology;
use smsgate_testkit::nats::NatsServer;

use crate::admin::{Admin, PEER};

#[tokio::test]
async fn a_call_is_accepted_once_per_key_and_bad_requests_are_400_with_a_code() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let request = json!({"channel_id": "test", "to": PEER, "say": "Your table is ready", "idempotency_key": "table-7"});
    let (status, body) = admin.post("/api/v1/calls", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"id": "api.table-7", "duplicate": false}));
    let (_, again) = admin.post("/api/v1/calls", &request).await;
    assert_eq!(again, json!({"id": "api.table-7", "duplicate": true}));
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
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("opted_out")));
    assert_eq!(admin.stream_count(admin.topology.outbound_stream()).await, 2);
}
