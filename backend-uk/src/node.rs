//! The Janus node protocol around a `runtime_abi::Service` (host-testable core): the service
//! listener's protocol headers and the admin API. [`crate::kernel::run`] boots it on the kernel,
//! [`crate::conn`] serves its connections, [`crate::providers`] are the capabilities it hands the
//! service, [`crate::panic_state`] what the panic path reports.
//!
//! Service listener: every response carries `x-janus-flavor: uk`, `x-janus-node`,
//! `x-janus-trace-id` (from `traceparent` or `x-janus-trace-id`, else generated) and, when the
//! service has a store, `x-janus-state-seq` (the store's sequence number when the request
//! started). Admin listener (bearer token): `GET /health`, `GET /metrics`, `GET /state[?seq=N]`,
//! `PUT /state`, `GET /state/log?since=N[&wait_ms=M]` (the op log a twin follows), `GET /console`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use core::future::poll_fn;

use runtime_abi::node::token_matches;
use runtime_abi::{Manifest, Service, StoreBackend, StoreError, TraceId};

use crate::metrics::Metrics;
use crate::panic_state::{CURRENT, InFlight};
use crate::providers::UkStore;

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
                .is_some_and(|t| token_matches(t.trim().as_bytes(), token.as_bytes())),
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
                .is_some_and(|t| token_matches(t.trim().as_bytes(), token.as_bytes())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Timers;
    use crate::panic_state::tests::base64;
    use crate::panic_state::{set_panic_store, write_panic_state};
    use crate::providers::{UkClock, UkEntropy};
    use runtime_abi::{BoxFuture, MemStore, Update};
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
}
