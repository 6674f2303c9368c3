//! MMS: inbound media fetched only from this message's Twilio media (Basic
//! auth, a redirect to the media store and nowhere else), bounded, handed to
//! the model as `data:` URLs or described in words, deleted on request; an
//! agent's reply media checked before it is sent.

use std::io::Cursor;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::Value;
use smsgate_shared::envelope::{HistoryEvent, Inbound, Media, NoteReason};
use smsgate_testkit::chat::{AGENT_SECRET, AgentAnswer, AgentStub, OpenAiStub};
use smsgate_testkit::media::MediaHost;
use smsgate_testkit::twilio::TwilioStub;
use smsgate_testkit::{self as testkit, channel};

use crate::helpers::{TestWorker, inbound};

const ALICE: &str = "+14155550141";

fn me(n: u32) -> String {
    format!("ME{n:032x}")
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30])));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The test channel on the Twilio stub, the media store on `host`, with `extra` keys.
fn media_channel(chat: &str, twilio: &TwilioStub, host: &MediaHost, extra: &str) -> smsgate_shared::config::Channel {
    let comma = if extra.is_empty() { "" } else { "," };
    channel(&format!(
        r#"{chat}, "twilio_api_base": "{}", "media": {{"hosts": ["{}/media/"]{comma} {extra}}}"#,
        twilio.base_url(),
        host.base_url()
    ))
}

fn with_media(mut i: Inbound, media: &[(&str, &str)]) -> Inbound {
    i.media = media.iter().map(|(u, t)| Media { url: (*u).to_owned(), content_type: Some((*t).to_owned()) }).collect();
    i
}

/// The `image_url` URLs and the text of the last user message the model got.
fn last_user(model: &OpenAiStub) -> (String, Vec<String>) {
    let request = model.requests().pop().unwrap();
    let user = request.messages().into_iter().rev().find(|m| m["role"] == "user").unwrap();
    let images = match &user["content"] {
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "image_url")
            .map(|p| p["image_url"]["url"].as_str().unwrap().to_owned())
            .collect(),
        _ => vec![],
    };
    (request.last_user_text(), images)
}

fn note_detail(history: &[smsgate_shared::envelope::HistoryEntry], reason: NoteReason) -> Option<String> {
    history.iter().find_map(|e| match &e.event {
        HistoryEvent::Note { reason: r, detail, .. } if *r == reason => Some(detail.clone()),
        _ => None,
    })
}

#[tokio::test]
async fn an_image_reaches_the_model_as_a_data_url_through_twilios_redirect() {
    let (twilio, store, model) = (TwilioStub::start().await, MediaHost::start().await, OpenAiStub::start().await);
    let mut w = TestWorker::start(vec![media_channel(&model.chat_config(""), &twilio, &store, "")]).await;
    let picture = png(40, 30);
    let location = store.put("/media/AC1/abc", "image/png", &picture);
    let url = twilio.add_media_redirect("SMpic1", &me(1), &location);

    w.bus.send(&with_media(inbound("test", "SMpic1", ALICE, "what plant is this?"), &[(&url, "image/png")])).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].body, "reply to: what plant is this?");

    let (text, images) = last_user(&model);
    assert_eq!(text, "what plant is this?");
    assert_eq!(images, [format!("data:image/png;base64,{}", STANDARD.encode(&picture))], "small pictures go as sent");
    let asked = twilio.media_requests();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].authorized, "Twilio's media URL gets the account's Basic auth");
    let fetched = store.requests();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].authorization, None, "the media store never sees the credentials");
    assert!(fetched[0].target.contains("Signature="), "the signed URL is followed as given");
    w.bus.wait_drained().await;
    let history = w.bus.history("test", ALICE).await;
    assert_eq!(note_detail(&history, NoteReason::MediaSkipped), None);
    match &history[0].event {
        HistoryEvent::Inbound { media, .. } => assert_eq!(media[0].url, url, "history keeps the reference"),
        other => panic!("{other:?}"),
    }
    assert!(!serde_json::to_string(&history).unwrap().contains(&STANDARD.encode(&picture)), "never the bytes");
    w.stop().await;
}

