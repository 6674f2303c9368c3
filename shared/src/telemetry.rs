//! Logging and metrics set-up shared by every service.
//!
//! Logs are JSON lines with stable field names so dashboards can be built on
//! them: `ts`, `level`, `service`, `target`, `msg`, then the fields of the
//! enclosing spans and of the event (`channel_id`, `message_sid`, `peer`
//! (masked), `stage`, `latency_ms`, `outcome`). Phone numbers are logged only
//! through [`crate::domain::E164::masked`]; secrets are `SecretString` and
//! print `[REDACTED]`.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt as tfmt};

use crate::config::LogFormat;

/// Installs the global subscriber (`RUST_LOG` filters, default `info`).
/// Calling it twice is harmless (the second call does nothing).
pub fn init(service: &'static str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(tfmt::layer().fmt_fields(SpanFields).event_format(JsonLine { service }).with_writer(std::io::stdout))
            .try_init(),
        LogFormat::Pretty => registry.with(tfmt::layer().with_target(false)).try_init(),
    };
    let _ = result;
}

/// Reads `SMSGATE_LOG_FORMAT` the way [`crate::config::Settings`] does, for
/// a `main` that must log before its settings are loaded.
pub fn format_from_env() -> LogFormat {
    match std::env::var("SMSGATE_LOG_FORMAT").as_deref() {
        Ok("pretty") => LogFormat::Pretty,
        _ => LogFormat::Json,
    }
}

struct JsonLine {
    service: &'static str,
}

/// Keys the line's head writes; an event or span field of the same name is
/// left out (`service = "ingress"` on an event says what the head says).
const HEAD: [&str; 5] = ["ts", "level", "service", "target", "span"];

/// Separates a span's `"key":value` pairs in its stored fields. A JSON
/// value never holds it raw (control characters are escaped), so splitting
/// on it is exact.
const PAIR_SEP: char = '\u{1}';

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    /// Writes the line straight into the layer's buffer: no map, no
    /// intermediate strings (this runs once per accepted webhook, and the
    /// map it replaced cost ingress about 5 µs a line).
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"ts\":\"")?;
        write_timestamp(&mut writer, time::OffsetDateTime::now_utc())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_str("\",\"service\":")?;
        write_str(&mut writer, self.service)?;
        writer.write_str(",\"target\":")?;
        write_str(&mut writer, meta.target())?;
        let mut written = Written::default();
        event.record(&mut JsonVisitor { out: &mut writer, written: &mut written, error: None, sep: "," });
        if let Some(scope) = ctx.event_scope() {
            // Innermost first: an inner span's field wins over an outer one's.
            let mut named = false;
            for span in scope {
                if !named {
                    named = true;
                    writer.write_str(",\"span\":")?;
                    write_str(&mut writer, span.name())?;
                }
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else { continue };
                // Last first: a field recorded again on the span wins.
                for pair in fields.rsplit(PAIR_SEP).filter(|p| !p.is_empty()) {
                    let key = pair.get(1..).and_then(|p| p.split('"').next()).unwrap_or_default();
                    if written.insert(key) {
                        writer.write_char(',')?;
                        writer.write_str(pair)?;
                    }
                }
            }
        }
        writer.write_str("}\n")
    }
}

/// `now` as the line's `ts`: RFC 3339 in UTC with microseconds
/// (`2026-12-07T11:45:03.123456Z`), its digits put in place by hand and
/// written at once (through `write!` the seven padded numbers were about a
/// quarter of a line's cost).
fn write_timestamp(out: &mut impl fmt::Write, now: time::OffsetDateTime) -> fmt::Result {
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let fields = [
        (0, 4, now.year().clamp(0, 9999) as u32),
        (5, 2, u8::from(now.month()).into()),
        (8, 2, now.day().into()),
        (11, 2, now.hour().into()),
        (14, 2, now.minute().into()),
        (17, 2, now.second().into()),
        (20, 6, now.microsecond()),
    ];
    for (start, width, mut value) in fields {
        for digit in text[start..start + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    // Only ASCII digits went in.
    out.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
}

/// A span's fields as `"key":value` pairs separated by [`PAIR_SEP`], kept
/// with the span and copied into each of its events' lines.
struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut written = Written::default();
        let sep = PAIR_SEP.encode_utf8(&mut [0; 4]).to_owned();
        let mut visitor = JsonVisitor { out: &mut writer, written: &mut written, error: None, sep: &sep };
        fields.record(&mut visitor);
        visitor.error.map_or(Ok(()), Err)
    }

    /// Fields recorded on a span later are more pairs (the default puts a
    /// space between, which is not a pair).
    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        self.format_fields(current.as_writer(), fields)
    }
}

