//! 500 webhooks of which 100 are re-posted duplicates: 50 re-posted at once
//! (inside JetStream's duplicate window: never stored) and 50 re-posted after
//! the worker answered them and the window passed (stored again: the worker's
//! `P_seen` catches them and records a `duplicate` note for the copy).
//! A tenth of them are MMS (a picture the worker fetches).

use std::time::{Duration, Instant};

use smsgate_e2e::harness::{Expect, Stack, StackConfig};

use crate::common::{self, hook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_posted_webhooks_get_one_reply_each() {
    let mut config = StackConfig::new("dups");
    // Short, so that the late copies are stored again and reach the worker.
    config.duplicate_window = Duration::from_secs(2);
    let stack = Stack::start(config).await.unwrap();
    let started = Instant::now();
    let run = common::run_id();
    let hooks: Vec<_> = (0..400).map(|i| hook(&stack, run, i, 60)).collect();
    let mut expect = Expect::default();

    // 400 originals; the first 50 each posted twice in a row.
    let mut first: Vec<_> = Vec::new();
    for (i, h) in hooks.iter().enumerate() {
        first.push(h.clone());
        if i < 50 {
            first.push(h.clone());
        }
    }
    common::post(&stack, &mut expect, &first).await;
    let immediate_done = Instant::now();

    // Once the originals are answered and the window is over: 50 late copies.
    stack.wait_drained(common::DRAIN).await.unwrap();
    let window_over = immediate_done + Duration::from_secs(3);
    tokio::time::sleep_until(window_over.into()).await;
    common::post(&stack, &mut expect, &hooks[200..250]).await;

    let report = common::settle_and_check(&stack, &expect, started).await;
    assert_eq!(report.posts, 500);
    assert_eq!(report.acked_posts, 500, "ingress acked every post");
    assert_eq!(report.distinct_acked, 400);
    assert_eq!(report.replied, 400, "one reply per distinct MessageSid");
    assert_eq!(report.duplicate_notes + report.deduped_by_jetstream, 100);
    assert!(report.duplicate_notes >= 50, "the late copies reached the worker: {report}");
    assert_eq!(report.chat_calls, 400, "no chat call for a copy");
    // A tenth were MMS: each picture fetched once, with the account's
    // credentials, and given to the model; none for a copy.
    let fetched = stack.twilio.media_requests();
    assert_eq!(fetched.len(), 40, "{fetched:?}");
    assert!(fetched.iter().all(|r| r.authorized && r.method == "GET"));
    let with_pictures =
        stack.chat.requests().iter().filter(|r| r.body.to_string().contains("data:image/png;base64,")).count();
    assert_eq!(with_pictures, 40);
}
