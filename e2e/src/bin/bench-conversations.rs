//! `smsgate-bench-conversations`: the conversation list with N conversations,
//! the old way and the new way, side by side in one run.
//!
//! Starts a private nats-server (the test kit's), makes the topology as the
//! services do, and records N conversations of M entries each into
//! `P_HISTORY` (publishes pipelined, acks awaited). Then:
//!
//! - **scan** (the list before the index): the stream's per-subject counts
//!   plus one direct get of each subject's last message, 16 at a time,
//!   sorted: what every list request used to cost;
//! - **index load**: `admin::ConversationIndex` reading the whole stream
//!   once, as ingress does at start (time and resident memory it adds);
//! - **pages**: the first page (`limit=50`), a walk over every page by
//!   cursor, a search by digits and a channel filter, each timed over many
//!   calls with the page serialised to JSON as the API answers it.
//!
//! `cargo run --release -p smsgate-e2e --bin smsgate-bench-conversations -- -n 100000`

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use smsgate_admin::index::{ConversationIndex, Cursor, PageQuery};
use smsgate_shared::domain::{ChannelId, E164, MessageSid};
use smsgate_shared::envelope::{self, HistoryEntry, HistoryEvent, NoteReason};
use smsgate_shared::topology::{self, Topology};
use smsgate_testkit::nats::NatsServer;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "smsgate-bench-conversations")]
struct Args {
    /// Conversations.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    conversations: usize,
    /// History entries per conversation (an inbound, the reply, a status, ...).
    #[arg(short = 'm', long, default_value_t = 3)]
    entries: usize,
    /// Calls per timed operation.
    #[arg(long, default_value_t = 500)]
    calls: usize,
    /// Also time the old scan (slow at 100,000: minutes).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scan: bool,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn peer(i: usize) -> E164 {
    // +1 415 5xx xxxx style numbers, all distinct.
    E164::parse(&format!("+1415{:07}", i)).unwrap_or_else(|_| unreachable!("valid by construction"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut times: Vec<Duration>, bytes: usize) {
    times.sort();
    println!(
        "{what:<34} calls {:>5}  p50 {:>9.3} ms  p99 {:>9.3} ms  max {:>9.3} ms  answer {:>7} bytes",
        times.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        bytes,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nats = NatsServer::start();
    let client = topology::connect(&nats.url(), "bench").await.context("connect")?;
    let js = jetstream::new(client);
    let topology = Topology::new("bench");
    topology.ensure(&js).await.context("make the topology")?;
    let channels = [ChannelId::parse("sales").context("id")?, ChannelId::parse("support").context("id")?];

    // Record the history: conversation i gets `entries` entries.
    let started = Instant::now();
    let total = args.conversations * args.entries;
    let base = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut acks = futures::stream::FuturesUnordered::new();
    for round in 0..args.entries {
        for i in 0..args.conversations {
            let channel = &channels[i % 2];
            let event = match round % 3 {
                0 => HistoryEvent::Inbound {
                    message_sid: MessageSid::parse(&format!("SM{i:016x}{round:016x}")).context("sid")?,
                    body: format!("hello, this is conversation {i}, message {round}"),
                    media: Vec::new(),
                },
                1 => HistoryEvent::Outbound {
                    id: format!("reply.SM{i:016x}"),
                    body: "Thanks, we got your message and will answer shortly.".to_owned(),
                    in_reply_to: None,
                    origin: envelope::Origin::Chat,
                    pieces: Vec::new(),
                    delivery: "twilio".to_owned(),
                    media: Vec::new(),
                },
                _ => HistoryEvent::Note {
                    reason: NoteReason::Delivered,
                    message_sid: None,
                    outbound_id: Some(format!("reply.SM{i:016x}")),
                    detail: "delivered".to_owned(),
                },
            };
            let entry = HistoryEntry {
                v: envelope::VERSION,
                channel_id: channel.clone(),
                peer: peer(i),
                at: base + time::Duration::milliseconds((round * args.conversations + i) as i64),
                event,
            };
            let subject = topology.history_subject(channel, &entry.peer);
            acks.push(js.publish(subject, envelope::encode(&entry)).await.context("publish")?.into_future());
            while acks.len() >= 2_000 {
                acks.next().await.transpose().context("ack")?;
            }
        }
    }
    while acks.next().await.transpose().context("ack")?.is_some() {}
    println!(
        "recorded {total} history entries ({} conversations x {}) in {:.1} s",
        args.conversations,
        args.entries,
        started.elapsed().as_secs_f64()
    );

    // The old list: counts per subject, then each subject's last message.
    if args.scan {
        let stream = js.get_stream(topology.history_stream()).await.context("stream")?;
        let t = Instant::now();
        let subjects: Vec<(String, usize)> =
            stream.info_with_subjects(topology.history_filter(None)).await?.try_collect().await?;
        let listed = t.elapsed();
        let stream = &stream;
        let lasts: Vec<_> = futures::stream::iter(subjects.iter().cloned())
            .map(|(s, _)| async move { stream.direct_get_last_for_subject(s).await.ok().map(|m| m.time) })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut sorted = lasts;
        sorted.sort();
        let answer = serde_json::to_vec(&subjects).map(|v| v.len()).unwrap_or(0);
        println!(
            "{:<34} subjects {:>7}  counts {:>9.1} ms  + last messages {:>9.1} ms  = {:>9.1} ms per request  (counts alone {} bytes)",
            "scan (the list before the index)",
            subjects.len(),
            listed.as_secs_f64() * 1e3,
            (t.elapsed() - listed).as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3,
            answer,
        );
    }

    // The index: one read of the whole stream, then pages from memory.
    let before = rss_kib();
    let index = std::sync::Arc::new(ConversationIndex::default());
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    tokio::spawn(index.clone().follow(js.clone(), topology.clone(), shutdown.clone()));
    if !index.wait_loaded(Duration::from_secs(600)).await {
        anyhow::bail!("the index did not load within 10 minutes");
    }
    let load = t.elapsed();
    println!(
        "{:<34} {} conversations from {total} entries in {:.2} s ({:.0} entries/s), resident memory +{} MiB",
        "index load (once per ingress start)",
        index.len(),
        load.as_secs_f64(),
        total as f64 / load.as_secs_f64(),
        rss_kib().saturating_sub(before) / 1024,
    );

    let timed = |query: PageQuery<'_>| {
        let mut times = Vec::with_capacity(args.calls);
        let mut bytes = 0;
        for _ in 0..args.calls {
            let t = Instant::now();
            let page = index.page(&query);
            let json = serde_json::to_vec(&page.conversations).unwrap_or_default();
            times.push(t.elapsed());
            bytes = json.len();
        }
        (times, bytes)
    };
    let (times, bytes) = timed(PageQuery { limit: 50, ..Default::default() });
    report("first page (limit 50)", times, bytes);
    let (times, bytes) = timed(PageQuery { limit: 50, channel: Some("support"), ..Default::default() });
    report("first page of one channel", times, bytes);
    let (times, bytes) = timed(PageQuery { limit: 50, q: Some("41500012"), ..Default::default() });
    report("search '41500012' (100 match)", times, bytes);
    let (times, bytes) = timed(PageQuery { limit: 50, q: Some("9999999"), ..Default::default() });
    report("search with no match (full walk)", times, bytes);

    // Every page by cursor, as `smsgate conversations --all` walks them.
    let t = Instant::now();
    let (mut pages, mut seen, mut cursor): (usize, usize, Option<Cursor>) = (0, 0, None);
    let mut per_page = Vec::new();
    loop {
        let p = Instant::now();
        let page = index.page(&PageQuery { limit: 50, cursor: cursor.clone(), ..Default::default() });
        let _ = serde_json::to_vec(&page.conversations);
        per_page.push(p.elapsed());
        pages += 1;
        seen += page.conversations.len();
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    report(&format!("every page by cursor ({pages} pages)"), per_page, 0);
    println!("walked {seen} conversations in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    anyhow::ensure!(seen == args.conversations, "the walk saw {seen} of {}", args.conversations);
    shutdown.cancel();
    Ok(())
}
