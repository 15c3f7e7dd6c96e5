//! The node protocol both backends speak to the router and to operators, kept here so the two builds
//! cannot drift apart: the `x-janus-*` header names and the admin `/metrics` exposition.
//!
//! MUST rules for backends: every answer on the service port carries [`FLAVOR`], [`NODE`] and
//! [`TRACE_ID`], and [`STATE_SEQ`] for a service with a store; `/metrics` is [`Metrics::render`].
//! A backend MUST drop every field of a service's answer that [`backend_owned`] names, so a
//! service can neither forge the protocol headers (the router trusts `x-janus-fault`, the
//! operator `x-janus-node`) nor break the framing.
//!
//! Why [`Metrics`] renders the Prometheus text format itself instead of using `prometheus-client`
//! (which the router uses): that crate needs `std` (its registry, metric families and encoder are
//! built on std's locks and `Arc`s), and this crate is `no_std` because the unikernel has no std.
//! The node side needs one implementation shared by both builds, so their series cannot drift
//! (backend-unix renders through this same [`Metrics::render`]), and every update is one relaxed
//! atomic add: lock-free on the unikernel, whose panic path may run with any lock held. The output
//! is text format 0.0.4 (`# HELP` and `# TYPE` per family, cumulative `_bucket{le=..}` with
//! `+Inf`, `_sum`, `_count`); its label values are fixed (status codes, store op names), so none
//! needs escaping. A test parses it with the `prometheus-parse` crate, as a scraper would.

use alloc::string::String;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Which build answered: `unix` or `uk`.
pub const FLAVOR: &str = "x-janus-flavor";
/// The node id.
pub const NODE: &str = "x-janus-node";
/// The request's trace id.
pub const TRACE_ID: &str = "x-janus-trace-id";
/// The store's sequence number when the request started.
pub const STATE_SEQ: &str = "x-janus-state-seq";
/// Set on a caught fault (`panic`).
pub const FAULT: &str = "x-janus-fault";
/// Identifies one history of a store (`GET /state`, `GET /state/log`): a new value at node start
/// and on every `PUT /state`, so a follower notices a leader whose sequence numbers started over.
pub const STATE_EPOCH: &str = "x-janus-state-epoch";
/// On a mirrored request to a twin: the sequence number the stable answer was made at; the twin
/// answers only at exactly that state.
pub const MIRROR_SEQ: &str = "x-janus-mirror-seq";
/// On a twin's answer: why it did not answer the mirrored request (`lag`: it could not be at the
/// asked sequence number in time; the router counts the comparison as skipped).
pub const MIRROR_SKIPPED: &str = "x-janus-mirror-skipped";
/// Most ops one `GET /state/log` answer carries.
pub const LOG_MAX_OPS: usize = 4096;
/// About the most key and value bytes one `GET /state/log` answer carries.
pub const LOG_MAX_BYTES: usize = 1 << 20;
/// Longest long-poll of `GET /state/log?wait_ms=`.
pub const LOG_MAX_WAIT_MS: u64 = 30_000;

/// A unikernel node's TCP buffers per socket (receive + transmit).
pub const UK_SOCKET_BUFFER_BYTES: u64 = 32 * 1024;
/// Most TCP sockets a unikernel node holds (listening + connected + closing).
pub const UK_MAX_SOCKETS: usize = 512;
/// Sockets a unikernel node keeps listening: the service port's pool and the admin port's.
pub const UK_LISTENING_SOCKETS: usize = 4 + 2;

/// A unikernel node's TCP socket cap for a heap of `heap_bytes`: socket buffers may use at most a
/// quarter of the heap (a connection flood is refused instead of exhausting memory), between 12
/// and [`UK_MAX_SOCKETS`]. One formula for the unikernel and for a debug node run under its
/// resource envelope.
pub fn uk_socket_cap(heap_bytes: u64) -> usize {
    ((heap_bytes / 4 / UK_SOCKET_BUFFER_BYTES) as usize).clamp(12, UK_MAX_SOCKETS)
}

