//! Per-node tracing: a `fmt` log layer (human or JSON) behind a reloadable `EnvFilter`, the flight
//! recorder (always at DEBUG, whatever the log level), and the process-wide panic hook that attaches a
//! panic's message, location and backtrace to the trace being handled.
//!
//! Each node owns its own [`Dispatch`] (so tests can run several nodes in one process); every task the
//! node spawns runs under it with `WithSubscriber`.

use std::backtrace::Backtrace;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::Duration;

use tracing::Dispatch;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FormatFields as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::config::LogFormat;
use crate::recorder::FlightRecorder;

/// Target of the event the panic hook emits.
pub const PANIC_TARGET: &str = "janus::panic";

/// Why a log level change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    /// Not a valid EnvFilter directive.
    #[error("invalid log filter '{directive}': {reason}")]
    Invalid {
        /// What was sent.
        directive: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The subscriber is gone.
    #[error("log filter reload failed: {0}")]
    Reload(String),
}

/// Changes the log filter at run time.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogControl {
    /// The directive in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the directive; on error the old one stays.
    pub fn set(&self, directive: &str) -> Result<(), LogLevelError> {
        let directive = directive.trim();
        if directive.is_empty() {
            return Err(LogLevelError::Invalid {
                directive: directive.to_string(),
                reason: "empty directive".to_string(),
            });
        }
        let filter = EnvFilter::try_new(directive).map_err(|e| LogLevelError::Invalid {
            directive: directive.to_string(),
            reason: e.to_string(),
        })?;
        self.handle
            .reload(filter)
            .map_err(|e| LogLevelError::Reload(e.to_string()))?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = directive.to_string();
        Ok(())
    }
}

/// Bytes gathered before a writer writes them out itself.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct SinkInner {
    /// Lines made and not yet written.
    pending: Mutex<Vec<u8>>,
    /// Held while writing to stderr, so batches go out in the order they were taken.
    out: Mutex<()>,
}

impl SinkInner {
    fn flush(&self) {
        let _out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if !batch.is_empty() {
            let _ = std::io::stderr().lock().write_all(&batch);
        }
    }
}

/// Where log lines go: stderr, through an in-memory batch that a background thread writes every
/// `--log-flush-ms` (and that a writer writes itself once 64 KiB gather), so a request does not pay
/// a `write` system call for its log line. No line is dropped or reordered; [`LogSink::flush`]
/// writes what is pending (the node calls it when it stops). With a flush interval of 0 every line
/// is written when it is made.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<SinkInner>,
    direct: bool,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("direct", &self.direct)
            .finish()
    }
}

impl LogSink {
    /// A sink flushed every `interval` (0: no batching).
    pub fn new(interval: Duration) -> LogSink {
        let inner = Arc::new(SinkInner::default());
        let direct = interval.is_zero();
        if !direct {
            let weak: Weak<SinkInner> = Arc::downgrade(&inner);
            let spawned = std::thread::Builder::new()
                .name("janus-log".to_string())
                .spawn(move || {
                    while let Some(sink) = {
                        std::thread::sleep(interval);
                        weak.upgrade()
                    } {
                        sink.flush();
                    }
                });
            if spawned.is_err() {
                // No flusher thread: write each line as it is made.
                return LogSink {
                    inner,
                    direct: true,
                };
            }
        }
        LogSink { inner, direct }
    }

    /// Writes every pending line now.
    pub fn flush(&self) {
        self.inner.flush();
    }
}

impl Drop for SinkInner {
    fn drop(&mut self) {
        let batch = std::mem::take(
            self.pending
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if !batch.is_empty() {
            let _ = std::io::stderr().lock().write_all(&batch);
        }
    }
}

/// One log line being written to a [`LogSink`].
pub struct SinkWriter<'a>(&'a LogSink);

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.direct {
            return std::io::stderr().lock().write(buf);
        }
        let full = {
            let mut pending = self
                .0
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.extend_from_slice(buf);
            pending.len() >= LOG_BUFFER_BYTES
        };
        if full {
            self.0.inner.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = SinkWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self)
    }
}

thread_local! {
    /// [`PlainFields`]' buffer.
    static FIELDS_BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Field formatter of the human log without colours: `name=value` pairs separated by spaces, the
/// message first and bare, strings quoted (as tracing-subscriber's default, minus its styling).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFields;

struct PlainVisitor<'a> {
    /// Where the text goes (a plain `String`: no dynamic call per piece).
    out: &'a mut String,
    first: bool,
    result: std::fmt::Result,
}

