//! The Janus node protocol around a `runtime_abi::Service` (host-testable core), and
//! [`run`], which boots a service on the kernel.
//!
//! Service listener: every response carries `x-janus-flavor: uk`, `x-janus-node`,
//! `x-janus-trace-id` (from `traceparent` or `x-janus-trace-id`, else generated) and, when the
//! service has a store, `x-janus-state-seq` (the store's sequence number when the request
//! started). Admin listener (bearer token): `GET /health`, `GET /metrics`, `GET /state[?seq=N]`,
//! `PUT /state`, `GET /state/log?since=N[&wait_ms=M]` (the op log a twin follows), `GET /console`.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::time::Duration;

use runtime_abi::{
    BoxFuture, ClockSource, EntropySource, Manifest, MemStore, Service, StoreBackend, StoreError,
    TraceId, Update,
};
use spinning_top::Spinlock;

use crate::executor::Timers;
use crate::metrics::{Metrics, StoreOp};

/// The store: runtime-abi's `MemStore` behind a spin lock (same engine and snapshot bytes as the
/// unix build), counting operations.
pub struct UkStore {
    inner: Spinlock<MemStore>,
    metrics: Arc<Metrics>,
    /// This history's id (`x-janus-state-epoch`): random at boot and on every restore.
    epoch: core::sync::atomic::AtomicU64,
    /// Tasks waiting for the next mutation (long-polls of `GET /state/log`).
    waiters: Spinlock<Vec<core::task::Waker>>,
}

impl core::fmt::Debug for UkStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UkStore").field("seq", &self.seq()).finish()
    }
}

impl UkStore {
    /// Wraps a store.
    pub fn new(store: MemStore, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Spinlock::new(store),
            metrics,
            epoch: core::sync::atomic::AtomicU64::new(1),
            waiters: Spinlock::new(Vec::new()),
        }
    }

    /// This history's id.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(core::sync::atomic::Ordering::Acquire)
    }

    /// Starts a new history id (at boot and after a restore).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch
            .store(epoch.max(1), core::sync::atomic::Ordering::Release);
    }

    fn changed(&self) {
        let waiters = core::mem::take(&mut *self.waiters.lock());
        for w in waiters {
            w.wake();
        }
    }

    /// Resolves once the store's seq is no longer `seq` (a mutation or a restore happened).
    pub async fn changed_from(&self, seq: u64) {
        poll_fn(|cx| {
            if self.seq() != seq {
                return core::task::Poll::Ready(());
            }
            let mut waiters = self.waiters.lock();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            core::task::Poll::Pending
        })
        .await
    }

    /// The mutations after `since` for a follower (see `MemStore::ops_since`).
    pub fn ops_since(&self, since: u64) -> Result<Vec<runtime_abi::Op>, StoreError> {
        self.inner.lock().ops_since(
            since,
            runtime_abi::node::LOG_MAX_OPS,
            runtime_abi::node::LOG_MAX_BYTES,
        )
    }

    /// Snapshot of the current state (and its sequence number).
    pub fn snapshot(&self) -> (u64, Vec<u8>) {
        self.metrics.store_op(StoreOp::Snapshot);
        let store = self.inner.lock();
        (store.seq(), store.snapshot())
    }

    /// Snapshot as of `seq`.
    pub fn snapshot_at(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        self.metrics.store_op(StoreOp::Snapshot);
        self.inner.lock().snapshot_at(seq)
    }

    /// Replaces the state with a snapshot; the state is unchanged on error.
    pub fn restore(&self, bytes: &[u8]) -> Result<u64, StoreError> {
        self.metrics.store_op(StoreOp::Restore);
        let r = self.inner.lock().restore(bytes);
        self.changed();
        r
    }

    /// The store's size limit (keys plus values).
    pub fn max_total_bytes(&self) -> usize {
        self.inner.lock().limits().max_total_bytes
    }

    /// Non-blocking snapshot as of `seq` for the panic path (None if the lock is held).
    pub fn try_snapshot_at(&self, seq: u64) -> Option<Result<Vec<u8>, StoreError>> {
        self.inner.try_lock().map(|s| s.snapshot_at(seq))
    }
}

impl StoreBackend for UkStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.metrics.store_op(StoreOp::Get);
        Ok(self.inner.lock().get(key).map(<[u8]>::to_vec))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.metrics.store_op(StoreOp::Put);
        let r = self.inner.lock().put(key, value.to_vec());
        self.changed();
        r
    }

    fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        self.metrics.store_op(StoreOp::Delete);
        let r = self.inner.lock().delete(key);
        self.changed();
        r
    }

    fn update(
        &self,
        key: &str,
        f: &mut dyn FnMut(Option<&[u8]>) -> Update,
    ) -> Result<(Option<Vec<u8>>, Option<u64>), StoreError> {
        self.metrics.store_op(StoreOp::Update);
        // The closure is service code: it runs without the lock held, on a copy of the value, so
        // a panic inside it leaves the store unlocked for the panic's state dump, and a closure
        // that calls the store does not deadlock the only CPU. Nothing else runs meanwhile (one
        // CPU, the closure is synchronous), so the read and the write are still one atomic step
        // unless the closure itself wrote to the store, which is refused.
        let (current, seq) = {
            let store = self.inner.lock();
            (store.get(key).map(<[u8]>::to_vec), store.seq())
        };
        let mut decision = Some(f(current.as_deref()));
        let mut store = self.inner.lock();
        if store.seq() != seq {
            drop(store);
            panic!("store: the update closure of key {key:?} wrote to the store itself");
        }
        let r = store.update(key, &mut |_| decision.take().unwrap_or(Update::Keep));
        drop(store);
        self.changed();
        r
    }

    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.metrics.store_op(StoreOp::List);
        Ok(self.inner.lock().list(prefix, limit))
    }

    fn seq(&self) -> u64 {
        self.inner.lock().seq()
    }
}

/// The clock provider: TSC monotonic time, RTC-based wall time, executor timers for `sleep`.
pub struct UkClock {
    /// The executor's timers.
    pub timers: Arc<Timers>,
    /// Monotonic nanoseconds.
    pub monotonic_ns: fn() -> u64,
    /// Wall nanoseconds since the epoch.
    pub wall_ns: fn() -> u64,
}

