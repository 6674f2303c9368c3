//! Plain-text output: aligned tables and the conversation view.

use std::fmt::Write as _;

use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::api::{Conversation, Event};

/// Columns padded to their widest cell; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Shortens `s` to `max` characters, marking the cut with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// `2026-11-21 10:30` in the operator's time zone.
pub fn date_time(t: OffsetDateTime, offset: UtcOffset) -> String {
    t.to_offset(offset).format(format_description!("[year]-[month]-[day] [hour]:[minute]")).unwrap_or_default()
}

fn clock(t: OffsetDateTime, offset: UtcOffset) -> String {
    t.to_offset(offset).format(format_description!("[hour]:[minute]")).unwrap_or_default()
}

fn day(t: OffsetDateTime, offset: UtcOffset) -> String {
    t.to_offset(offset)
        .format(format_description!("[weekday repr:short] [day] [month repr:short] [year]"))
        .unwrap_or_default()
}

/// The conversation like a two-way SMS tool shows it:
///
/// ```text
/// A conversation's last message for the list: `← text` (in) or `→ text`
/// (out), clipped to one short line.
pub fn last_message(m: &crate::api::LastMessage) -> String {
    let arrow = if m.direction == "inbound" { "←" } else { "→" };
    let flat: String = m.body.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut text = smsgate_shared::redact::clip(&flat, 40).into_owned();
    if m.media > 0 {
        text.push_str(&format!(" [{} media]", m.media));
    }
    format!("{arrow} {text}")
}

/// Conversation with +14155550100 (channel local)
/// Started 2026-11-21 10:30 · 2 messages
///
/// ── Sat 21 Nov 2026 ──
/// [10:30] ← Them: hello
/// [10:30] → You: hello  (logged)
/// ```
pub fn conversation(c: &Conversation, offset: UtcOffset) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Conversation with {} (channel {})", c.peer, c.channel_id);
    let started = c.started_at.map_or_else(|| "—".to_owned(), |t| date_time(t, offset));
    let plural = if c.messages == 1 { "" } else { "s" };
    let _ = write!(out, "Started {started} · {} message{plural}", c.messages);
    let shown = c.entries.iter().filter(|e| !matches!(e.event, Event::Status)).count() as u64;
    if (c.entries.len() as u64) < c.total {
        let _ = write!(out, " · showing the latest {shown} entries of {}", c.total);
    }
    out.push('\n');
    if let Some(cost) = c.cost.as_ref().filter(|s| s.total_usd > 0.0 || s.usage_unknown > 0) {
        out.push_str(&cost_line(cost));
    }
    if c.entries.is_empty() {
        out.push_str("\n(no messages yet)\n");
        return out;
    }
    let mut current_day = String::new();
    for entry in &c.entries {
        let today = day(entry.at, offset);
        if matches!(entry.event, Event::Status | Event::Other) {
            // Statuses are folded into their message's state.
            continue;
        }
        if today != current_day {
            let _ = writeln!(out, "\n── {today} ──");
            current_day = today;
        }
        let time = clock(entry.at, offset);
        match &entry.event {
            Event::Inbound { body, media } => {
                let mut text = body.clone();
                for m in media {
                    let kind = m.get("content_type").and_then(|t| t.as_str()).unwrap_or("unknown type");
                    let _ = write!(text, "{}[attachment: {kind}]", if text.is_empty() { "" } else { "\n" });
                }
                push_message(&mut out, &format!("[{time}] ← Them: "), &text, "");
            }
            Event::Outbound { body, state, pieces, media } => {
                let mut body = body.clone();
                for url in media {
                    let _ = write!(body, "{}[media: {url}]", if body.is_empty() { "" } else { "\n" });
                }
                let mut suffix = if state.is_empty() { String::new() } else { format!("  ({state}") };
                if let Some(code) = pieces.iter().find_map(|p| p.error_code.as_deref()) {
                    let _ = write!(suffix, ", error {code}");
                }
                if !suffix.is_empty() {
                    suffix.push(')');
                }
                push_message(&mut out, &format!("[{time}] → You: "), &body, &suffix);
            }
            Event::Note { reason, detail } => {
                let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
                let _ = writeln!(out, "[{time}]   · {}{detail}", reason.replace('_', " "));
            }
            Event::Call { status, duration_secs, detail } => {
                let mut line = format!("[{time}]   · call {}", status.replace('-', " "));
                if let Some(secs) = duration_secs {
                    let _ = write!(line, " after {secs} s");
                }
                if let Some(d) = detail.as_deref().filter(|d| !d.is_empty()) {
                    let _ = write!(line, ": {d}");
                }
                let _ = writeln!(out, "{line}");
            }
            Event::CallTurn { heard, said, origin } => {
                push_message(&mut out, &format!("[{time}] ← Them (call): "), heard, "");
                let suffix =
                    if origin == "chat" || origin.is_empty() { String::new() } else { format!("  ({origin})") };
                push_message(&mut out, &format!("[{time}] → You (call): "), said, &suffix);
            }
            Event::Status | Event::Other => {}
        }
    }
    out
}

