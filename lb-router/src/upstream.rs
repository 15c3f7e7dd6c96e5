//! The upstream side: pooled keep-alive HTTP/1.1 connections to nodes, the *forward* phase, the
//! *judge outcome* phase, and authenticated calls to nodes' admin APIs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::UpstreamConfig;
use crate::ids::TraceId;
use crate::pool::Node;

/// Headers that describe one hop and are never forwarded (RFC 9110 section 7.6.1).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub const X_TRACE_ID: HeaderName = HeaderName::from_static("x-janus-trace-id");
pub const X_FAULT: HeaderName = HeaderName::from_static("x-janus-fault");
pub const X_FLAVOR: HeaderName = HeaderName::from_static("x-janus-flavor");
pub const X_NODE: HeaderName = HeaderName::from_static("x-janus-node");
pub const X_STATE_SEQ: HeaderName = HeaderName::from_static("x-janus-state-seq");
pub const X_MIRROR: HeaderName = HeaderName::from_static("x-janus-mirror");
/// On a mirror to a twin: the stable answer's seq (`runtime_abi::node::MIRROR_SEQ`).
pub const X_MIRROR_SEQ: HeaderName = HeaderName::from_static("x-janus-mirror-seq");
/// On a twin's answer: it could not answer at the asked seq.
pub const X_MIRROR_SKIPPED: HeaderName = HeaderName::from_static("x-janus-mirror-skipped");

/// A client request, fully read and kept so it can be replayed.
#[derive(Clone, Debug)]
pub struct BufferedRequest {
    pub method: Method,
    /// Path and query, e.g. `/kv/a?x=1`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trace_id: TraceId,
    pub client_ip: Option<std::net::IpAddr>,
}

/// A node's answer, fully read.
#[derive(Clone, Debug)]
pub struct BufferedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl BufferedResponse {
    pub fn state_seq(&self) -> Option<u64> {
        self.headers
            .get(X_STATE_SEQ)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse().ok())
    }
}

/// Why a node did not answer. Every variant is an *upstream* failure; whether a retry is safe depends
/// on the request (see `proxy::replay_refusal`), not on the failure.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream node {node}: connect failed: {reason}")]
    Connect { node: String, reason: String },
    #[error("upstream node {node}: connection reset or closed before the response head: {reason}")]
    Reset { node: String, reason: String },
    #[error("upstream node {node}: response body cut off: {reason}")]
    BodyCutOff { node: String, reason: String },
    #[error("upstream node {node}: no complete response within {timeout_ms} ms")]
    Timeout { node: String, timeout_ms: u64 },
    #[error("upstream node {node}: response body larger than {limit} bytes")]
    ResponseTooLarge { node: String, limit: usize },
    #[error(
        "upstream node {node}: no answer yet and the node failed its active health checks (request abandoned)"
    )]
    Abandoned { node: String },
    #[error(
        "upstream node {node}: no answer yet and the engine reported the node stopped (request abandoned)"
    )]
    Stopped { node: String },
    #[error("internal: could not build the upstream request: {0}")]
    BadRequest(String),
}

/// The judged result of one attempt on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Good,
    Fault(FaultKind),
}

/// How a node failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    ConnectError,
    Reset,
    BodyCutOff,
    Timeout,
    ResponseTooLarge,
    /// Abandoned in flight: the node failed its active health checks (a wedged node) before answering.
    Abandoned,
    /// Abandoned in flight: the engine (libvirt discovery) reported the node stopped before it
    /// answered, e.g. a unikernel that panicked and exited (its TAP gives no reset to wait for).
    Stopped,
    /// The node caught a panic and said so (`x-janus-fault: panic`).
    Panic,
    /// A 5xx without a fault header.
    ServerError(u16),
}

impl FaultKind {
    /// The outcome string stored in the fault store and shown in logs.
    pub fn outcome(&self) -> String {
        match self {
            FaultKind::ConnectError => "connect_error".into(),
            FaultKind::Reset => "reset".into(),
            FaultKind::BodyCutOff => "body_cut_off".into(),
            FaultKind::Timeout => "timeout".into(),
            FaultKind::ResponseTooLarge => "response_too_large".into(),
            FaultKind::Abandoned => "abandoned_unhealthy".into(),
            FaultKind::Stopped => "node_stopped".into(),
            FaultKind::Panic => "panic".into(),
            FaultKind::ServerError(s) => format!("status_{s}"),
        }
    }

    /// A failure that says the node cannot be reached or does not answer at all: one is enough to
    /// eject it (within the outlier cap), rather than a run of `health.consecutive_failures`.
    pub fn ejects_at_once(&self) -> bool {
        matches!(
            self,
            FaultKind::ConnectError
                | FaultKind::Timeout
                | FaultKind::Abandoned
                | FaultKind::Stopped
        )
    }