impl ClockSource for UkClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos((self.monotonic_ns)())
    }

    fn wall(&self) -> Duration {
        Duration::from_nanos((self.wall_ns)())
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        // Round up so the sleep never ends early (the MUST rule).
        let now_ms = (self.monotonic_ns)() / 1_000_000;
        let ms = d.as_nanos().div_ceil(1_000_000) as u64;
        let sleep = self
            .timers
            .sleep_until(now_ms.saturating_add(ms).saturating_add(1));
        Box::pin(sleep)
    }
}

/// The entropy provider.
pub struct UkEntropy;

impl EntropySource for UkEntropy {
    fn fill(&self, buf: &mut [u8]) {
        crate::entropy::fill(buf);
    }
}

/// Standard base64 (with padding) of `data`, handed to `out` in pieces of at most 256 bytes
/// (no allocation: the panic path streams a state of many MiB through it).
pub fn base64_to(data: &[u8], out: &mut dyn FnMut(&[u8])) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut buf = [0u8; 256];
    let mut len = 0;
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            buf[len + i] = if i <= chunk.len() {
                ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            };
        }
        len += 4;
        if len == buf.len() {
            out(&buf);
            len = 0;
        }
    }
    if len > 0 {
        out(&buf[..len]);
    }
}

/// Standard base64 (with padding).
pub fn base64(data: &[u8]) -> String {
    let mut text = String::with_capacity(data.len().div_ceil(3) * 4);
    base64_to(data, &mut |piece| {
        text.extend(piece.iter().map(|&b| char::from(b)));
    });
    text
}

/// Most snapshot bytes per console line of the panic state dump (a multiple of 3, so the
/// lines' base64 texts concatenate; 64 KiB of base64 per line). A state up to this size is
/// one `JANUS-STATE seq=<N> <base64>` line; a larger one is `JANUS-STATE-PART seq=<N> <i>/<K>
/// <base64>` lines, i = 1..=K, each holding the next piece (the store's 16 MiB is 342 lines).
pub const STATE_LINE_BYTES: usize = 48 * 1024;

/// Writes the console lines of a state dump of `snapshot` (taken at `seq`) through `out`.
pub fn write_state_dump(seq: u64, snapshot: &[u8], out: &mut dyn FnMut(&[u8])) {
    if snapshot.len() <= STATE_LINE_BYTES {
        out(format!("JANUS-STATE seq={seq} ").as_bytes());
        base64_to(snapshot, out);
        out(b"\n");
        return;
    }
    let parts = snapshot.len().div_ceil(STATE_LINE_BYTES);
    for (i, piece) in snapshot.chunks(STATE_LINE_BYTES).enumerate() {
        out(format!("JANUS-STATE-PART seq={seq} {}/{parts} ", i + 1).as_bytes());
        base64_to(piece, out);
        out(b"\n");
    }
}

/// What the panic path reports about the request being handled.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// Its trace id (hex).
    pub trace_id: String,
    /// The store's sequence number when it started.
    pub seq: Option<u64>,
}

static CURRENT: Spinlock<Option<InFlight>> = Spinlock::new(None);
static PANIC_STORE: Spinlock<Option<Arc<UkStore>>> = Spinlock::new(None);

/// The request whose future is being polled right now (for the panic report).
pub fn current_request() -> Option<InFlight> {
    CURRENT.try_lock().and_then(|c| c.clone())
}

/// The panic path's state dump: for a request in flight on a service with a store, the state as
/// of the request's start (see [`write_state_dump`]); when it cannot be produced, one
/// `JANUS-PANIC state not dumped: <why>` line instead.
pub fn write_panic_state(out: &mut dyn FnMut(&[u8])) {
    let Some(seq) = current_request().and_then(|r| r.seq) else {
        return;
    };
    let Some(store) = PANIC_STORE.try_lock().and_then(|s| s.clone()) else {
        return;
    };
    // Service code never runs with the store locked (see `UkStore::update`): a held lock means
    // the panic is inside the store engine itself, whose state may be half changed.
    let why = match store.try_snapshot_at(seq) {
        Some(Ok(snapshot)) => return write_state_dump(seq, &snapshot, out),
        Some(Err(e)) => format!("{e}"),
        None => String::from("the store engine panicked with its lock held"),
    };
    out(format!("JANUS-PANIC state not dumped: {why}\n").as_bytes());
}

/// Takes a request out of the in-flight gauge when dropped.
struct Finished<'a>(&'a Metrics);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The node: a service plus the protocol state around it.
pub struct Node<S: Service> {
    /// The service.
    pub service: S,
    /// Node id.
    pub node_id: String,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// The store, when the manifest declares one.
    pub store: Option<Arc<UkStore>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Monotonic microseconds (for latency).
    pub now_us: fn() -> u64,
    /// Random bytes (for trace ids).
    pub random: fn(&mut [u8]),
}

fn http_headers(req: &janus_http1::Request) -> runtime_abi::Headers {
    let mut headers = runtime_abi::Headers::new();
    for field in req.headers.iter() {
        headers.append(&field.name, &String::from_utf8_lossy(&field.value));
    }
    headers
}

/// The fw_cfg file the host puts the admin token in (QEMU `-fw_cfg name=opt/janus/token,file=PATH`):
/// unlike the kernel command line, it is not visible in the host's process list.
pub const ADMIN_TOKEN_FILE: &str = "opt/janus/token";

/// The admin token in the fw_cfg file's bytes: surrounding whitespace (a trailing newline) is
/// dropped; what remains must be non-empty visible ASCII, as the unix build requires.
pub fn admin_token_from_file(bytes: &[u8]) -> Result<String, &'static str> {
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err("the token is empty");
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err("the token must be visible ASCII (no spaces or control bytes)");
    }
    Ok(String::from_utf8_lossy(token).into_owned())
}

