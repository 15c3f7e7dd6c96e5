//! The public (downstream) request path: a request the codec delivered -> `request` span -> the
//! service (panics caught) -> response with the node headers -> metrics. Requests the codec refuses
//! are answered by [`PublicCtx::refused`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use runtime_abi::{Headers, Method, Request, Response, Service, StatusCode, TraceId};
use tracing::Dispatch;

use crate::metrics::Metrics;
use crate::providers::{NodeStore, TraceIds};

/// Header naming the build flavour.
pub const FLAVOR_HEADER: &str = "x-janus-flavor";
/// Header naming the node.
pub const NODE_HEADER: &str = "x-janus-node";
/// Header carrying the trace id.
pub const TRACE_HEADER: &str = "x-janus-trace-id";
/// Header carrying the store's sequence number when the request started.
pub const SEQ_HEADER: &str = "x-janus-state-seq";
/// Header marking a fault of the service.
pub const FAULT_HEADER: &str = "x-janus-fault";
/// This backend's flavour.
pub const FLAVOR: &str = "unix";

/// What every request of a node shares.
pub struct PublicCtx<S> {
    /// The service.
    pub service: Arc<S>,
    /// Node id.
    pub node_id: String,
    /// The store, when the manifest declares one.
    pub store: Option<Arc<NodeStore>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Trace id source.
    pub trace_ids: TraceIds,
    /// The node's tracing dispatcher (connection tasks run under it).
    pub dispatch: Dispatch,
    /// Whether that dispatcher is the process-wide default (then tasks need no switch to it).
    pub global_dispatch: bool,
    /// Largest request body (for the 413 message).
    pub max_body_bytes: usize,
    /// Largest request head (for the 431 message).
    pub max_header_bytes: usize,
    /// Set on a shadow twin: requests run at the followed state (see [`crate::twin`]).
    pub twin: Option<Arc<crate::twin::Twin>>,
}

impl<S> PublicCtx<S> {
    /// A fresh trace id.
    pub fn new_trace_id(&self) -> TraceId {
        self.trace_ids.next()
    }

    /// The store's sequence number now.
    pub fn seq(&self) -> Option<u64> {
        self.store
            .as_ref()
            .map(|s| runtime_abi::StoreBackend::seq(&**s))
    }

    /// The answer to a request the codec refused (its status is the codec's, and the connection
    /// closes after it): `{"error", "trace_id"}` with the node headers. Logged as a `request` trace
    /// with one WARN event, and counted.
    pub fn refused(&self, e: &janus_http1::Error) -> janus_http1::Response {
        let status = e.status();
        let reason = match e {
            janus_http1::Error::BodyTooLarge => format!(
                "{e}: request body exceeds the limit of {} bytes",
                self.max_body_bytes
            ),
            janus_http1::Error::HeadTooLarge => format!(
                "{e}: request head larger than {} bytes",
                self.max_header_bytes
            ),
            janus_http1::Error::TooManyHeaders => format!(
                "{e}: request head has more than {} header fields",
                crate::conn::MAX_HEADERS
            ),
            other => other.to_string(),
        };
        let trace_id = self.new_trace_id();
        let hex = trace_hex(&trace_id);
        let span = tracing::info_span!(
            "request",
            trace_id = std::str::from_utf8(&hex).unwrap_or_default(),
            method = "-",
            path = "-",
            node = self.node_id.as_str(),
            status,
        );
        tracing::warn!(parent: &span, status, reason = reason.as_str(), "request refused");
        self.metrics.record_request(status, 0);
        let own = NodeHeaders {
            node_id: &self.node_id,
            trace_id,
            seq: self.seq(),
            fault: None,
            close: true,
        };
        to_wire(backend_error(status, &reason, trace_id), &own)
    }
}

impl<S> PublicCtx<S> {
    /// A twin's answer to a mirrored request it cannot answer at the asked seq: 503 with
    /// `x-janus-mirror-skipped: lag` (the router counts the comparison as skipped, not diverged).
    fn skipped(
        &self,
        lag: &crate::twin::Lagging,
        trace_id: TraceId,
        closing: bool,
    ) -> janus_http1::Response {
        let reason = format!(
            "twin not at seq {} in time (applied {})",
            lag.wanted, lag.applied
        );
        let own = NodeHeaders {
            node_id: &self.node_id,
            trace_id,
            seq: self.seq(),
            fault: None,
            close: closing,
        };
        let mut out = to_wire(backend_error(503, &reason, trace_id), &own);
        out.headers.push(runtime_abi::node::MIRROR_SKIPPED, "lag");
        out
    }
}