/// Client connections a unikernel node of `heap_bytes` holds at once: its socket cap less the
/// sockets that listen. (Closing sockets also count on the unikernel for a few seconds, so this
/// is the most it can hold, not always what it does.)
pub fn uk_connection_cap(heap_bytes: u64) -> usize {
    uk_socket_cap(heap_bytes) - UK_LISTENING_SOCKETS
}

/// Whether `given` is the admin bearer token, in time that does not depend on where they differ
/// (only on the lengths, which are not secret), so the token cannot be guessed byte by byte from
/// timings: `subtle`'s constant-time comparison. Both builds check the admin token with it.
pub fn token_matches(given: &[u8], token: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(given.ct_eq(token))
}

/// Whether a response field belongs to the backend rather than the service: framing and connection
/// management (`content-length`, `transfer-encoding`, `connection`, `keep-alive`, `upgrade`) and
/// every `x-janus-*` field. Case-insensitive.
pub fn backend_owned(name: &str) -> bool {
    const FRAMING: [&str; 5] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
    ];
    FRAMING.iter().any(|f| f.eq_ignore_ascii_case(name))
        || name
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-janus-"))
}

/// Upper bounds (microseconds) of the request latency histogram buckets; rendered in seconds.
pub const LATENCY_BUCKETS_MICROS: [u64; 12] = [
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Writes `value / 10^decimals` as a plain decimal with trailing zeros trimmed (`1000, 6` ->
/// `0.001`, `2_500_000, 6` -> `2.5`, `0, 6` -> `0`): the text `{}` prints for that `f64`, without
/// the float formatting machinery (about 12 KB of a unikernel image).
pub fn write_decimal(out: &mut String, value: u64, decimals: u32) {
    let scale = 10u64.pow(decimals);
    let (int, mut frac) = (value / scale, value % scale);
    let _ = write!(out, "{int}");
    if frac == 0 {
        return;
    }
    let mut width = decimals as usize;
    while frac % 10 == 0 {
        frac /= 10;
        width -= 1;
    }
    let _ = write!(out, ".{frac:0width$}");
}

/// Store operations counted per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// `get`
    Get,
    /// `put`
    Put,
    /// `delete`
    Delete,
    /// `update`
    Update,
    /// `list`
    List,
    /// Admin snapshot.
    Snapshot,
    /// Admin restore.
    Restore,
}

impl StoreOp {
    const ALL: [StoreOp; 7] = [
        StoreOp::Get,
        StoreOp::Put,
        StoreOp::Delete,
        StoreOp::Update,
        StoreOp::List,
        StoreOp::Snapshot,
        StoreOp::Restore,
    ];

    /// The `op` label value.
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Put => "put",
            StoreOp::Delete => "delete",
            StoreOp::Update => "update",
            StoreOp::List => "list",
            StoreOp::Snapshot => "snapshot",
            StoreOp::Restore => "restore",
        }
    }
}

/// Lowest status code counted by its own series.
const FIRST_STATUS: u16 = 100;
/// Number of per-status counters (100..=599); anything else is counted as 599.
const STATUSES: usize = 500;

/// All counters of one node. Lock-free: every update is one relaxed atomic add, so it is as cheap on
/// the unikernel's single CPU as on a many-threaded process.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; STATUSES],
    /// Requests per latency bucket, each counted once (in the first bucket whose bound it is
    /// within); made cumulative when rendered, so a request costs one bucket increment, not one per
    /// bound above it.
    buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len()],
    latency_sum_micros: AtomicU64,
    latency_count: AtomicU64,
    in_flight: AtomicI64,
    store_ops: [AtomicU64; StoreOp::ALL.len()],
    panics: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: core::array::from_fn(|_| AtomicU64::new(0)),
            buckets: Default::default(),
            latency_sum_micros: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            store_ops: Default::default(),
            panics: AtomicU64::new(0),
        }
    }
}

fn status_index(status: u16) -> usize {
    usize::from(status.clamp(FIRST_STATUS, FIRST_STATUS + STATUSES as u16 - 1) - FIRST_STATUS)
}

