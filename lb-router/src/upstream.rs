//! The upstream vocabulary: the buffered request and answer types both request paths share, how a
//! node can fail ([`UpstreamError`], [`FaultKind`]), the *judge outcome* rule, and authenticated
//! calls to nodes' admin APIs. Requests reach nodes' service listeners through [`crate::transport`].

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::{Method, StatusCode};

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

/// Calls to nodes' admin APIs (health checks, state and trace fetches: low volume), over the same
/// transport as service requests (the worker's pool, keyed by the admin listener's address).
#[derive(Debug, Clone)]
pub struct Upstream {
    limits: crate::transport::Limits,
}

/// Largest admin answer read (a state snapshot or a trace).
const MAX_ADMIN_BODY: usize = 64 * 1024 * 1024;

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        Self {
            limits: crate::transport::Limits {
                depth: 0,
                connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
                request_timeout: Duration::from_millis(cfg.request_timeout_ms),
                idle_timeout: Duration::from_millis(cfg.pool_idle_timeout_ms),
                max_idle: cfg.pool_max_idle_per_node,
                max_body: MAX_ADMIN_BODY,
                stall: Duration::ZERO,
            },
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
        let authorization = format!("Bearer {token}");
        crate::transport::admin_get(
            &self.limits,
            node.admin_addr.0,
            node.id.as_str(),
            &authorization,
            path,
            timeout,
        )
        .await
        .map_err(|e| format!("admin API: {e}"))
    }
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
    use http::header::HeaderValue;

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
