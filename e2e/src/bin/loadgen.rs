//! `smsgate-loadgen`: signs N distinct webhooks across K senders (before the
//! clock starts, so signing is not measured) and posts them to ingress with C
//! connections, or at a fixed rate; prints throughput, latency percentiles
//! and the answers by status code.
//!
//! End-to-end mode (`--twilio-stub-addr`): the test kit's Twilio Messages API
//! stub runs inside this process on that address, and the pipeline under test
//! is configured with it as `twilio_api_base` and the `echo` chat. Every
//! webhook body is unique (run id + index), so the reply that reaches the stub
//! (`To` = the webhook's `From`, `Body` = the webhook's body) is matched to its
//! webhook; end-to-end latency is webhook sent → the stub received the first
//! piece of the reply. Replies missing after `--e2e-timeout` are counted.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use smsgate_e2e::webhook::{SignedWebhook, Target, message_sid, sender_number, signed};
use smsgate_testkit::chat::OpenAiStub;
use smsgate_testkit::twilio::{Chaos, TwilioStub};

#[derive(Parser, Debug)]
#[command(name = "smsgate-loadgen", about = "Load generator for smsgate's ingress and the whole pipeline")]
struct Args {
    /// Where ingress listens.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The public base URL the signature covers (default: --url).
    #[arg(long)]
    public_base_url: Option<String>,
    /// The channel's webhook path token.
    #[arg(long, env = "SMS_WEBHOOK_PATH_TOKEN")]
    path_token: String,
    /// The channel's Twilio auth token (signs the webhooks; the stub checks it).
    #[arg(long, env = "TWILIO_AUTH_TOKEN")]
    auth_token: String,
    #[arg(long, default_value = "AC00000000000000000000000000000000")]
    account_sid: String,
    /// The channel's number (`To`).
    #[arg(long, default_value = "+15005550006")]
    to: String,
    /// Number of webhooks (distinct MessageSids).
    #[arg(short = 'n', long, default_value_t = 20_000)]
    requests: u64,
    /// Number of distinct senders (`From`).
    #[arg(short = 'k', long, default_value_t = 1000)]
    senders: u64,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// Fixed offered rate in requests per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Distinguishes runs, so MessageSids never repeat across runs.
    #[arg(long)]
    run_id: Option<u64>,
    /// End-to-end mode: run the Twilio API stub on this address (the
    /// channel's `twilio_api_base` must be `http://<this address>`, its chat
    /// `echo`) and report webhook → Twilio call latency per message.
    #[arg(long)]
    twilio_stub_addr: Option<SocketAddr>,
    /// End-to-end mode: how long to wait for the last replies after the last
    /// webhook was answered, in seconds.
    #[arg(long, default_value_t = 30.0)]
    e2e_timeout: f64,
    /// End-to-end mode: how long the Twilio stub takes per call, in ms.
    #[arg(long, default_value_t = 0)]
    twilio_delay_ms: u64,
    /// End-to-end mode with a model: run the OpenAI-compatible chat stub on
    /// this port (the channel's chat `base_url` must be
    /// `http://127.0.0.1:<port>/v1`); it answers "reply to: <body>".
    #[arg(long)]
    chat_stub_port: Option<u16>,
    /// How long the chat stub takes per completion, in ms.
    #[arg(long, default_value_t = 0)]
    chat_delay_ms: u64,
}

/// The `p`-quantile (0..=1) of sorted durations, in milliseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len().saturating_sub(1));
    sorted.get(idx).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn percentiles(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(sorted, 0.50),
        pct(sorted, 0.90),
        pct(sorted, 0.99),
        pct(sorted, 1.0)
    )
}

