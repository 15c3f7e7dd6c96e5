//! Per-node tracing: a `fmt` log layer (human or JSON) behind a reloadable `EnvFilter`, the flight
//! recorder (always at DEBUG, whatever the log level), and the process-wide panic hook that attaches a
//! panic's message, location and backtrace to the trace being handled.
//!
//! Each node owns its own [`Dispatch`] (so tests can run several nodes in one process); every task the
//! node spawns runs under it with `WithSubscriber`.

use std::backtrace::Backtrace;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::Duration;

use tracing::Dispatch;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
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
            (LogFormat::Human, true) => Box::new(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
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
        let subscriber = Registry::default()
            .with(fmt_layer.with_filter(filter).with_filter(not_panic))
            .with(recorder.clone().with_filter(LevelFilter::DEBUG));
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