impl PlainVisitor<'_> {
    fn sep(&mut self) {
        if !self.first && self.result.is_ok() {
            self.out.push(' ');
        }
        self.first = false;
    }
    /// Starts `name=` (false: skip this field).
    fn name(&mut self, field: &tracing::field::Field) -> bool {
        if field.name().starts_with("log.") || self.result.is_err() {
            return false;
        }
        self.sep();
        self.out.push_str(field.name());
        self.out.push('=');
        true
    }
    fn field(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Display) {
        if self.name(field) {
            self.result = write!(self.out, "{value}");
        }
    }
    fn decimal(&mut self, field: &tracing::field::Field, negative: bool, value: u64) {
        if self.name(field) {
            let mut digits = [0u8; 21];
            let mut at = digits.len();
            let mut n = value;
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            if negative {
                at -= 1;
                digits[at] = b'-';
            }
            self.out
                .push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
        }
    }
}

/// Whether `{s:?}` is `s` in quotes: printable ASCII without `"` or `\`.
fn debug_is_plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl tracing::field::Visit for PlainVisitor<'_> {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.decimal(field, false, value);
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.decimal(field, value < 0, value.unsigned_abs());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.field(field, &value);
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if self.name(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" || !debug_is_plain(value) {
            return self.record_debug(field, &value);
        }
        if self.name(field) {
            self.out.push('"');
            self.out.push_str(value);
            self.out.push('"');
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name().starts_with("log.") || self.result.is_err() {
            return;
        }
        self.sep();
        if self.result.is_ok() {
            self.result = if field.name() == "message" {
                write!(self.out, "{value:?}")
            } else {
                write!(self.out, "{}={value:?}", field.name())
            };
        }
    }
}

