//! Starts the real ingress on port 0 against a real nats-server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use async_nats::jetstream;
use smsgate_ingress::App;
use smsgate_shared::config::{Channel, Config, Settings};
use smsgate_shared::topology::Topology;
use smsgate_shared::{signature, topology};
use smsgate_testkit::{self as testkit, nats::NatsServer};
use tokio_util::sync::CancellationToken;

pub struct TestApp {
    pub addr: SocketAddr,
    #[allow(dead_code)] // for the admin tests
    pub admin_addr: SocketAddr,
    pub topology: Topology,
    pub js: jetstream::Context,
    pub http: reqwest::Client,
    pub channel: Channel,
    pub shutdown: CancellationToken,
}

pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("it{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl TestApp {
    pub async fn start(nats: &NatsServer) -> Self {
        Self::start_with(nats, testkit::channel("")).await
    }

    pub async fn start_with(nats: &NatsServer, channel: Channel) -> Self {
        Self::start_custom(nats, channel, |app| app).await
    }

    /// Like [`Self::start_with`], with the built App changed by `f` first.
    pub async fn start_custom(nats: &NatsServer, channel: Channel, f: impl FnOnce(App) -> App) -> Self {
        let prefix = unique_prefix();
        let config = Config { settings: Settings::for_tests(&nats.url(), &prefix), channels: vec![channel.clone()] };
        let app = f(App::build(config).await.expect("ingress builds"));
        let addr = app.local_addr();
        let admin_addr = app.admin_addr();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            app.run_until_stopped(token).await.expect("ingress runs");
        });
        let js = jetstream::new(topology::connect(&nats.url(), "test").await.unwrap());
        let topology = Topology::new(&prefix);
        let test = Self { addr, admin_addr, topology, js, http: reqwest::Client::new(), channel, shutdown };
        test.wait_ready().await;
        test
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/api/ready", self.addr);
        testkit::eventually(std::time::Duration::from_secs(20), "ingress ready", || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }

    pub fn webhook_path(&self) -> String {
        format!("/api/channels/sms/twilio/webhook/{}", testkit::PATH_TOKEN)
    }

    pub fn status_path(&self) -> String {
        format!("/api/channels/sms/twilio/status/{}", testkit::PATH_TOKEN)
    }

    /// Posts `params` to `path` signed the way Twilio signs: over the
    /// channel's public URL, not the address we actually post to.
    pub async fn post_signed(&self, path: &str, params: &[(String, String)]) -> reqwest::Response {
        let public = format!("{}{path}", self.channel.public_base_url.as_deref().unwrap());
        let sig = signature::sign(testkit::AUTH_TOKEN, &public, params);
        self.post(path, params, Some(&sig)).await
    }

    pub async fn post(&self, path: &str, params: &[(String, String)], sig: Option<&str>) -> reqwest::Response {
        let body = form(params);
        let mut req = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(sig) = sig {
            req = req.header(signature::HEADER, sig);
        }
        req.send().await.expect("request sent")
    }

    /// How many messages a stream holds.
    pub async fn count(&self, stream: &str) -> u64 {
        let mut s = self.js.get_stream(stream).await.unwrap();
        s.info().await.unwrap().state.messages
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn form(params: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

/// An inbound SMS as Twilio posts it.
pub fn inbound_params(sid: &str, body: &str) -> Vec<(String, String)> {
    signature::inbound_sms_params(testkit::ACCOUNT_SID, testkit::FROM_NUMBER, sid, "+14155550100", body, 0)
}

pub fn without(params: &[(String, String)], key: &str) -> Vec<(String, String)> {
    params.iter().filter(|(k, _)| k != key).cloned().collect()
}