/// `Cost $0.0241 (SMS $0.0158, model $0.0083) · 1 piece estimated`.
fn cost_line(s: &crate::api::CostSum) -> String {
    let parts: Vec<String> = [("SMS", s.sms_usd), ("calls", s.call_usd), ("model", s.model_usd)]
        .into_iter()
        .filter(|(_, usd)| *usd > 0.0)
        .map(|(what, usd)| format!("{what} ${usd:.4}"))
        .collect();
    let mut line = format!("Cost ${:.4}", s.total_usd);
    if !parts.is_empty() {
        let _ = write!(line, " ({})", parts.join(", "));
    }
    if s.estimated > 0 {
        let _ = write!(line, " · {} estimated, Twilio's price not in yet", s.estimated);
    }
    if s.usage_unknown > 0 {
        let _ = write!(line, " · {} model answers without token counts", s.usage_unknown);
    }
    line.push('\n');
    line
}

/// A message, its continuation lines aligned under the first one's text.
fn push_message(out: &mut String, prefix: &str, body: &str, suffix: &str) {
    let indent = " ".repeat(prefix.chars().count());
    let mut lines = body.lines();
    let first = lines.next().unwrap_or("");
    out.push_str(prefix);
    out.push_str(first);
    for line in lines {
        out.push('\n');
        out.push_str(&indent);
        out.push_str(line);
    }
    out.push_str(suffix);
    out.push('\n');
}

