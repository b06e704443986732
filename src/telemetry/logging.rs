//! Log output for every command: `--log-format json|pretty`, `--log-level`, `--log-file`.
//!
//! JSON lines carry `timestamp level target message` plus the fields of every enclosing span
//! (a flow's `correlation_id`, `server`, `flow_kind`) and of the event, all at the top level,
//! so `grep`/`jq` on `correlation_id` finds a whole flow. Fields named `*_headers`, `*_body` or `details`
//! that hold JSON text are embedded as JSON, through the shape redactor. Both formats share one
//! safety net (`shown_field`): a field named like a secret (`access_token`, `accessToken`,
//! `code`, ...) is replaced by its redaction marker, embedded JSON is redacted by shape, and
//! every other string passes through the registry of known secrets (`secrets::scrub`). The
//! pretty format also escapes control characters (`inert`), so a server's ESC or newline
//! cannot forge a line; JSON escapes them by construction. The pretty writer scrubs the
//! finished line once more.
//!
//! Lines leave through a bounded queue drained by one thread (`oauth-log`), so a reader that
//! stops reading (a full pipe, a paused terminal, a full disk under `--log-file`) costs log
//! lines, never a refresh: no flow, actor or API thread waits on the sink. Lines dropped while
//! the queue was full are counted, and a line saying how many follows once it drains.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use super::{inert, redact, secrets};

/// Lines the queue holds while the sink is slow or stuck; beyond them, lines are dropped
/// (and counted). About 2 MiB of typical lines.
const QUEUED_LINES: usize = 8_192;

/// Whether a field holds embedded JSON (a body, headers, details).
fn is_embedded_json(name: &str, text: &str) -> bool {
    (name.ends_with("_headers") || name.ends_with("_body") || name == "details")
        && (text.starts_with('{') || text.starts_with('['))
}

/// A string field as either format shows it: redacted by name, by shape or by known value.
fn shown_field(name: &str, text: &str) -> Value {
    if redact::is_secret_field(name) {
        return Value::String(secrets::marker(text));
    }
    if is_embedded_json(name, text)
        && let Ok(parsed) = serde_json::from_str::<Value>(text)
    {
        return redact::json_shape(&parsed);
    }
    Value::String(secrets::scrub(text).into_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Where log lines go.
pub type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// Collects fields as JSON values, redacting secret-named ones.
#[derive(Default)]
pub struct JsonFields(pub Map<String, Value>);

impl JsonFields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        let value = match value {
            Value::String(s) => shown_field(name, &s),
            other => other,
        };
        self.0.insert(name.to_string(), value);
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.put(field, Value::String(text));
    }
}

/// Writes each event as one JSON line.
pub struct JsonLayer {
    writer: SharedWriter,
}

impl JsonLayer {
    pub fn new(writer: SharedWriter) -> Self {
        JsonLayer { writer }
    }
}

impl<S> Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = JsonFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<JsonFields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(humantime::format_rfc3339_micros(SystemTime::now()).to_string()),
        );
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().to_string()),
        );
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<JsonFields>() {
                    line.extend(fields.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        line.extend(fields.0);
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writer.write_all(text.as_bytes());
        let _ = writer.flush();
    }
}

/// The pretty format's fields: the same safety net as JSON (`shown_field`), then control
/// characters escaped; `name=value`, values with spaces quoted.
pub struct PrettyFields;

struct PrettyVisitor {
    out: String,
}

impl PrettyVisitor {
    fn put(&mut self, name: &str, text: &str) {
        let shown = match shown_field(name, text) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let shown = inert::escape(&shown);
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        let quoted = shown.len() >= 2 && shown.starts_with('"') && shown.ends_with('"');
        if name == "message" {
            self.out.push_str(&shown);
        } else if quoted {
            // Already a Debug string (`?field`): quoted and escaped.
            let _ = write!(self.out, "{name}={shown}");
        } else if shown.is_empty() || shown.contains([' ', '"', '=']) {
            let _ = write!(self.out, "{name}=\"{}\"", shown.replace('"', "\\\""));
        } else {
            let _ = write!(self.out, "{name}={shown}");
        }
    }
}

impl Visit for PrettyVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field.name(), &format!("{value:?}"));
    }
}

impl<'writer> FormatFields<'writer> for PrettyFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = PrettyVisitor { out: String::new() };
        fields.record(&mut visitor);
        writer.write_str(&visitor.out)
    }
}

/// Opens a log file for appending, created 0600.
pub fn open_log_file(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// `--log-level`: a level name, or a tracing filter (`target=level`, comma-separated). A bare
/// word that is not a level is refused: `EnvFilter` would read it as a target name and hide
/// every line, so a typo like `inf` must not start a silent daemon.
pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    let invalid = || {
        format!(
            "invalid --log-level {level:?}: use one of {}, or a filter such as mcpproxy_oauth=debug,warn",
            LEVELS.join(", ")
        )
    };
    for directive in level.split(',').map(str::trim) {
        let level_part = directive.rsplit('=').next().unwrap_or("");
        let is_level = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level_part));
        if directive.is_empty() || !is_level {
            return Err(invalid());
        }
    }
    EnvFilter::try_new(level).map_err(|_| invalid())
}

