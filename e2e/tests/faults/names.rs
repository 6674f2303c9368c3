//! The names check: every metric, label and log field a dashboard panel or
//! an alert rule uses must be one a real run produced. A scenario runs
//! through the real binaries (replies, a STOP, a rate-limited sender, a
//! model error, a Twilio refusal that dead-letters, delivery statuses with
//! a carrier error, an outbound call and a call's status, a priced model
//! answer); then each dashboard's PromQL is parsed with `promql-parser` and
//! each LogQL query with the small parser below (stream selector, field
//! names, `event` values), and every name is looked up in what the run wrote
//! to its logs and served on `/metrics`.
//!
//! Names the run cannot produce, because they come from a process that is
//! not smsgate, are listed in [`EXTERNAL`] with where they come from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use promql_parser::parser::{self, Expr, LabelModifier};
use serde_json::{Value, json};
use smsgate_e2e::harness::{ADMIN_TOKEN, CHANNEL_ID, Stack, StackConfig};
use smsgate_shared::domain::{CallSid, ChannelId, MessageSid};
use smsgate_shared::envelope::{self, CallPart, Inbound, StatusUpdate};
use smsgate_testkit::twilio::Reply;

/// Metrics from prometheus-nats-exporter (`-jsz=all`), scraped beside smsgate's.
const EXTERNAL: [&str; 2] = ["jetstream_consumer_num_pending", "jetstream_consumer_num_ack_pending"];
/// Labels Prometheus or the exporter add.
const EXTERNAL_LABELS: [&str; 5] = ["job", "instance", "stream_name", "consumer_name", "le"];
/// The compose services whose logs Alloy ships (docker-compose.yml).
const LOG_SERVICES: [&str; 3] = ["ingress", "worker", "sender"];
/// Loki labels Alloy sets (deploy/observability/config.alloy).
const LOKI_LABELS: [&str; 2] = ["service", "level"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_name_the_dashboards_and_alerts_use_is_produced_by_a_real_run() {
    let mut config = StackConfig::new("names");
    config.extra.insert("rate_limit".into(), json!({"per_minute": 2, "burst": 1}));
    config
        .extra
        .insert("limits".into(), json!({"replies_per_minute": 1000, "replies_per_day": 1000, "usd_per_day": 100.0}));
    config.extra.insert("pricing".into(), json!({"model": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6}}));
    let stack = Stack::start(config).await.unwrap();
    let (alice, bob, carol, dave) = ("+14155550171", "+14155550172", "+14155550173", "+14155550174");

    // Replies, one of them after a model error (a 400: the fallback at once).
    stack.chat.fail_next(1, 400);
    for (i, body) in ["hello", "what are your hours?"].iter().enumerate() {
        assert_eq!(stack.post(&stack.webhook(&format!("SMnames0a{i}"), alice, body)).await, 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // A STOP, and a sender over the rate limit (burst 1).
    assert_eq!(stack.post(&stack.webhook("SMnames0b0", bob, "STOP")).await, 200);
    for i in 0..3 {
        assert_eq!(stack.post(&stack.webhook(&format!("SMnames0c{i}"), carol, "hi")).await, 200);
    }
    stack.wait_drained(Duration::from_secs(60)).await.unwrap();

    // A Twilio refusal that cannot be retried: a dead letter at the sender.
    stack.twilio.push(Reply::Error { status: 400, code: 21211, message: "The 'To' number is not valid.".into() });
    assert_eq!(stack.post(&stack.webhook("SMnames0d0", dave, "one more")).await, 200);
    stack.wait_drained(Duration::from_secs(60)).await.unwrap();

    // Delivery statuses as Twilio posts them: delivered, and a 30007.
    let sids: Vec<String> = stack.twilio.calls().into_iter().filter_map(|c| c.sid).collect();
    assert!(sids.len() >= 2, "{sids:?}");
    let channel = ChannelId::parse(CHANNEL_ID).unwrap();
    for (sid, status, code) in [(&sids[0], "delivered", None), (&sids[1], "undelivered", Some("30007"))] {
        let update = StatusUpdate {
            v: envelope::VERSION,
            channel_id: channel.clone(),
            message_sid: MessageSid::parse(sid).unwrap(),
            status: status.to_owned(),
            error_code: code.map(str::to_owned),
            to: Some(alice.to_owned()),
            received_at: time::OffsetDateTime::now_utc(),
            params: vec![],
        };
        let subject = stack.topology.status_subject(&channel);
        stack.js.publish(subject, envelope::encode(&update)).await.unwrap().await.unwrap();
    }

    // An outbound call (Alice texted: the guard lets an AI voice call her),
    // and a call's progress as ingress publishes it.
    let call = stack
        .http
        .post(format!("{}/api/v1/calls", stack.admin_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"channel_id": CHANNEL_ID, "to": alice, "say": "Your table is ready."}))
        .send()
        .await
        .unwrap();
    assert_eq!(call.status().as_u16(), 202, "{:?}", call.text().await);
    let call_sid = CallSid::parse("CA0123456789abcdef0123456789abcdef").unwrap();
    let part = CallPart::Status {
        call_sid: call_sid.clone(),
        status: "completed".into(),
        direction: "outbound-api".into(),
        duration_secs: Some(12),
        detail: None,
    };
    let inbound = Inbound {
        v: envelope::VERSION,
        channel_id: channel.clone(),
        message_sid: part.message_sid(),
        account_sid: smsgate_testkit::ACCOUNT_SID.into(),
        from: smsgate_testkit::FROM_NUMBER.into(),
        to: alice.into(),
        body: String::new(),
        media: vec![],
        received_at: time::OffsetDateTime::now_utc(),
        params: vec![],
        call: Some(part),
    };
    let subject = stack.topology.inbound_subject(&channel);
    stack.js.publish(subject, envelope::encode(&inbound)).await.unwrap().await.unwrap();
    stack.wait_drained(Duration::from_secs(60)).await.unwrap();
    smsgate_testkit::eventually(Duration::from_secs(30), "the call placed", || async {
        (stack.twilio.calls().iter().any(|c| c.resource == "Calls" && c.created())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // What the run produced.
    let mut produced = Produced::default();
    for (label, text) in stack.logs() {
        let service = label.split('-').next().unwrap_or(&label).to_owned();
        for line in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
            let Value::Object(map) = line else { continue };
            let fields = produced.fields.entry(service.clone()).or_default();
            fields.extend(map.keys().cloned());
            if let Some(Value::String(event)) = map.get("event") {
                produced.events.entry(service.clone()).or_default().insert(event.clone());
            }
        }
    }
    let mut pages: Vec<String> = vec![];
    for (_, url) in stack.metrics_urls() {
        pages.push(stack.http.get(&url).send().await.unwrap().text().await.unwrap());
    }
    let admin = stack.http.get(format!("{}/metrics", stack.admin_url)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    pages.push(admin.text().await.unwrap());
    for page in &pages {
        produced.add_metrics(page);
    }

    // What the dashboards and alerts use.
    let mut problems = vec![];
    let dashboards = repo().join("deploy/observability/grafana/dashboards");
    for file in ["services.json", "messages.json"] {
        let text = std::fs::read_to_string(dashboards.join(file)).unwrap();
        let dashboard: Value = serde_json::from_str(&text).unwrap();
        let mut ids = BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "{file}: panel id {} twice", panel["id"]);
            let uid = panel["datasource"]["uid"].as_str().unwrap();
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let at = format!("{file} panel {:?}", panel["title"].as_str().unwrap_or(""));
                match uid {
                    "smsgate-prometheus" => produced.check_promql(&at, expr, &mut problems),
                    "smsgate-loki" => produced.check_logql(&at, expr, &mut problems),
                    other => problems.push(format!("{at}: unknown datasource uid {other}")),
                }
            }
        }
    }
    let datasources =
        std::fs::read_to_string(repo().join("deploy/observability/grafana/provisioning/datasources/datasources.yml"))
            .unwrap();
    for uid in ["smsgate-prometheus", "smsgate-loki"] {
        assert!(datasources.contains(&format!("uid: {uid}")), "datasource {uid} is provisioned");
    }
    let rules = std::fs::read_to_string(repo().join("deploy/observability/alerts.yml")).unwrap();
    let exprs = rule_exprs(&rules);
    assert_eq!(exprs.len(), 7, "every alert rule's expression was read");
    for (alert, expr) in exprs {
        produced.check_promql(&format!("alerts.yml {alert}"), &expr, &mut problems);
    }
    assert!(problems.is_empty(), "names never produced by the run:\n{}", problems.join("\n"));
}

/// What a run wrote and served.
#[derive(Default)]
struct Produced {
    /// Log field names by service (`worker`, not `worker-0`).
    fields: BTreeMap<String, BTreeSet<String>>,
    /// `event` values by service.
    events: BTreeMap<String, BTreeSet<String>>,
    /// Metric name → label names seen on it.
    metrics: BTreeMap<String, BTreeSet<String>>,
}

impl Produced {
    fn add_metrics(&mut self, page: &str) {
        for line in page.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let labels: BTreeSet<String> = match (line.find('{'), line.rfind('}')) {
                (Some(a), Some(b)) if a < b => line[a + 1..b]
                    .split(',')
                    .filter_map(|kv| kv.split('=').next())
                    .map(|k| k.trim().to_owned())
                    .filter(|k| !k.is_empty())
                    .collect(),
                _ => BTreeSet::new(),
            };
            self.metrics.entry(name.to_owned()).or_default().extend(labels);
        }
    }

    fn check_promql(&self, at: &str, expr: &str, problems: &mut Vec<String>) {
        let ast = match parser::parse(expr) {
            Ok(a) => a,
            Err(e) => return problems.push(format!("{at}: PromQL does not parse: {e}: {expr}")),
        };
        let mut used = Used::default();
        walk(&ast, &mut used);
        for (metric, labels) in &used.selectors {
            if EXTERNAL.contains(&metric.as_str()) {
                continue;
            }
            let Some(seen) = self.metrics.get(metric) else {
                problems.push(format!("{at}: metric {metric} never served by the run"));
                continue;
            };
            for label in labels.iter().filter(|l| !EXTERNAL_LABELS.contains(&l.as_str())) {
                if !seen.contains(label) {
                    problems.push(format!("{at}: {metric} never had label {label}"));
                }
            }
        }
        let on_any: BTreeSet<&String> = used.selectors.keys().filter_map(|m| self.metrics.get(m)).flatten().collect();
        for label in used.grouping.iter().filter(|l| !EXTERNAL_LABELS.contains(&l.as_str())) {
            let external = used.selectors.keys().all(|m| EXTERNAL.contains(&m.as_str()));
            if !external && !on_any.contains(label) {
                problems.push(format!("{at}: grouping label {label} is on none of its metrics"));
            }
        }
    }

    fn check_logql(&self, at: &str, expr: &str, problems: &mut Vec<String>) {
        let query = match LogQuery::parse(expr) {
            Ok(q) => q,
            Err(e) => return problems.push(format!("{at}: LogQL not understood: {e}: {expr}")),
        };
        let mut services = vec![];
        for (label, value) in &query.selector {
            if !LOKI_LABELS.contains(&label.as_str()) {
                problems.push(format!("{at}: stream label {label} is not one Alloy sets"));
            }
            if label == "service" {
                for s in value.split('|') {
                    if !LOG_SERVICES.contains(&s) || !self.fields.contains_key(s) {
                        problems.push(format!("{at}: service {s} logged nothing in the run"));
                    }
                    services.push(s.to_owned());
                }
            }
        }
        let fields: BTreeSet<&String> = services.iter().filter_map(|s| self.fields.get(s)).flatten().collect();
        for field in query.fields.iter().filter(|f| !LOKI_LABELS.contains(&f.as_str()) && *f != "__error__") {
            if !fields.contains(field) {
                problems.push(format!("{at}: field {field} never logged by {services:?}"));
            }
        }
        let events: BTreeSet<&String> = services.iter().filter_map(|s| self.events.get(s)).flatten().collect();
        for event in &query.events {
            if !events.contains(event) {
                problems.push(format!("{at}: event {event} never logged by {services:?}"));
            }
        }
    }
}

