//! The public listener against slow and idle clients (docs/ARCHITECTURE.md §4, invariant
//! 3 must hold while they try), what it serves, and its metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use smsgate_ingress::App;
use smsgate_ingress::serve::Limits;
use smsgate_shared::config::{Config, Settings};
use smsgate_shared::{signature, topology};
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::helpers::{form, inbound_params, unique_prefix};

struct Running {
    public: SocketAddr,
    admin: SocketAddr,
    token: String,
    prefix: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(nats: &NatsServer, limits: Limits) -> Running {
    let prefix = unique_prefix();
    let settings = Settings::for_tests(&nats.url(), &prefix);
    let token = secrecy::ExposeSecret::expose_secret(settings.admin_token.as_ref().unwrap()).to_owned();
    let config = Config { settings, channels: vec![testkit::channel("")] };
    let app = App::build(config).await.expect("ingress builds").with_limits(limits);
    let (public, admin) = (app.local_addr(), app.admin_addr());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { app.run_until_stopped(stop).await.expect("ingress runs") });
    let http = reqwest::Client::new();
    testkit::eventually(Duration::from_secs(20), "ingress ready", || async {
        http.get(format!("http://{public}/api/ready")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    Running { public, admin, token, prefix, shutdown, task }
}

/// A signed inbound webhook over a fresh connection: (status, time taken).
async fn webhook(public: SocketAddr, sid: &str) -> (StatusCode, Duration) {
    let path = format!("/api/channels/sms/twilio/webhook/{}", testkit::PATH_TOKEN);
    let params = inbound_params(sid, "hello");
    let sig = signature::sign(testkit::AUTH_TOKEN, &format!("http://127.0.0.1:8000{path}"), &params);
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let started = Instant::now();
    let r = http
        .post(format!("http://{public}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(signature::HEADER, sig)
        .body(form(&params))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (r.status(), started.elapsed())
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 or similar answer before the close is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

fn fast_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        grace: Duration::from_secs(1),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_delay_a_webhook_and_are_closed_within_the_timeout() {
    let nats = NatsServer::start();
    let app = start(&nats, fast_limits()).await;
    // 300 clients that start a request and never finish its head, and a few
    // that say nothing at all.
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(app.public).await.unwrap();
        if i % 10 != 0 {
            s.write_all(b"POST /api/channels/sms/twilio/webhook/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    let (status, took) = webhook(app.public, "SM00000000000000000000000000000300").await;
    assert_eq!(status, StatusCode::OK);
    assert!(took < Duration::from_millis(1500), "the webhook waited {took:?}");
    // All of them are gone soon after the header timeout (1 s).
    let started = Instant::now();
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(4)).await,
            "a slow client still connected after {:?}",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408_and_an_idle_one_is_closed() {
    let nats = NatsServer::start();
    let app = start(&nats, fast_limits()).await;
    let path = format!("/api/channels/sms/twilio/webhook/{}", testkit::PATH_TOKEN);
    let mut s = TcpStream::connect(app.public).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nFrom=%2B1"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer)).await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    // A keep-alive connection that goes quiet after an answer.
    let mut idle = TcpStream::connect(app.public).await.unwrap();
    idle.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let n = idle.read(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "an idle keep-alive connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_are_closed_until_slots_free_up() {
    let nats = NatsServer::start();
    let app = start(&nats, Limits { max_connections: 20, ..fast_limits() }).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(app.public).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(app.public).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_millis(500)).await, "the 21st connection was kept");
    // The held ones time out (header timeout); then webhooks get in again.
    testkit::eventually(Duration::from_secs(5), "a webhook past the freed cap", || async {
        let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        http.get(format!("http://{}/api/health", app.public)).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    assert_eq!(webhook(app.public, "SM00000000000000000000000000000301").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_the_grace_period_whatever_a_client_does() {
    let nats = NatsServer::start();
    let app = start(&nats, Limits { request_timeout: Duration::from_secs(60), ..fast_limits() }).await;
    // In a handler, waiting for a body that never comes.
    let path = format!("/api/channels/sms/twilio/webhook/{}", testkit::PATH_TOKEN);
    let mut hanging = TcpStream::connect(app.public).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nFrom="
    );
    hanging.write_all(head.as_bytes()).await.unwrap();
    // And one on the admin side, head half sent.
    let mut admin = TcpStream::connect(app.admin).await.unwrap();
    admin.write_all(b"GET /api/v1/channels HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    app.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), app.task)
        .await
        .expect("ingress stopped within the grace period")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    drop((hanging, admin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_only_on_the_admin_listener_and_count_accepted_webhooks() {
    let nats = NatsServer::start();
    let app = start(&nats, Limits::default()).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("http://{}/metrics", app.public)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let scrape = || async {
        let r = http.get(format!("http://{}/metrics", app.admin)).bearer_auth(&app.token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
    };
    let accepted = r#"smsgate_ingress_requests_total{route="webhook",outcome="accepted"}"#;
    let histogram = "smsgate_ingress_publish_seconds_count";
    let before = scrape().await;
    for i in 0..3 {
        assert_eq!(webhook(app.public, &format!("SM0000000000000000000000000000031{i}")).await.0, StatusCode::OK);
    }
    let after = scrape().await;
    assert!(value(&after, accepted) - value(&before, accepted) >= 3.0, "{after}");
    assert!(value(&after, histogram) - value(&before, histogram) >= 3.0, "{after}");
    assert!(after.contains("smsgate_ingress_publish_seconds_bucket"), "{after}");
}

#[tokio::test]
async fn readiness_is_cached_for_a_moment() {
    let nats = NatsServer::start();
    let app = start(&nats, Limits::default()).await;
    let http = reqwest::Client::new();
    let ready = format!("http://{}/api/ready", app.public);
    assert_eq!(http.get(&ready).send().await.unwrap().status(), StatusCode::OK);
    let js = async_nats::jetstream::new(topology::connect(&nats.url(), "test").await.unwrap());
    js.delete_stream(topology::Topology::new(&app.prefix).dead_stream()).await.unwrap();
    // The answer of a moment ago, without asking JetStream again...
    assert_eq!(http.get(&ready).send().await.unwrap().status(), StatusCode::OK);
    // ...and the truth soon after.
    testkit::eventually(Duration::from_secs(5), "not ready without a stream", || async {
        (http.get(&ready).send().await.ok()?.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
}