impl<'writer> fmt::FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(
        &self,
        writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut writer = writer;
        let visit = |out: &mut String| {
            let mut v = PlainVisitor {
                out,
                first: true,
                result: Ok(()),
            };
            fields.record(&mut v);
            v.result
        };
        // Gathered in a reused buffer and written once: a span's fields then take one allocation
        // of their exact size instead of a string grown piece by piece.
        FIELDS_BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                let r = visit(&mut buf);
                writer.write_str(&buf)?;
                if buf.capacity() > 4096 {
                    *buf = String::new();
                }
                r
            }
            // Formatting a field logged (re-entered): a buffer of its own.
            Err(_) => {
                let mut buf = String::new();
                let r = visit(&mut buf);
                writer.write_str(&buf)?;
                r
            }
        })
    }

    fn add_fields(
        &self,
        current: &'writer mut fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let first = current.fields.is_empty();
        let mut v = PlainVisitor {
            out: &mut current.fields,
            first,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

/// The human log line without colours: the text of tracing-subscriber's default `Full` format with
/// ANSI off (`{time} {level:>5} {span}{{fields}}:...: {target}: {fields}`), written with plain
/// `write_str` calls instead of its styling and padding machinery. The time is [`CachedTime`]'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainFormat;

impl<S, N> fmt::FormatEvent<S, N> for PlainFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &fmt::FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        CachedTime.format_time(&mut writer)?;
        writer.write_str(match *meta.level() {
            tracing::Level::TRACE => " TRACE ",
            tracing::Level::DEBUG => " DEBUG ",
            tracing::Level::INFO => "  INFO ",
            tracing::Level::WARN => "  WARN ",
            tracing::Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<fmt::FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    writer.write_char('{')?;
                    writer.write_str(fields)?;
                    writer.write_char('}')?;
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// RFC 3339 UTC timestamps with microseconds (as tracing-subscriber's default timer prints them),
/// the date and time of day formatted once per second per thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedTime;

thread_local! {
    static LAST_SECOND: std::cell::RefCell<(u64, [u8; 19])> = const { std::cell::RefCell::new((u64::MAX, [0; 19])) };
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC, proleptic Gregorian; H. Hinnant's civil_from_days).
pub fn civil_time(secs: u64) -> [u8; 19] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut out = [0u8; 19];
    let mut put = |at: usize, n: u64, width: usize| {
        let mut n = n;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, rem / 3600, 2);
    put(14, rem / 60 % 60, 2);
    put(17, rem % 60, 2);
    for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        out[i] = c;
    }
    out
}

impl FormatTime for CachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        LAST_SECOND.with(|last| {
            let mut last = last.borrow_mut();
            if last.0 != secs {
                *last = (secs, civil_time(secs));
            }
            w.write_str(std::str::from_utf8(&last.1).unwrap_or_default())
        })?;
        let mut frac = *b".000000Z";
        let mut micros = now.subsec_micros();
        for digit in frac[1..7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        w.write_str(std::str::from_utf8(&frac).unwrap_or_default())
    }
}

/// A node's tracing setup.
pub struct Telemetry {
    /// The node's dispatcher.
    pub dispatch: Dispatch,
    /// The flight recorder.
    pub recorder: FlightRecorder,
    /// The log level control.
    pub log: LogControl,
    /// Where the log lines go.
    pub sink: LogSink,
}

impl Telemetry {
    /// Builds the subscriber; `directive` must already be valid (checked by config validation).
    pub fn new(
        format: LogFormat,
        directive: &str,
        to_stderr: bool,
        trace_capacity: usize,
        flush: Duration,
    ) -> Result<Telemetry, LogLevelError> {
        let filter = EnvFilter::try_new(directive).map_err(|e| LogLevelError::Invalid {
            directive: directive.to_string(),
            reason: e.to_string(),
        })?;
        let (filter, handle) = reload::Layer::new(filter);
        let sink = LogSink::new(if to_stderr { flush } else { Duration::ZERO });
        let fmt_layer: Box<dyn Layer<Registry> + Send + Sync> = match (format, to_stderr) {
            (_, false) => Box::new(fmt::layer().with_writer(std::io::sink)),
            (LogFormat::Human, true) if std::io::stderr().is_terminal() => {
                Box::new(fmt::layer().with_ansi(true).with_writer(sink.clone()))
            }
            // Not a terminal: the same text without colours, made with plain field and time
            // formatters (no ANSI styling calls, the date formatted once per second).
            (LogFormat::Human, true) => Box::new(
                fmt::layer()
                    .with_ansi(false)
                    .fmt_fields(PlainFields)
                    .event_format(PlainFormat)
                    .with_writer(sink.clone()),
            ),
            (LogFormat::Json, true) => Box::new(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(sink.clone()),
            ),
        };
        let recorder = FlightRecorder::new(trace_capacity);
        // The panic event carries a whole backtrace for the recorder; the log already gets the
        // previous hook's stderr report and the handler's one-line error, so it skips the event.
        let not_panic = filter_fn(|meta| meta.target() != PANIC_TARGET);
        // One per-layer filter (the log's): each per-layer filter costs a span lookup on every
        // span callback. The recorder has none: it keeps everything down to DEBUG itself.
        let subscriber = Registry::default()
            .with(fmt_layer.with_filter(filter.and(not_panic)))
            .with(recorder.clone());
        install_panic_hook();
        Ok(Telemetry {
            dispatch: Dispatch::new(subscriber),
            recorder,
            log: LogControl {
                handle,
                current: Mutex::new(directive.to_string()),
            },
            sink,
        })
    }
}

static PANIC_HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that emits an ERROR event with the panic's message,
/// location and a forced backtrace into the current span (so the flight recorder files it under the
/// request's trace), then runs the previous hook (which prints to stderr).
pub fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let backtrace = trim_backtrace(&Backtrace::force_capture().to_string());
            let message = info
                .payload_as_str()
                .unwrap_or("(non-string panic payload)");
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "(unknown)".to_string());
            tracing::error!(
                target: PANIC_TARGET,
                panic_message = message,
                panic_location = location.as_str(),
                panic_backtrace = backtrace.as_str(),
                "service panicked"
            );
            previous(info);
        }));
    });
}

/// Most frames kept of a panic backtrace.
pub const MAX_BACKTRACE_FRAMES: usize = 48;

