//! What the fault tests share: building batches of webhooks, posting them
//! while recording ingress's answers, and the end-of-test ledger check.

use std::time::{Duration, Instant};

use smsgate_e2e::harness::{Attempt, Expect, Leftovers, Report, Stack};
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
/// `len` characters. Every tenth carries a picture (an MMS the worker
/// fetches from the Twilio stub), so the ledger holds for MMS too.
pub fn hook(stack: &Stack, run: u64, i: u64, len: usize) -> SignedWebhook {
    let mut text = format!("Message {i:04} of run {run:x}.");
    let filler = " Here is another plain sentence to make it longer.";
    while text.len() + filler.len() <= len {
        text.push_str(filler);
    }
    let from = sender_number(2_000_000 + (run % 1000) * SENDERS + i % SENDERS);
    if i.is_multiple_of(10) {
        stack.webhook_with_picture(&message_sid(run, i), &from, &text)
    } else {
        stack.webhook(&message_sid(run, i), &from, &text)
    }
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

/// Every attempt of one webhook.
pub type Attempts = Vec<Attempt>;

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
        for a in attempts {
            expect.record(sid, a.status);
        }
    }
}

/// What ingress answered a background poster while a fault was injected.
#[derive(Debug)]
pub struct Answers {
    /// Every status seen.
    pub statuses: std::collections::BTreeSet<u16>,
    /// Posts not answered 200.
    pub refused: usize,
    /// The slowest of those answers.
    pub slowest_refusal: Duration,
    /// The slowest 200 (ingress holds a webhook while a cluster elects a leader).
    pub slowest_accepted: Duration,
    /// From the start of the first refused post to the end of the last one
    /// (zero when none was refused).
    pub window: Duration,
}

pub fn answers(results: &[(String, Attempts)]) -> Answers {
    let all = || results.iter().flat_map(|(_, a)| a.iter());
    let refused: Vec<&Attempt> = all().filter(|a| a.status != 200).collect();
    let first = refused.iter().map(|a| a.at).min();
    let last = refused.iter().map(|a| a.at + a.latency).max();
    Answers {
        statuses: all().map(|a| a.status).collect(),
        refused: refused.len(),
        slowest_refusal: refused.iter().map(|a| a.latency).max().unwrap_or_default(),
        slowest_accepted: all().filter(|a| a.status == 200).map(|a| a.latency).max().unwrap_or_default(),
        window: first.zip(last).map(|(f, l)| l - f).unwrap_or_default(),
    }
}

/// Waits (polling) until `f` holds.
pub async fn until<F: FnMut() -> bool>(what: &str, mut f: F) {
    smsgate_testkit::eventually(DRAIN, what, || {
        let ok = f();
        async move { ok.then_some(()) }
    })
    .await
}

/// Invariant 7: each person's replies reached Twilio in the order ingress
/// accepted the person's messages (the inbound stream's order, which
/// `P_seen` records per MessageSid). That is the order they were sent in,
/// unless a webhook refused with a 503 was accepted on a later retry: then
/// Twilio itself delivers it late, and smsgate answers in the order it got
/// them. The reply bodies carry the message numbers of [`hook`]. Returns
/// how many replies were checked.
pub async fn assert_order_per_person(stack: &Stack) -> usize {
    let (checked, violations) = order_per_person(stack).await;
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    checked
}

/// The replies checked for [`assert_order_per_person`], and every reply that
/// came after a later message's reply.
pub async fn order_per_person(stack: &Stack) -> (usize, Vec<String>) {
    let seen = stack.topology.seen_bucket();
    let prefix = format!("$KV.{seen}.");
    // Message number (the last 16 hex digits of its SID) → inbound sequence.
    let accepted: std::collections::HashMap<u64, u64> =
        smsgate_e2e::harness::ledger::read_stream(&stack.js, &format!("KV_{seen}"))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|(subject, payload)| {
                let sid = subject.strip_prefix(&prefix)?;
                let n = u64::from_str_radix(sid.get(sid.len().checked_sub(16)?..)?, 16).ok()?;
                let seq = serde_json::from_slice::<serde_json::Value>(&payload).ok()?.get("seq")?.as_u64()?;
                Some((n, seq))
            })
            .collect();
    let mut last: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
    let (mut checked, mut violations) = (0, Vec::new());
    for call in stack.twilio.created() {
        let (Some(to), Some(body)) = (call.get("To"), call.get("Body")) else { continue };
        let Some(n) = body.split("Message ").nth(1).and_then(|rest| rest.get(..4)).and_then(|d| d.parse().ok()) else {
            continue;
        };
        let seq = *accepted.get(&n).unwrap_or_else(|| panic!("message {n} has no inbound sequence in P_seen"));
        if let Some((prev_n, prev_seq)) = last.insert(to.to_owned(), (n, seq))
            && seq < prev_seq
        {
            violations.push(format!(
                "{to} got the reply to message {n} (inbound seq {seq}) after the reply to message {prev_n} (seq \
                 {prev_seq})"
            ));
        }
        checked += 1;
    }
    (checked, violations)
}