    /// Did the node fail to produce any answer the client could be given?
    pub fn no_answer(&self) -> bool {
        !matches!(self, FaultKind::Panic | FaultKind::ServerError(_))
    }
}

/// Phase *judge outcome* for an answer: its status and whether it carries `x-janus-fault`. The one
/// rule both request paths apply.
pub fn judge_answer(status: u16, fault_header: bool) -> Verdict {
    if fault_header {
        Verdict::Fault(FaultKind::Panic)
    } else if (500..600).contains(&status) {
        Verdict::Fault(FaultKind::ServerError(status))
    } else {
        Verdict::Good
    }
}

/// Phase *judge outcome*: is this attempt a fault?
pub fn judge(result: &Result<BufferedResponse, UpstreamError>) -> Verdict {
    match result {
        Ok(resp) => judge_answer(resp.status.as_u16(), resp.headers.contains_key(X_FAULT)),
        Err(UpstreamError::Connect { .. }) => Verdict::Fault(FaultKind::ConnectError),
        Err(UpstreamError::Reset { .. }) => Verdict::Fault(FaultKind::Reset),
        Err(UpstreamError::BodyCutOff { .. }) => Verdict::Fault(FaultKind::BodyCutOff),
        Err(UpstreamError::Timeout { .. }) => Verdict::Fault(FaultKind::Timeout),
        Err(UpstreamError::ResponseTooLarge { .. }) => Verdict::Fault(FaultKind::ResponseTooLarge),
        Err(UpstreamError::Abandoned { .. }) => Verdict::Fault(FaultKind::Abandoned),
        Err(UpstreamError::Stopped { .. }) => Verdict::Fault(FaultKind::Stopped),
        Err(UpstreamError::BadRequest(_)) => Verdict::Fault(FaultKind::ConnectError),
    }
}

/// Pooled clients to nodes' service and admin listeners.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// For admin calls (low volume).
    client: Client<HttpConnector, Full<Bytes>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// One idle keep-alive connection to a node's service listener.
struct IdleConn {
    sender: SendRequest<Full<Bytes>>,
    since: std::time::Instant,
}

