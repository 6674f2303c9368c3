//! Connecting to a secured NATS and to a cluster, as the services do
//! (`smsgate_shared::nats::connect` with the settings' options): token, user
//! and password, nkey, TLS with a private CA and a client certificate, three
//! routed servers with replicated streams.

#![allow(clippy::unwrap_used)] // test scaffolding panics on setup failures by design

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use secrecy::SecretString;
use smsgate_shared::nats::{NatsOptions, connect};
use smsgate_shared::topology::Topology;
use smsgate_testkit::nats::{NatsCluster, NatsServer};

/// Whether a client with `options` can use JetStream within a few seconds.
async fn works(options: &NatsOptions) -> bool {
    let Ok(client) = connect(options, "test").await else { return false };
    let js = jetstream::new(client);
    let topology = Topology::new("sec");
    tokio::time::timeout(Duration::from_secs(4), topology.ensure(&js)).await.is_ok_and(|r| r.is_ok())
}

#[tokio::test]
async fn a_token_protected_server_lets_in_only_the_token() {
    let nats = NatsServer::start_with("authorization { token: \"s3cret-token-value\" }", false);
    let mut options = NatsOptions::url(&nats.url());
    assert!(!works(&options).await, "no token, yet connected");
    options.token = Some(SecretString::from("s3cret-token-value"));
    assert!(works(&options).await, "the right token was refused");
    options.token = Some(SecretString::from("wrong"));
    assert!(!works(&options).await, "a wrong token was accepted");
}

#[tokio::test]
async fn user_and_password_in_the_url_are_used_and_never_shown() {
    let nats = NatsServer::start_with("authorization { user: smsgate, password: \"p4ss-word\" }", false);
    let url = format!("nats://smsgate:p4ss-word@127.0.0.1:{}", nats.port());
    let options = NatsOptions::url(&url);
    assert!(works(&options).await);
    assert!(!options.display().contains("p4ss-word"), "{}", options.display());
    assert!(!works(&NatsOptions::url(&format!("nats://smsgate:nope@127.0.0.1:{}", nats.port()))).await);
}

#[tokio::test]
async fn an_nkey_seed_file_authenticates() {
    let pair = nkeys::KeyPair::new_user();
    let nats =
        NatsServer::start_with(&format!("authorization {{ users: [ {{ nkey: {} }} ] }}", pair.public_key()), false);
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, pair.seed().unwrap()).unwrap();
    let mut options = NatsOptions::url(&nats.url());
    assert!(!works(&options).await, "no nkey, yet connected");
    options.nkey = Some(seed);
    assert!(works(&options).await, "the nkey was refused");
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl").current_dir(dir).args(args).status().expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A private CA, a server certificate for 127.0.0.1 and a client
/// certificate, all signed by it.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=smsgate test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, ext) in
        [("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")]
    {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let nats = NatsServer::start_with(
        &format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 2 }}",
            p("server.pem"),
            p("server.key"),
            p("ca.pem")
        ),
        true,
    );
    assert!(nats.url().starts_with("tls://"));
    let mut options = NatsOptions::url(&nats.url());
    assert!(!works(&options).await, "the private CA is not trusted by default");
    options.ca = Some(dir.path().join("ca.pem"));
    assert!(!works(&options).await, "the server requires a client certificate");
    options.cert = Some(dir.path().join("client.pem"));
    options.key = Some(dir.path().join("client.key"));
    assert!(works(&options).await, "CA and client certificate were refused");
}

#[tokio::test]
async fn a_three_node_cluster_keeps_r3_streams_through_a_node_kill() {
    let mut cluster = NatsCluster::start();
    let options = NatsOptions { replicas: 3, ..NatsOptions::url(&cluster.urls()) };
    let client = connect(&options, "test").await.unwrap();
    let js = jetstream::new(client);
    let topology = Topology::new("r3").with_replicas(3);
    // The cluster elects its meta leader shortly after start.
    let bus = smsgate_testkit::eventually(Duration::from_secs(30), "the topology on the cluster", || async {
        topology.ensure(&js).await.ok()
    })
    .await;
    let mut inbound = js.get_stream(topology.inbound_stream()).await.unwrap();
    assert_eq!(inbound.info().await.unwrap().config.num_replicas, 3);
    bus.seen.put("SM1", "x".into()).await.unwrap();

    cluster.kill(0);
    // Writes go on with two of three nodes (after a leader election if n1 led).
    let channel = smsgate_shared::domain::ChannelId::parse("c").unwrap();
    smsgate_testkit::eventually(Duration::from_secs(30), "a publish with a node down", || async {
        let publish = js.publish(topology.inbound_subject(&channel), "after the kill".into()).await.ok()?;
        tokio::time::timeout(Duration::from_secs(2), publish).await.ok()?.ok()
    })
    .await;
    // Reads go on too (the first ones may find no responder while the
    // client moves off the dead node).
    smsgate_testkit::eventually(Duration::from_secs(30), "a bucket read with a node down", || async {
        bus.seen.get("SM1").await.ok().flatten()
    })
    .await;
    cluster.restart(0);
    // The node rejoins and catches up: a client of n1 alone reads the stream.
    let n1 = jetstream::new(connect(&NatsOptions::url(&cluster.url(0)), "test").await.unwrap());
    smsgate_testkit::eventually(Duration::from_secs(30), "n1 back with the stream", || async {
        let mut s = n1.get_stream(topology.inbound_stream()).await.ok()?;
        (s.info().await.ok()?.state.messages >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_existing_r1_deployment_is_brought_to_three_replicas() {
    let cluster = NatsCluster::start();
    let js = jetstream::new(connect(&NatsOptions::url(&cluster.urls()), "test").await.unwrap());
    let one = Topology::new("grow");
    smsgate_testkit::eventually(Duration::from_secs(30), "the R1 topology", || async { one.ensure(&js).await.ok() })
        .await;
    let three = Topology::new("grow").with_replicas(3);
    three.ensure(&js).await.unwrap();
    for name in [three.inbound_stream(), three.history_stream(), format!("KV_{}", three.seen_bucket())] {
        let mut s = js.get_stream(&name).await.unwrap();
        assert_eq!(s.info().await.unwrap().config.num_replicas, 3, "{name}");
    }
}