/// 32 lowercase hex digits of a trace id, without allocating.
pub fn trace_hex(id: &TraceId) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(id.0) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> InFlight<'a> {
        metrics.request_started();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The service's view of the request's header fields. A value that is not UTF-8 (obs-text, which
/// RFC 9110 §5.5 allows) reaches the service with U+FFFD in place of the bad bytes, as on the uk
/// build.
fn service_headers(req: &janus_http1::Request) -> Headers {
    let mut headers = Headers::new();
    for field in req.headers.iter() {
        match std::str::from_utf8(&field.value) {
            Ok(v) => headers.append(&field.name, v),
            Err(_) => headers.append(&field.name, &String::from_utf8_lossy(&field.value)),
        }
    }
    headers
}

/// Answers one request the codec delivered (the same `janus_http1::Request` the uk build's
/// service loop gets). `closing`: the node is draining, so the answer closes the connection.
pub async fn handle<S: Service>(
    ctx: &PublicCtx<S>,
    req: janus_http1::Request,
    closing: bool,
) -> janus_http1::Response {
    let started = Instant::now();
    let _in_flight = InFlight::new(&ctx.metrics);
    let headers = service_headers(&req);
    let trace_id = TraceId::from_request_headers(&headers).unwrap_or_else(|| ctx.new_trace_id());
    // On a twin: at the mirrored seq (or the followed state), with replays held back meanwhile.
    let _twin = match &ctx.twin {
        None => None,
        Some(twin) => {
            let wanted = headers
                .get(runtime_abi::node::MIRROR_SEQ)
                .and_then(|v| v.trim().parse::<u64>().ok());
            match twin.enter(wanted).await {
                Ok(entered) => Some(entered),
                Err(lag) => return ctx.skipped(&lag, trace_id, closing),
            }
        }
    };
    let seq = ctx.seq();
    let hex = trace_hex(&trace_id);
    let span = tracing::info_span!(
        "request",
        trace_id = std::str::from_utf8(&hex).unwrap_or_default(),
        method = req.method.as_str(),
        path = req.path.as_str(),
        node = ctx.node_id.as_str(),
        status = tracing::field::Empty,
    );
    let request = Request {
        method: Method::parse(req.method.as_str()),
        path: req.path,
        query: req.query,
        headers,
        body: req.body,
        trace_id,
    };
    let (response, fault) = run_service(ctx, request, &span).await;

    let status = response.status.as_u16();
    let latency = started.elapsed();
    span.record("status", status);
    // The latency is the event's (and the trace's `duration_us`), not recorded on the span too.
    // The message as a `&str` field: the log and the recorder copy it (a format string would go
    // through `core::fmt` in each).
    tracing::info!(
        parent: &span,
        status,
        latency_us = crate::metrics::micros(latency),
        message = "request completed"
    );
    ctx.metrics
        .record_request(status, crate::metrics::micros(latency));
    let own = NodeHeaders {
        node_id: &ctx.node_id,
        trace_id,
        seq,
        fault,
        close: closing,
    };
    let out = to_wire(response, &own);
    drop(span);
    out
}

/// Runs the service under the request span, catching a panic (which becomes a 500 marked with the
/// fault kind, returned separately: only the backend sets `x-janus-fault`). The service future is
/// polled in the connection's task: no task is spawned per request.
async fn run_service<S: Service>(
    ctx: &PublicCtx<S>,
    request: Request,
    span: &tracing::Span,
) -> (Response, Option<&'static str>) {
    let trace_id = request.trace_id;
    let mut future = std::pin::pin!(ctx.service.handle(request));
    // Under a resource envelope each poll runs in the request's allocation group; an allocation
    // past the envelope becomes a panic right after the poll that made it.
    let mut account = crate::envelope::Account::new(ctx.store.as_ref().map_or(0, |s| s.bytes()));
    let outcome = std::future::poll_fn(|cx| {
        let _entered = span.enter();
        let poll = || match &mut account {
            None => future.as_mut().poll(cx),
            Some(account) => match account.poll(|| future.as_mut().poll(cx)) {
                (r, None) => r,
                (_, Some(over)) => panic!(
                    "allocation of {} bytes exceeds the resource envelope: the request holds {} \
                     bytes, the stable node's heap leaves it {} (a unikernel would exit out of \
                     memory, status 39); allocated at:\n{}",
                    over.size, over.live, over.limit, over.backtrace
                ),
            },
        };
        match std::panic::catch_unwind(AssertUnwindSafe(poll)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(response)) => Poll::Ready(Ok(response)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await;
    match outcome {
        Ok(response) => (response, None),
        Err(payload) => {
            ctx.metrics.panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string panic payload)".to_string());
            span.in_scope(|| tracing::error!(panic = message.as_str(), "handler panicked"));
            let body = serde_json::json!({
                "error": format!("service panicked: {message}"),
                "trace_id": trace_id.to_hex(),
            });
            (
                Response::json(StatusCode::INTERNAL_SERVER_ERROR, &body),
                Some("panic"),
            )
        }
    }
}

/// An answer the backend itself gives: `{"error": ..., "trace_id": ...}`.
pub fn backend_error(status: u16, reason: &str, trace_id: TraceId) -> Response {
    let status = StatusCode::new(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::json(
        status,
        &serde_json::json!({ "error": reason, "trace_id": trace_id.to_hex() }),
    )
}

/// The headers the backend owns on a public answer.
struct NodeHeaders<'a> {
    node_id: &'a str,
    trace_id: TraceId,
    seq: Option<u64>,
    fault: Option<&'static str>,
    close: bool,
}

/// Converts a service response for the codec: drops the headers the backend owns (framing,
/// `x-janus-*`) and those that cannot be sent, and adds the node headers.
fn to_wire(response: Response, own: &NodeHeaders<'_>) -> janus_http1::Response {
    let status = response.status.as_u16();
    let mut out = janus_http1::Response::new(status);
    for (name, value) in response.headers.iter() {
        if runtime_abi::node::backend_owned(name) {
            continue;
        }
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            tracing::warn!(header = name, "service set an invalid header; dropped");
            continue;
        }
        out.headers.push(name, value.as_bytes());
    }
    push_node_headers(&mut out.headers, own);
    out.body = response.body;
    out
}

fn push_node_headers(headers: &mut janus_http1::Headers, own: &NodeHeaders<'_>) {
    headers.push(FLAVOR_HEADER, FLAVOR);
    headers.push(NODE_HEADER, own.node_id);
    headers.push(TRACE_HEADER, &trace_hex(&own.trace_id)[..]);
    if let Some(seq) = own.seq {
        let mut v = Vec::with_capacity(20);
        janus_http1::push_decimal(&mut v, seq);
        headers.push(SEQ_HEADER, v);
    }
    if let Some(fault) = own.fault {
        headers.push(FAULT_HEADER, fault);
    }
    if own.close {
        headers.push("connection", "close");
    }
}
