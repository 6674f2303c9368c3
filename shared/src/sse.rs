//! Reading a Server-Sent Events stream (`GET /api/v1/events`): the CLI's
//! `smsgate events` and the tests use this one parser. Only what the
//! format needs here: `event`, `data` (several lines joined with `\n`),
//! `id`; comment lines (keep-alives) are skipped; an event ends at a blank
//! line.

/// One event as it arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// Feed it the body's chunks as they come; it hands back whole events.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Adds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.current));
                }
                self.current = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.current.event = value.to_owned(),
                "id" => self.current.id = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nevent: message.sent\nid: 4-").is_empty());
        let events = p.push(b"0\ndata: {\"a\":1}\ndata: x\n\n");
        assert_eq!(
            events,
            vec![SseEvent { event: "message.sent".into(), data: "{\"a\":1}\nx".into(), id: Some("4-0".into()) }]
        );
        assert!(p.push(b"\r\n").is_empty(), "a blank line alone is no event");
    }
}
