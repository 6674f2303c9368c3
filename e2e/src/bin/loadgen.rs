//! `smsgate-loadgen`: signs N distinct webhooks across K senders (before the
//! clock starts, so signing is not measured) and posts them to ingress with C
//! connections, or at a fixed rate; prints throughput, latency percentiles
//! and the answers by status code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use smsgate_e2e::webhook::{SignedWebhook, Target, message_sid, sender_number, signed};

#[derive(Parser, Debug)]
#[command(name = "smsgate-loadgen", about = "Load generator for smsgate's ingress")]
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
    /// The channel's Twilio auth token (signs the webhooks).
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
    let run = args.run_id.unwrap_or_else(rand::random);
    let hooks: Arc<Vec<SignedWebhook>> = Arc::new(
        (0..args.requests)
            .map(|i| signed(&target, &message_sid(run, i), &sender_number(i % args.senders.max(1)), "load test"))
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
                results.push((status, t.elapsed()));
            }
            results
        }));
    }
    let mut latencies = Vec::with_capacity(hooks.len());
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for task in tasks {
        for (status, latency) in task.await? {
            *by_status.entry(status).or_default() += 1;
            latencies.push(latency);
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let idx =
            ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1).min(latencies.len().saturating_sub(1));
        latencies.get(idx).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!("requests      {}", latencies.len());
    println!("connections   {}", args.connections);
    println!("senders       {}", args.senders);
    if let Some(rate) = args.rate {
        println!("offered rate  {rate:.0}/s");
    }
    println!("elapsed       {:.2} s", elapsed.as_secs_f64());
    println!("throughput    {:.0} req/s", latencies.len() as f64 / elapsed.as_secs_f64());
    println!("latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}", pct(0.50), pct(0.90), pct(0.99), pct(1.0));
    let statuses: Vec<String> = by_status.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!("status        {}", statuses.join(", "));
    if by_status.keys().any(|s| *s != 200) {
        std::process::exit(1);
    }
    Ok(())
}
