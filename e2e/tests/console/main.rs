//! The web console in a real headless Chromium (`testkit::browser`) against
//! the whole pipeline: the real ingress, worker and sender binaries, a real
//! nats-server, the Twilio and chat stubs (`smsgate_e2e::harness`).
//!
//! One operator's session: sign in; a texted message and the bot's answer
//! appear in the open conversation without a reload; pause, the next text
//! shows but the model is not called, answer as the operator (it reaches
//! Twilio), resume; replay a dead letter; connect a second number (its
//! webhook set in Twilio, its status "ok", answered at once, no restart);
//! a page of another origin on the
//! same host cannot act with the operator's cookie. Screenshots of the main
//! views at desktop and phone width go to `target/console-screenshots/` (not
//! committed).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use smsgate_e2e::harness::{ADMIN_TOKEN, CHANNEL_ID, PUBLIC_BASE_URL, Stack, StackConfig};
use smsgate_e2e::webhook::{Target, signed};
use smsgate_shared::bus::OutboundId;
use smsgate_shared::domain::{ChannelId, E164};
use smsgate_shared::envelope::{self, DeadLetter, Origin, Outbound};
use smsgate_shared::topology::Stage;
use smsgate_testkit::browser::Browser;
use smsgate_testkit::{ACCOUNT_SID, AUTH_TOKEN};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PEER: &str = "+14155550123";
const DESKTOP: (u32, u32) = (1400, 900);
const PHONE: (u32, u32) = (390, 844);

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(browser: &Browser, name: &str) {
    for (label, (w, h)) in [("desktop", DESKTOP), ("phone", PHONE)] {
        browser.resize(w, h).await;
        let path = screenshots().join(format!("{name}-{label}.png"));
        browser.screenshot(&path).await;
    }
    browser.resize(DESKTOP.0, DESKTOP.1).await;
}