/// One webhook's outcome at ingress.
struct Sent {
    index: usize,
    at: Instant,
    status: u16,
    latency: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let public_base = args.public_base_url.clone().unwrap_or_else(|| args.url.clone());
    let path = format!("/api/channels/sms/twilio/webhook/{}", args.path_token);
    let target = Target {
        public_url: format!("{}{path}", public_base.trim_end_matches('/')),
        auth_token: args.auth_token.clone(),
        account_sid: args.account_sid.clone(),
        to: args.to.clone(),
    };
    let stub = match args.twilio_stub_addr {
        Some(addr) => Some(
            TwilioStub::start_on(addr, &args.account_sid, &args.auth_token)
                .await
                .map_err(|e| anyhow::anyhow!("cannot start the Twilio stub on {addr}: {e}"))?,
        ),
        None => None,
    };
    if let Some(stub) = &stub
        && args.twilio_delay_ms > 0
    {
        stub.set_chaos(Chaos {
            slow: 1.0,
            slow_delay: Duration::from_millis(args.twilio_delay_ms),
            ..Chaos::default()
        });
    }
    let chat = match args.chat_stub_port {
        Some(port) => {
            let chat = OpenAiStub::start_on_port(port).await;
            chat.set_delay(Duration::from_millis(args.chat_delay_ms));
            Some(chat)
        }
        None => None,
    };
    let run = args.run_id.unwrap_or_else(rand::random);
    // Unique bodies: the echo chat sends each back, which identifies the reply.
    let hooks: Arc<Vec<SignedWebhook>> = Arc::new(
        (0..args.requests)
            .map(|i| {
                let from = sender_number(i % args.senders.max(1));
                signed(&target, &message_sid(run, i), &from, &format!("load test {run:x} {i}"))
            })
            .collect(),
    );
    let endpoint = Arc::new(format!("{}{path}", args.url.trim_end_matches('/')));
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(args.connections).timeout(Duration::from_secs(20)).build()?;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let interval = args.rate.map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (hooks, next, client, endpoint) = (hooks.clone(), next.clone(), client.clone(), endpoint.clone());
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(hook) = hooks.get(i) else { break };
                if let Some(interval) = interval {
                    // Open-loop pacing: request i is due at i × interval.
                    let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t = Instant::now();
                let status = client
                    .post(endpoint.as_str())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("X-Twilio-Signature", &hook.signature)
                    .body(hook.body.clone())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                results.push(Sent { index: i, at: t, status, latency: t.elapsed() });
            }
            results
        }));
    }
    let mut sent = Vec::with_capacity(hooks.len());
    for task in tasks {
        sent.extend(task.await?);
    }
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = sent.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for s in &sent {
        *by_status.entry(s.status).or_default() += 1;
    }
    println!("requests      {}", latencies.len());
    println!("connections   {}", args.connections);
    println!("senders       {}", args.senders);
    if let Some(rate) = args.rate {
        println!("offered rate  {rate:.0}/s");
    }
    println!("elapsed       {:.2} s", elapsed.as_secs_f64());
    println!("throughput    {:.0} req/s", latencies.len() as f64 / elapsed.as_secs_f64());
    println!("latency ms    {}", percentiles(&latencies));
    let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!("status        {}", statuses.join(", "));
    let mut failed = by_status.keys().any(|s| *s != 200);

    if let Some(stub) = stub {
        let span = end_to_end(&stub, &hooks, &sent, started, Duration::from_secs_f64(args.e2e_timeout.max(0.0))).await;
        failed |= span.is_none();
        if let (Some(span), Some(chat)) = (span, &chat) {
            // The goal of the slow-backend phase: everyone answered within
            // twice (posting + the model calls a sender's messages need in a
            // row + one Twilio call).
            let in_a_row = args.requests.div_ceil(args.senders.max(1));
            let ideal = elapsed.as_secs_f64()
                + in_a_row as f64 * args.chat_delay_ms as f64 / 1000.0
                + args.twilio_delay_ms as f64 / 1000.0;
            let verdict = if span <= 2.0 * ideal { "within" } else { "OVER" };
            println!(
                "goal          span {span:.2} s {verdict} 2 × (posting {:.2} s + {in_a_row} × model {:.2} s + Twilio {:.2} s) = {:.2} s; \
                 model calls {}, at most {} at once",
                elapsed.as_secs_f64(),
                args.chat_delay_ms as f64 / 1000.0,
                args.twilio_delay_ms as f64 / 1000.0,
                2.0 * ideal,
                chat.requests().len(),
                chat.max_concurrency()
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// Waits for the replies of the accepted webhooks, matches them and prints
/// the end-to-end figures. Returns the span (first webhook sent → last reply)
/// when every reply arrived exactly once.
async fn end_to_end(
    stub: &TwilioStub,
    hooks: &[SignedWebhook],
    sent: &[Sent],
    started: Instant,
    timeout: Duration,
) -> Option<f64> {
    let accepted: Vec<&Sent> = sent.iter().filter(|s| s.status == 200).collect();
    // Wait until as many calls as accepted webhooks arrived, or nothing new
    // came for `timeout`.
    let mut last_count = 0;
    let mut last_progress = Instant::now();
    loop {
        let count = stub.call_count();
        if count >= accepted.len() {
            break;
        }
        if count != last_count {
            (last_count, last_progress) = (count, Instant::now());
        } else if last_progress.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A moment more, so that a duplicate reply has a chance to show.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let by_body: HashMap<String, usize> = hooks
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let body = form_urlencoded::parse(h.body.as_bytes()).find(|(k, _)| k == "Body")?.1.into_owned();
            Some((body, i))
        })
        .collect();
    let from_of = |i: usize| {
        form_urlencoded::parse(hooks[i].body.as_bytes()).find(|(k, _)| k == "From").map(|(_, v)| v.into_owned())
    };
    let mut first_reply: HashMap<usize, Instant> = HashMap::new();
    let (mut duplicates, mut unmatched, mut not_created) = (0u64, 0u64, 0u64);
    let mut last_arrival = started;
    for call in stub.calls() {
        if !call.created() {
            not_created += 1;
            continue;
        }
        // The echo chat answers the body, the chat stub "reply to: <body>".
        let body = call.get("Body").map(|b| b.strip_prefix("reply to: ").unwrap_or(b));
        let matched = body.and_then(|b| by_body.get(b)).copied().filter(|&i| call.get("To") == from_of(i).as_deref());
        let Some(i) = matched else {
            unmatched += 1;
            continue;
        };
        let at = call.at.into_std();
        last_arrival = last_arrival.max(at);
        match first_reply.get_mut(&i) {
            Some(first) => {
                duplicates += 1;
                *first = (*first).min(at);
            }
            None => {
                first_reply.insert(i, at);
            }
        }
    }
    let mut e2e: Vec<Duration> = accepted
        .iter()
        .filter_map(|s| first_reply.get(&s.index).map(|at| at.saturating_duration_since(s.at)))
        .collect();
    e2e.sort_unstable();
    let missing = accepted.len() - e2e.len();
    let span = last_arrival.saturating_duration_since(started).as_secs_f64();
    println!(
        "e2e replies   {} of {} accepted (missing after {:.0} s: {missing}, duplicates: {duplicates}, \
         unmatched: {unmatched}, refused by the stub: {not_created})",
        e2e.len(),
        accepted.len(),
        timeout.as_secs_f64()
    );
    println!("e2e span      {span:.2} s (first webhook sent → last reply received)");
    println!("e2e completed {:.0} msg/s", if span > 0.0 { e2e.len() as f64 / span } else { 0.0 });
    println!("e2e ms        {}", percentiles(&e2e));
    (missing == 0 && duplicates == 0 && unmatched == 0 && not_created == 0).then_some(span)
}
