//! The human log without a terminal, as a layer of its own: the text of tracing-subscriber's default
//! `Full` format with ANSI off (`{time} {level:>5} {span}{{fields}}:...: {target}: {fields}`, the
//! same bytes, tested line for line against it) made by copying bytes into a buffer instead of the
//! `fmt` layer's styling, padding and `core::fmt` machinery.
//!
//! A span the flight recorder keeps (every span of a request) is not kept a second time: its fields
//! are formatted, when an event inside it is logged, from the typed values the recorder holds. Only
//! for the other spans (outside any request, TRACE) the layer keeps the fields' text itself, as the
//! `fmt` layer does. One difference with the `fmt` layer follows: a field of a request's span
//! recorded twice shows once, with its last value (the `fmt` layer repeats it), as in the trace.
//! Per event the line is written into a reused per-thread buffer and handed to the writer in one
//! call. Nothing is sampled or dropped.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::recorder::{FieldValue, Fields, just_kept, with_recorded_fields};

/// A buffer grown past this (a huge field) is not kept for reuse.
const KEEP_BYTES: usize = 4096;

thread_local! {
    /// The line being written.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The second the date below is of, and `YYYY-MM-DDTHH:MM:SS` of it.
    static LAST_SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// The fields' text of a span the recorder does not keep (`name=value ...`).
struct SpanText(Vec<u8>);

/// The human log layer without colours (see the module documentation). It must be layered over
/// the [`crate::recorder::FlightRecorder`] (which then sees a new span first).
pub struct PlainLog<W> {
    make_writer: W,
    /// Spans holding a [`SpanText`]: while there are none (a node whose spans are all requests'),
    /// recording a field and closing a span cost the log nothing.
    texts: AtomicUsize,
}

impl<W> PlainLog<W> {
    /// A layer writing each line through `make_writer`.
    pub fn new(make_writer: W) -> PlainLog<W> {
        PlainLog {
            make_writer,
            texts: AtomicUsize::new(0),
        }
    }
}

impl<S, W> Layer<S> for PlainLog<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if just_kept(id) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut text = Vec::new();
        attrs.record(&mut PlainVisitor::new(&mut text));
        // Counted before it exists, so that no callback on it sees none.
        self.texts.fetch_add(1, Ordering::AcqRel);
        span.extensions_mut().insert(SpanText(text));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if self.texts.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanText(text)) = extensions.get_mut::<SpanText>() {
            let mut visitor = PlainVisitor::new(text);
            visitor.first = visitor.out.is_empty();
            values.record(&mut visitor);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if self.texts.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(span) = ctx.span(&id) else { return };
        if span.extensions_mut().remove::<SpanText>().is_some() {
            self.texts.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let write_line = |line: &mut Vec<u8>| {
            line.clear();
            push_time(line);
            line.extend_from_slice(match *meta.level() {
                Level::TRACE => b" TRACE ",
                Level::DEBUG => b" DEBUG ",
                Level::INFO => b"  INFO ",
                Level::WARN => b"  WARN ",
                Level::ERROR => b" ERROR ",
            });
            if let Some(span) = ctx.event_span(event) {
                // Most events are in a span without a parent (the request's): no scope to
                // gather.
                if span.parent().is_none() {
                    push_span(line, &span);
                } else {
                    for span in span.scope().from_root() {
                        push_span(line, &span);
                    }
                }
                line.push(b' ');
            }
            line.extend_from_slice(meta.target().as_bytes());
            line.extend_from_slice(b": ");
            event.record(&mut PlainVisitor::new(line));
            line.push(b'\n');
            let _ = self.make_writer.make_writer_for(meta).write_all(line);
        };
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                write_line(&mut line);
                if line.capacity() > KEEP_BYTES {
                    *line = Vec::new();
                }
            }
            // An event logged while a line is being written (by a field's formatting): a buffer
            // of its own.
            Err(_) => write_line(&mut Vec::new()),
        });
    }
}

