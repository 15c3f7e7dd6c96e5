//! The public (downstream) request path: hyper request -> body limits -> `request` span -> the service
//! in its own task (so a panic is caught) -> response with the node headers -> metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use runtime_abi::{Headers, Method, Request, Response, Service, StatusCode, TraceId};
use tokio::task::JoinHandle;
use tracing::instrument::WithSubscriber;
use tracing::{Dispatch, Instrument};

use crate::conn::ConnShared;
use crate::metrics::Metrics;
use crate::providers::{NodeStore, Urandom};

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
    pub entropy: Arc<Urandom>,
    /// The node's tracing dispatcher (handler tasks run under it).
    pub dispatch: Dispatch,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl<S> PublicCtx<S> {
    /// A fresh trace id.
    pub fn new_trace_id(&self) -> TraceId {
        let mut b = [0u8; 16];
        runtime_abi::EntropySource::fill(&*self.entropy, &mut b);
        TraceId::from_random(b)
    }

    /// The store's sequence number now.
    pub fn seq(&self) -> Option<u64> {
        self.store
            .as_ref()
            .map(|s| runtime_abi::StoreBackend::seq(&**s))
    }

    /// The raw bytes of an answer the connection layer writes itself (400/408/431).
    pub fn raw_error(&self, status: u16, reason: &str) -> Vec<u8> {
        let trace_id = self.new_trace_id();
        let body =
            serde_json::json!({ "error": reason, "trace_id": trace_id.to_hex() }).to_string();
        let phrase = StatusCode::new(status).map_or("", StatusCode::reason);
        let mut out = format!(
            "HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{FLAVOR_HEADER}: {FLAVOR}\r\n{NODE_HEADER}: {}\r\n{TRACE_HEADER}: {trace_id}\r\n",
            body.len(),
            self.node_id,
        );
        if let Some(seq) = self.seq() {
            out.push_str(&format!("{SEQ_HEADER}: {seq}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        let span = tracing::info_span!(
            "request",
            trace_id = %trace_id,
            method = "-",
            path = "-",
            status,
        );
        span.in_scope(|| tracing::warn!(status, reason, "request head refused"));
        self.metrics.record_request(status, 0);
        out.into_bytes()
    }
}

/// Aborts the handler task when the request is dropped (client gone, drain timed out).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight(Arc<Metrics>);

impl InFlight {
    fn new(metrics: &Arc<Metrics>) -> InFlight {
        metrics.request_started();
        InFlight(Arc::clone(metrics))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// Answers one request.
pub async fn handle<S: Service>(
    ctx: Arc<PublicCtx<S>>,
    conn: Arc<ConnShared>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    conn.request_started();
    let _in_flight = InFlight::new(&ctx.metrics);
    let seq = ctx.seq();
    let (parts, body) = req.into_parts();
    let mut headers = Headers::new();
    let mut bad_header = None;
    for (name, value) in &parts.headers {
        match value.to_str() {
            Ok(v) => headers.append(name.as_str(), v),
            Err(_) => bad_header = Some(name.as_str().to_string()),
        }
    }
    let trace_id = TraceId::from_request_headers(&headers).unwrap_or_else(|| ctx.new_trace_id());
    let path = parts.uri.path().to_string();
    let span = tracing::info_span!(
        "request",
        trace_id = %trace_id,
        method = parts.method.as_str(),
        path = path.as_str(),
        node = ctx.node_id.as_str(),
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );

    let (response, close, fault) = match bad_header {
        Some(name) => (
            backend_error(
                400,
                &format!("header '{name}' is not visible ASCII"),
                trace_id,
            ),
            true,
            None,
        ),
        None => match read_body(&ctx, &parts.headers, body).await {
            Err((status, reason)) => (backend_error(status, &reason, trace_id), true, None),
            Ok(body) => {
                let request = Request {
                    method: Method::parse(parts.method.as_str()),
                    path,
                    query: parts.uri.query().map(str::to_string),
                    headers,
                    body,
                    trace_id,
                };
                let (response, fault) = run_service(&ctx, request, &span).await;
                (response, false, fault)
            }
        },
    };

    let status = response.status.as_u16();
    let latency = started.elapsed();
    span.record("status", status);
    span.record("latency_ms", latency.as_secs_f64() * 1e3);
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_us = latency.as_micros() as u64,
            "request completed"
        )
    });
    ctx.metrics
        .record_request(status, crate::metrics::micros(latency));
    if close {
        conn.body_left_unread();
    }
    let node_headers = NodeHeaders {
        node_id: &ctx.node_id,
        trace_id,
        seq,
        fault,
        close,
    };
    let out = to_hyper(response, &node_headers);
    drop(span);
    conn.request_finished();
    Ok(out)
}

/// Reads the whole body within the limit: 413 when it is larger, 400 when it is broken.
async fn read_body<S>(
    ctx: &PublicCtx<S>,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Vec<u8>, (u16, String)> {
    let limit = ctx.max_body_bytes;
    if let Some(len) = headers.get(http::header::CONTENT_LENGTH) {
        // hyper has already refused unparsable or conflicting lengths with 400.
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or((400, "invalid content-length".to_string()))?;
        if len > limit as u64 {
            return Err((
                413,
                format!("request body of {len} bytes exceeds the limit of {limit} bytes"),
            ));
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err((
            413,
            format!("request body exceeds the limit of {limit} bytes"),
        )),
        Err(e) => Err((400, format!("request body could not be read: {e}"))),
    }
}

/// Runs the service in its own task under the request span; a panic becomes a 500 marked with the
/// fault kind (returned separately: only the backend sets `x-janus-fault`).
async fn run_service<S: Service>(
    ctx: &Arc<PublicCtx<S>>,
    request: Request,
    span: &tracing::Span,
) -> (Response, Option<&'static str>) {
    let trace_id = request.trace_id;
    let service = Arc::clone(&ctx.service);
    let task = tokio::spawn(
        async move { service.handle(request).await }
            .instrument(span.clone())
            .with_subscriber(ctx.dispatch.clone()),
    );
    match AbortOnDrop(task).await {
        Ok(response) => (response, None),
        Err(e) if e.is_panic() => {
            ctx.metrics.panic();
            let payload = e.into_panic();
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
        Err(e) => (
            backend_error(500, &format!("handler task failed: {e}"), trace_id),
            Some("cancelled"),
        ),
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

/// Converts a service response: drops the headers the backend owns (framing, `x-janus-*`) and adds
/// the node headers.
fn to_hyper(response: Response, own: &NodeHeaders<'_>) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = http::StatusCode::from_u16(response.status.as_u16())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    for (name, value) in response.headers.iter() {
        if runtime_abi::node::backend_owned(name) {
            continue;
        }
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => tracing::warn!(header = name, "service set an invalid header; dropped"),
        }
    }
    headers.insert(FLAVOR_HEADER, HeaderValue::from_static(FLAVOR));
    if let Ok(v) = HeaderValue::from_str(own.node_id) {
        headers.insert(NODE_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&own.trace_id.to_hex()) {
        headers.insert(TRACE_HEADER, v);
    }
    if let Some(seq) = own.seq {
        headers.insert(SEQ_HEADER, HeaderValue::from(seq));
    }
    if let Some(fault) = own.fault {
        headers.insert(FAULT_HEADER, HeaderValue::from_static(fault));
    }
    if own.close {
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    out
}