/// The keys a line holds so far, by a 64-bit hash (a line has a dozen keys
/// at most; past the array's size a key is let through unchecked).
#[derive(Default)]
struct Written {
    keys: [u64; 24],
    len: usize,
}

impl Written {
    /// Whether `key` is new to the line (and notes it).
    fn insert(&mut self, key: &str) -> bool {
        // FNV-1a: no allocation, and the keys are short field names.
        let hash =
            key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        if HEAD.contains(&key) || self.keys[..self.len].contains(&hash) {
            return false;
        }
        if self.len < self.keys.len() {
            self.keys[self.len] = hash;
            self.len += 1;
        }
        true
    }
}

/// Writes each field as `<sep>"name":value`, JSON-escaped as it goes.
struct JsonVisitor<'a, W: fmt::Write> {
    out: &'a mut W,
    written: &'a mut Written,
    error: Option<fmt::Error>,
    sep: &'a str,
}

impl<W: fmt::Write> JsonVisitor<'_, W> {
    fn put(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        let name = if field.name() == "message" { "msg" } else { field.name() };
        if self.error.is_some() || !self.written.insert(name) {
            return;
        }
        let result = (|| {
            self.out.write_str(self.sep)?;
            write_str(self.out, name)?;
            self.out.write_char(':')?;
            value(self.out)
        })();
        if let Err(e) = result {
            self.error = Some(e);
        }
    }
}

