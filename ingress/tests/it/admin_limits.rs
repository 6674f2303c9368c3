//! The admin listener's limits (issue 26): event streams that end with the
//! console session that opened them, a cap on open streams, their NATS
//! consumers deleted when they close, `Last-Event-ID` out of range, and
//! sign-in attempts throttled per client address.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use smsgate_admin::events::MAX_EVENT_STREAMS;
use smsgate_testkit::{self as testkit, nats::NatsServer};
use time::OffsetDateTime;

use crate::admin::{Admin, PEER, TOKEN, inbound, read_events};

/// Signs the console in; the `name=value` of its session cookie.
async fn sign_in(admin: &Admin) -> String {
    let r = admin.http.post(format!("{}/api/v1/session", admin.base)).json(&json!({"token": TOKEN})).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
}

/// Waits until the answer's body ends (None) and returns what came before.
async fn ended_within(response: &mut reqwest::Response, within: Duration) -> Result<Vec<u8>, &'static str> {
    let deadline = Instant::now() + within;
    let mut rest = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(bytes))) => rest.extend_from_slice(&bytes),
            Ok(Ok(None)) | Ok(Err(_)) => return Ok(rest),
            Err(_) => return Err("still open"),
        }
    }
}

async fn history_consumers(admin: &Admin) -> usize {
    let mut stream = admin.js.get_stream(admin.topology.history_stream()).await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

#[tokio::test]
async fn an_event_stream_opened_by_a_console_session_ends_when_it_signs_out() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let cookie = sign_in(&admin).await;
    let url = format!("{}/api/v1/events", admin.base);
    let mut stream = admin.http.get(&url).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    admin.history(PEER, OffsetDateTime::now_utc(), inbound(1, "before sign-out")).await;
    assert_eq!(read_events(&mut stream, 1).await[0].event, "message.received");

    let out = admin
        .http
        .delete(format!("{}/api/v1/session", admin.base))
        .header("cookie", &cookie)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    admin.history(PEER, OffsetDateTime::now_utc(), inbound(2, "after sign-out")).await;
    let rest = ended_within(&mut stream, Duration::from_secs(3)).await.expect("the stream ends with the session");
    assert!(!String::from_utf8_lossy(&rest).contains("after sign-out"), "delivered after sign-out");

    // A stream opened with the bearer token is not the console's: it goes on.
    let mut cli = admin.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    admin.history(PEER, OffsetDateTime::now_utc(), inbound(3, "for the cli")).await;
    assert_eq!(read_events(&mut cli, 1).await[0].event, "message.received");
}

#[tokio::test]
async fn event_streams_past_the_cap_are_refused_and_the_rest_of_the_api_still_answers() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let url = format!("{}/api/v1/events", admin.base);
    let mut open = Vec::new();
    for _ in 0..MAX_EVENT_STREAMS {
        let r = admin.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let refused = admin.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "too_many_event_streams", "{body}");
    assert!(body["detail"].as_str().unwrap().contains(&MAX_EVENT_STREAMS.to_string()), "{body}");
    // The CLI's and the console's other requests are still served.
    let r = admin.http.get(format!("{}/api/v1/channels", admin.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(admin.http.get(format!("{}/", admin.base)).send().await.unwrap().status(), StatusCode::OK);

    // One closes: its slot is free again.
    drop(open.pop());
    testkit::eventually(Duration::from_secs(5), "a freed slot", || async {
        let r = admin.http.get(&url).bearer_auth(TOKEN).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
}

#[tokio::test]
async fn a_closed_event_stream_deletes_its_consumers() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let before = history_consumers(&admin).await;
    let url = format!("{}/api/v1/events", admin.base);
    let stream = admin.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(history_consumers(&admin).await, before + 1);
    drop(stream);
    let started = Instant::now();
    testkit::eventually(Duration::from_secs(5), "the consumers deleted", || async {
        (history_consumers(&admin).await == before).then_some(())
    })
    .await;
    // Far sooner than the server's 30 s inactivity timer.
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_last_event_id_out_of_range_is_refused_with_400() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let url = format!("{}/api/v1/events", admin.base);
    let max = u64::MAX;
    for id in [format!("{max}-0"), format!("0-{max}"), format!("{max}-{max}")] {
        let r = admin.http.get(&url).bearer_auth(TOKEN).header("last-event-id", &id).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{id}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "last_event_id_out_of_range", "{id}: {body}");
    }
    let r = admin.http.get(&url).bearer_auth(TOKEN).header("last-event-id", "18446744073709551616-0").send().await;
    assert_eq!(r.unwrap().status(), StatusCode::BAD_REQUEST, "over u64");
    let ok = admin.http.get(&url).bearer_auth(TOKEN).header("last-event-id", format!("{}-0", max - 1)).send().await;
    assert_eq!(ok.unwrap().status(), StatusCode::OK, "the last id with a successor");
}

#[tokio::test]
async fn sign_in_attempts_are_throttled_per_address() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let session = format!("{}/api/v1/session", admin.base);
    for _ in 0..smsgate_admin::console::SIGN_INS_PER_MINUTE {
        let r = admin.http.post(&session).json(&json!({"token": "guess"})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    for token in ["guess", TOKEN] {
        let r = admin.http.post(&session).json(&json!({"token": token})).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "even the right token waits");
        let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(r.headers().get("set-cookie").is_none());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "too_many_sign_ins", "{body}");
    }
    // The bearer token is not a sign-in: the CLI is still served.
    let r = admin.http.get(format!("{}/api/v1/channels", admin.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
