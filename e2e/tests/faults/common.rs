//! What the fault tests share: building batches of webhooks, posting them
//! while recording ingress's answers, and the end-of-test ledger check.

use std::time::{Duration, Instant};

use smsgate_e2e::harness::{Expect, Leftovers, Report, Stack};
use smsgate_e2e::webhook::{SignedWebhook, message_sid, sender_number};

/// Generous: the machine has two cores and is shared.
pub const DRAIN: Duration = Duration::from_secs(240);

/// Distinct senders per run: replies to one sender stay in order, so this
/// is also the pipeline's parallelism.
pub const SENDERS: u64 = 50;

/// A run id, so MessageSids and numbers never repeat across tests.
pub fn run_id() -> u64 {
    u64::from(rand::random::<u32>())
}

/// Webhook `i` of run `run`: its own MessageSid, one of [`SENDERS`] numbers,
/// a body unique to it (so the stub's calls tell pieces apart) of about
/// `len` characters.
pub fn hook(stack: &Stack, run: u64, i: u64, len: usize) -> SignedWebhook {
    let mut text = format!("Message {i:04} of run {run:x}.");
    let filler = " Here is another plain sentence to make it longer.";
    while text.len() + filler.len() <= len {
        text.push_str(filler);
    }
    let from = sender_number(2_000_000 + (run % 1000) * SENDERS + i % SENDERS);
    stack.webhook(&message_sid(run, i), &from, &text)
}

/// Posts `hooks` (8 connections) and records every answer in `expect`.
pub async fn post(stack: &Stack, expect: &mut Expect, hooks: &[SignedWebhook]) {
    let statuses = stack.post_all(hooks, 8).await;
    for (h, s) in hooks.iter().zip(statuses) {
        expect.record(&h.message_sid, s);
    }
}

/// Waits for the pipeline to drain, then checks that the work queues are
/// empty and the ledger; prints the report (and the service logs on
/// failure, through the stack's Drop).
pub async fn settle_and_check(stack: &Stack, expect: &Expect, started: Instant) -> Report {
    let left = stack.wait_drained(DRAIN).await.unwrap();
    assert_eq!(left, Leftovers { inbound: 0, outbound: 0 }, "acked messages left in the work queues");
    check(stack, expect, started).await
}

/// The ledger check alone.
pub async fn check(stack: &Stack, expect: &Expect, started: Instant) -> Report {
    let ledger = stack.ledger().await.unwrap();
    let report = ledger.check(expect).unwrap();
    eprintln!("{}: {report} ({:.1} s)", stack.config.name, started.elapsed().as_secs_f64());
    report
}

/// Every attempt of one webhook: (status, latency).
pub type Attempts = Vec<(u16, Duration)>;

/// Posts `hooks` from a background task (8 connections, at most `per_second`
/// first posts a second), each until ingress answers 200 (a retrying
/// Twilio), while the test injects faults.
pub fn post_in_background(
    stack: &Stack,
    hooks: Vec<SignedWebhook>,
    per_second: f64,
) -> tokio::task::JoinHandle<Vec<(String, Attempts)>> {
    use futures::StreamExt;
    let poster = stack.poster();
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / per_second);
    tokio::spawn(async move {
        futures::stream::iter(hooks.into_iter().enumerate().map(|(i, h)| {
            let poster = poster.clone();
            let slot = start + interval * u32::try_from(i).unwrap();
            async move {
                tokio::time::sleep_until(slot).await;
                let attempts = poster.post_until_acked(&h, Duration::from_millis(200), Duration::from_secs(120)).await;
                (h.message_sid, attempts)
            }
        }))
        .buffered(8)
        .collect()
        .await
    })
}

/// Records what a background poster saw.
pub fn record_all(expect: &mut Expect, results: &[(String, Attempts)]) {
    for (sid, attempts) in results {
        for (status, _) in attempts {
            expect.record(sid, *status);
        }
    }
}

/// Waits (polling) until `f` holds.
pub async fn until<F: FnMut() -> bool>(what: &str, mut f: F) {
    smsgate_shared::testkit::eventually(DRAIN, what, || {
        let ok = f();
        async move { ok.then_some(()) }
    })
    .await
}

/// Invariant 7: each person's replies reached Twilio in the order the person
/// sent the messages (the reply bodies carry the message numbers of
/// [`hook`]). Returns how many replies were checked.
pub fn assert_order_per_person(stack: &Stack) -> usize {
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut checked = 0;
    for call in stack.twilio.created() {
        let (Some(to), Some(body)) = (call.get("To"), call.get("Body")) else { continue };
        let Some(n) = body.split("Message ").nth(1).and_then(|rest| rest.get(..4)).and_then(|d| d.parse().ok()) else {
            continue;
        };
        if let Some(prev) = last.insert(to.to_owned(), n) {
            assert!(n >= prev, "{to} got the reply to message {n} after the reply to message {prev}");
        }
        checked += 1;
    }
    checked
}
