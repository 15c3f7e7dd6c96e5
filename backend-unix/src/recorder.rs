//! The flight recorder: a tracing-subscriber [`Layer`] that keeps, per trace, every span (name, fields,
//! parent, start/end) and event (level, message, fields, span), for the last N completed traces and all
//! in-flight ones (so a hung request is visible while it hangs).
//!
//! A trace starts at a span named `request` that carries a `trace_id` field; every span opened under it
//! (the capability spans `store.*` and `upstream.call` included) and every event inside those spans is
//! recorded into that trace. The trace completes when its `request` span closes.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Write as _};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Name of the span that starts a trace.
pub const ROOT_SPAN: &str = "request";
/// Most spans kept per trace (a hung request that polls forever must not grow without bound).
pub const MAX_SPANS_PER_TRACE: usize = 2000;
/// Most events kept per trace.
pub const MAX_EVENTS_PER_TRACE: usize = 2000;

/// Bytes of text kept inline (without an allocation): trace ids, methods, paths, node ids and
/// most messages fit.
const INLINE: usize = 46;

/// Recorded text: inline when short, else on the heap.
#[derive(Clone)]
pub enum Text {
    /// Up to [`INLINE`] bytes of UTF-8.
    Inline(u8, [u8; INLINE]),
    /// Longer text.
    Heap(String),
}

impl Text {
    fn new(s: &str) -> Text {
        match u8::try_from(s.len()) {
            Ok(n) if s.len() <= INLINE => {
                let mut buf = [0u8; INLINE];
                buf[..s.len()].copy_from_slice(s.as_bytes());
                Text::Inline(n, buf)
            }
            _ => Text::Heap(s.to_string()),
        }
    }
}

impl Text {
    /// The text's bytes (UTF-8), without checking them again.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline(n, buf) => buf.get(..usize::from(*n)).unwrap_or_default(),
            Text::Heap(s) => s.as_bytes(),
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Inline(n, buf) => {
                std::str::from_utf8(&buf[..usize::from(*n)]).unwrap_or_default()
            }
            Text::Heap(s) => s,
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        **self == **other
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

/// Formats a `Debug` value into [`Text`], inline when it fits.
struct TextWriter {
    len: usize,
    buf: [u8; INLINE],
    heap: Option<String>,
}

impl fmt::Write for TextWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(h) = &mut self.heap {
            h.push_str(s);
        } else if self.len + s.len() <= INLINE {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut h = String::with_capacity(self.len + s.len() + 16);
            h.push_str(std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default());
            h.push_str(s);
            self.heap = Some(h);
        }
        Ok(())
    }
}

fn debug_text(value: &dyn fmt::Debug) -> Text {
    let mut w = TextWriter {
        len: 0,
        buf: [0u8; INLINE],
        heap: None,
    };
    let _ = write!(w, "{value:?}");
    match w.heap {
        Some(h) => Text::Heap(h),
        // Whole `write_str` pieces only, so the inline bytes are UTF-8.
        None => Text::Inline(u8::try_from(w.len).unwrap_or(0), w.buf),
    }
}

/// One recorded field value (kept as recorded; turned into JSON only when a trace is read).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A string (recorded as a `&str`).
    Str(Text),
    /// The `Debug` (or, for `%value`, `Display`) text of any other value.
    Debug(Text),
}

impl FieldValue {
    /// The value as JSON.
    pub fn to_json(&self) -> Value {
        match self {
            FieldValue::I64(v) => Value::from(*v),
            FieldValue::U64(v) => Value::from(*v),
            FieldValue::F64(v) => Value::from(*v),
            FieldValue::Bool(v) => Value::from(*v),
            FieldValue::Str(v) | FieldValue::Debug(v) => Value::from(&**v),
        }
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldValue::I64(v) => s.serialize_i64(*v),
            FieldValue::U64(v) => s.serialize_u64(*v),
            FieldValue::F64(v) if v.is_finite() => s.serialize_f64(*v),
            FieldValue::F64(_) => s.serialize_none(),
            FieldValue::Bool(v) => s.serialize_bool(*v),
            FieldValue::Str(v) | FieldValue::Debug(v) => s.serialize_str(v),
        }
    }
}