#[tokio::test]
async fn a_large_picture_is_scaled_to_the_configured_edge() {
    let (twilio, store, model) = (TwilioStub::start().await, MediaHost::start().await, OpenAiStub::start().await);
    let mut w =
        TestWorker::start(vec![media_channel(&model.chat_config(""), &twilio, &store, r#""max_edge": 100"#)]).await;
    let url = twilio.add_media("SMbig1", &me(2), "image/png", &png(400, 200));

    w.bus.send(&with_media(inbound("test", "SMbig1", ALICE, "receipt"), &[(&url, "image/png")])).await;
    w.bus.wait_outbound(1).await;
    let (_, images) = last_user(&model);
    let data = images[0].strip_prefix("data:image/jpeg;base64,").unwrap();
    let scaled = image::load_from_memory(&STANDARD.decode(data).unwrap()).unwrap();
    assert_eq!((scaled.width(), scaled.height()), (100, 50));
    w.stop().await;
}

#[tokio::test]
async fn media_urls_that_are_not_this_messages_twilio_media_are_never_requested() {
    let (twilio, store, model) = (TwilioStub::start().await, MediaHost::start().await, OpenAiStub::start().await);
    let other = MediaHost::start().await;
    let mut w = TestWorker::start(vec![media_channel(&model.chat_config(""), &twilio, &store, "")]).await;
    let sid = "SMhostile1";
    let path = |ac: &str, msg: &str, n: u32| format!("/2010-04-01/Accounts/{ac}/Messages/{msg}/Media/{}", me(n));
    let other_port = other.base_url().rsplit(':').next().unwrap().to_owned();
    let hostile = [
        // another host, with the right path
        format!("{}{}", other.base_url(), path(testkit::ACCOUNT_SID, sid, 1)),
        // the same host by another name
        format!("http://localhost:{other_port}{}", path(testkit::ACCOUNT_SID, sid, 2)),
        // the Twilio API, another account
        format!("{}{}", twilio.base_url(), path("AC99999999999999999999999999999999", sid, 3)),
        // the Twilio API, another message (served if asked)
        twilio.add_media("SMsomeoneelse", &me(4), "image/png", &png(4, 4)),
        // a metadata address
        format!("http://127.0.0.1:{other_port}/latest/meta-data/iam"),
    ];
    // This message's media, redirecting to a host that is not a media host.
    let redirected = twilio.add_media_redirect(sid, &me(6), &other.put("/media/x", "image/png", &png(4, 4)));
    let mut media: Vec<(&str, &str)> = hostile.iter().map(|u| (u.as_str(), "image/jpeg")).collect();
    media.push((&redirected, "image/jpeg"));

    w.bus.send(&with_media(inbound("test", sid, ALICE, "look"), &media)).await;
    let out = w.bus.wait_outbound(1).await;
    assert!(out[0].body.starts_with("reply to: look"), "the message is still answered");
    w.bus.wait_drained().await;

    assert_eq!(other.requests(), [], "the other server sees no request at all");
    assert_eq!(store.requests(), []);
    let asked: Vec<String> = twilio.media_requests().into_iter().map(|r| r.path).collect();
    assert_eq!(asked, [path(testkit::ACCOUNT_SID, sid, 6)], "only this message's media is requested");
    let (text, images) = last_user(&model);
    assert!(images.is_empty());
    assert_eq!(text.matches("[a photo could not be loaded]").count(), 6, "{text}");
    assert!(!text.contains("http"), "{text}");

    let history = w.bus.history("test", ALICE).await;
    let detail = note_detail(&history, NoteReason::MediaSkipped).expect("the skips are recorded");
    for (n, why) in [
        (0, "another host"),
        (1, "another host"),
        (2, "another account"),
        (3, "another message"),
        (4, "another host"),
        (5, "not in media.hosts"),
    ] {
        assert!(detail.contains(&format!("MediaUrl{n} (image/jpeg): ")), "{n} in {detail}");
        let line = detail.split("; ").nth(n).unwrap();
        assert!(line.contains(why), "{n}: {why} in {line}");
    }
    w.stop().await;
}

#[tokio::test]
async fn oversized_and_unwanted_media_is_described_not_sent() {
    let (twilio, store, model) = (TwilioStub::start().await, MediaHost::start().await, OpenAiStub::start().await);
    let extra = r#""max_bytes": 3000, "content_types": ["image/png", "application/pdf"]"#;
    let mut w = TestWorker::start(vec![media_channel(&model.chat_config(""), &twilio, &store, extra)]).await;
    let sid = "SMbounds1";
    let big = twilio.add_media(sid, &me(1), "image/png", &vec![7u8; 5000]);
    let exe = twilio.add_media(sid, &me(2), "application/x-msdownload", b"MZ");
    let lying = twilio.add_media(sid, &me(3), "text/html", b"<html>");
    let pdf = twilio.add_media(sid, &me(4), "application/pdf", &[1u8; 1500]);
    let media = [
        (&big as &str, "image/png"),
        (&exe, "application/x-msdownload"),
        (&lying, "image/png"),
        (&pdf, "application/pdf"),
    ];

    w.bus.send(&with_media(inbound("test", sid, ALICE, "files"), &media)).await;
    w.bus.wait_outbound(1).await;
    let (text, images) = last_user(&model);
    assert!(images.is_empty(), "{images:?}");
    assert_eq!(
        text,
        "files\n[a photo could not be loaded]\n[an attachment of type application/x-msdownload, not opened]\n\
         [a photo could not be loaded]\n[an attachment: application/pdf, 2 kB]"
    );
    let asked = twilio.media_requests().len();
    assert_eq!(asked, 3, "a type not allowed by the webhook's own word is not even requested");
    w.bus.wait_drained().await;
    let detail = note_detail(&w.bus.history("test", ALICE).await, NoteReason::MediaSkipped).unwrap();
    assert!(detail.contains("MediaUrl0 (image/png): over the 3000-byte media limit"), "{detail}");
    assert!(detail.contains("MediaUrl1 (application/x-msdownload): type application/x-msdownload"), "{detail}");
    assert!(detail.contains("MediaUrl2 (image/png): type text/html"), "{detail}");
    assert!(!detail.contains("MediaUrl3"), "{detail}");
    w.stop().await;
}

#[tokio::test]
async fn a_stalled_media_store_is_bounded_in_time_and_a_body_without_length_in_size() {
    let (twilio, store, model) = (TwilioStub::start().await, MediaHost::start().await, OpenAiStub::start().await);
    let extra = r#""timeout_ms": 300, "max_bytes": 3000"#;
    let mut w = TestWorker::start(vec![media_channel(&model.chat_config(""), &twilio, &store, extra)]).await;
    let sid = "SMstall1";
    let stalled = store.put_slow("/media/slow", "image/png", &png(4, 4), std::time::Duration::from_secs(5));
    let endless = store.put_chunked("/media/long", "image/png", &vec![1u8; 10_000]);
    let slow = twilio.add_media_redirect(sid, &me(1), &stalled);
    let long = twilio.add_media_redirect(sid, &me(2), &endless);

    let started = std::time::Instant::now();
    w.bus.send(&with_media(inbound("test", sid, ALICE, "hm"), &[(&slow, "image/png"), (&long, "image/png")])).await;
    w.bus.wait_outbound(1).await;
    // Three attempts (the test schedule), each bounded by the 300 ms timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    let (text, images) = last_user(&model);
    assert!(images.is_empty());
    assert_eq!(text, "hm\n[a photo could not be loaded]\n[a photo could not be loaded]");
    w.bus.wait_drained().await;
    let detail = note_detail(&w.bus.history("test", ALICE).await, NoteReason::MediaSkipped).unwrap();
    assert!(detail.contains("MediaUrl0 (image/png): unavailable: no answer within 300 ms"), "{detail}");
    assert!(detail.contains("MediaUrl1 (image/png): over the 3000-byte media limit"), "{detail}");
    w.stop().await;
}

#[tokio::test]
async fn a_transient_media_failure_is_retried_like_the_chat_call() {
    let (twilio, store, model) = (TwilioStub::start().await, MediaHost::start().await, OpenAiStub::start().await);
    let mut w = TestWorker::start(vec![media_channel(&model.chat_config(""), &twilio, &store, "")]).await;
    let url = twilio.add_media("SMflaky1", &me(1), "image/png", &png(8, 8));
    twilio.fail_media_next(1, 503);

    w.bus.send(&with_media(inbound("test", "SMflaky1", ALICE, "again"), &[(&url, "image/png")])).await;
    w.bus.wait_outbound(1).await;
    assert_eq!(twilio.media_requests().len(), 2);
    assert_eq!(model.requests().len(), 1, "the model is asked once, with the picture");
    assert_eq!(last_user(&model).1.len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn media_is_deleted_from_twilio_once_the_model_has_it() {
    let (twilio, store, model) = (TwilioStub::start().await, MediaHost::start().await, OpenAiStub::start().await);
    let chat = format!(r#"{}, "delete_media_after_fetch": true"#, model.chat_config(""));
    let mut w = TestWorker::start(vec![media_channel(&chat, &twilio, &store, "")]).await;
    let sid = "SMdelete1";
    let kept = twilio.add_media(sid, &me(1), "image/png", &png(8, 8));
    let refused =
        format!("{}/2010-04-01/Accounts/{}/Messages/SMother/Media/{}", twilio.base_url(), testkit::ACCOUNT_SID, me(2));

    w.bus
        .send(&with_media(inbound("test", sid, ALICE, "private"), &[(&kept, "image/png"), (&refused, "image/png")]))
        .await;
    w.bus.wait_outbound(1).await;
    w.bus.wait_drained().await;
    assert_eq!(
        twilio.deleted_media(),
        [format!("/2010-04-01/Accounts/{}/Messages/{sid}/Media/{}.json", testkit::ACCOUNT_SID, me(1))],
        "the fetched media's resource, and nothing that was not fetched"
    );
    let detail = note_detail(&w.bus.history("test", ALICE).await, NoteReason::MediaDeleted).unwrap();
    assert_eq!(detail, format!("{} deleted from Twilio", me(1)));
    w.stop().await;
}

#[tokio::test]
async fn an_agent_gets_media_inline_and_its_reply_media_is_checked() {
    let (twilio, store) = (TwilioStub::start().await, MediaHost::start().await);
    let agent = AgentStub::start(AGENT_SECRET).await;
    let mut w = TestWorker::start(vec![media_channel(&agent.chat_config(AGENT_SECRET), &twilio, &store, "")]).await;
    let picture = png(3000, 10);
    let url = twilio.add_media("SMagent1", &me(1), "image/png", &picture);
    agent.set_answer(AgentAnswer::Json(serde_json::json!({
        "reply": "here you go",
        "media": ["https://cdn.example.com/a.png"]
    })));

    w.bus.send(&with_media(inbound("test", "SMagent1", ALICE, "pic"), &[(&url, "image/png")])).await;
    let out = w.bus.wait_outbound(1).await;
    assert_eq!(out[0].body, "here you go");
    assert_eq!(out[0].media_urls, ["https://cdn.example.com/a.png"]);
    let sent = &agent.requests()[0].body["media"][0];
    assert_eq!(sent["url"], url.as_str());
    assert_eq!(sent["content_type"], "image/png");
    assert_eq!(sent["size"], picture.len());
    assert_eq!(sent["data"], STANDARD.encode(&picture), "an agent gets the picture as sent, inline");

    agent.set_answer(AgentAnswer::Json(serde_json::json!({
        "reply": "and this",
        "media": ["http://10.0.0.8/secret.png"]
    })));
    w.bus.send(&inbound("test", "SMagent2", ALICE, "more")).await;
    let out = w.bus.wait_outbound(2).await;
    assert_eq!(out[1].body, "and this");
    assert!(out[1].media_urls.is_empty(), "refused media is not sent");
    w.bus.wait_drained().await;
    let detail = note_detail(&w.bus.history("test", ALICE).await, NoteReason::MediaRefused).unwrap();
    assert!(detail.contains("media_urls[0] must be an https:// URL"), "{detail}");
    w.stop().await;
}

/// A PNG of `w`x`h` black RGB pixels: small (116 kB for 6300x6300), whatever
/// its size decoded (three bytes a pixel).
fn zeros_png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::NoFilter,
    );
    image::ImageEncoder::write_image(encoder, &vec![0u8; (w * h * 3) as usize], w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Ten decompression bombs at once (6300x6300 zero PNGs, 120 MB each
/// decoded) to the real worker binary: the pixel cap refuses them from
/// their headers, so the process stays under [`MEMORY_BOUND`] (measured
/// from /proc, its peak resident set), and each is described to the model
/// and noted, not lost.
#[tokio::test]
async fn ten_picture_bombs_at_once_keep_the_worker_under_its_memory_bound() {
    /// The worker's peak resident memory allowed: its own start-up (about
    /// 20 MB in a debug build) with room to spare, well under one bomb.
    const MEMORY_BOUND: u64 = 100 * 1024 * 1024;
    let nats = testkit::nats::NatsServer::start();
    let prefix = crate::helpers::unique_prefix("bombs");
    let bus = crate::helpers::Bus::connect(&nats.url(), &prefix).await;
    let (twilio, model) = (TwilioStub::start().await, OpenAiStub::start().await);
    let bomb = zeros_png(6300, 6300);
    assert!(bomb.len() < 400_000, "{} bytes", bomb.len());
    for n in 0..10u32 {
        let sid = format!("SMbomb{n}");
        let url = twilio.add_media(&sid, &me(n), "image/png", &bomb);
        bus.send(&with_media(inbound("test", &sid, &format!("+1415555060{n}"), "look"), &[(&url, "image/png")])).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = format!(r#"{}, "twilio_api_base": "{}""#, model.chat_config(""), twilio.base_url());
    let channels = crate::crash::write_channels(dir.path(), &config);
    let logs = dir.path().join("worker.log");
    let worker = crate::crash::spawn_worker(&nats, &prefix, &channels, None, &logs);
    let pid = worker.id().unwrap();

    // The bound is checked all along, so a worker that takes too much
    // fails here, before any timeout.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let out = loop {
        let peak = peak_memory(pid);
        assert!(
            peak < MEMORY_BOUND,
            "worker peak memory {} MB, over {} MB; log:\n{}",
            peak / 1_000_000,
            MEMORY_BOUND / 1_000_000,
            std::fs::read_to_string(&logs).unwrap_or_default()
        );
        let out = bus.outbound().await;
        if out.len() >= 10 {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "{} of 10 replies", out.len());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(out.iter().all(|o| o.body.starts_with("reply to: look")), "{out:#?}");
    bus.wait_drained().await;
    assert!(peak_memory(pid) < MEMORY_BOUND);
    let texts: Vec<String> = model.requests().iter().map(|r| r.last_user_text()).collect();
    assert_eq!(texts.len(), 10);
    assert!(texts.iter().all(|t| t == "look\n[a photo could not be loaded]"), "{texts:?}");
    for n in 0..10 {
        let detail = note_detail(&bus.history("test", &format!("+1415555060{n}")).await, NoteReason::MediaSkipped);
        assert_eq!(
            detail.as_deref(),
            Some("MediaUrl0 (image/png): 6300x6300 pixels is over the 24000000-pixel limit of a message; not decoded")
        );
    }
    drop(worker);
}
