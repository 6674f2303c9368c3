//! Voice: 40 callers (arriving over about 6 s) speak two turns each (following ingress's `<Pause>` and
//! `<Redirect>`s as Twilio does) while the worker is SIGKILLed twice and
//! restarted. The call ledger (`harness::calls`): every acked turn ends as
//! exactly one `CallTurn` entry, saying what `P_calls` says and what the
//! caller heard: the model's reply, or the fallback ingress spoke when the
//! killed worker's turn came back too late for the caller.

use std::time::{Duration, Instant};

use smsgate_e2e::harness::calls::{Turn, VoiceClient};
use smsgate_e2e::harness::{Service, Stack, StackConfig};
use smsgate_e2e::webhook::sender_number;
use smsgate_testkit::{ACCOUNT_SID, FROM_NUMBER};

use crate::common;

const CALLS: u64 = 40;

/// The text of the first `<tag …>text</tag>` in `xml`, unescaped.
fn element(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}"))?;
    let open_end = start + xml[start..].find('>')?;
    let close = open_end + xml[open_end..].find(&format!("</{tag}>"))?;
    let text = &xml[open_end + 1..close];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&#13;", "\r")
            .replace("&amp;", "&"),
    )
}

/// An attribute of the first `<tag …>` in `xml`.
fn attribute(xml: &str, tag: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}"))?;
    let head = &xml[start..start + xml[start..].find('>')?];
    let at = head.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(head[at..at + head[at..].find('"')?].replace("&amp;", "&"))
}

/// One caller: turn 1, then turn 2 at the `<Gather>` turn 1's answer names.
async fn caller(voice: VoiceClient, call_sid: String, from: String) -> Vec<Turn> {
    let params = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = [
            ("AccountSid", ACCOUNT_SID),
            ("CallSid", call_sid.as_str()),
            ("CallStatus", "in-progress"),
            ("Direction", "inbound"),
            ("From", from.as_str()),
            ("To", FROM_NUMBER),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        p.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        p
    };
    let mut turns = Vec::new();
    let mut action: Option<String> = None;
    for n in 1..=2u32 {
        let words = format!("question {n} from {call_sid}");
        let speech = params(&[("SpeechResult", &words)]);
        let (status, mut xml) = match &action {
            Some(url) => voice.post(url, "", &speech).await,
            None => voice.post("turn", &format!("n={n}"), &speech).await,
        };
        let mut turn = Turn { call_sid: call_sid.clone(), n, acked: status == 200, heard: None };
        if !turn.acked {
            turns.push(turn);
            break;
        }
        // Twilio: pause, follow the redirect, until something is said.
        while let Some(next) = element(&xml, "Redirect") {
            let pause = attribute(&xml, "Pause", "length").and_then(|s| s.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(pause)).await;
            let (status, body) = voice.post(&next, "", &params(&[])).await;
            if status != 200 {
                xml = String::new();
                break;
            }
            xml = body;
        }
        turn.heard = element(&xml, "Say");
        action = attribute(&xml, "Gather", "action");
        turns.push(turn);
        if action.is_none() {
            break;
        }
    }
    turns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_turns_are_answered_once_or_given_up_once_under_worker_kills() {
    let mut config = StackConfig::new("calls");
    config.extra.insert("voice".to_owned(), serde_json::json!({"enabled": true}));
    config.history_turns = 4;
    // A killed worker's turns come back within what a caller waits (about
    // 25 s), so most are still answered by the model after a kill.
    config.worker_ack_wait = Duration::from_secs(5);
    let mut stack = Stack::start(config).await.unwrap();
    let started = Instant::now();
    // Slow enough that kills find turns in the middle of a chat call.
    stack.chat.set_delay(Duration::from_millis(300));
    let run = common::run_id();

    let mut callers = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let call_sid = format!("CA{:08x}{:024x}", run & 0xffff_ffff, i);
        let from = sender_number(3_000_000 + (run % 1000) * CALLS + i);
        let voice = stack.voice_client();
        // Callers arrive over about 6 s, so each kill finds a few turns in hand.
        let arrive = Duration::from_millis(150 * i);
        callers.spawn(async move {
            tokio::time::sleep(arrive).await;
            caller(voice, call_sid, from).await
        });
    }
    for at in [15, 45] {
        let chat = &stack.chat;
        common::until(&format!("{at} chat calls"), || chat.requests().len() >= at).await;
        stack.kill(Service::Worker(0)).unwrap();
        stack.restart(Service::Worker(0)).await.unwrap();
    }
    let mut turns = Vec::new();
    while let Some(r) = callers.join_next().await {
        turns.extend(r.unwrap());
    }
    let left = stack.wait_drained(common::DRAIN).await.unwrap();
    assert_eq!(left.inbound, 0, "acked turns left in the work queue");
    let report = stack.check_call_turns(&turns).await.unwrap();
    eprintln!("calls: {report} ({:.1} s)", started.elapsed().as_secs_f64());
    assert!(report.acked >= CALLS as usize, "{report}");
    assert!(report.by_origin.get("chat").copied().unwrap_or(0) > report.acked / 2, "most turns answered: {report}");
    assert!(stack.log_count(Service::Worker(0), "e2e harness: start #3") == 1, "restarted twice");
}