/// Whether `given` is the admin token, in time that does not depend on where they differ (only on
/// the lengths, which are not secret), so the token cannot be guessed byte by byte from timings.
pub fn token_matches(given: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

fn text(status: u16, body: &str) -> janus_http1::Response {
    janus_http1::Response::text(status, body)
}

impl<S: Service> Node<S> {
    /// The manifest.
    pub fn manifest(&self) -> &'static Manifest {
        &S::MANIFEST
    }

    fn protocol_headers(
        &self,
        resp: janus_http1::Response,
        trace: &str,
        seq: Option<u64>,
    ) -> janus_http1::Response {
        let mut resp = resp
            .with_header("x-janus-flavor", "uk")
            .with_header("x-janus-node", self.node_id.as_bytes())
            .with_header("x-janus-trace-id", trace.as_bytes());
        if let Some(seq) = seq {
            resp = resp.with_header("x-janus-state-seq", seq.to_string().as_bytes());
        }
        resp
    }

    /// Answers one request on the service listener.
    pub async fn handle_service(&self, req: janus_http1::Request) -> janus_http1::Response {
        let start = (self.now_us)();
        let headers = http_headers(&req);
        let trace_id = TraceId::from_request_headers(&headers).unwrap_or_else(|| {
            let mut bytes = [0u8; 16];
            (self.random)(&mut bytes);
            TraceId::from_random(bytes)
        });
        let trace_hex = trace_id.to_hex();
        let seq = self.store.as_ref().map(|s| s.seq());
        let abi_req = runtime_abi::Request {
            method: runtime_abi::Method::parse(req.method.as_str()),
            path: req.path,
            query: req.query,
            headers,
            body: req.body,
            trace_id,
        };
        self.metrics.request_started();
        // Counted out however the handler ends: answered, or dropped when its client left.
        let _finished = Finished(&self.metrics);
        let in_flight = InFlight {
            trace_id: trace_hex.clone(),
            seq,
        };
        let mut future = core::pin::pin!(self.service.handle(abi_req));
        let resp = poll_fn(|cx| {
            *CURRENT.lock() = Some(in_flight.clone());
            let r = future.as_mut().poll(cx);
            *CURRENT.lock() = None;
            r
        })
        .await;
        let status = resp.status.as_u16();
        let mut out = janus_http1::Response::new(status);
        // The service cannot forge the protocol headers added below, nor the framing.
        for (name, value) in resp.headers.iter() {
            if !runtime_abi::node::backend_owned(name) {
                out = out.with_header(name, value.as_bytes());
            }
        }
        out = out.with_body(resp.body);
        let out = self.protocol_headers(out, &trace_hex, seq);
        self.metrics
            .record_request(status, (self.now_us)().saturating_sub(start));
        out
    }

    /// Answers one request on the admin listener.
    pub fn handle_admin(&self, req: &janus_http1::Request) -> janus_http1::Response {
        let authorized = match (&self.admin_token, req.headers.get_str("authorization")) {
            (Some(token), Some(value)) => value
                .strip_prefix("Bearer ")
                .is_some_and(|t| token_matches(t.trim(), token)),
            _ => false,
        };
        if !authorized {
            return text(401, "missing or wrong bearer token\n")
                .with_header("WWW-Authenticate", "Bearer");
        }
        let method = req.method.as_str();
        let seq_now = self.store.as_ref().map(|s| s.seq());
        match (method, req.path.as_str()) {
            ("GET" | "HEAD", "/health") => {
                let body = runtime_abi::serde_json::json!({
                    "status": "ok",
                    "node": self.node_id,
                    "flavor": "uk",
                    "service": S::MANIFEST.name,
                    "seq": seq_now,
                    // A debug node running under this node's resource envelope takes this.
                    "heap_bytes": crate::mm::heap::size(),
                });
                janus_http1::Response::new(200)
                    .with_header("Content-Type", "application/json")
                    .with_body(body.to_string().into_bytes())
            }
            ("GET" | "HEAD", "/metrics") => janus_http1::Response::new(200)
                .with_header("Content-Type", "text/plain; version=0.0.4")
                .with_body({
                    let mut text = self.metrics.render();
                    text.push_str(&crate::metrics::kernel_text());
                    text.into_bytes()
                }),
            ("GET" | "HEAD", "/console") => janus_http1::Response::new(200)
                .with_header("Content-Type", "text/plain; charset=utf-8")
                .with_body(crate::console::ring_contents().into_bytes()),
            ("GET" | "HEAD", "/state") => self.get_state(req),
            ("PUT", "/state") => self.put_state(req),
            ("GET", "/state/log") => self.get_log(req),
            (_, "/health" | "/metrics" | "/console" | "/state" | "/state/log") => {
                text(405, "method not allowed\n")
            }
            _ => text(404, "not found\n"),
        }
    }

    fn get_state(&self, req: &janus_http1::Request) -> janus_http1::Response {
        // A constant per service: a service without a store has no state code in its image.
        let Some(store) = self.store.as_ref().filter(|_| S::MANIFEST.store.is_some()) else {
            return text(404, "this service has no store\n");
        };
        let wanted = req
            .query
            .as_deref()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("seq=")));
        let (seq, result) = match wanted {
            None => {
                let (seq, bytes) = store.snapshot();
                (seq, Ok(bytes))
            }
            Some(text_seq) => match text_seq.parse::<u64>() {
                Ok(seq) => (seq, store.snapshot_at(seq)),
                Err(_) => return text(400, "seq must be an unsigned integer\n"),
            },
        };
        match result {
            Ok(bytes) => janus_http1::Response::new(200)
                .with_header("Content-Type", "application/octet-stream")
                .with_header("x-janus-state-seq", seq.to_string().as_bytes())
                .with_header(
                    runtime_abi::node::STATE_EPOCH,
                    store.epoch().to_string().as_bytes(),
                )
                .with_body(bytes),
            Err(e @ StoreError::NotRetained { .. }) => text(410, &format!("{e}\n")),
            Err(e @ StoreError::FutureSeq { .. }) => text(400, &format!("{e}\n")),
            Err(e) => text(500, &format!("{e}\n")),
        }
    }

    /// For an authorized `GET /state/log?since=N&wait_ms=M` with nothing after N yet: N and how
    /// long the admin loop may wait for the next mutation before answering (a long-poll).
    pub fn log_wait(&self, req: &janus_http1::Request) -> Option<(u64, u64)> {
        if req.method.as_str() != "GET" || req.path != "/state/log" {
            return None;
        }
        let authorized = match (&self.admin_token, req.headers.get_str("authorization")) {
            (Some(token), Some(value)) => value
                .strip_prefix("Bearer ")
                .is_some_and(|t| token_matches(t.trim(), token)),
            _ => false,
        };
        let store = self.store.as_ref().filter(|_| authorized)?;
        let (since, wait) = log_query(req.query.as_deref()).ok()?;
        (wait > 0 && store.seq() == since).then_some((since, wait))
    }

    /// `GET /state/log?since=N`: the same answers as the unix build's (op log batch, 410 past the
    /// retained log, 409 ahead of this store, `x-janus-state-epoch`).
    fn get_log(&self, req: &janus_http1::Request) -> janus_http1::Response {
        // A constant per service: a service without a store has no state code in its image.
        let Some(store) = self.store.as_ref().filter(|_| S::MANIFEST.store.is_some()) else {
            return text(404, "this service has no store\n");
        };
        let since = match log_query(req.query.as_deref()) {
            Ok((since, _)) => since,
            Err(e) => return text(400, e),
        };
        let epoch = store.epoch().to_string();
        let resp = match store.ops_since(since) {
            Ok(ops) => {
                let to = ops.last().map_or(since, |o| o.seq);
                janus_http1::Response::new(200)
                    .with_header("Content-Type", "application/octet-stream")
                    .with_header("x-janus-state-seq", to.to_string().as_bytes())
                    .with_body(runtime_abi::encode_ops(&ops))
            }
            Err(e @ StoreError::NotRetained { .. }) => text(410, &format!("{e}\n")),
            Err(e) => text(409, &format!("{e}\n")),
        };
        resp.with_header(runtime_abi::node::STATE_EPOCH, epoch.as_bytes())
    }

    /// The admin listener's codec limits: `PUT /state` takes a snapshot of a full store (the same
    /// cap as the unix build: the data plus 8 bytes of lengths per entry and a small frame, bounded
    /// by twice the store's size plus 1 MiB), but never more than a third of the heap, so an
    /// oversized body is refused with 413 instead of exhausting memory.
    pub fn admin_limits(&self, heap_bytes: usize) -> janus_http1::Limits {
        let mut limits = janus_http1::Limits::DEFAULT;
        if let Some(store) = &self.store {
            let cap = store
                .max_total_bytes()
                .saturating_mul(2)
                .saturating_add(1 << 20)
                .min(heap_bytes / 3);
            limits.max_body_bytes = limits.max_body_bytes.max(cap);
            // 16 MiB at a slow 1 MiB/s still arrives.
            limits.body_timeout_ms = 120_000;
        }
        limits
    }

    fn put_state(&self, req: &janus_http1::Request) -> janus_http1::Response {
        // A constant per service: a service without a store has no state code in its image.
        let Some(store) = self.store.as_ref().filter(|_| S::MANIFEST.store.is_some()) else {
            return text(404, "this service has no store\n");
        };
        match store.restore(&req.body) {
            Ok(seq) => {
                let mut epoch = [0u8; 8];
                (self.random)(&mut epoch);
                store.set_epoch(u64::from_le_bytes(epoch));
                janus_http1::Response::new(204)
                    .with_header("x-janus-state-seq", seq.to_string().as_bytes())
            }
            Err(e) => text(400, &format!("{e}\n")),
        }
    }
}