/// Metric names with the labels their matchers name, and grouping labels.
#[derive(Default)]
struct Used {
    selectors: BTreeMap<String, BTreeSet<String>>,
    grouping: BTreeSet<String>,
}

fn walk(expr: &Expr, used: &mut Used) {
    let modifier = |m: &Option<LabelModifier>, used: &mut Used| {
        if let Some(m) = m {
            used.grouping.extend(m.labels().labels.iter().cloned());
        }
    };
    match expr {
        Expr::Aggregate(a) => {
            modifier(&a.modifier, used);
            walk(&a.expr, used);
            if let Some(p) = &a.param {
                walk(p, used);
            }
        }
        Expr::Unary(u) => walk(&u.expr, used),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                modifier(&m.matching, used);
            }
            walk(&b.lhs, used);
            walk(&b.rhs, used);
        }
        Expr::Paren(p) => walk(&p.expr, used),
        Expr::Subquery(s) => walk(&s.expr, used),
        Expr::VectorSelector(vs) => selector(vs, used),
        Expr::MatrixSelector(ms) => selector(&ms.vs, used),
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, used)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn selector(vs: &promql_parser::parser::VectorSelector, used: &mut Used) {
    let Some(name) = &vs.name else { return };
    let labels = used.selectors.entry(name.clone()).or_default();
    labels.extend(vs.matchers.matchers.iter().map(|m| m.name.clone()).filter(|n| n != "__name__"));
}