/// `smsgate channels status`: the verdict first, then what Twilio has.
pub fn channel_status(s: &crate::api::ChannelStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", s.channel_id, s.verdict);
    if s.delivery.as_deref() == Some("log") {
        // Twilio was not asked: there is nothing of it to show.
        return out;
    }
    let yes_no = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not checked",
    };
    let hook = |w: Option<&crate::api::Webhook>| match w {
        Some(w) => format!("{} ({})", w.url.as_deref().unwrap_or("none"), w.method.as_deref().unwrap_or("?")),
        None => "not checked".to_owned(),
    };
    let _ = writeln!(out, "  credentials valid: {}", yes_no(s.credentials_valid));
    if let Some(status) = &s.account_status {
        let _ = writeln!(out, "  account:           {status}");
    }
    if let Some(number) = &s.number {
        let _ = writeln!(out, "  number:            {number} (in the account: {})", yes_no(s.number_found));
    }
    let _ = writeln!(out, "  SMS webhook:       {}", hook(s.sms.as_ref()));
    let _ = writeln!(out, "  smsgate needs:     {}", hook(Some(&s.expected_sms)));
    let _ = writeln!(out, "  voice webhook:     {}", hook(s.voice.as_ref()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let t = table(&["A", "LONG HEADER"], &[vec!["wide cell".to_owned(), "x".to_owned()]]);
        assert_eq!(t, "A          LONG HEADER\nwide cell  x\n");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("hello world", 6), "hello…");
        assert_eq!(truncate("a\nb", 5), "a b");
    }

    #[test]
    fn the_view_shows_both_sides_with_the_delivery_state() {
        let c: Conversation = serde_json::from_value(serde_json::json!({
            "channel_id": "local", "peer": "+14155550100", "total": 3, "messages": 2,
            "started_at": "2026-11-21T10:30:00Z",
            "entries": [
                {"seq": 1, "at": "2026-11-21T10:30:00Z", "kind": "inbound", "message_sid": "SM1", "body": "hi\nthere", "media": []},
                {"seq": 2, "at": "2026-11-21T10:31:00Z", "kind": "outbound", "id": "reply.SM1", "body": "hello",
                 "origin": "chat", "delivery": "twilio", "state": "delivered", "pieces": [{"index": 0, "state": "delivered"}]},
                {"seq": 3, "at": "2026-11-21T10:31:05Z", "kind": "status", "sid": "SMx", "status": "delivered"}
            ]
        }))
        .unwrap();
        let text = conversation(&c, UtcOffset::UTC);
        assert!(
            text.starts_with("Conversation with +14155550100 (channel local)\nStarted 2026-11-21 10:30 · 2 messages\n"),
            "{text}"
        );
        assert!(text.contains("── Sat 21 Nov 2026 ──"), "{text}");
        assert!(text.contains("[10:30] ← Them: hi\n                there\n"), "{text}");
        assert!(text.contains("[10:31] → You: hello  (delivered)\n"), "{text}");
        assert!(!text.contains("status"), "{text}");
        assert!(!text.contains("Cost"), "no cost figures, no cost line: {text}");
    }

    #[test]
    fn the_view_shows_what_the_conversation_cost() {
        let c: Conversation = serde_json::from_value(serde_json::json!({
            "channel_id": "local", "peer": "+14155550100", "total": 2, "messages": 1,
            "cost": {"total_usd": 0.0241, "sms_usd": 0.0158, "call_usd": 0.0, "model_usd": 0.0083,
                     "estimated": 1, "usage_unknown": 0},
            "entries": [
                {"seq": 1, "at": "2026-11-21T10:30:00Z", "kind": "inbound", "message_sid": "SM1", "body": "hi", "media": []},
                {"seq": 2, "at": "2026-11-21T10:30:01Z", "kind": "cost", "item": "sms", "reference": "SMx",
                 "units": 2, "usd": 0.0158, "basis": "twilio"}
            ]
        }))
        .unwrap();
        let text = conversation(&c, UtcOffset::UTC);
        assert!(
            text.contains("Cost $0.0241 (SMS $0.0158, model $0.0083) · 1 estimated, Twilio's price not in yet\n"),
            "{text}"
        );
        assert!(!text.contains("SMx"), "cost entries are summed, not listed: {text}");
    }

    #[test]
    fn media_is_shown_on_both_sides() {
        let c: Conversation = serde_json::from_value(serde_json::json!({
            "channel_id": "local", "peer": "+14155550100", "total": 2, "messages": 2,
            "started_at": "2026-11-21T10:30:00Z",
            "entries": [
                {"seq": 1, "at": "2026-11-21T10:30:00Z", "kind": "inbound", "message_sid": "SM1", "body": "what plant?",
                 "media": [{"url": "https://api.twilio.com/x", "content_type": "image/jpeg"}]},
                {"seq": 2, "at": "2026-11-21T10:31:00Z", "kind": "outbound", "id": "reply.SM1", "body": "",
                 "origin": "chat", "delivery": "twilio", "state": "sent", "pieces": [], "media": ["https://cdn.example.com/a.png"]}
            ]
        }))
        .unwrap();
        let text = conversation(&c, UtcOffset::UTC);
        assert!(text.contains("[10:30] ← Them: what plant?\n                [attachment: image/jpeg]\n"), "{text}");
        assert!(text.contains("[10:31] → You: [media: https://cdn.example.com/a.png]  (sent)\n"), "{text}");
    }

    #[test]
    fn calls_show_their_turns_and_progress() {
        let c: Conversation = serde_json::from_value(serde_json::json!({
            "channel_id": "local", "peer": "+14155550100", "total": 3, "messages": 1,
            "started_at": "2026-11-21T10:30:00Z",
            "entries": [
                {"seq": 1, "at": "2026-11-21T10:30:00Z", "kind": "call", "call_sid": "CA1", "status": "answered",
                 "direction": "inbound", "duration_secs": null, "detail": "answered by the agent"},
                {"seq": 2, "at": "2026-11-21T10:30:10Z", "kind": "call_turn", "call_sid": "CA1", "turn": 1,
                 "heard": "when are you open", "said": "From nine to five.", "origin": "chat"},
                {"seq": 3, "at": "2026-11-21T10:31:00Z", "kind": "call", "call_sid": "CA1", "status": "completed",
                 "direction": "inbound", "duration_secs": 60, "detail": null}
            ]
        }))
        .unwrap();
        let text = conversation(&c, UtcOffset::UTC);
        assert!(text.contains("[10:30]   · call answered: answered by the agent\n"), "{text}");
        assert!(text.contains("[10:30] ← Them (call): when are you open\n"), "{text}");
        assert!(text.contains("[10:30] → You (call): From nine to five.\n"), "{text}");
        assert!(text.contains("[10:31]   · call completed after 60 s\n"), "{text}");
    }
}
