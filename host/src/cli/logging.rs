//! Log lines: `tracing` on stderr, as text for people or as one JSON object per line
//! for journald and log shippers.
//!
//! The JSON lines are flat: the fields of every enclosing span (a cycle's `offering`
//! and `backend_type`) sit beside the event's own (`resource`, `month`, `message`), so
//! `jq 'select(.resource == "acct1")'` finds every line about a resource without
//! knowing which span said what.

use std::fmt;
use std::io::IsTerminal as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use super::LogFormat;

/// The config's `log_level` (as the Python agent spells it: DEBUG, INFO, …), read
/// before anything else so start-up is logged at that level. A config that cannot be
/// read is left for the command to report.
pub fn config_log_level(path: &std::path::Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct LogLevel {
        log_level: Option<String>,
    }
    let text = crate::config::read_file(path).ok()?;
    let read: LogLevel = crate::config::from_yaml(&text).ok()?;
    let level = read.log_level?.trim().to_ascii_lowercase();
    let level = if level == "warning" { "warn".to_owned() } else { level };
    ["error", "warn", "info", "debug", "trace"].contains(&level.as_str()).then_some(level)
}

/// Sets up `tracing` on stderr; `RUST_LOG` filters, else the config's `log_level`, else `info`.
pub fn init_logging(format: LogFormat, config_level: Option<&str>) {
    let filter = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty());
    let filter = filter.as_deref().or(config_level).unwrap_or("info");
    // Colours only for a person at a terminal, never into journald.
    let ansi = std::io::stderr().is_terminal();
    // Through the screen the progress bar shares, so a line and the bar never mix.
    let screen = super::progress::stderr_screen();
    let _ = tracing::subscriber::set_global_default(subscriber(format, filter, ansi, screen));
}

/// The subscriber `--log-format` asks for, writing to `writer`, filtered by `filter`
/// (`RUST_LOG` syntax; an unparsable filter keeps what parses); `ansi` colours text.
pub fn subscriber<W>(format: LogFormat, filter: &str, ansi: bool, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(builder.fmt_fields(JsonFields::new()).event_format(FlatJson).finish()),
    }
}

/// One JSON object per event: time, level, target, then the span fields outermost
/// first and the event's fields last, so the nearer value wins a name clash.
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), jiff::Timestamp::now().to_string().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // `JsonFields` keeps a span's fields as a JSON object.
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields)
                {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Records an event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields and the message arrive here; their Debug is their text.
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).lines().map(|l| serde_json::from_str(l).unwrap_or(Value::Null)).collect()
    }

    #[test]
    fn json_lines_are_flat_objects_with_span_fields_and_the_nearer_value_wins() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = subscriber(LogFormat::Json, "debug", false, move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!("cycle", offering = "hpc", backend_type = "cscs-dwdi-compute", month = "2026-10");
            let _entered = span.enter();
            tracing::warn!(
                resource = "acct1",
                month = "2026-11",
                count = 3_u64,
                ok = true,
                "absent upstream; {}",
                "kept"
            );
            tracing::trace!("filtered out");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["offering"], "hpc");
        assert_eq!(line["backend_type"], "cscs-dwdi-compute");
        assert_eq!(line["resource"], "acct1");
        assert_eq!(line["month"], "2026-11", "the event's own field wins");
        assert_eq!(line["count"], 3);
        assert_eq!(line["ok"], true);
        assert_eq!(line["message"], "absent upstream; kept");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()), "{line}");
    }

    #[test]
    fn the_python_spelling_of_levels_is_understood() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.yaml");
        for (written, read) in [("WARNING", Some("warn")), ("DEBUG", Some("debug")), ("loud", None)] {
            std::fs::write(&path, format!("log_level: {written}\nofferings: []\n"))?;
            assert_eq!(config_log_level(&path).as_deref(), read, "{written}");
        }
        Ok(())
    }
}