/// What a LogQL query names: the stream selector's matchers, the fields its
/// pipeline filters, unwraps and groups by, and the `event` values it filters on.
#[derive(Debug, Default)]
struct LogQuery {
    selector: Vec<(String, String)>,
    fields: BTreeSet<String>,
    events: BTreeSet<String>,
}

impl LogQuery {
    fn parse(expr: &str) -> Result<Self, String> {
        let mut q = LogQuery::default();
        let open = expr.find('{').ok_or("no stream selector")?;
        let close = expr[open..].find('}').ok_or("unclosed stream selector")? + open;
        for matcher in expr[open + 1..close].split(',').filter(|m| !m.trim().is_empty()) {
            let (name, value) = split_matcher(matcher).ok_or_else(|| format!("bad matcher {matcher}"))?;
            q.selector.push((name, value));
        }
        // The pipeline: `| stage` up to a range `[..]` or the end of the call.
        let mut rest = &expr[close + 1..];
        while let Some(bar) = rest.find('|') {
            let after = &rest[bar + 1..];
            let end = stage_end(after);
            let stage = after[..end].trim();
            if let Some(field) = stage.strip_prefix("unwrap ") {
                q.fields.insert(field.trim().to_owned());
            } else if stage != "json" && !stage.is_empty() {
                let (name, value) = split_matcher(stage).ok_or_else(|| format!("bad stage {stage}"))?;
                if name == "event" {
                    q.events.insert(value);
                }
                q.fields.insert(name);
            }
            rest = &after[end..];
        }
        let mut tail = expr;
        while let Some(by) = tail.find("by (") {
            let inner = &tail[by + 4..];
            let end = inner.find(')').ok_or("unclosed by")?;
            q.fields.extend(inner[..end].split(',').map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()));
            tail = &inner[end..];
        }
        Ok(q)
    }
}