/// Writes `name{fields}:` of a span in an event's scope.
fn push_span<S>(line: &mut Vec<u8>, span: &SpanRef<'_, S>)
where
    S: for<'a> LookupSpan<'a>,
{
    line.extend_from_slice(span.metadata().name().as_bytes());
    let recorded = with_recorded_fields(span, |fields| {
        if fields.iter().next().is_some() {
            line.push(b'{');
            push_recorded(line, fields);
            line.push(b'}');
        }
    });
    if recorded.is_none()
        && let Some(SpanText(text)) = span.extensions().get::<SpanText>()
        && !text.is_empty()
    {
        line.push(b'{');
        line.extend_from_slice(text);
        line.push(b'}');
    }
    line.push(b':');
}

/// Writes a span's recorded fields as [`PlainVisitor`] writes them when they are recorded.
fn push_recorded(out: &mut Vec<u8>, fields: &Fields) {
    let mut v = PlainVisitor::new(out);
    for (name, value) in fields.iter() {
        if !v.name(name) {
            continue;
        }
        match value {
            FieldValue::I64(n) => {
                if *n < 0 {
                    v.out.push(b'-');
                }
                push_decimal(v.out, n.unsigned_abs());
            }
            FieldValue::U64(n) => push_decimal(v.out, *n),
            FieldValue::F64(x) => {
                let _ = write!(v.out, "{x:?}");
            }
            FieldValue::Bool(b) => v.out.extend_from_slice(if *b { b"true" } else { b"false" }),
            FieldValue::Str(s) => push_quoted(v.out, s.as_bytes()),
            FieldValue::Debug(s) => v.out.extend_from_slice(s.as_bytes()),
        }
    }
}

/// A string (UTF-8) as `{s:?}` writes it.
fn push_quoted(out: &mut Vec<u8>, s: &[u8]) {
    if debug_is_plain(s) {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        let _ = write!(out, "{:?}", String::from_utf8_lossy(s));
    }
}

/// Writes fields as tracing-subscriber's default field formatter does without ANSI: `name=value`
/// pairs separated by spaces, the message first and bare, strings quoted and escaped as `Debug`
/// does, `r#` taken off raw names, `log.*` fields left out, control characters in the message
/// escaped.
pub(crate) struct PlainVisitor<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    result: std::fmt::Result,
}

impl<'a> PlainVisitor<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> PlainVisitor<'a> {
        PlainVisitor {
            out,
            first: true,
            result: Ok(()),
        }
    }

    fn sep(&mut self) {
        if !self.first {
            self.out.push(b' ');
        }
        self.first = false;
    }

    /// Starts `name=` (false: skip this field).
    fn name(&mut self, name: &str) -> bool {
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        self.sep();
        self.out
            .extend_from_slice(name.strip_prefix("r#").unwrap_or(name).as_bytes());
        self.out.push(b'=');
        true
    }

    fn decimal(&mut self, field: &Field, negative: bool, value: u64) {
        if self.name(field.name()) {
            if negative {
                self.out.push(b'-');
            }
            push_decimal(self.out, value);
        }
    }

    /// Starts the message (bare); returns where its text starts.
    fn message_start(&mut self) -> usize {
        self.sep();
        self.out.len()
    }

    /// Escapes, in the message written from `start`, the control characters tracing-subscriber
    /// escapes.
    fn message_end(&mut self, start: usize) {
        let written = self.out.get(start..).unwrap_or_default();
        // Most messages are printable ASCII: one pass over the bytes says so.
        if written
            .iter()
            .fold(true, |ok, &b| ok & (b.wrapping_sub(0x20) < 0x5f))
        {
            return;
        }
        let raw = String::from_utf8_lossy(&self.out.split_off(start)).into_owned();
        for c in raw.chars() {
            if needs_escape(c) {
                let _ = write!(self.out, "\\{}", EscapeName(c));
            } else {
                let mut utf8 = [0u8; 4];
                self.out
                    .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// Characters of a message tracing-subscriber's formatter escapes (ANSI and C1 controls).
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

/// How tracing-subscriber writes an escaped character after its backslash.
struct EscapeName(char);

impl std::fmt::Display for EscapeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = u32::from(self.0);
        if c < 0x80 {
            write!(f, "x{c:02x}")
        } else {
            write!(f, "u{{{c:x}}}")
        }
    }
}

/// Appends the decimal digits of `value`.
fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
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
    out.extend_from_slice(&digits[at..]);
}

/// Whether `{s:?}` is `s` in quotes: printable ASCII without `"` or `\`.
fn debug_is_plain(s: &[u8]) -> bool {
    // One pass without early exit, which the compiler vectorises.
    s.iter().fold(true, |ok, &b| {
        ok & (b.wrapping_sub(0x20) < 0x5f) & (b != b'"') & (b != b'\\')
    })
}

impl Visit for PlainVisitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.decimal(field, false, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.decimal(field, value < 0, value.unsigned_abs());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.name(field.name()) {
            self.out
                .extend_from_slice(if value { b"true" } else { b"false" });
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if self.result.is_ok() {
                let start = self.message_start();
                self.out.extend_from_slice(value.as_bytes());
                self.message_end(start);
            }
            return;
        }
        if self.name(field.name()) {
            push_quoted(self.out, value.as_bytes());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            if self.result.is_ok() {
                let start = self.message_start();
                self.result = write!(self.out, "{value:?}").map_err(|_| std::fmt::Error);
                self.message_end(start);
            }
            return;
        }
        if self.name(field.name()) {
            self.result = write!(self.out, "{value:?}").map_err(|_| std::fmt::Error);
        }
    }
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

/// Appends the time now as RFC 3339 UTC with microseconds (as tracing-subscriber's default timer
/// prints it); the date and time of day are formatted once per second per thread.
fn push_time(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (second, date) = LAST_SECOND.get();
    let date = if second == secs {
        date
    } else {
        let date = civil_time(secs);
        LAST_SECOND.set((secs, date));
        date
    };
    out.extend_from_slice(&date);
    let mut micros = now.subsec_micros();
    let mut frac = *b".000000Z";
    for digit in frac[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&frac);
}