/// Keeps the log thread alive: dropping it (at the end of `main`) writes out every queued
/// line, so a command's last lines are not lost.
#[must_use = "dropping the guard stops the log thread; hold it until the process ends"]
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// Installs the process-wide subscriber; an invalid `level` is an error naming the choices.
pub fn init(format: LogFormat, level: &str, file: Option<&PathBuf>) -> Result<LogGuard, String> {
    let filter = parse_filter(level)?;
    let sink: Box<dyn Write + Send> = match file {
        Some(path) => Box::new(
            open_log_file(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let (queue, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("oauth-log")
        .finish(sink);
    let writer: SharedWriter = Arc::new(Mutex::new(Box::new(DropCounting::new(queue, format))));
    match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(JsonLayer::new(writer))
            .init(),
        LogFormat::Pretty => {
            let make_writer = move || SharedLineWriter(writer.clone());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(file.is_none())
                .fmt_fields(PrettyFields)
                .with_writer(make_writer)
                .init()
        }
    }
    Ok(LogGuard { _worker: worker })
}

/// The queue's writer, saying how many lines were dropped once the queue takes lines again.
struct DropCounting {
    queue: NonBlocking,
    format: LogFormat,
    /// Dropped lines already announced.
    announced: AtomicUsize,
}

impl DropCounting {
    fn new(queue: NonBlocking, format: LogFormat) -> Self {
        DropCounting {
            queue,
            format,
            announced: AtomicUsize::new(0),
        }
    }

    fn notice(&self, dropped: usize) -> String {
        let message = format!(
            "{dropped} log lines were dropped: the log's reader did not keep up (refreshes went on)"
        );
        let timestamp = humantime::format_rfc3339_micros(SystemTime::now());
        match self.format {
            LogFormat::Json => {
                let line = serde_json::json!({
                    "timestamp": timestamp.to_string(),
                    "level": "WARN",
                    "target": module_path!(),
                    "message": message,
                    "dropped_lines": dropped,
                });
                format!("{line}\n")
            }
            LogFormat::Pretty => format!("{timestamp}  WARN {}: {message}\n", module_path!()),
        }
    }
}

impl Write for DropCounting {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let dropped = self.queue.error_counter().dropped_lines();
        let written = self.queue.write(bytes)?;
        let announced = self.announced.load(Ordering::Relaxed);
        // The line just queued was not dropped: the queue has room again, so say what was lost.
        if dropped > announced && self.queue.error_counter().dropped_lines() == dropped {
            let _ = self
                .queue
                .write(self.notice(dropped - announced).as_bytes());
            // A notice the queue dropped in turn is not a lost line, and what it would have
            // said is said by the next one: only a queued notice settles the count.
            let after = self.queue.error_counter().dropped_lines();
            let settled = if after == dropped {
                dropped
            } else {
                announced + (after - dropped)
            };
            self.announced.store(settled, Ordering::Relaxed);
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.queue.flush()
    }
}

struct SharedLineWriter(SharedWriter);

impl Write for SharedLineWriter {
    /// The fmt layer writes one whole event per call, so a known secret cannot straddle two
    /// calls: the line is scrubbed as a last net, then written in full.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut writer = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match std::str::from_utf8(bytes) {
            Ok(text) => writer.write_all(secrets::scrub(text).as_bytes())?,
            Err(_) => writer.write_all(bytes)?,
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_level_is_an_error_and_filters_still_work() {
        for good in ["info", "DEBUG", "warn", "mcpproxy_oauth=debug,warn", "off"] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for bad in ["inf", "verbose", "", "mcpproxy_oauth=loud", "info,"] {
            let e = parse_filter(bad).unwrap_err();
            assert!(
                e.contains("invalid --log-level") && e.contains("debug"),
                "{bad}: {e}"
            );
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink whose first write waits until the test lets it go: a reader that stopped reading.
    struct StuckSink {
        buffer: Buffer,
        go: Option<std::sync::mpsc::Receiver<()>>,
    }
    impl Write for StuckSink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Some(go) = self.go.take() {
                go.recv_timeout(std::time::Duration::from_secs(10))
                    .expect("the test lets the sink go");
            }
            self.buffer.write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_costs_lines_never_a_writer_and_the_loss_is_announced() {
        let buffer = Buffer::default();
        let (go, wait) = std::sync::mpsc::channel();
        let sink = StuckSink {
            buffer: buffer.clone(),
            go: Some(wait),
        };
        let (queue, worker) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(4)
            .finish(sink);
        let mut writer = DropCounting::new(queue, LogFormat::Json);
        // The sink is stuck: every write returns at once, and all but a few are dropped.
        for n in 0..100 {
            writer.write_all(format!("line {n}\n").as_bytes()).unwrap();
        }
        go.send(()).unwrap();
        // Once the queue takes lines again, the next lines bring the notices with them; every
        // line written is, in the end, either in the sink or counted by a notice.
        let mut written = 100;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (delivered, announced, notices) = loop {
            let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
            let notices: Vec<Value> = text
                .lines()
                .filter(|l| l.contains("dropped_lines"))
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let announced: u64 = notices
                .iter()
                .map(|n| n["dropped_lines"].as_u64().unwrap())
                .sum();
            let delivered = text.lines().count() - notices.len();
            if delivered as u64 + announced == written && !notices.is_empty() {
                break (delivered, announced, notices);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{written} lines written, {delivered} delivered, {announced} announced as dropped"
            );
            writer.write_all(b"after\n").unwrap();
            written += 1;
            std::thread::yield_now();
        };
        drop(worker);
        // The stuck sink held one line and the queue four: the rest of the hundred were dropped.
        assert!(
            announced >= 90,
            "{announced} dropped, {delivered} delivered"
        );
        assert!(notices.iter().all(|n| n["level"] == "WARN"), "{notices:?}");
        let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        assert!(
            text.contains("line 0\n"),
            "the first lines got through: {text}"
        );
    }

    #[test]
    fn span_fields_are_flattened_and_secret_fields_redacted() {
        let buffer = Buffer::default();
        let writer: SharedWriter = Arc::new(Mutex::new(Box::new(buffer.clone())));
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(writer));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "oauth_flow",
                correlation_id = "c-1",
                server = "srv",
                flow_kind = "refresh"
            );
            let _entered = span.enter();
            tracing::info!(
                status = 200u64,
                access_token = "eyJsecret",
                response_body = r#"{"token_type":"Bearer"}"#,
                "token obtained"
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["correlation_id"], "c-1");
        assert_eq!(line["server"], "srv");
        assert_eq!(line["flow_kind"], "refresh");
        assert_eq!(line["message"], "token obtained");
        assert_eq!(line["status"], 200);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["access_token"], "[redacted:9]");
        assert_eq!(
            line["response_body"]["token_type"], "Bearer",
            "JSON bodies are embedded"
        );
        assert!(!text.contains("eyJsecret"));
    }

    /// One event with every kind of leak, through a format; the text written.
    fn hostile_event(format: LogFormat) -> String {
        secrets::register("rt-echoed-by-a-hostile-server");
        let buffer = Buffer::default();
        let writer: SharedWriter = Arc::new(Mutex::new(Box::new(buffer.clone())));
        let emit = || {
            let span =
                tracing::info_span!("oauth_flow", correlation_id = "c-2", code = "c0de-in-span");
            let _entered = span.enter();
            tracing::warn!(
                accessToken = "eyJcamel",
                response_body =
                    r#"{"access_token":"eyJbody","note":"rt-echoed-by-a-hostile-server"}"#,
                request_headers = r#"{"Authorization":"Bearer eyJheader","DPoP":"proof-jwt"}"#,
                error_description =
                    "could not refresh rt-echoed-by-a-hostile-server\u{1b}[2J\nINFO forged line",
                "refresh failed: {}",
                "rt-echoed-by-a-hostile-server"
            );
        };
        match format {
            LogFormat::Json => {
                let subscriber = tracing_subscriber::registry().with(JsonLayer::new(writer));
                tracing::subscriber::with_default(subscriber, emit);
            }
            LogFormat::Pretty => {
                let subscriber = tracing_subscriber::fmt()
                    .with_ansi(false)
                    .fmt_fields(PrettyFields)
                    .with_writer(move || SharedLineWriter(writer.clone()))
                    .finish();
                tracing::subscriber::with_default(subscriber, emit);
            }
        }
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn both_formats_share_the_safety_net_and_pretty_escapes_control_characters() {
        for format in [LogFormat::Json, LogFormat::Pretty] {
            let text = hostile_event(format);
            for secret in [
                "eyJcamel",
                "eyJbody",
                "eyJheader",
                "proof-jwt",
                "c0de-in-span",
                "rt-echoed-by-a-hostile-server",
            ] {
                assert!(!text.contains(secret), "{format:?} leaked {secret}: {text}");
            }
            assert!(text.contains("[redacted:29]"), "{format:?}: {text}");
            assert!(
                !text.contains('\u{1b}'),
                "{format:?} kept a raw ESC: {text}"
            );
            assert_eq!(
                text.trim_end().lines().count(),
                1,
                "{format:?} forged a line: {text}"
            );
            assert!(
                text.contains("forged line"),
                "{format:?} lost the text: {text}"
            );
        }
        let pretty = hostile_event(LogFormat::Pretty);
        assert!(pretty.contains("\\u{1b}[2J\\nINFO"), "{pretty}");
        assert!(pretty.contains("Bearer [redacted:9]"), "{pretty}");
    }
}
