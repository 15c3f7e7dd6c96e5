//! Per-node tracing: a log layer (human: [`PlainLog`] without a terminal, else `fmt`; or JSON) behind a reloadable `EnvFilter`, the flight
//! recorder (always at DEBUG, whatever the log level), and the process-wide panic hook that attaches a
//! panic's message, location and backtrace to the trace being handled.
//!
//! Each node owns its own [`Dispatch`] (so tests can run several nodes in one process); every task the
//! node spawns runs under it with `WithSubscriber`.

use std::backtrace::Backtrace;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::Duration;

use tracing::Dispatch;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Metadata, level_filters::LevelFilter};
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, Layered, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::config::LogFormat;
use crate::plain_log::PlainLog;
use crate::recorder::FlightRecorder;

/// What the log layer is layered over: the registry with the flight recorder.
type UnderLog = Layered<FlightRecorder, Registry>;

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
    handle: reload::Handle<EnvFilter, UnderLog>,
    /// [`LogFilter::spans`].
    spans: Arc<AtomicBool>,
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
        // Span callbacks flow before a filter that needs them is in force, and stop after.
        let spans = names_spans(directive);
        if spans {
            self.spans.store(true, Ordering::Release);
        }
        self.handle
            .reload(filter)
            .map_err(|e| LogLevelError::Reload(e.to_string()))?;
        if !spans {
            self.spans.store(false, Ordering::Release);
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = directive.to_string();
        Ok(())
    }
}

/// Whether an EnvFilter directive has a part that matches spans (`target[span{field=value}]=level`;
/// such a part is always in brackets).
fn names_spans(directive: &str) -> bool {
    directive.contains('[')
}

/// The log's filter: the reloadable EnvFilter, whose span callbacks (on every new span, record,
/// enter, exit and close) are passed on only while its directive matches spans: without such a
/// part EnvFilter does nothing with them but take two read locks each (its own and the reload
/// layer's). A directive that matches spans, set at run time, applies to the spans made after it,
/// as with EnvFilter alone (a reloaded EnvFilter knows no earlier span).
struct LogFilter {
    env: reload::Layer<EnvFilter, UnderLog>,
    /// Whether the directive in force matches spans.
    spans: Arc<AtomicBool>,
}

impl LogFilter {
    fn spans(&self) -> bool {
        self.spans.load(Ordering::Acquire)
    }
}

impl Filter<UnderLog> for LogFilter {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, UnderLog>) -> bool {
        Filter::enabled(&self.env, meta, cx)
    }
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        Filter::callsite_enabled(&self.env, meta)
    }
    fn event_enabled(&self, event: &tracing::Event<'_>, cx: &Context<'_, UnderLog>) -> bool {
        Filter::event_enabled(&self.env, event, cx)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Filter::max_level_hint(&self.env)
    }
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, UnderLog>) {
        if self.spans() {
            Filter::on_new_span(&self.env, attrs, id, cx);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, UnderLog>) {
        if self.spans() {
            Filter::on_record(&self.env, id, values, cx);
        }
    }
    fn on_enter(&self, id: &Id, cx: Context<'_, UnderLog>) {
        if self.spans() {
            Filter::on_enter(&self.env, id, cx);
        }
    }
    fn on_exit(&self, id: &Id, cx: Context<'_, UnderLog>) {
        if self.spans() {
            Filter::on_exit(&self.env, id, cx);
        }
    }
    fn on_close(&self, id: Id, cx: Context<'_, UnderLog>) {
        if self.spans() {
            Filter::on_close(&self.env, id, cx);
        }
    }
}

/// The log's filter for `directive` and its control.
fn log_filter(directive: &str) -> Result<(LogFilter, LogControl), LogLevelError> {
    let env = EnvFilter::try_new(directive).map_err(|e| LogLevelError::Invalid {
        directive: directive.to_string(),
        reason: e.to_string(),
    })?;
    let (env, handle) = reload::Layer::new(env);
    let spans = Arc::new(AtomicBool::new(names_spans(directive)));
    Ok((
        LogFilter {
            env,
            spans: Arc::clone(&spans),
        },
        LogControl {
            handle,
            spans,
            current: Mutex::new(directive.to_string()),
        },
    ))
}