/// The same timestamps as a tracing-subscriber timer (for `fmt` layers).
#[derive(Debug, Clone, Copy, Default)]
pub struct CachedTime;

impl FormatTime for CachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let mut text = Vec::with_capacity(27);
        push_time(&mut text);
        w.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::Registry;
    use tracing_subscriber::fmt;
    use tracing_subscriber::layer::{Layered, SubscriberExt};

    use crate::recorder::FlightRecorder;

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

    /// A writer keeping what the log writes.
    #[derive(Clone, Default)]
    pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// The lines the events below make: through [`PlainLog`] over the flight recorder, or through
    /// tracing-subscriber's default `fmt` layer without ANSI.
    fn lines_through(plain: bool) -> Vec<String> {
        let out = Capture(Arc::new(Mutex::new(Vec::new())));
        let recorder = FlightRecorder::new(4);
        let layer: Box<dyn Layer<Layered<FlightRecorder, Registry>> + Send + Sync> = if plain {
            Box::new(PlainLog::new(out.clone()))
        } else {
            Box::new(
                fmt::layer()
                    .with_ansi(false)
                    .with_timer(CachedTime)
                    .with_writer(out.clone()),
            )
        };
        let subscriber = Registry::default().with(recorder).with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(
                n = -5i64,
                min = i64::MIN,
                max = u64::MAX,
                zero = 0u64,
                "outside any span"
            );
            // Recorded by the flight recorder (a request and the spans under it).
            let root = tracing::info_span!(
                "request",
                trace_id = "0af7651916cd43dd8448eb211c80319c",
                path = "/a \"b\" \\ é\n",
                neg = -3i64,
                f = 1.0f64,
                yes = true,
                shown = %"display",
                debugged = ?"debug",
                status = tracing::field::Empty
            );
            root.record("status", 200u64);
            root.in_scope(|| {
                let bare = tracing::debug_span!("bare");
                bare.in_scope(|| {
                    tracing::warn!(
                        ok = false,
                        x = 0.25,
                        whole = 2.0,
                        s = "plain",
                        "inner {}",
                        7
                    );
                    tracing::info!(message = "a str message", list = ?[1, 2]);
                    tracing::info!("escaped \x1b[31m red \u{85} \x07 é");
                    // TRACE spans are not recorded: the log keeps their fields itself.
                    let noisy = tracing::trace_span!("noisy", r#type = "raw", n = 1u64);
                    noisy.record("n", 2u64);
                    noisy.in_scope(|| tracing::trace!(empty = "", "trace level"));
                });
            });
            tracing::info!(parent: &root, status = 200u16, latency_us = 12u64, "request completed");
            // Not under a request: the log keeps the fields, a field recorded twice shows twice.
            let later = tracing::info_span!("later", a = tracing::field::Empty);
            later.record("a", "x");
            later.record("a", 1u64);
            tracing::info!(parent: &later, "in later");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| l[27..].to_string()).collect()
    }

    #[test]
    fn plain_log_writes_the_default_full_format_text() {
        let ours = lines_through(true);
        assert_eq!(ours.len(), 7, "{ours:#?}");
        assert_eq!(ours, lines_through(false));
        assert!(ours[0].starts_with(" ERROR backend_unix::plain_log::tests: outside any span n=-5 min=-9223372036854775808 max=18446744073709551615 zero=0"), "{}", ours[0]);
        assert!(
            ours[1].contains(r#"request{trace_id="0af7651916cd43dd8448eb211c80319c" path="/a \"b\" \\ é\n" neg=-3 f=1.0 yes=true shown=display debugged="debug" status=200}:bare: "#),
            "{}",
            ours[1]
        );
        assert!(
            ours[3].contains(r"escaped \x1b[31m red \u{85} \x07 é"),
            "{}",
            ours[3]
        );
        assert!(
            ours[4].contains("noisy{type=\"raw\" n=1 n=2}:"),
            "{}",
            ours[4]
        );
        assert!(
            ours[5].contains("request completed status=200 latency_us=12"),
            "{}",
            ours[5]
        );
    }

    #[test]
    fn a_recorded_span_shows_a_field_recorded_twice_once() {
        let out = Capture(Arc::new(Mutex::new(Vec::new())));
        let subscriber = Registry::default()
            .with(FlightRecorder::new(4))
            .with(PlainLog::new(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("request", trace_id = "t", status = 1u64);
            root.record("status", 2u64);
            tracing::info!(parent: &root, "done");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(" request{trace_id=\"t\" status=2}: "),
            "{text}"
        );
    }

    #[test]
    fn the_timestamp_is_rfc3339_with_microseconds() {
        let out = Capture(Arc::new(Mutex::new(Vec::new())));
        let subscriber = Registry::default()
            .with(FlightRecorder::new(1))
            .with(PlainLog::new(out.clone()));
        tracing::subscriber::with_default(subscriber, || tracing::info!("x"));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let stamp = &text[..27];
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T' && stamp.as_bytes()[19] == b'.',
            "{stamp}"
        );
        assert!(stamp[20..26].bytes().all(|b| b.is_ascii_digit()), "{stamp}");
    }
}