impl<W: fmt::Write> Visit for JsonVisitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |out| write_str(out, value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |out| write!(out, "{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |out| write!(out, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // Display never uses an exponent, so it is always a JSON number.
        self.put(field, |out| if value.is_finite() { write!(out, "{value}") } else { out.write_str("null") });
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |out| write!(out, "{value}"));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The whole cause chain, so a log line says why, not just what.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        // Errors quote what they failed on (a subject with a number's
        // digits, a URL with a PhoneNumber parameter, Twilio's text): every
        // phone number in the chain is masked here, once for every service
        // (invariant 5). Errors are rare lines, so this costs the hot path nothing.
        let text = crate::redact::mask_numbers(&text);
        self.put(field, |out| write_str(out, &text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `text` as a JSON string.
fn write_str(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(text)?;
    out.write_char('"')
}

/// Escapes what is written through it as the inside of a JSON string.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Most text has nothing to escape: skip it eight bytes at a time.
        let skip = plain_prefix(text.as_bytes());
        if skip == text.len() {
            return self.0.write_str(text);
        }
        let mut plain = 0;
        for (i, b) in text.bytes().enumerate().skip(skip) {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

/// A count of leading bytes of `bytes` that need no JSON escaping: all of
/// them when none does, otherwise up to the start of the first eight-byte
/// word holding one (the caller looks at the rest byte by byte).
fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `v` is zero ⇔ its high bit is set in (v - 1) & !v; a byte of
    // `x` is below 0x20 ⇔ the same with 0x20 for 1 (exact for the whole word
    // being clean, which is all that is asked).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let mut at = 0;
    for word in bytes.chunks_exact(8) {
        let x = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        if (control | zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')))) & HIGH != 0 {
            return at;
        }
        at += 8;
    }
    at + bytes[at..].iter().take_while(|&&b| b >= 0x20 && b != b'"' && b != b'\\').count()
}

/// The process's Prometheus recorder, installed on first use. Every service
/// (and every test in one process) shares it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let ms = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
            let builder = PrometheusBuilder::new().set_buckets(&ms).unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed already (never in our binaries):
                // render from a detached one rather than fail the service.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// `/metrics`: the recorder's metrics and the cost counter
/// ([`crate::cost::render_metrics`]), which the recorder cannot hold (its
/// counters are integers; dollars are not).
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    text.push_str(&crate::cost::render_metrics());
    text
}

/// Runs the recorder's upkeep (draining histogram samples into their
/// buckets) every few seconds until `shutdown`, so samples never pile up
/// between scrapes.
pub async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let handle = metrics_handle();
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => handle.run_upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;

    use super::*;

    #[test]
    fn escaping_skips_plain_words_and_escapes_the_rest() {
        let escape = |text: &str| {
            let mut out = String::new();
            fmt::Write::write_str(&mut Escaped(&mut out), text).unwrap();
            out
        };
        // Against serde_json's escaping, every special byte at every offset
        // of a word, and text with non-ASCII bytes (high bits set).
        let mut cases = vec![String::new(), "plain ascii text, long enough".to_owned(), "héllo wörld ✓ 🙂".to_owned()];
        for special in ['"', '\\', '\n', '\r', '\t', '\u{1}', '\u{1f}'] {
            for at in 0..17 {
                let mut text: String = "abcdefghijklmnopq".chars().take(at).collect();
                text.push(special);
                text.push_str("éxyz");
                cases.push(text);
            }
        }
        for text in cases {
            let json = serde_json::to_string(&text).unwrap();
            let decoded: String = serde_json::from_str(&format!("\"{}\"", escape(&text))).unwrap();
            assert_eq!(decoded, text, "{json}");
        }
        assert_eq!(plain_prefix(b"0123456789abcdef"), 16);
        assert_eq!(plain_prefix(b"01234567\"9abcdef"), 8);
        assert_eq!(plain_prefix(b"0\n"), 1);
        assert_eq!(plain_prefix("\u{7f}é".as_bytes()), 3);
    }

    #[test]
    fn the_timestamp_is_rfc3339_with_microseconds() {
        for (unix_ns, expected) in [
            (0_i128, "1970-01-01T00:00:00.000000Z"),
            (1_796_643_903_123_456_789, "2026-12-07T11:45:03.123456Z"),
            (951_782_399_999_999_000, "2000-02-28T23:59:59.999999Z"),
            (4_102_444_800_000_001_000, "2100-01-01T00:00:00.000001Z"),
        ] {
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns).unwrap();
            let mut written = String::new();
            write_timestamp(&mut written, at).unwrap();
            assert_eq!(written, expected);
            assert_eq!(
                time::OffsetDateTime::parse(&written, &time::format_description::well_known::Rfc3339).unwrap(),
                at.replace_nanosecond(at.microsecond() * 1000).unwrap()
            );
        }
    }

    /// The lines written, for a test's own subscriber.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot publish to smsgate.history.local.14155550100")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("Twilio says: the 'To' number +447700900123 is not valid")]
    struct Inner;

    #[test]
    fn an_error_field_has_every_number_of_its_cause_chain_masked() {
        let lines = lines_of(|| {
            let e = Outer(Inner);
            tracing::warn!(error = &e as &dyn std::error::Error, outcome = "retry", "history write failed");
        });
        let line = &lines[0];
        assert_eq!(
            line["error"],
            "cannot publish to smsgate.history.local.+1415***0100: Twilio says: the 'To' number +4477***0123 is not valid"
        );
        assert_eq!((line["service"].as_str(), line["outcome"].as_str()), (Some("test"), Some("retry")));
    }

    /// The lines `log` writes through the JSON format, each parsed.
    fn lines_of(log: impl FnOnce()) -> Vec<Value> {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tfmt::layer()
                .fmt_fields(SpanFields)
                .event_format(JsonLine { service: "test" })
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "one line per event: {text:?}");
        text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
    }

    #[test]
    fn a_line_is_json_with_the_head_the_event_and_its_spans_fields() {
        let lines = lines_of(|| {
            let outer = tracing::info_span!("message", channel_id = "shop", stage = "outer", n = 1u64);
            let _o = outer.enter();
            let inner = tracing::info_span!(
                "reply",
                stage = "inner",
                recorded = tracing::field::Empty,
                note = "tab\there \"quoted\" \\ \u{7}"
            );
            let _i = inner.enter();
            inner.record("recorded", "later");
            inner.record("recorded", "again");
            tracing::info!(
                stage = "event",
                service = "ignored",
                latency_ms = 1.25,
                ratio = f64::NAN,
                ok = true,
                peer = %"+1415***0100",
                "sent {} pieces",
                2
            );
        });
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["service"], "test");
        assert_eq!(line["msg"], "sent 2 pieces");
        assert_eq!(line["span"], "reply");
        // The event's field wins over its spans', an inner span's over an outer one's.
        assert_eq!(line["stage"], "event");
        assert_eq!((line["channel_id"].as_str(), line["n"].as_u64()), (Some("shop"), Some(1)));
        assert_eq!(line["note"], "tab\there \"quoted\" \\ \u{7}");
        assert_eq!(
            (line["latency_ms"].as_f64(), line["ratio"].is_null(), line["ok"].as_bool()),
            (Some(1.25), true, Some(true))
        );
        assert_eq!(line["peer"], "+1415***0100");
        assert_eq!(line["recorded"], "again");
        let ts = line["ts"].as_str().unwrap();
        assert!(time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok(), "{ts}");
        // No key twice: the raw line has each once.
        let raw = serde_json::to_string(line).unwrap();
        assert_eq!(raw.matches("\"stage\"").count(), 1);
    }
}