/// Bytes gathered before a writer writes them out itself.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct SinkInner {
    /// Lines made and not yet written.
    pending: Mutex<Vec<u8>>,
    /// The batch being written (held while writing to stderr, so batches go out in the order
    /// they were taken); emptied, it becomes the next `pending`, so neither buffer is allocated
    /// or grown again once the log runs at its pace.
    out: Mutex<Vec<u8>>,
}

impl SinkInner {
    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(
            &mut *out,
            &mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner),
        );
        if !out.is_empty() {
            let _ = std::io::stderr().lock().write_all(&out);
            out.clear();
            // A burst's buffer is not kept.
            if out.capacity() > 4 * LOG_BUFFER_BYTES {
                *out = Vec::new();
            }
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
        let (filter, log) = log_filter(directive)?;
        let recorder = FlightRecorder::new(trace_capacity);
        let sink = LogSink::new(if to_stderr { flush } else { Duration::ZERO });
        let fmt_layer: Box<dyn Layer<UnderLog> + Send + Sync> = match (format, to_stderr) {
            (_, false) => Box::new(fmt::layer().with_writer(std::io::sink)),
            (LogFormat::Human, true) if std::io::stderr().is_terminal() => {
                Box::new(fmt::layer().with_ansi(true).with_writer(sink.clone()))
            }
            // Not a terminal: the same text without colours, made by a layer of our own (plain
            // string pushes, buffers reused, the date formatted once per second).
            (LogFormat::Human, true) => Box::new(PlainLog::new(sink.clone())),
            (LogFormat::Json, true) => Box::new(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(sink.clone()),
            ),
        };
        // The panic event carries a whole backtrace for the recorder; the log already gets the
        // previous hook's stderr report and the handler's one-line error, so it skips the event.
        let not_panic = filter_fn(|meta| meta.target() != PANIC_TARGET);
        // One per-layer filter (the log's): each per-layer filter costs a span lookup on every
        // span callback. The recorder has none: it keeps everything down to DEBUG itself.
        // The recorder is the inner layer: it sees a new span before the log, which formats the
        // fields of a span the recorder keeps from the recorder's copy.
        let subscriber = Registry::default()
            .with(recorder.clone())
            .with(fmt_layer.with_filter(filter.and(not_panic)));
        install_panic_hook();
        Ok(Telemetry {
            dispatch: Dispatch::new(subscriber),
            recorder,
            log,
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

    /// Lines the log writes for a DEBUG event in a request span for `/x` and one for `/y`, under
    /// `first`, then under each directive of `then` set at run time.
    #[test]
    fn span_directives_apply_whatever_the_directive_before() {
        let out = crate::plain_log::tests::Capture::default();
        let (filter, control) = log_filter("info").unwrap();
        assert!(!control.spans.load(Ordering::Acquire));
        let subscriber = Registry::default()
            .with(FlightRecorder::new(4))
            .with(PlainLog::new(out.clone()).with_filter(filter));
        let round = |tag: &str| {
            for path in ["/x", "/y"] {
                let span = tracing::info_span!("request", trace_id = "t", path);
                span.in_scope(|| tracing::debug!(tag, "inside"));
            }
        };
        tracing::subscriber::with_default(subscriber, || {
            round("info");
            control.set("warn,[request{path=/x}]=debug").unwrap();
            assert!(control.spans.load(Ordering::Acquire));
            round("spans");
            control.set("debug").unwrap();
            assert!(!control.spans.load(Ordering::Acquire));
            round("debug");
            control.set("[{path=/y}]=debug").unwrap();
            round("fields");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let seen: Vec<(&str, &str)> = text
            .lines()
            .map(|l| {
                let path = if l.contains("path=\"/x\"") {
                    "/x"
                } else {
                    "/y"
                };
                let tag = l.rsplit("tag=\"").next().unwrap().trim_end_matches('"');
                (tag, path)
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("spans", "/x"),
                ("debug", "/x"),
                ("debug", "/y"),
                ("fields", "/y")
            ],
            "{text}"
        );
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
