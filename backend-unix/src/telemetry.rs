//! Per-node tracing: a `fmt` log layer (human or JSON) behind a reloadable `EnvFilter`, the flight
//! recorder (always at DEBUG, whatever the log level), and the process-wide panic hook that attaches a
//! panic's message, location and backtrace to the trace being handled.
//!
//! Each node owns its own [`Dispatch`] (so tests can run several nodes in one process); every task the
//! node spawns runs under it with `WithSubscriber`.

use std::backtrace::Backtrace;
use std::io::IsTerminal;
use std::sync::{Mutex, Once, PoisonError};

use tracing::Dispatch;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
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

/// A node's tracing setup.
pub struct Telemetry {
    /// The node's dispatcher.
    pub dispatch: Dispatch,
    /// The flight recorder.
    pub recorder: FlightRecorder,
    /// The log level control.
    pub log: LogControl,
}

impl Telemetry {
    /// Builds the subscriber; `directive` must already be valid (checked by config validation).
    pub fn new(
        format: LogFormat,
        directive: &str,
        to_stderr: bool,
        trace_capacity: usize,
    ) -> Result<Telemetry, LogLevelError> {
        let filter = EnvFilter::try_new(directive).map_err(|e| LogLevelError::Invalid {
            directive: directive.to_string(),
            reason: e.to_string(),
        })?;
        let (filter, handle) = reload::Layer::new(filter);
        let fmt_layer: Box<dyn Layer<Registry> + Send + Sync> = match (format, to_stderr) {
            (_, false) => Box::new(fmt::layer().with_writer(std::io::sink)),
            (LogFormat::Human, true) => Box::new(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            ),
            (LogFormat::Json, true) => Box::new(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
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
            let backtrace = Backtrace::force_capture();
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
                panic_backtrace = %backtrace,
                "service panicked"
            );
            previous(info);
        }));
    });
}
