//! Logging and metrics set-up shared by every service.
//!
//! Logs are JSON lines with stable field names so dashboards can be built on
//! them: `ts`, `level`, `service`, `target`, `msg`, then the fields of the
//! enclosing spans and of the event (`channel_id`, `message_sid`, `peer`
//! (masked), `stage`, `latency_ms`, `outcome`). Phone numbers are logged only
//! through [`crate::domain::E164::masked`]; secrets are `SecretString` and
//! print `[REDACTED]`.

use std::fmt;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
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
            .with(
                tfmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(JsonLine { service })
                    .with_writer(std::io::stdout),
            )
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

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut map = Map::new();
        let ts =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        map.insert("ts".into(), Value::String(ts));
        map.insert("level".into(), Value::String(meta.level().as_str().to_owned()));
        map.insert("service".into(), Value::String(self.service.to_owned()));
        map.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                map.insert("span".into(), Value::String(span.name().to_owned()));
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(o)) = serde_json::from_str::<Value>(fields)
                {
                    map.extend(o);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut map));
        writeln!(writer, "{}", Value::Object(map))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = if field.name() == "message" { "msg" } else { field.name() };
        self.0.insert(name.to_owned(), value);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
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
        let text = crate::redact::mask_numbers(&text).into_owned();
        self.put(field, Value::String(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
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

    use super::*;

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
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tfmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine { service: "test" })
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let e = Outer(Inner);
            tracing::warn!(error = &e as &dyn std::error::Error, outcome = "retry", "history write failed");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            line["error"],
            "cannot publish to smsgate.history.local.+1415***0100: Twilio says: the 'To' number +4477***0123 is not valid"
        );
        assert_eq!((line["service"].as_str(), line["outcome"].as_str()), (Some("test"), Some("retry")));
    }
}
