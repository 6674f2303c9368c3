//! The web console in a real headless Chromium (`testkit::browser`) against
//! the real ingress and nats-server: sign in, the list and a conversation,
//! a hostile message body shown as text, pause and resume, an operator's
//! answer, live events, sign out.

use std::time::Duration;

use serde_json::json;
use smsgate_shared::domain::{ChannelId, MessageSid};
use smsgate_shared::envelope::{self, HistoryEvent, Origin, Outbound};
use smsgate_testkit::browser::Browser;
use smsgate_testkit::nats::NatsServer;
use time::OffsetDateTime;

use crate::admin::{Admin, PEER, TOKEN, inbound};

const ONE_MESSAGE_PEER: &str = "+14155550142";

/// Every element shown on the page outside the sign-in card, except the
/// header bar and its title: what a signed-out visitor sees.
const VISIBLE_OUTSIDE_SIGN_IN: &str = "return [...document.body.querySelectorAll('*')]
    .filter((e) => !e.closest('#signin') && !['HEADER', 'H1'].includes(e.tagName))
    .filter((e) => e.checkVisibility() && e.getClientRects().length > 0)
    .map((e) => e.tagName + (e.id ? '#' + e.id : ''));";

const HOSTILE: &str = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>";

#[tokio::test]
async fn an_operator_signs_in_reads_takes_over_answers_and_sees_live_events() {
    let nats = NatsServer::start();
    let admin = Admin::start(&nats).await;
    let now = OffsetDateTime::now_utc();
    admin.history(PEER, now, inbound(1, "is the shop open on sunday?")).await;
    admin.history(PEER, now, inbound(2, HOSTILE)).await;
    // The same person called too: the turn shows in the same conversation.
    let call = "CA0123456789abcdef0123456789abcdef".to_owned();
    admin
        .history(
            PEER,
            now,
            HistoryEvent::CallTurn {
                call_sid: call.clone(),
                turn: 1,
                heard: "what time do you close".into(),
                said: "We close at 4.".into(),
                origin: Origin::Chat,
                interrupted: false,
            },
        )
        .await;
    admin
        .history(
            PEER,
            now,
            HistoryEvent::Call {
                call_sid: call,
                status: "completed".into(),
                direction: "inbound".into(),
                duration_secs: Some(42),
                detail: None,
            },
        )
        .await;

    // Another person wrote once: counts agree with their number.
    admin.history(ONE_MESSAGE_PEER, now, inbound(3, "just once")).await;

    let browser = Browser::launch().await;
    browser.goto(&format!("{}/", admin.base)).await;
    browser.wait_until("!document.getElementById('signin').hidden", "the sign-in form").await;
    // Signed out, nothing but the sign-in shows (and the page's title), at
    // desktop and at phone width.
    for (width, height) in [(1280, 800), (390, 844)] {
        browser.resize(width, height).await;
        let shown = browser.eval(VISIBLE_OUTSIDE_SIGN_IN, json!([])).await;
        assert_eq!(shown, json!([]), "visible before signing in at {width}px");
    }
    browser.resize(1280, 800).await;

    browser.type_into("#token", "not-the-token").await;
    browser.click("#signin-button").await;
    browser
        .wait_until(
            "document.getElementById('signin-error').textContent.includes('not the admin token')",
            "the refusal",
        )
        .await;

    browser.eval("document.getElementById('token').value = '';", json!([])).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#signin-button").await;
    browser.wait_until("!document.getElementById('app').hidden", "the console after signing in").await;
    let cookie = browser.eval("return document.cookie;", json!([])).await;
    assert_eq!(cookie, "", "the session cookie is HttpOnly: no script reads it");

    let row = format!(".conversation[data-peer='{PEER}']");
    browser.wait_until(&format!("document.querySelector(\"{row}\")"), "the conversation in the list").await;
    let once = browser.text(&format!(".conversation[data-peer='{ONE_MESSAGE_PEER}']")).await;
    assert!(once.contains(" · 1 message") && !once.contains("1 messages"), "{once}");
    assert_eq!(browser.text("#list-total").await, "2 conversations");
    browser.click(&row).await;
    browser.wait_until("document.querySelectorAll('#entries .entry').length >= 4", "the conversation's entries").await;
    let entries = browser.text("#entries").await;
    assert!(entries.contains("is the shop open on sunday?"), "{entries}");
    assert!(entries.contains(HOSTILE), "a hostile body shows as the text it is: {entries}");
    assert!(entries.contains("what time do you close") && entries.contains("We close at 4."), "a call turn: {entries}");
    assert!(entries.contains("call inbound completed, 42 s"), "the call's end: {entries}");
    let pwned = browser
        .eval(
            "return [window.__pwned === undefined, document.querySelectorAll('#entries img, #entries script').length];",
            json!([]),
        )
        .await;
    assert_eq!(pwned, json!([true, 0]), "no markup from a message ever runs or renders");

    // Human takeover from the page.
    browser.click("#pause").await;
    browser.wait_until("!document.getElementById('paused').hidden", "the paused badge").await;
    let store = admin.js.get_key_value(admin.topology.conversations_bucket()).await.unwrap();
    let channel = ChannelId::parse("test").unwrap();
    let peer = smsgate_shared::domain::E164::parse(PEER).unwrap();
    let key = smsgate_shared::topology::Topology::conversation_key(&channel, &peer);
    assert!(store.get(&key).await.unwrap().is_some(), "the pause is in P_conversations");

    // The operator answers: an Outbound from the API goes to the sender's stream.
    browser.type_into("#reply", "Yes, 10 to 4. — Sam").await;
    browser.click("#send").await;
    let stream = admin.js.get_stream(admin.topology.outbound_stream()).await.unwrap();
    let subject = admin.topology.outbound_subject(&channel);
    let sent = smsgate_testkit::eventually(
        Duration::from_secs(10),
        "the operator's answer on the outbound stream",
        || async {
            let m = stream.get_last_raw_message_by_subject(&subject).await.ok()?;
            envelope::decode::<Outbound>(&m.payload).ok()
        },
    )
    .await;
    assert_eq!(sent.body, "Yes, 10 to 4. — Sam");
    assert_eq!(sent.to.to_string(), PEER);
    assert_eq!(sent.origin, Origin::Api);
    browser.wait_until("document.getElementById('reply').value === ''", "the reply box cleared").await;

    browser.click("#resume").await;
    browser
        .wait_until(
            "document.getElementById('paused').hidden && !document.getElementById('resume').offsetParent",
            "the bot resumed",
        )
        .await;
    assert!(store.get(&key).await.unwrap().is_none(), "resume removes the pause");

    // Live: a new conversation appears without a reload, and in the events pane.
    browser.wait_until("document.getElementById('live').textContent === 'live'", "the event stream connected").await;
    let newcomer = "+447700900123";
    admin
        .history(
            newcomer,
            OffsetDateTime::now_utc(),
            HistoryEvent::Inbound {
                message_sid: MessageSid::parse("SMlive1").unwrap(),
                body: "hello from london".into(),
                media: vec![],
            },
        )
        .await;
    browser
        .wait_until(
            &format!("document.querySelector(\".conversation[data-peer='{newcomer}']\")"),
            "the new conversation, live",
        )
        .await;
    browser.wait_until("[...document.querySelectorAll('#events .event')].some(e => e.dataset.type === 'message.received' && e.textContent.includes('hello from london'))", "the live event").await;
    let first =
        browser.eval("return document.querySelector('#conversations .conversation').dataset.peer;", json!([])).await;
    assert_eq!(first, newcomer, "newest first");

    // Search narrows the list to matching numbers.
    browser.type_into("#search", "7700").await;
    browser
        .wait_until("document.querySelectorAll('#conversations .conversation').length === 1", "the search result")
        .await;

    browser.click("#signout").await;
    browser.wait_until("!document.getElementById('signin').hidden", "the sign-in form after signing out").await;
    assert_eq!(browser.eval(VISIBLE_OUTSIDE_SIGN_IN, json!([])).await, json!([]), "visible after signing out");
    let after = browser.eval("return fetch('/api/v1/conversations').then(r => r.status);", json!([])).await;
    assert_eq!(after, 401, "signed out in the server too");
}