impl Metrics {
    /// Counts a finished request (also those the HTTP layer answers itself: 400/408/413/431).
    pub fn record_request(&self, status: u16, latency_micros: u64) {
        self.requests[status_index(status)].fetch_add(1, Ordering::Relaxed);
        if let Some(bucket) = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|bound| latency_micros <= *bound)
            .and_then(|i| self.buckets.get(i))
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_sum_micros
            .fetch_add(latency_micros, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// A request entered the service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request left the service.
    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a store operation.
    pub fn store_op(&self, op: StoreOp) {
        let i = StoreOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
        self.store_ops[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a panic in the service.
    pub fn panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Panics so far.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Requests answered with `status` so far.
    pub fn requests_with_status(&self, status: u16) -> u64 {
        self.requests[status_index(status)].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP janus_requests_total Requests answered, by status.\n");
        out.push_str("# TYPE janus_requests_total counter\n");
        for (i, n) in self.requests.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let status = usize::from(FIRST_STATUS) + i;
                let _ = writeln!(out, "janus_requests_total{{status=\"{status}\"}} {n}");
            }
        }
        out.push_str("# HELP janus_request_duration_seconds Request latency.\n");
        out.push_str("# TYPE janus_request_duration_seconds histogram\n");
        let mut cumulative = 0u64;
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BUCKETS_MICROS) {
            cumulative = cumulative.saturating_add(bucket.load(Ordering::Relaxed));
            out.push_str("janus_request_duration_seconds_bucket{le=\"");
            write_decimal(&mut out, bound, 6);
            let _ = writeln!(out, "\"}} {cumulative}");
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "janus_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        out.push_str("janus_request_duration_seconds_sum ");
        write_decimal(&mut out, self.latency_sum_micros.load(Ordering::Relaxed), 6);
        out.push('\n');
        let _ = writeln!(out, "janus_request_duration_seconds_count {count}");
        out.push_str("# HELP janus_requests_in_flight Requests being handled.\n");
        out.push_str("# TYPE janus_requests_in_flight gauge\n");
        let _ = writeln!(out, "janus_requests_in_flight {}", self.in_flight());
        out.push_str("# HELP janus_store_ops_total Store operations, by kind.\n");
        out.push_str("# TYPE janus_store_ops_total counter\n");
        for (op, n) in StoreOp::ALL.iter().zip(&self.store_ops) {
            let _ = writeln!(
                out,
                "janus_store_ops_total{{op=\"{}\"}} {}",
                op.name(),
                n.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP janus_panics_total Panics caught in the service.\n");
        out.push_str("# TYPE janus_panics_total counter\n");
        let _ = writeln!(out, "janus_panics_total {}", self.panics());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text a scraper reads: parsed by `prometheus-parse`, each family typed and documented,
    /// the values those recorded.
    #[test]
    fn metrics_parse_as_prometheus_text() {
        extern crate std;
        use prometheus_parse::{Scrape, Value};
        use std::borrow::ToOwned;
        let m = Metrics::default();
        m.record_request(200, 1_500);
        m.record_request(200, 250_000);
        m.record_request(503, 10);
        m.request_started();
        m.store_op(StoreOp::Put);
        m.panic();
        let text = m.render();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
        for family in [
            "janus_requests_total",
            "janus_request_duration_seconds",
            "janus_requests_in_flight",
            "janus_store_ops_total",
            "janus_panics_total",
        ] {
            assert!(scrape.docs.contains_key(family), "no HELP for {family}");
        }
        let value = |name: &str, label: Option<(&str, &str)>| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| s.value.clone())
        };
        assert!(matches!(
            value("janus_requests_total", Some(("status", "200"))),
            Some(Value::Counter(n)) if n == 2.0
        ));
        assert!(matches!(
            value("janus_requests_total", Some(("status", "503"))),
            Some(Value::Counter(n)) if n == 1.0
        ));
        assert!(matches!(
            value("janus_store_ops_total", Some(("op", "put"))),
            Some(Value::Counter(n)) if n == 1.0
        ));
        assert!(
            matches!(value("janus_requests_in_flight", None), Some(Value::Gauge(n)) if n == 1.0)
        );
        assert!(matches!(value("janus_panics_total", None), Some(Value::Counter(n)) if n == 1.0));
        match value("janus_request_duration_seconds", None) {
            Some(Value::Histogram(buckets)) => {
                let inf = buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .expect("+Inf");
                assert_eq!(inf.count, 3.0);
                // Cumulative: never decreasing with the bound.
                assert!(
                    buckets.windows(2).all(|w| w[0].count <= w[1].count),
                    "{buckets:?}"
                );
            }
            other => panic!("histogram expected, got {other:?}"),
        }
    }

    #[test]
    fn unikernel_socket_cap_follows_the_heap() {
        assert_eq!(uk_socket_cap(0), 12);
        assert_eq!(uk_socket_cap(4 << 20), 32);
        assert_eq!(uk_connection_cap(4 << 20), 26);
        assert_eq!(uk_socket_cap(1 << 30), UK_MAX_SOCKETS);
        assert_eq!(uk_connection_cap(0), 6);
    }

    #[test]
    fn token_comparison_is_exact() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(token_matches(b"", b""));
        for wrong in ["", "s", "s3cre", "s3creT", "x3cret", "s3cret ", "s3crets"] {
            assert!(!token_matches(wrong.as_bytes(), b"s3cret"), "{wrong:?}");
        }
        assert!(!token_matches(b"s3crets", b"s3cret"));
    }

    #[test]
    fn write_decimal_prints_what_f64_display_prints() {
        extern crate std;
        let mut cases = std::vec![(0u64, 6u32), (1, 6), (10, 6), (999_999, 6), (1_000_000, 6)];
        cases.extend(LATENCY_BUCKETS_MICROS.iter().map(|&b| (b, 6)));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Latency sums up to about 10^9 s, windows up to about 10^6 s.
            cases.push((x % 1_000_000_000_000_000, 6));
            cases.push((x % 1_000_000_000_000_000, 9));
        }
        for (value, decimals) in cases {
            let mut out = String::new();
            write_decimal(&mut out, value, decimals);
            let float = value as f64 / 10f64.powi(decimals as i32);
            assert_eq!(out, std::format!("{float}"), "{value} / 10^{decimals}");
        }
    }

