//! Outbound calls: placed through the Calls API stub, valid against the
//! `CreateCall` operation of Twilio's OpenAPI spec, placed once however
//! often delivered, refused for opted-out and blocked numbers.

use serde_json::Value;
use smsgate_shared::bus::SentKey;
use smsgate_shared::envelope::{HistoryEvent, NoteReason, OutboundCall};
use smsgate_shared::topology::Topology;
use smsgate_testkit::{self as testkit, eventually, twilio::Reply};

use crate::helpers::*;

/// Twilio's spec of the 2010-04-01 API, beside the repository (`shared/twilio/`).
const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/twilio/twilio_api_v2010.json");

/// The `CreateCall` request schema: (properties, required, the path's
/// AccountSid pattern).
fn create_call_schema() -> (serde_json::Map<String, Value>, Vec<String>, String) {
    let text = std::fs::read_to_string(SPEC).unwrap_or_else(|e| panic!("{SPEC}: {e}"));
    let spec: Value = serde_json::from_str(&text).unwrap();
    let path = "/2010-04-01/Accounts/{AccountSid}/Calls.json";
    let op = &spec["paths"][path]["post"];
    assert_eq!(op["operationId"], "CreateCall");
    let schema = &op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
    let properties = schema["properties"].as_object().unwrap().clone();
    let required = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let account = op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "AccountSid"))
        .map(|p| p["schema"]["pattern"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (properties, required, account)
}

/// Checks a form against the schema: every name a property, every required
/// one present, a repeated name only for arrays, enums and types kept.
fn assert_valid_create_call(form: &[(String, String)], account_sid: &str) {
    let (properties, required, account_pattern) = create_call_schema();
    for r in &required {
        assert!(form.iter().any(|(k, _)| k == r), "required {r} missing from {form:?}");
    }
    assert!(
        ["Url", "Twiml", "ApplicationSid"].iter().any(|k| form.iter().any(|(n, _)| n == k)),
        "one of Url, Twiml, ApplicationSid"
    );
    for (name, value) in form {
        let p = properties.get(name).unwrap_or_else(|| panic!("{name} is not a CreateCall parameter"));
        let repeats = form.iter().filter(|(k, _)| k == name).count();
        let kind = p["type"].as_str().unwrap_or("string");
        assert!(repeats == 1 || kind == "array", "{name} repeated but not an array");
        let item = if kind == "array" { &p["items"] } else { p };
        if let Some(options) = item["enum"].as_array() {
            assert!(options.iter().any(|o| o == value.as_str()), "{name}={value} not in {options:?}");
        }
        match (kind, item["format"].as_str()) {
            ("integer", _) => assert!(value.parse::<i64>().is_ok(), "{name} is not an integer"),
            ("boolean", _) => assert!(["true", "false"].contains(&value.as_str()), "{name} is not a boolean"),
            (_, Some("uri")) => assert!(value.starts_with("http://") || value.starts_with("https://"), "{name}"),
            (_, Some("twiml")) => {
                twiml_check(value);
            }
            _ => {}
        }
    }
    // The path's AccountSid pattern: ^AC[0-9a-fA-F]{32}$.
    assert_eq!(account_pattern, "^AC[0-9a-fA-F]{32}$");
    let hex = account_sid.strip_prefix("AC").unwrap_or_default();
    assert!(hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{account_sid}");
}

/// TwiML is XML with a `<Response>` root (a light check without an XML
/// crate in the sender: balanced, and the root named).
fn twiml_check(twiml: &str) {
    assert!(twiml.starts_with("<?xml") && twiml.contains("<Response>") && twiml.ends_with("</Response>"), "{twiml}");
    assert!(!twiml.contains("<Dial"), "{twiml}");
}

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
    assert_valid_create_call(&r.form, &r.account_sid);
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