/// Drops the frames of the panic machinery (hook, `std::panicking`, `core::panicking`) so the trace
/// starts at the code that panicked, and keeps at most [`MAX_BACKTRACE_FRAMES`] frames.
pub fn trim_backtrace(text: &str) -> String {
    let mut frames: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let starts_frame = trimmed
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match frames.last_mut() {
            Some(frame) if !starts_frame => frame.push(line),
            _ => frames.push(vec![line]),
        }
    }
    let machinery = |frame: &Vec<&str>| {
        let head = frame.first().copied().unwrap_or("");
        [
            "std::panicking",
            "core::panicking",
            "rust_begin_unwind",
            "__rust_end_short_backtrace",
        ]
        .iter()
        .any(|m| head.contains(m))
    };
    // The machinery is one block near the top; `std::panicking` frames further down belong to
    // `catch_unwind` in the runtime and stay.
    let mut start = 0;
    let mut seen = false;
    for (i, frame) in frames.iter().enumerate().take(32) {
        if machinery(frame) {
            seen = true;
            start = i + 1;
        } else if seen {
            break;
        }
    }
    let kept = &frames[start..];
    let mut out: Vec<&str> = kept
        .iter()
        .take(MAX_BACKTRACE_FRAMES)
        .flatten()
        .copied()
        .collect();
    let more = kept.len().saturating_sub(MAX_BACKTRACE_FRAMES);
    let note = format!("      ... {more} more frames");
    if more > 0 {
        out.push(&note);
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_matches_the_calendar() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_764_534_326, "2025-11-30T20:25:26"),
            (4_102_444_799, "2099-12-31T23:59:59"),
        ] {
            assert_eq!(std::str::from_utf8(&civil_time(secs)).unwrap(), want);
        }
    }

    #[test]
    fn plain_fields_read_like_the_default_ones() {
        use tracing_subscriber::layer::SubscriberExt;
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let out = Arc::clone(&buf);
        let make = move || Capture(Arc::clone(&out));
        let subscriber = Registry::default().with(
            fmt::layer()
                .with_ansi(false)
                .fmt_fields(PlainFields)
                .with_timer(CachedTime)
                .with_writer(make),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", trace_id = "ab", n = tracing::field::Empty);
            span.record("n", 3u64);
            span.in_scope(|| {
                tracing::info!(status = 200u64, ok = true, x = 1.5, "request completed")
            });
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(
                "INFO request{trace_id=\"ab\" n=3}: backend_unix::telemetry::tests: request completed status=200 ok=true x=1.5"
            ),
            "{text}"
        );
        let stamp = &text[..27];
        assert_eq!(stamp.len(), 27, "{text}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
    }

    /// Log lines (timestamps cut off) of the events below, through `layer`.
    fn lines_through(plain_format: bool) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt;
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let out = Arc::clone(&buf);
        let make = move || Capture(Arc::clone(&out));
        let layer = fmt::layer()
            .with_ansi(false)
            .fmt_fields(PlainFields)
            .with_timer(CachedTime)
            .with_writer(make);
        let subscriber = Registry::default().with(if plain_format {
            Box::new(layer.event_format(PlainFormat)) as Box<dyn Layer<Registry> + Send + Sync>
        } else {
            Box::new(layer)
        });
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(
                n = -5i64,
                min = i64::MIN,
                max = u64::MAX,
                "outside any span"
            );
            let root = tracing::info_span!(
                "request",
                trace_id = "0af7651916cd43dd8448eb211c80319c",
                path = "/a \"b\" \\ é\n",
                status = tracing::field::Empty
            );
            root.record("status", 200u64);
            root.in_scope(|| {
                let bare = tracing::debug_span!("bare");
                bare.in_scope(|| {
                    tracing::warn!(ok = false, x = 0.25, s = "plain", "inner {}", 7);
                    tracing::trace!(empty = "", "trace level");
                });
            });
            tracing::info!(parent: &root, status = 200u16, latency_us = 12u64, "request completed");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| l[27..].to_string()).collect()
    }

    #[test]
    fn plain_format_writes_the_default_full_format_text() {
        let ours = lines_through(true);
        assert_eq!(ours.len(), 4, "{ours:#?}");
        assert_eq!(ours, lines_through(false));
        assert!(ours[0].starts_with(" ERROR backend_unix::telemetry::tests: outside any span n=-5 min=-9223372036854775808 max=18446744073709551615"), "{}", ours[0]);
        assert!(
            ours[3].contains("request completed status=200 latency_us=12"),
            "{}",
            ours[3]
        );
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn backtrace_starts_at_the_panicking_code_and_is_bounded() {
        let mut text = String::from(
            "   0: {closure#0}\n             at src/telemetry.rs:1:1\n   1: std::panicking::panic_with_hook\n             at panicking.rs:1:1\n   2: core::panicking::panic_fmt\n   3: div\n             at samples/faulty/src/lib.rs:72:13\n",
        );
        for i in 4..100 {
            let name = if i == 10 {
                "std::panicking::catch_unwind".to_string()
            } else {
                format!("frame{i}")
            };
            text.push_str(&format!("  {i}: {name}\n             at x.rs:1:1\n"));
        }
        let t = trim_backtrace(&text);
        assert!(t.starts_with("   3: div"), "{t}");
        assert!(t.contains("samples/faulty/src/lib.rs:72:13"));
        assert!(!t.contains("panic_fmt"));
        assert!(
            t.contains("catch_unwind"),
            "frames below the first block stay"
        );
        assert!(t.contains("frame50"));
        assert!(!t.contains("frame51:"));
        assert!(t.ends_with("... 49 more frames"), "{t}");
        // Without machinery frames nothing is dropped at the top.
        assert_eq!(trim_backtrace("   0: main\n"), "   0: main");
    }
}
