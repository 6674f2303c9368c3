//! The ledger of call turns (docs/ARCHITECTURE.md §8): every acked turn
//! (ingress answered 200 to its `turn?n=N` post) ends as exactly one
//! `CallTurn` history entry, its reply is in `P_calls` (written once, by
//! the worker or by ingress giving the turn up), the entry says what
//! `P_calls` says, and what the caller heard (when it stayed to hear) is
//! that same text. No turn that was not acked has an entry.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context as _, bail};
use smsgate_shared::envelope::{self, CallReply, HistoryEntry, HistoryEvent, Origin};
use smsgate_shared::signature;
use smsgate_testkit::AUTH_TOKEN;

use super::ledger::read_stream;
use super::{PUBLIC_BASE_URL, Stack};

/// One call turn as the test played it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub call_sid: String,
    pub n: u32,
    /// Ingress answered the turn's post with 200.
    pub acked: bool,
    /// What the caller heard, if it followed the redirects to the end.
    pub heard: Option<String>,
}

/// The checked call ledger, in numbers.
#[derive(Debug, Clone, Default)]
pub struct CallReport {
    pub acked: usize,
    pub by_origin: BTreeMap<String, usize>,
    pub heard: usize,
}

impl fmt::Display for CallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} acked turns, {} heard to the end, by origin {:?}", self.acked, self.heard, self.by_origin)
    }
}

/// Plays Twilio's side of calls against the stack's ingress, from any task.
#[derive(Clone)]
pub struct VoiceClient {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>` of ingress's public listener.
    base: String,
}

impl VoiceClient {
    /// POSTs `params` to a voice URL as the TwiML names it, or to a route
    /// (`/api/channels/voice/twilio/<route>/` + path token + `?query`),
    /// signed as Twilio signs it over the public URL; returns the status
    /// (0 without an answer) and the body.
    pub async fn post(&self, url_or_route: &str, query: &str, params: &[(String, String)]) -> (u16, String) {
        let path = match url_or_route.strip_prefix(PUBLIC_BASE_URL) {
            Some(path) => path.to_owned(),
            None => {
                let q = if query.is_empty() { String::new() } else { format!("?{query}") };
                format!("/api/channels/voice/twilio/{url_or_route}/{}{q}", smsgate_testkit::PATH_TOKEN)
            }
        };
        let sig = signature::sign(AUTH_TOKEN, &format!("{PUBLIC_BASE_URL}{path}"), params);
        let base = &self.base;
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let sent = self
            .http
            .post(format!("{base}{path}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(signature::HEADER, sig)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }
}

impl Stack {
    pub fn voice_client(&self) -> VoiceClient {
        VoiceClient { http: self.http.clone(), base: self.ingress_base() }
    }

    /// Checks the call turns against `P_HISTORY` and `P_calls`.
    pub async fn check_call_turns(&self, turns: &[Turn]) -> anyhow::Result<CallReport> {
        let t = &self.topology;
        let mut entries: BTreeMap<(String, u32), Vec<(String, Origin)>> = BTreeMap::new();
        for (_, payload) in read_stream(&self.js, &t.history_stream()).await? {
            let entry: HistoryEntry = envelope::decode(&payload).context("a history entry")?;
            if let HistoryEvent::CallTurn { call_sid, turn, said, origin, .. } = entry.event {
                entries.entry((call_sid, turn)).or_default().push((said, origin));
            }
        }
        let bucket = t.calls_bucket();
        let prefix = format!("$KV.{bucket}.");
        let mut replies: BTreeMap<String, CallReply> = BTreeMap::new();
        for (subject, payload) in read_stream(&self.js, &format!("KV_{bucket}")).await? {
            if let Some(key) = subject.strip_prefix(&prefix) {
                replies.insert(key.to_owned(), envelope::decode(&payload).context("a P_calls value")?);
            }
        }
        let mut report = CallReport::default();
        let mut problems = Vec::new();
        for turn in turns {
            let found = entries.remove(&(turn.call_sid.clone(), turn.n)).unwrap_or_default();
            if !turn.acked {
                if !found.is_empty() {
                    problems.push(format!("{} turn {}: not acked but recorded", turn.call_sid, turn.n));
                }
                continue;
            }
            report.acked += 1;
            let [(said, origin)] = found.as_slice() else {
                problems.push(format!("{} turn {}: {} CallTurn entries", turn.call_sid, turn.n, found.len()));
                continue;
            };
            *report.by_origin.entry(format!("{origin:?}").to_lowercase()).or_default() += 1;
            match replies.get(&format!("{}.{}", turn.call_sid, turn.n)) {
                None => problems.push(format!("{} turn {}: no reply in P_calls", turn.call_sid, turn.n)),
                Some(r) if &r.say != said => problems
                    .push(format!("{} turn {}: history says {said:?}, P_calls {:?}", turn.call_sid, turn.n, r.say)),
                Some(_) => {}
            }
            if let Some(heard) = &turn.heard {
                report.heard += 1;
                if heard != said {
                    problems.push(format!("{} turn {}: heard {heard:?} but recorded {said:?}", turn.call_sid, turn.n));
                }
            }
        }
        for ((call_sid, n), _) in entries {
            if turns.iter().any(|t| t.call_sid == call_sid) {
                problems.push(format!("{call_sid} turn {n}: recorded but never posted"));
            }
        }
        if !problems.is_empty() {
            bail!("call ledger: {} problems:\n  {}", problems.len(), problems.join("\n  "));
        }
        Ok(report)
    }
}
