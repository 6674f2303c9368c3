use std::time::{Duration, Instant};

use smsgate_testkit::{self as testkit, nats::NatsServer};

use crate::helpers::{TestApp, inbound_params};

#[tokio::test]
async fn stopped_nats_gives_503_quickly_and_ingress_recovers_when_it_returns() {
    let mut nats = NatsServer::start();
    let app = TestApp::start(&nats).await;
    assert_eq!(
        app.post_signed(&app.webhook_path(), &inbound_params("SM00000000000000000000000000000101", "a")).await.status(),
        200
    );

    nats.stop();
    for i in 0..3 {
        let started = Instant::now();
        let resp = app
            .post_signed(&app.webhook_path(), &inbound_params(&format!("SM0000000000000000000000000000020{i}"), "b"))
            .await;
        let took = started.elapsed();
        assert_eq!(resp.status(), 503);
        assert!(took < Duration::from_secs(3), "503 took {took:?}");
    }
    assert_eq!(app.http.get(format!("http://{}/api/health", app.addr)).send().await.unwrap().status(), 200);
    assert_eq!(app.http.get(format!("http://{}/api/ready", app.addr)).send().await.unwrap().status(), 503);

    nats.start_again();
    // The client reconnects by itself; no restart of ingress.
    testkit::eventually(Duration::from_secs(30), "ingress accepting again", || async {
        let resp =
            app.post_signed(&app.webhook_path(), &inbound_params("SM00000000000000000000000000000301", "c")).await;
        (resp.status() == 200).then_some(())
    })
    .await;
    // What was acked before the outage is still there (file storage).
    assert_eq!(app.count(&app.topology.inbound_stream()).await, 2);
}