/// Where a pipeline stage ends: the next `|`, `[` or `)` outside quotes.
fn stage_end(text: &str) -> usize {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '|' | '[' | ')' if !quoted => return i,
            _ => {}
        }
    }
    text.len()
}

/// `name op "value"` (ops `=`, `!=`, `=~`, `!~`).
fn split_matcher(text: &str) -> Option<(String, String)> {
    let at = text.find(['=', '!'])?;
    let name = text[..at].trim();
    let value = text[at..].trim_start_matches(['=', '!', '~']).trim().trim_matches('"');
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| (name.to_owned(), value.to_owned()))
}

/// Each rule's `alert` name and `expr` from the rules file (block or one line).
fn rule_exprs(yaml: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut alert = String::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        } else if let Some(expr) = trimmed.strip_prefix("expr:") {
            let expr = expr.trim();
            if expr == "|" {
                let indent = line.len() - trimmed.len();
                let mut block = vec![];
                while let Some(next) = lines.peek() {
                    let next_indent = next.len() - next.trim_start().len();
                    if next.trim().is_empty() || next_indent <= indent {
                        break;
                    }
                    block.push(next.trim().to_owned());
                    lines.next();
                }
                out.push((alert.clone(), block.join(" ")));
            } else {
                out.push((alert.clone(), expr.to_owned()));
            }
        }
    }
    out
}

#[test]
fn the_logql_reader_finds_selectors_fields_and_events() {
    let q = LogQuery::parse(
        r#"quantile_over_time(0.95, {service="worker"} | json | event="message.processed" | outcome!="replied" | unwrap latency_ms | __error__="" [5m]) by (channel_id)"#,
    )
    .unwrap();
    assert_eq!(q.selector, vec![("service".to_owned(), "worker".to_owned())]);
    let fields: Vec<&str> = q.fields.iter().map(String::as_str).collect();
    assert_eq!(fields, ["__error__", "channel_id", "event", "latency_ms", "outcome"]);
    assert_eq!(q.events.iter().collect::<Vec<_>>(), ["message.processed"]);
    let q = LogQuery::parse(r#"{service=~"ingress|worker"} | json | level=~"WARN|ERROR""#).unwrap();
    assert_eq!(q.selector, vec![("service".to_owned(), "ingress|worker".to_owned())]);
    assert_eq!(q.fields.iter().collect::<Vec<_>>(), ["level"]);
    assert!(LogQuery::parse("sum(rate(x[5m]))").is_err());
}