/// `since=N` (required) and `wait_ms=M` (optional, bounded) of `GET /state/log`.
fn log_query(query: Option<&str>) -> Result<(u64, u64), &'static str> {
    let param = |name: &str| {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let since = param("since")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("since=N (a non-negative integer) is required\n")?;
    let wait = match param("wait_ms") {
        None => 0,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|w| *w <= runtime_abi::node::LOG_MAX_WAIT_MS)
            .ok_or("wait_ms must be an integer from 0 to 30000\n")?,
    };
    Ok((since, wait))
}

/// Makes `store` the one the panic path dumps.
pub fn set_panic_store(store: Option<Arc<UkStore>>) {
    *PANIC_STORE.lock() = store;
}

#[cfg(not(test))]
pub use self::kernel::run;

#[cfg(not(test))]
mod kernel {
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use alloc::vec;

    use janus_http1::{Event, Limits, ServerConn};
    use runtime_abi::{
        Capabilities, Config, MemStore, Providers, Service, StoreBackend, StoreLimits,
    };

    use super::{Node, UkClock, UkEntropy, UkStore};
    use crate::boot::BootInfo;
    use crate::drivers::exit::ExitCode;
    use crate::executor::Executor;
    use crate::metrics::{KERNEL, KernelCounters, Metrics};
    use crate::net::{self, TcpStream};
    use crate::{clock, kprintln, rt};

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Service,
        Admin,
    }

    fn now_us() -> u64 {
        clock::monotonic_ns() / 1000
    }

    fn now_ms() -> u64 {
        clock::monotonic_ns() / 1_000_000
    }

    /// Listening sockets kept ready per port. The pools are refilled after every received frame
    /// (`net::poll_ingress`), so a burst of SYNs never finds the pool empty with a few; each
    /// socket costs 32 KiB of buffers, touched (and so faulted in by the host) at boot.
    const SERVICE_BACKLOG: usize = 4;
    const ADMIN_BACKLOG: usize = 2;

    /// Boots service `S`: brings the kernel up, builds the service from its capabilities and
    /// serves it until the VM stops.
    pub fn run<S: Service>(boot: BootInfo) -> ! {
        let mut env = rt::bring_up(&boot);
        let mut cfg = env.config.clone();
        // The token from fw_cfg (kept off the command line) wins over a `janus.token` word.
        if let Some(bytes) = crate::drivers::fw_cfg::read_file(super::ADMIN_TOKEN_FILE) {
            match super::admin_token_from_file(&bytes) {
                Ok(token) => cfg.admin_token = Some(token),
                Err(e) => rt::fatal(
                    ExitCode::BootFailure,
                    &alloc::format!("fw_cfg file {}: {e}", super::ADMIN_TOKEN_FILE),
                ),
            }
        }
        let manifest = S::MANIFEST;
        if let Err(e) = manifest.check_upstreams(cfg.upstreams.iter().map(|(n, _)| n.as_str())) {
            rt::fatal(ExitCode::BootFailure, &alloc::format!("{e}"));
        }
        let config = match Config::resolve(
            &manifest,
            cfg.config.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ) {
            Ok(c) => c,
            Err(e) => rt::fatal(ExitCode::BootFailure, &alloc::format!("config: {e}")),
        };
        let metrics = Arc::new(Metrics::default());
        // `S::MANIFEST.store` is a constant: for a service without a store the store engine is
        // not in the image at all.
        let store = const { S::MANIFEST.store }.map(|spec| {
            Arc::new(UkStore::new(
                MemStore::new(StoreLimits::from_spec(&spec)),
                Arc::clone(&metrics),
            ))
        });
        if let Some(store) = &store {
            let mut epoch = [0u8; 8];
            crate::entropy::fill(&mut epoch);
            store.set_epoch(u64::from_le_bytes(epoch));
        }
        super::set_panic_store(store.clone());
        rt::set_fatal_hooks(rt::FatalHooks {
            trace_id: || super::current_request().map(|c| c.trace_id),
            extra: if S::MANIFEST.store.is_some() {
                super::write_panic_state
            } else {
                |_| {}
            },
        });
        let executor = Executor::new();
        let timers = executor.timers();
        let providers = Providers {
            transport: Arc::new(crate::upstream::UkUpstreams::new(
                cfg.upstreams.clone(),
                Arc::clone(&timers),
            )),
            store: if const { S::MANIFEST.store.is_some() } {
                store.clone().map(|s| s as Arc<dyn StoreBackend>)
            } else {
                None
            },
            clock: Arc::new(UkClock {
                timers: Arc::clone(&timers),
                monotonic_ns: clock::monotonic_ns,
                wall_ns: clock::wall_ns,
            }),
            entropy: Arc::new(UkEntropy),
            config,
        };
        let service = match S::new(Capabilities::new(manifest, providers)) {
            Ok(s) => s,
            Err(e) => rt::fatal(
                ExitCode::BootFailure,
                &alloc::format!("service {} failed to start: {e}", manifest.name),
            ),
        };
        env.marks.mark("service");
        let node: &'static Node<S> = Box::leak(Box::new(Node {
            service,
            node_id: cfg.node_id.clone(),
            admin_token: cfg.admin_token.clone(),
            store,
            metrics,
            now_us,
            random: crate::entropy::fill,
        }));
        let port = cfg.port.unwrap_or(manifest.listener.port);
        let spawner = executor.spawner();
        match net::listen(port, SERVICE_BACKLOG) {
            Ok(listener) => {
                let sp = spawner.clone();
                spawner.spawn(async move {
                    loop {
                        let stream = listener.accept().await;
                        sp.spawn(serve_conn(node, stream, Kind::Service));
                    }
                });
            }
            Err(e) => rt::fatal(
                ExitCode::BootFailure,
                &alloc::format!("listen on port {port}: {e}"),
            ),
        }
        let admin = if cfg.admin_token.is_some() {
            match net::listen(cfg.admin_port, ADMIN_BACKLOG) {
                Ok(listener) => {
                    let sp = spawner.clone();
                    spawner.spawn(async move {
                        loop {
                            let stream = listener.accept().await;
                            sp.spawn(serve_conn(node, stream, Kind::Admin));
                        }
                    });
                    alloc::format!(":{}", cfg.admin_port)
                }
                Err(e) => rt::fatal(
                    ExitCode::BootFailure,
                    &alloc::format!("listen on admin port {}: {e}", cfg.admin_port),
                ),
            }
        } else {
            alloc::string::String::from(
                "off (no admin token: fw_cfg opt/janus/token or janus.token)",
            )
        };
        env.marks.mark("listen");
        let boot_us = rt::since_entry_us();
        kprintln!("janus-uk: {}", env.summary);
        kprintln!(
            "janus-uk: service {} {} node {} listening on :{port}, admin {admin}; boot to listen {}.{:03} ms",
            manifest.name,
            manifest.version,
            cfg.node_id,
            boot_us / 1000,
            boot_us % 1000
        );
        kprintln!("janus-uk: {}", env.marks.text());
        rt::run_loop(executor, env.nic_irq)
    }

    /// How long a client may take none of an answer before its connection is reset.
    const WRITE_STALL_MS: u64 = 10_000;

    /// Writes `data`; a client that takes none of it for [`WRITE_STALL_MS`] (it stopped reading,
    /// its window stays shut) has its connection reset. A slow reader that keeps taking bytes is
    /// never cut.
    async fn write_out(
        stream: &mut TcpStream,
        mut data: &[u8],
        timers: &alloc::sync::Arc<crate::executor::Timers>,
    ) -> Result<(), ()> {
        while !data.is_empty() {
            let deadline = now_ms() + WRITE_STALL_MS;
            match crate::executor::timeout(timers, deadline, stream.write(data)).await {
                Some(Ok(n)) => data = &data[n..],
                Some(Err(_)) => return Err(()),
                None => {
                    KernelCounters::bump(&KERNEL.write_timeouts);
                    stream.abort();
                    return Err(());
                }
            }
        }
        Ok(())
    }

    async fn serve_conn<S: Service>(node: &'static Node<S>, mut stream: TcpStream, kind: Kind) {
        let mut conn = ServerConn::new(match kind {
            Kind::Service => Limits::DEFAULT,
            Kind::Admin => node.admin_limits(crate::mm::heap::size() as usize),
        });
        let mut buf = vec![0u8; 8192];
        let mut pending: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
        let timers = rt::timers();
        loop {
            // Offer buffered input (the codec may take less when its buffer is full).
            if !pending.is_empty() {
                let taken = conn.feed(&pending);
                pending.drain(..taken);
            }
            while let Some(event) = conn.poll(now_ms()) {
                match event {
                    Event::Request(req) => {
                        let resp = match kind {
                            Kind::Service => {
                                // A client that leaves takes its handler with it (and frees
                                // this task and its socket), however long the handler would run.
                                let answer = crate::executor::unless(
                                    stream.peer_closed(),
                                    node.handle_service(req),
                                );
                                match answer.await {
                                    Some(resp) => resp,
                                    None => {
                                        KernelCounters::bump(&KERNEL.abandoned);
                                        return;
                                    }
                                }
                            }
                            Kind::Admin => {
                                if let Some((since, wait)) = node.log_wait(&req)
                                    && let Some(store) = &node.store
                                {
                                    let _ = crate::executor::timeout(
                                        &timers,
                                        now_ms().saturating_add(wait),
                                        store.changed_from(since),
                                    )
                                    .await;
                                }
                                node.handle_admin(&req)
                            }
                        };
                        if let Err(e) = conn.respond(&resp) {
                            kprintln!("http: cannot encode response: {e:?}");
                            let _ = conn.respond(&janus_http1::Response::text(
                                500,
                                "response could not be encoded\n",
                            ));
                        }
                    }
                    Event::Error(e) => {
                        if kind == Kind::Service {
                            node.metrics.record_request(e.status(), 0);
                        }
                    }
                    Event::IdleTimeout => {}
                }
                if !pending.is_empty() {
                    let taken = conn.feed(&pending);
                    pending.drain(..taken);
                }
            }
            if !conn.output().is_empty() {
                let out = conn.take_output();
                if write_out(&mut stream, &out, &timers).await.is_err() {
                    return;
                }
            }
            if conn.should_close() {
                return;
            }
            if !pending.is_empty() {
                // The codec is full and has nothing to say: the peer pipelines beyond the limit.
                continue;
            }
            let read = match conn.next_deadline() {
                Some(deadline) => {
                    match crate::executor::timeout(&timers, deadline, stream.read(&mut buf)).await {
                        Some(r) => r,
                        None => continue,
                    }
                }
                None => stream.read(&mut buf).await,
            };
            match read {
                Ok(0) => conn.feed_eof(),
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_abi::{
        Capabilities, Config, Listener, Providers, Request, Response, StatusCode, StoreLimits,
        StoreSpec,
    };

    struct Counter {
        store: runtime_abi::Store,
    }

    impl Service for Counter {
        const MANIFEST: Manifest = Manifest {
            name: "counter",
            version: "0.0.1",
            listener: Listener::HTTP,
            upstreams: &[],
            store: Some(StoreSpec {
                retain_ops: 2,
                max_bytes: 1 << 20,
            }),
            config: &[],
        };

        fn new(caps: Capabilities) -> Result<Self, runtime_abi::InitError> {
            Ok(Counter {
                store: caps.store()?,
            })
        }

        async fn handle(&self, req: Request) -> Response {
            match self.store.put("k", req.path.as_bytes()) {
                Ok(seq) => {
                    // The node drops the fields it owns, forged or not.
                    Response::text(StatusCode::OK, format!("{seq}"))
                        .with_header("X-Janus-Node", "forged")
                        .with_header("x-janus-fault", "panic")
                        .with_header("connection", "close")
                        .with_header("content-length", "1")
                        .with_header("x-app", "1")
                }
                Err(e) => Response::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
    }

    struct NoUpstreams;
    impl runtime_abi::UpstreamTransport for NoUpstreams {
        fn call(
            &self,
            name: &str,
            _req: Request,
        ) -> BoxFuture<'_, Result<Response, runtime_abi::UpstreamError>> {
            let name = name.to_string();
            Box::pin(async move { Err(runtime_abi::UpstreamError::Unmapped(name)) })
        }
    }

    fn node() -> Node<Counter> {
        let metrics = Arc::new(Metrics::default());
        let spec = Counter::MANIFEST.store.expect("store");
        let store = Arc::new(UkStore::new(
            MemStore::new(StoreLimits::from_spec(&spec)),
            Arc::clone(&metrics),
        ));
        let timers = Arc::new(Timers::default());
        let providers = Providers {
            transport: Arc::new(NoUpstreams),
            store: Some(Arc::clone(&store) as Arc<dyn StoreBackend>),
            clock: Arc::new(UkClock {
                timers,
                monotonic_ns: || 5,
                wall_ns: || 7,
            }),
            entropy: Arc::new(UkEntropy),
            config: Config::resolve(&Counter::MANIFEST, []).expect("config"),
        };
        let service =
            Counter::new(Capabilities::new(Counter::MANIFEST, providers)).expect("service");
        Node {
            service,
            node_id: "n1".into(),
            admin_token: Some("tok".into()),
            store: Some(store),
            metrics,
            now_us: || 0,
            random: |b| b.fill(0xab),
        }
    }

    fn request(raw: &[u8]) -> janus_http1::Request {
        let mut conn = janus_http1::ServerConn::new(janus_http1::Limits::DEFAULT);
        assert_eq!(conn.feed(raw), raw.len());
        match conn.poll(0) {
            Some(janus_http1::Event::Request(r)) => r,
            other => panic!("no request: {other:?}"),
        }
    }

    fn block_on<F: core::future::Future>(f: F) -> F::Output {
        let mut f = core::pin::pin!(f);
        let waker = core::task::Waker::noop();
        let mut cx = core::task::Context::from_waker(waker);
        loop {
            if let core::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn service_responses_carry_protocol_headers() {
        let node = node();
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let resp = block_on(node.handle_service(request(
            format!("GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: {tp}\r\n\r\n").as_bytes(),
        )));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"1");
        assert_eq!(resp.headers.get_str("x-janus-flavor"), Some("uk"));
        assert_eq!(resp.headers.get_str("x-janus-node"), Some("n1"));
        assert_eq!(
            resp.headers.get_str("x-janus-trace-id"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(resp.headers.get_str("x-janus-state-seq"), Some("0"));
        assert_eq!(resp.headers.get_str("x-app"), Some("1"));
        assert_eq!(resp.headers.get_all("x-janus-node").count(), 1);
        for owned in ["x-janus-fault", "connection", "content-length"] {
            assert_eq!(resp.headers.get_str(owned), None, "{owned}");
        }
        let resp = block_on(node.handle_service(request(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")));
        assert_eq!(resp.headers.get_str("x-janus-state-seq"), Some("1"));
        assert_eq!(
            resp.headers.get_str("x-janus-trace-id"),
            Some("abababababababababababababababab")
        );
        assert_eq!(node.metrics.requests_with_status(200), 2);
    }

    #[test]
    fn op_log_for_a_follower() {
        let node = node();
        let auth = "Host: x\r\nAuthorization: Bearer tok\r\n";
        let admin = |target: &str| {
            node.handle_admin(&request(
                format!("GET {target} HTTP/1.1\r\n{auth}\r\n").as_bytes(),
            ))
        };
        for _ in 0..3 {
            block_on(node.handle_service(request(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")));
        }
        let log = admin("/state/log?since=1");
        assert_eq!(log.status, 200);
        assert_eq!(log.headers.get_str("x-janus-state-seq"), Some("3"));
        assert!(log.headers.get_str("x-janus-state-epoch").is_some());
        let ops = runtime_abi::decode_ops(&log.body).expect("op log");
        assert_eq!(ops.iter().map(|o| o.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(admin("/state/log?since=0").status, 410, "retain_ops is 2");
        assert_eq!(admin("/state/log?since=9").status, 409);
        assert_eq!(admin("/state/log?since=x").status, 400);
        assert_eq!(admin("/state/log").status, 400);
        assert_eq!(admin("/state/log?since=3&wait_ms=99999").status, 400);
        let empty = admin("/state/log?since=3");
        assert!(
            runtime_abi::decode_ops(&empty.body)
                .expect("empty")
                .is_empty()
        );
        // Only an authorized, up-to-date long-poll waits.
        let poll = |target: &str, auth: &str| {
            node.log_wait(&request(
                format!("GET {target} HTTP/1.1\r\n{auth}\r\n").as_bytes(),
            ))
        };
        assert_eq!(poll("/state/log?since=3&wait_ms=500", auth), Some((3, 500)));
        assert_eq!(poll("/state/log?since=2&wait_ms=500", auth), None);
        assert_eq!(poll("/state/log?since=3", auth), None);
        assert_eq!(poll("/state/log?since=3&wait_ms=500", "Host: x\r\n"), None);
        // A restore starts a new history.
        let before = empty
            .headers
            .get_str("x-janus-state-epoch")
            .map(String::from);
        let snap = admin("/state").body;
        let put = node.handle_admin(&request(
            &[
                format!(
                    "PUT /state HTTP/1.1\r\n{auth}Content-Length: {}\r\n\r\n",
                    snap.len()
                )
                .into_bytes(),
                snap,
            ]
            .concat(),
        ));
        assert_eq!(put.status, 204);
        let after = admin("/state/log?since=3");
        assert_ne!(
            after
                .headers
                .get_str("x-janus-state-epoch")
                .map(String::from),
            before
        );
    }

    #[test]
    fn admin_requires_token_and_serves_state() {
        let node = node();
        assert_eq!(
            node.handle_admin(&request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"))
                .status,
            401
        );
        assert_eq!(
            node.handle_admin(&request(
                b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n"
            ))
            .status,
            401
        );
        let auth = "Host: x\r\nAuthorization: Bearer tok\r\n";
        let health = node.handle_admin(&request(
            format!("GET /health HTTP/1.1\r\n{auth}\r\n").as_bytes(),
        ));
        assert_eq!(health.status, 200);
        let json: runtime_abi::serde_json::Value =
            runtime_abi::serde_json::from_slice(&health.body).expect("json");
        assert_eq!(json["flavor"], "uk");
        assert_eq!(json["service"], "counter");
        assert_eq!(json["seq"], 0);
        for p in ["/x", "/y", "/z"] {
            block_on(node.handle_service(request(
                format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )));
        }
        let state = node.handle_admin(&request(
            format!("GET /state HTTP/1.1\r\n{auth}\r\n").as_bytes(),
        ));
        assert_eq!(state.status, 200);
        assert_eq!(state.headers.get_str("x-janus-state-seq"), Some("3"));
        let at2 = node.handle_admin(&request(
            format!("GET /state?seq=2 HTTP/1.1\r\n{auth}\r\n").as_bytes(),
        ));
        assert_eq!(at2.status, 200);
        assert_ne!(at2.body, state.body);
        assert_eq!(
            node.handle_admin(&request(
                format!("GET /state?seq=0 HTTP/1.1\r\n{auth}\r\n").as_bytes()
            ))
            .status,
            410
        );
        assert_eq!(
            node.handle_admin(&request(
                format!("GET /state?seq=99 HTTP/1.1\r\n{auth}\r\n").as_bytes()
            ))
            .status,
            400
        );
        assert_eq!(
            node.handle_admin(&request(
                format!("GET /state?seq=x HTTP/1.1\r\n{auth}\r\n").as_bytes()
            ))
            .status,
            400
        );
        // corrupt snapshot: 400 and unchanged
        let mut bad = state.body.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let put = |body: &[u8]| {
            let mut raw = format!(
                "PUT /state HTTP/1.1\r\n{auth}Content-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            raw.extend_from_slice(body);
            node.handle_admin(&request(&raw))
        };
        assert_eq!(put(&bad).status, 400);
        assert_eq!(put(&bad[..10]).status, 400);
        assert_eq!(node.store.as_ref().expect("store").seq(), 3);
        // restoring an older snapshot works
        assert_eq!(put(&at2.body).status, 204);
        assert_eq!(node.store.as_ref().expect("store").seq(), 2);
        assert!(
            String::from_utf8_lossy(
                &node
                    .handle_admin(&request(
                        format!("GET /metrics HTTP/1.1\r\n{auth}\r\n").as_bytes()
                    ))
                    .body
            )
            .contains("janus_store_ops_total{op=\"put\"} 3")
        );
    }

    #[test]
    fn admin_takes_a_snapshot_of_a_full_store_within_the_heap() {
        let node = node();
        // The store holds 1 MiB: a snapshot may be up to twice that plus 1 MiB.
        let limits = node.admin_limits(1 << 30);
        assert_eq!(limits.max_body_bytes, 3 << 20);
        // Never more than a third of the heap, never less than the default.
        assert_eq!(node.admin_limits(6 << 20).max_body_bytes, 2 << 20);
        assert_eq!(
            node.admin_limits(1 << 20).max_body_bytes,
            janus_http1::Limits::DEFAULT.max_body_bytes
        );
        // A full store of small entries: its snapshot (1.3 MiB, lengths included) is over the
        // service listener's 1 MiB and goes through the admin codec and restores.
        let mut entries = alloc::collections::BTreeMap::new();
        for i in 0..40_000u32 {
            entries.insert(format!("k{i:05}"), i.to_le_bytes().repeat(5));
        }
        let snapshot = runtime_abi::store::encode_snapshot(41, &entries);
        assert!(snapshot.len() > janus_http1::Limits::DEFAULT.max_body_bytes);
        let mut raw = format!(
            "PUT /state HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: {}\r\n\r\n",
            snapshot.len()
        )
        .into_bytes();
        raw.extend_from_slice(&snapshot);
        let mut conn = janus_http1::ServerConn::new(limits);
        let mut fed = 0;
        let req = loop {
            fed += conn.feed(&raw[fed..]);
            match conn.poll(0) {
                Some(janus_http1::Event::Request(r)) => break r,
                None => assert!(fed < raw.len(), "the codec stalled"),
                Some(other) => panic!("{other:?}"),
            }
        };
        assert_eq!(node.handle_admin(&req).status, 204);
        assert_eq!(
            node.store.as_ref().expect("store").snapshot(),
            (41, snapshot)
        );
    }

    /// A panic inside an `update` closure (the store engine calling service code) finds the
    /// store unlocked: the dump is the state as of the request's start.
    #[test]
    fn panic_dump_from_inside_an_update_closure() {
        let node = node();
        let store = Arc::clone(node.store.as_ref().expect("store"));
        store.put("a", b"1").expect("put");
        set_panic_store(Some(Arc::clone(&store)));
        *CURRENT.lock() = Some(InFlight {
            trace_id: "t".into(),
            seq: Some(1),
        });
        let mut dump = Vec::new();
        store
            .update("a", &mut |_| {
                write_panic_state(&mut |b| dump.extend_from_slice(b));
                Update::Set(b"2".to_vec())
            })
            .expect("update");
        *CURRENT.lock() = None;
        set_panic_store(None);
        let at1 = store.snapshot_at(1).expect("seq 1");
        assert_eq!(
            String::from_utf8(dump).expect("text"),
            format!("JANUS-STATE seq=1 {}\n", base64(&at1))
        );
        // A closure that panics leaves the store unlocked and unchanged.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = store.update("a", &mut |_| panic!("bug in the closure"));
        }));
        assert!(unwound.is_err());
        assert_eq!(store.try_snapshot_at(2).map(|r| r.is_ok()), Some(true));
        assert_eq!(store.get("a").expect("get"), Some(b"2".to_vec()));
        // A closure that writes to the store itself is refused instead of deadlocking.
        let reentrant = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = store.update("a", &mut |_| {
                let _ = store.put("b", b"x");
                Update::Keep
            });
        }));
        assert!(reentrant.is_err());
    }

    /// A state above one line's worth is streamed as numbered parts whose base64 texts
    /// concatenate to the whole state's.
    #[test]
    fn large_state_dump_is_split_into_parts() {
        let snapshot: Vec<u8> = (0..STATE_LINE_BYTES * 3 + 100)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let mut out = Vec::new();
        write_state_dump(9, &snapshot, &mut |b| out.extend_from_slice(b));
        let text = String::from_utf8(out).expect("text");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let mut joined = String::new();
        for (i, line) in lines.iter().enumerate() {
            let prefix = format!("JANUS-STATE-PART seq=9 {}/4 ", i + 1);
            let b64 = line.strip_prefix(&prefix).expect("part prefix");
            assert!(b64.len() <= STATE_LINE_BYTES / 3 * 4);
            joined.push_str(b64);
        }
        assert_eq!(joined, base64(&snapshot));
        // Up to one line's worth: the single-line form.
        let mut out = Vec::new();
        write_state_dump(3, &snapshot[..STATE_LINE_BYTES], &mut |b| {
            out.extend_from_slice(b)
        });
        assert!(out.starts_with(b"JANUS-STATE seq=3 "));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn token_file_contents() {
        assert_eq!(admin_token_from_file(b"abc123\n"), Ok("abc123".into()));
        assert_eq!(admin_token_from_file(b"  t0k "), Ok("t0k".into()));
        assert!(admin_token_from_file(b"").is_err());
        assert!(admin_token_from_file(b" \n").is_err());
        assert!(admin_token_from_file(b"a b").is_err());
        assert!(admin_token_from_file(b"a\x00b").is_err());
        assert!(admin_token_from_file("é".as_bytes()).is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("s3cret", "s3cret"));
        for wrong in ["", "s", "s3cre", "s3creT", "x3cret", "s3cret ", "s3crets"] {
            assert!(!token_matches(wrong, "s3cret"), "{wrong:?}");
        }
        let node = node();
        for auth in ["Bearer to", "Bearer tok2", "Bearer tOk", "Basic tok", "tok"] {
            let raw = format!("GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n");
            assert_eq!(
                node.handle_admin(&request(raw.as_bytes())).status,
                401,
                "{auth}"
            );
        }
    }

    #[test]
    fn base64_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let long: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = base64(&long);
        assert_eq!(text.len(), 1336);
        assert!(
            text.starts_with("AAECAwQF") && text.ends_with("5OXm5w=="),
            "{text}"
        );
    }
}