/// The fields of a span or event, in the order first recorded (a field recorded again keeps its
/// place and takes the new value). Serialized as a JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(Vec<(&'static str, FieldValue)>);

impl Fields {
    /// The value of a field, as JSON.
    pub fn get(&self, name: &str) -> Option<Value> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_json())
    }

    /// The fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = &(&'static str, FieldValue)> {
        self.0.iter()
    }

    fn set(&mut self, name: &'static str, value: FieldValue) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

fn level_str(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// One recorded span.
#[derive(Debug, Clone, Serialize)]
pub struct SpanRecord {
    /// Index within the trace (0 is the `request` span).
    pub id: usize,
    /// Index of the parent span, `None` for the root.
    pub parent: Option<usize>,
    /// Span name.
    pub name: &'static str,
    /// Target (module path).
    pub target: &'static str,
    /// Level.
    pub level: &'static str,
    /// Fields, as recorded so far.
    pub fields: Fields,
    /// Microseconds from the trace start to the span's creation.
    pub start_us: u64,
    /// Microseconds from the trace start to the span's close; `None` while open.
    pub end_us: Option<u64>,
}

/// One recorded event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Index of the span it happened in.
    pub span: usize,
    /// Level.
    pub level: &'static str,
    /// Target (module path).
    pub target: &'static str,
    /// The `message` field.
    pub message: Option<Text>,
    /// The other fields.
    pub fields: Fields,
    /// Microseconds from the trace start.
    pub at_us: u64,
}

/// Everything recorded for one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TraceRecord {
    /// The trace id (32 hex digits).
    pub trace_id: String,
    /// Whether the request is still being handled.
    pub in_flight: bool,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Microseconds the request took; `None` while in flight.
    pub duration_us: Option<u64>,
    /// Spans, in creation order.
    pub spans: Vec<SpanRecord>,
    /// Events, in order.
    pub events: Vec<EventRecord>,
    /// Spans and events not kept because the trace hit its size bound.
    pub dropped: u64,
    #[serde(skip)]
    started: Option<Instant>,
}