    #[test]
    fn backend_owned_fields() {
        for name in [
            "x-janus-node",
            "X-Janus-Fault",
            "x-janus-anything",
            "Content-Length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "upgrade",
        ] {
            assert!(backend_owned(name), "{name}");
        }
        for name in [
            "x-janus",
            "x-janusx",
            "content-type",
            "x-app",
            "",
            "é-janus-x",
        ] {
            assert!(!backend_owned(name), "{name}");
        }
    }

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::default();
        m.record_request(200, 500);
        m.record_request(200, 20_000);
        m.record_request(404, 2_000_000);
        m.record_request(42, 1);
        m.store_op(StoreOp::Get);
        m.panic();
        let text = m.render();
        assert!(
            text.contains("janus_requests_total{status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("janus_requests_total{status=\"404\"} 1"));
        assert!(
            text.contains("janus_requests_total{status=\"100\"} 1"),
            "out of range clamps"
        );
        assert!(
            !text.contains("status=\"500\""),
            "zero series are not printed"
        );
        assert!(text.contains("janus_request_duration_seconds_bucket{le=\"0.001\"} 2"));
        assert!(text.contains("janus_request_duration_seconds_bucket{le=\"0.025\"} 3"));
        assert!(text.contains("janus_request_duration_seconds_bucket{le=\"2.5\"} 4"));
        assert!(text.contains("janus_request_duration_seconds_bucket{le=\"+Inf\"} 4"));
        assert!(text.contains("janus_request_duration_seconds_count 4"));
        assert!(text.contains("janus_store_ops_total{op=\"get\"} 1"));
        assert!(text.contains("janus_store_ops_total{op=\"put\"} 0"));
        assert!(text.contains("janus_panics_total 1"));
        assert!(text.contains("janus_requests_in_flight 0"));
        assert_eq!(m.requests_with_status(404), 1);
    }
}