thread_local! {
    /// This thread's idle connections, per node address. Each downstream worker thread drives its own
    /// connections (their tasks run on its runtime), so checkout and checkin are plain, lock-free.
    static IDLE: std::cell::RefCell<HashMap<SocketAddr, Vec<IdleConn>>> = std::cell::RefCell::new(HashMap::new());
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            .pool_max_idle_per_host(cfg.pool_max_idle_per_node)
            .build(connector);
        Self {
            client,
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.pool_idle_timeout_ms),
            max_idle: cfg.pool_max_idle_per_node,
        }
    }

    /// A ready connection to `addr`: an idle one of this thread if one is alive, else a new one.
    /// Returns whether it was reused.
    async fn checkout(
        &self,
        node: &str,
        addr: SocketAddr,
    ) -> Result<(SendRequest<Full<Bytes>>, bool), UpstreamError> {
        loop {
            let idle = IDLE.with(|p| p.borrow_mut().get_mut(&addr).and_then(Vec::pop));
            let Some(mut conn) = idle else { break };
            if conn.sender.is_closed() || conn.since.elapsed() > self.idle_timeout {
                continue;
            }
            if conn.sender.ready().await.is_ok() {
                return Ok((conn.sender, true));
            }
        }
        self.checkout_fresh(node, addr).await
    }

    /// A new connection, bypassing the idle set.
    async fn checkout_fresh(
        &self,
        node: &str,
        addr: SocketAddr,
    ) -> Result<(SendRequest<Full<Bytes>>, bool), UpstreamError> {
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| UpstreamError::Connect {
                    node: node.to_owned(),
                    reason: format!(
                        "no connection within {} ms",
                        self.connect_timeout.as_millis()
                    ),
                })?
                .map_err(|e| UpstreamError::Connect {
                    node: node.to_owned(),
                    reason: e.to_string(),
                })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect {
                node: node.to_owned(),
                reason: error_chain(&e),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, false))
    }

    /// Gives a connection back to this thread's idle set, if it can carry another request.
    fn checkin(&self, addr: SocketAddr, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        IDLE.with(|p| {
            let mut p = p.borrow_mut();
            let list = p.entry(addr).or_default();
            if list.len() < self.max_idle {
                list.push(IdleConn {
                    sender,
                    since: std::time::Instant::now(),
                });
            }
        });
    }

    /// Phase *forward*: sends the buffered request to `node` and reads the whole answer.
    pub async fn forward(
        &self,
        node: &Node,
        req: &BufferedRequest,
        extra: &[(HeaderName, HeaderValue)],
        timeout: Duration,
        max_body: usize,
    ) -> Result<BufferedResponse, UpstreamError> {
        let node_name = node.id.to_string();
        let mut uri = String::with_capacity(node.base_uri.len() + req.path.len());
        uri.push_str(&node.base_uri);
        uri.push_str(&req.path);
        let mut builder = Request::builder().method(req.method.clone()).uri(uri);
        if let Some(h) = builder.headers_mut() {
            for (name, value) in &req.headers {
                if !HOP_BY_HOP.contains(&name.as_str()) && name != header::CONTENT_LENGTH {
                    h.append(name.clone(), value.clone());
                }
            }
            if let Ok(v) = HeaderValue::from_str(req.trace_id.as_str()) {
                h.insert(X_TRACE_ID, v);
            }
            if let Some(ip) = req.client_ip
                && let Ok(v) = HeaderValue::from_str(&ip.to_string())
            {
                h.append(HeaderName::from_static("x-forwarded-for"), v);
            }
            for (k, v) in extra {
                h.insert(k.clone(), v.clone());
            }
        }
        let request = builder
            .body(Full::new(req.body.clone()))
            .map_err(|e| UpstreamError::BadRequest(e.to_string()))?;
        let addr = node.addr.0;
        let exchange = async {
            let (mut sender, reused) = self.checkout(&node_name, addr).await?;
            let resp = match sender.try_send_request(request).await {
                Ok(resp) => resp,
                Err(mut e) => {
                    // A reused connection the node had already closed: the request was not sent, so
                    // it goes out once more on a fresh connection.
                    match e.take_message() {
                        Some(req) if reused => {
                            let (mut fresh, _) = self.checkout_fresh(&node_name, addr).await?;
                            let r = fresh.send_request(req).await.map_err(|e| {
                                UpstreamError::Reset {
                                    node: node_name.clone(),
                                    reason: error_chain(&e),
                                }
                            })?;
                            sender = fresh;
                            r
                        }
                        _ => {
                            return Err(UpstreamError::Reset {
                                node: node_name.clone(),
                                reason: error_chain(e.error()),
                            });
                        }
                    }
                }
            };
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    UpstreamError::ResponseTooLarge {
                        node: node_name.clone(),
                        limit: max_body,
                    }
                } else {
                    UpstreamError::BodyCutOff {
                        node: node_name.clone(),
                        reason: e.to_string(),
                    }
                }
            })?;
            self.checkin(addr, sender);
            Ok(BufferedResponse {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, exchange) => r.unwrap_or_else(|_| Err(UpstreamError::Timeout {
                node: node.id.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            })),
            () = node.until_unhealthy() => Err(node.abandoned()),
        }
    }

    /// `GET` on a node's admin API with its bearer token.
    pub async fn admin_get(
        &self,
        node: &Node,
        default_token: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<BufferedResponse, String> {
        let token = node.admin_token.as_deref().unwrap_or(default_token);
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{}{}", node.admin_addr, path))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("internal: bad admin request: {e}"))?;
        let fut = async {
            let resp =
                self.client.request(req).await.map_err(|e| {
                    format!("upstream admin of node {}: {}", node.id, error_chain(&e))
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, 64 * 1024 * 1024)
                .collect()
                .await
                .map_err(|e| format!("upstream admin of node {}: body: {e}", node.id))?;
            Ok(BufferedResponse {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| {
            format!(
                "upstream admin of node {}: timeout after {} ms",
                node.id,
                timeout.as_millis()
            )
        })?
    }
}

thread_local! {
    static LOCAL: std::cell::RefCell<Option<Upstream>> = const { std::cell::RefCell::new(None) };
}

/// The calling thread's own upstream pool. Each downstream worker thread runs its own runtime, so its
/// connections to nodes are driven on the same thread that uses them (no cross-thread wake-ups).
pub fn local(cfg: &UpstreamConfig) -> Upstream {
    LOCAL.with(|l| {
        l.borrow_mut()
            .get_or_insert_with(|| Upstream::new(cfg))
            .clone()
    })
}

/// The error and its sources, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, fault: bool) -> Result<BufferedResponse, UpstreamError> {
        let mut headers = HeaderMap::new();
        if fault {
            headers.insert(X_FAULT, HeaderValue::from_static("panic"));
        }
        Ok(BufferedResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers,
            body: Bytes::new(),
        })
    }

    #[test]
    fn judge_classifies() {
        assert_eq!(judge(&resp(200, false)), Verdict::Good);
        assert_eq!(judge(&resp(404, false)), Verdict::Good);
        assert_eq!(
            judge(&resp(503, false)),
            Verdict::Fault(FaultKind::ServerError(503))
        );
        assert_eq!(judge(&resp(500, true)), Verdict::Fault(FaultKind::Panic));
        let reset = Err(UpstreamError::Reset {
            node: "a".into(),
            reason: "eof".into(),
        });
        assert_eq!(judge(&reset), Verdict::Fault(FaultKind::Reset));
        assert!(FaultKind::Reset.no_answer());
        assert!(!FaultKind::Panic.no_answer());
    }
}