impl TraceRecord {
    fn elapsed_us(&self) -> u64 {
        self.started
            .map(|s| u64::try_from(s.elapsed().as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// One trace being recorded: its own lock, so the spans and events of concurrent requests do not
/// contend; the recorder's lock is taken only when a trace starts and when it completes.
type LiveTrace = Arc<Mutex<TraceRecord>>;

fn lock_trace(t: &LiveTrace) -> MutexGuard<'_, TraceRecord> {
    // Nothing under this lock calls foreign code, so a poisoned lock holds consistent data.
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    /// By key: keys grow, so new traces are appended at the end (no hashing on the request path).
    in_flight: BTreeMap<u64, LiveTrace>,
    /// Completed traces, oldest first (`in_flight` false: nothing records into them any more).
    completed: VecDeque<LiveTrace>,
}

/// Most emptied traces kept per thread for reuse.
const SPARE_TRACES: usize = 16;
/// Most span or event slots a spare trace keeps allocated.
const SPARE_ENTRIES: usize = 64;

thread_local! {
    /// Evicted traces, emptied, whose allocations (the trace itself, its span and event lists, its
    /// id) the next trace started on this thread reuses instead of allocating them again.
    static SPARE: std::cell::RefCell<Vec<LiveTrace>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The recorder's store, shared by the layer and the admin endpoints.
#[derive(Debug, Clone)]
pub struct FlightRecorder {
    inner: Arc<Mutex<Inner>>,
    next_key: Arc<AtomicU64>,
}

/// Where a span's records go: which in-flight trace, and its index there.
#[derive(Debug, Clone)]
struct SpanLink {
    key: u64,
    trace: LiveTrace,
    index: usize,
}

impl FlightRecorder {
    /// A recorder keeping the last `capacity` completed traces.
    pub fn new(capacity: usize) -> FlightRecorder {
        FlightRecorder {
            inner: Arc::new(Mutex::new(Inner {
                capacity: capacity.max(1),
                in_flight: BTreeMap::new(),
                completed: VecDeque::new(),
            })),
            next_key: Arc::new(AtomicU64::new(1)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under this lock calls foreign code, so a poisoned lock holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn live(inner: &Inner) -> Vec<TraceRecord> {
        inner
            .in_flight
            .values()
            .map(|t| lock_trace(t).clone())
            .filter(|t| t.in_flight)
            .collect()
    }

    /// The newest trace with this id (in-flight ones first: they are the newest).
    pub fn get(&self, trace_id: &str) -> Option<TraceRecord> {
        let inner = self.lock();
        Self::live(&inner)
            .into_iter()
            .filter(|t| t.trace_id == trace_id)
            .max_by_key(|t| t.started)
            .or_else(|| {
                inner.completed.iter().rev().find_map(|t| {
                    let t = lock_trace(t);
                    (t.trace_id == trace_id).then(|| t.clone())
                })
            })
    }

    /// Every in-flight trace, then the last `n` completed ones, newest first.
    pub fn last(&self, n: usize) -> Vec<TraceRecord> {
        let inner = self.lock();
        let mut live = Self::live(&inner);
        live.sort_by_key(|t| std::cmp::Reverse(t.started));
        live.extend(
            inner
                .completed
                .iter()
                .rev()
                .take(n)
                .map(|t| lock_trace(t).clone()),
        );
        live
    }

    /// Number of completed traces held.
    pub fn completed_len(&self) -> usize {
        self.lock().completed.len()
    }
}

#[derive(Default)]
struct FieldVisitor {
    fields: Fields,
    message: Option<Text>,
}

impl FieldVisitor {
    /// A visitor with room for the fields a callsite declares (one allocation, no regrowth; none
    /// for a bare message).
    fn for_fields(meta: &tracing::Metadata<'_>) -> FieldVisitor {
        let fields = meta.fields();
        let n = fields.len() - usize::from(fields.field("message").is_some());
        FieldVisitor {
            fields: Fields(Vec::with_capacity(n)),
            message: None,
        }
    }
}

impl Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.set(field.name(), FieldValue::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.set(field.name(), FieldValue::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.set(field.name(), FieldValue::U64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.set(field.name(), FieldValue::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(Text::new(value));
        } else {
            self.fields
                .set(field.name(), FieldValue::Str(Text::new(value)));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = debug_text(value);
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.fields.set(field.name(), FieldValue::Debug(text));
        }
    }
}

/// Records the fields of a `Span::record` straight into the recorded span's fields (under the
/// trace's lock), without a list of its own. A `message` is not a span field and is ignored.
struct MergeVisitor<'a>(&'a mut Fields);

impl Visit for MergeVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.set(field.name(), FieldValue::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.set(field.name(), FieldValue::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.set(field.name(), FieldValue::U64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.set(field.name(), FieldValue::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() != "message" {
            self.0.set(field.name(), FieldValue::Str(Text::new(value)));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() != "message" {
            self.0
                .set(field.name(), FieldValue::Debug(debug_text(value)));
        }
    }
}

/// Where the records of `span` go: its own link, or (for a span the recorder does not keep, a
/// TRACE span) the nearest kept ancestor's.
fn link_of<S>(span: &tracing_subscriber::registry::SpanRef<'_, S>) -> Option<SpanLink>
where
    S: for<'a> LookupSpan<'a>,
{
    span.scope()
        .find_map(|s| s.extensions().get::<SpanLink>().cloned())
}

/// Runs `f` on the fields recorded for `span` (under its trace's lock: `f` must not log); `None`
/// when the recorder does not keep this span (outside a trace, TRACE, past the trace's bound).
/// The log formats a kept span's fields from here instead of keeping them a second time.
pub(crate) fn with_recorded_fields<S, R>(
    span: &tracing_subscriber::registry::SpanRef<'_, S>,
    f: impl FnOnce(&Fields) -> R,
) -> Option<R>
where
    S: for<'a> LookupSpan<'a>,
{
    let extensions = span.extensions();
    let link = extensions.get::<SpanLink>()?;
    let trace = lock_trace(&link.trace);
    trace.spans.get(link.index).map(|s| f(&s.fields))
}

thread_local! {
    /// The id of the span the recorder saw made last on this thread if it keeps it, else 0.
    static JUST_KEPT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Whether the recorder keeps the fields of the span `id` (see [`with_recorded_fields`]), for a
/// layer above the recorder in its own `on_new_span` of that span (the recorder's ran just before,
/// on the same thread): no lookup of the span.
pub(crate) fn just_kept(id: &Id) -> bool {
    JUST_KEPT.get() == id.into_u64()
}

/// The recorder keeps spans and events down to DEBUG (whatever the log level); TRACE is left out.
fn kept(level: &Level) -> bool {
    *level != Level::TRACE
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl<S> Layer<S> for FlightRecorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        JUST_KEPT.set(0);
        let meta = attrs.metadata();
        if !kept(meta.level()) {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let parent_link = span.parent().and_then(|p| link_of(&p));
        if parent_link.is_none() && meta.name() != ROOT_SPAN {
            return;
        }
        let mut visitor = FieldVisitor::for_fields(meta);
        attrs.record(&mut visitor);
        let link = match parent_link {
            Some(parent) => {
                let mut trace = lock_trace(&parent.trace);
                if !trace.in_flight {
                    return;
                }
                if trace.spans.len() >= MAX_SPANS_PER_TRACE {
                    trace.dropped += 1;
                    return;
                }
                let index = trace.spans.len();
                let start_us = trace.elapsed_us();
                trace.spans.push(SpanRecord {
                    id: index,
                    parent: Some(parent.index),
                    name: meta.name(),
                    target: meta.target(),
                    level: level_str(meta.level()),
                    fields: visitor.fields,
                    start_us,
                    end_us: None,
                });
                drop(trace);
                SpanLink {
                    key: parent.key,
                    trace: parent.trace,
                    index,
                }
            }
            None => {
                let Some(FieldValue::Str(trace_id) | FieldValue::Debug(trace_id)) = visitor
                    .fields
                    .0
                    .iter()
                    .find(|(n, _)| *n == "trace_id")
                    .map(|(_, v)| v)
                else {
                    return;
                };
                let key = self.next_key.fetch_add(1, Ordering::Relaxed);
                let trace = SPARE
                    .with(|spare| spare.borrow_mut().pop())
                    .unwrap_or_default();
                {
                    let mut t = lock_trace(&trace);
                    t.trace_id.clear();
                    t.trace_id.push_str(trace_id);
                    t.in_flight = true;
                    t.started_unix_ms = unix_ms();
                    t.duration_us = None;
                    t.dropped = 0;
                    t.started = Some(Instant::now());
                    t.spans.push(SpanRecord {
                        id: 0,
                        parent: None,
                        name: meta.name(),
                        target: meta.target(),
                        level: level_str(meta.level()),
                        fields: visitor.fields,
                        start_us: 0,
                        end_us: None,
                    });
                }
                self.lock().in_flight.insert(key, Arc::clone(&trace));
                SpanLink {
                    key,
                    trace,
                    index: 0,
                }
            }
        };
        span.extensions_mut().insert(link);
        JUST_KEPT.set(id.into_u64());
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let extensions = span.extensions();
        let Some(link) = extensions.get::<SpanLink>() else {
            return;
        };
        let mut trace = lock_trace(&link.trace);
        if let Some(span) = trace.spans.get_mut(link.index) {
            values.record(&mut MergeVisitor(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !kept(meta.level()) {
            return;
        }
        let Some(link) = ctx.event_span(event).and_then(|s| link_of(&s)) else {
            return;
        };
        let mut visitor = FieldVisitor::for_fields(meta);
        event.record(&mut visitor);
        let mut trace = lock_trace(&link.trace);
        if !trace.in_flight {
            return;
        }
        if trace.events.len() >= MAX_EVENTS_PER_TRACE {
            trace.dropped += 1;
            return;
        }
        let at_us = trace.elapsed_us();
        trace.events.push(EventRecord {
            span: link.index,
            level: level_str(meta.level()),
            target: meta.target(),
            message: visitor.message,
            fields: visitor.fields,
            at_us,
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(link) = span.extensions().get::<SpanLink>().cloned() else {
            return;
        };
        let mut trace = lock_trace(&link.trace);
        let now = trace.elapsed_us();
        if let Some(span) = trace.spans.get_mut(link.index) {
            span.end_us = Some(now);
        }
        if link.index != 0 || !trace.in_flight {
            return;
        }
        trace.in_flight = false;
        trace.duration_us = Some(now);
        drop(trace);
        let evicted = {
            let mut inner = self.lock();
            inner.in_flight.remove(&link.key);
            inner.completed.push_back(link.trace);
            if inner.completed.len() > inner.capacity {
                inner.completed.pop_front()
            } else {
                None
            }
        };
        // Emptied outside the recorder's lock, and kept for reuse unless something (a span that
        // outlived its request) still holds it.
        if let Some(evicted) = evicted.filter(|t| Arc::strong_count(t) == 1) {
            {
                let mut t = lock_trace(&evicted);
                t.spans.clear();
                t.events.clear();
                // A spare holds no more than a typical trace's worth.
                if t.spans.capacity() > SPARE_ENTRIES {
                    t.spans = Vec::new();
                }
                if t.events.capacity() > SPARE_ENTRIES {
                    t.events = Vec::new();
                }
            }
            SPARE.with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_TRACES {
                    spare.push(evicted);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing::instrument::WithSubscriber;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn records_nested_spans_and_events_and_keeps_the_last_n() {
        let recorder = FlightRecorder::new(2);
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            for id in ["a1", "a2", "a3"] {
                let root =
                    tracing::info_span!("request", trace_id = id, status = tracing::field::Empty);
                let _e = root.enter();
                {
                    let child = tracing::debug_span!("store.get", key = "k", seq = 3u64);
                    let _c = child.enter();
                    tracing::info!(answer = 42, "inside");
                }
                root.record("status", 200u64);
            }
            // A span outside any trace is ignored.
            tracing::info_span!("other").in_scope(|| tracing::info!("ignored"));
        });
        assert_eq!(recorder.completed_len(), 2);
        assert!(recorder.get("a1").is_none(), "evicted");
        let t = recorder.get("a3").expect("kept");
        assert!(!t.in_flight);
        assert_eq!(t.spans.len(), 2);
        assert_eq!(t.spans[0].fields.get("status"), Some(200.into()));
        assert_eq!(t.spans[1].name, "store.get");
        assert_eq!(t.spans[1].parent, Some(0));
        assert_eq!(t.spans[1].fields.get("key"), Some("k".into()));
        assert!(t.spans[1].end_us.is_some());
        assert_eq!(t.events.len(), 1);
        assert_eq!(t.events[0].span, 1);
        assert_eq!(t.events[0].message.as_deref(), Some("inside"));
        assert_eq!(t.events[0].fields.get("answer"), Some(42.into()));
        assert_eq!(recorder.last(10).len(), 2);
    }

    #[test]
    fn trace_level_is_left_out_and_its_children_attach_to_the_nearest_kept_span() {
        let recorder = FlightRecorder::new(4);
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            let root =
                tracing::info_span!("request", trace_id = "t", status = tracing::field::Empty);
            let _r = root.enter();
            let noisy = tracing::trace_span!("noisy");
            let _n = noisy.enter();
            tracing::trace!("not kept");
            let call = tracing::debug_span!("store.get", key = "k");
            call.in_scope(|| tracing::debug!("kept"));
            tracing::info!(parent: &root, answer = 1, "explicit parent");
            root.record("status", 201u64);
        });
        let t = recorder.get("t").expect("kept");
        let names: Vec<_> = t.spans.iter().map(|s| s.name).collect();
        assert_eq!(names, ["request", "store.get"]);
        assert_eq!(t.spans[1].parent, Some(0));
        let messages: Vec<_> = t.events.iter().map(|e| e.message.as_deref()).collect();
        assert_eq!(messages, [Some("kept"), Some("explicit parent")]);
        assert_eq!(t.events[0].span, 1);
        assert_eq!(t.events[1].span, 0);
        assert_eq!(t.spans[0].fields.get("status"), Some(201.into()));
    }

    #[test]
    fn a_reused_trace_holds_only_its_own_records() {
        let recorder = FlightRecorder::new(1);
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..40u64 {
                let id = format!("r{i}");
                let root = tracing::info_span!("request", trace_id = id.as_str());
                root.in_scope(|| {
                    for _ in 0..=i % 3 {
                        tracing::debug_span!("store.get", n = i)
                            .in_scope(|| tracing::info!(i, "e"));
                    }
                });
            }
        });
        assert_eq!(recorder.completed_len(), 1);
        let t = recorder.get("r39").expect("the newest");
        assert!(!t.in_flight);
        assert_eq!(t.spans.len(), 2, "{t:?}");
        assert_eq!(t.events.len(), 1);
        assert_eq!(t.spans[1].fields.get("n"), Some(39.into()));
        assert_eq!(t.events[0].fields.get("i"), Some(39.into()));
        assert!(recorder.get("r38").is_none());
    }

    #[test]
    fn short_and_long_text_is_kept_whole() {
        let long = "x".repeat(200);
        for s in [
            "",
            "GET",
            &"y".repeat(INLINE),
            &"z".repeat(INLINE + 1),
            &long,
        ] {
            assert_eq!(&*Text::new(s), s);
        }
        assert_eq!(&*debug_text(&"quoted"), "\"quoted\"");
        let v: Vec<u32> = (0..100).collect();
        assert_eq!(&*debug_text(&v), format!("{v:?}"));
        assert_eq!(
            &*debug_text(&"é".repeat(30)),
            format!("{:?}", "é".repeat(30))
        );
        let recorder = FlightRecorder::new(2);
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("request", trace_id = "t1", long = long.as_str());
            root.in_scope(|| tracing::info!(list = ?v, "{}", long));
        });
        let t = recorder.get("t1").expect("kept");
        assert_eq!(t.spans[0].fields.get("long"), Some(long.clone().into()));
        assert_eq!(t.events[0].message.as_deref(), Some(long.as_str()));
        assert_eq!(
            t.events[0].fields.get("list"),
            Some(format!("{v:?}").into())
        );
        let json = serde_json::to_value(&t).expect("serializes");
        assert_eq!(json["spans"][0]["fields"]["long"], long.as_str());
    }

    #[tokio::test]
    async fn in_flight_traces_are_visible() {
        let recorder = FlightRecorder::new(4);
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            async move {
                let span = tracing::info_span!("request", trace_id = "live");
                let _ = tracing::Instrument::instrument(rx, span).await;
            }
            .with_subscriber(subscriber),
        );
        let mut seen = None;
        for _ in 0..1000 {
            if let Some(t) = recorder.get("live") {
                seen = Some(t);
                break;
            }
            tokio::task::yield_now().await;
        }
        let t = seen.expect("in-flight trace visible");
        assert!(t.in_flight);
        assert_eq!(t.spans[0].end_us, None);
        let _ = tx.send(());
        task.await.expect("task");
        assert!(!recorder.get("live").expect("completed").in_flight);
    }
}