/// A page of another origin on the same host (another port: same site, so
/// a SameSite cookie would go along) that tries to act on the admin API.
async fn hostile_page(admin: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let pause = format!("{admin}/api/v1/conversations/{CHANNEL_ID}/{}/pause", PEER.trim_start_matches('+'));
    let html = format!(
        "<!doctype html><title>other site</title><script>
window.done = [];
fetch({pause:?}, {{method: 'POST', mode: 'no-cors', credentials: 'include', headers: {{'Content-Type': 'text/plain'}}, body: '{{}}'}})
  .then(() => done.push('no-cors sent'), () => done.push('no-cors failed'));
fetch({list:?}, {{credentials: 'include'}})
  .then(r => r.text().then(t => done.push('read ' + t.length)), () => done.push('cors blocked'));
</script>",
        list = format!("{admin}/api/v1/conversations"),
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

async fn admin_get(stack: &Stack, path: &str) -> Value {
    stack
        .http
        .get(format!("{}{path}", stack.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_conversation_from_the_console() {
    let stack = Stack::start(StackConfig::new("console")).await.unwrap();
    stack.chat.set_reply("Hi! We open at 10.");
    let browser = Browser::launch().await;
    browser.goto(&format!("{}/", stack.admin_url)).await;
    browser.wait_until("!document.getElementById('signin').hidden", "the sign-in form").await;
    shoot(&browser, "1-sign-in").await;
    browser.type_into("#token", ADMIN_TOKEN).await;
    browser.click("#signin-button").await;
    browser.wait_until("!document.getElementById('app').hidden", "the console").await;
    browser.wait_until("document.getElementById('live').textContent === 'live'", "the event stream").await;

    // A text comes in: it and the bot's answer appear live.
    assert_eq!(stack.post(&stack.webhook("SMconsole0001", PEER, "When do you open?")).await, 200);
    let row = format!(".conversation[data-peer='{PEER}']");
    browser.wait_until(&format!("document.querySelector(\"{row}\")"), "the new conversation, live").await;
    browser.click(&row).await;
    browser
        .wait_until("document.getElementById('entries').textContent.includes('We open at 10')", "the bot's answer")
        .await;
    assert_eq!(stack.chat.requests().len(), 1);
    shoot(&browser, "2-conversation").await;

    // Take over: the next text shows in the open conversation, the model is not asked.
    browser.click("#pause").await;
    browser.wait_until("!document.getElementById('paused').hidden", "the paused badge").await;
    assert_eq!(stack.post(&stack.webhook("SMconsole0002", PEER, "Can I talk to a person?")).await, 200);
    browser
        .wait_until(
            "document.getElementById('entries').textContent.includes('Can I talk to a person?')",
            "the new text in the open conversation, without a reload",
        )
        .await;
    browser
        .wait_until(
            "[...document.querySelectorAll('#entries .note')].some(e => e.textContent.includes('paused'))",
            "the note that the bot held back",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.chat.requests().len(), 1, "paused: the model was not called");

    browser.type_into("#reply", "Sam here, happy to help.").await;
    browser.click("#send").await;
    let sent = stack.twilio.wait_for_calls(2, Duration::from_secs(20)).await;
    assert!(
        sent.iter().any(|c| c.get("Body") == Some("Sam here, happy to help.") && c.get("To") == Some(PEER)),
        "the operator's answer reached Twilio: {sent:?}"
    );
    browser
        .wait_until(
            "[...document.querySelectorAll('#entries .operator')].some(e => e.textContent.includes('Sam here'))",
            "the operator's answer in the conversation",
        )
        .await;
    shoot(&browser, "3-taken-over").await;
    browser.click("#resume").await;
    browser.wait_until("document.getElementById('paused').hidden", "the bot resumed").await;

    // A dead letter, replayed from the console, is delivered.
    let outbound = Outbound {
        v: envelope::VERSION,
        id: OutboundId::api("console-replay").unwrap(),
        channel_id: ChannelId::parse(CHANNEL_ID).unwrap(),
        to: E164::parse(PEER).unwrap(),
        body: "Replayed from the console".to_owned(),
        media_urls: Vec::new(),
        in_reply_to: None,
        origin: Origin::Api,
        created_at: OffsetDateTime::now_utc(),
        call: None,
        guard: None,
    };
    let channel = ChannelId::parse(CHANNEL_ID).unwrap();
    let letter = DeadLetter {
        v: envelope::VERSION,
        stage: "sender".to_owned(),
        channel_id: CHANNEL_ID.to_owned(),
        reason: "test: Twilio was down too long".to_owned(),
        code: None,
        subject: stack.topology.outbound_subject(&channel),
        msg_id: Some(outbound.id.to_string()),
        payload: String::from_utf8(envelope::encode(&outbound).to_vec()).unwrap(),
        at: OffsetDateTime::now_utc(),
    };
    let dead = stack.topology.dead_subject(Stage::Sender, &channel);
    stack.js.publish(dead, envelope::encode(&letter)).await.unwrap().await.unwrap();
    browser.wait_until("document.querySelector('#dead .replay')", "the dead letter, live").await;
    shoot(&browser, "4-dead-letter").await;
    browser.click("#dead .replay").await;
    let sent = stack.twilio.wait_for_calls(3, Duration::from_secs(20)).await;
    assert!(sent.iter().any(|c| c.get("Body") == Some("Replayed from the console")), "{sent:?}");
    browser.wait_until("!document.querySelector('#dead .replay')", "the dead letter gone").await;

    // Connect a second number from the console, pointing its webhook at us.
    let number = "+15550002222";
    let token = "console-connected-path-token-0123456789";
    stack.twilio.add_number(number, "https://old.example/sms", "POST");
    let channel = json!({"channel_id": "sales", "config": {
        "twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN, "twilio_from_number": number,
        "webhook_path_token": token, "public_base_url": PUBLIC_BASE_URL, "twilio_api_base": stack.twilio.base_url(),
        "mps": 0, "chat": {"kind": "static", "reply": "Sales here, thanks!"},
    }});
    browser.click("#connect summary").await;
    browser.eval("document.getElementById('connect-json').value = arguments[0];", json!([channel.to_string()])).await;
    browser.click("#connect-webhook").await;
    browser.click("#connect-button").await;
    browser
        .wait_until("document.getElementById('connect-result').textContent.startsWith('Connected sales.')", "connected")
        .await;
    let ours = format!("{PUBLIC_BASE_URL}{}{token}", smsgate_shared::config::WEBHOOK_PATH);
    assert_eq!(stack.twilio.number(number).unwrap().sms_url, ours, "Twilio now sends the number's SMS to smsgate");
    browser
        .wait_until("document.querySelector(\"#channels li[data-channel='sales'] .status\")", "the new channel")
        .await;
    browser.click("#channels li[data-channel='sales'] .status").await;
    browser
        .wait_until(
            "document.querySelector(\"#channels li[data-channel='sales'] .verdict\").textContent === 'ok'",
            "Twilio's view of the new number: ok",
        )
        .await;
    shoot(&browser, "5-channel-connected").await;
    let target = Target {
        public_url: ours.clone(),
        auth_token: AUTH_TOKEN.to_owned(),
        account_sid: ACCOUNT_SID.to_owned(),
        to: number.to_owned(),
    };
    let hook = signed(&target, "SMconsole0003", "+14155550999", "Is this sales?");
    let poster = stack.poster_for(token);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while poster.post(&hook).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the connected channel's webhook is accepted within seconds");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = stack.twilio.wait_for_calls(4, Duration::from_secs(20)).await;
    assert!(
        sent.iter().any(|c| c.get("Body") == Some("Sales here, thanks!") && c.get("From") == Some(number)),
        "the new channel answered, no restart: {sent:?}"
    );

    // Another origin on the same host, with the operator's cookie in the browser.
    let other = hostile_page(&stack.admin_url).await;
    browser.goto(&other).await;
    browser.wait_until("window.done && window.done.length === 2", "the other page's requests").await;
    let done = browser.eval("return window.done;", json!([])).await;
    assert!(!done.to_string().contains("read "), "another origin read nothing: {done}");
    let view = admin_get(&stack, &format!("/api/v1/conversations/{CHANNEL_ID}/{}", PEER.trim_start_matches('+'))).await;
    assert!(view["paused_until"].is_null(), "another origin could not pause: {view}");
    let metrics = stack
        .http
        .get(format!("{}/metrics", stack.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("smsgate_admin_refused_total{why=\"origin\"}"), "refused as cross-origin");
}
