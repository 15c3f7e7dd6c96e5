//! The upstream transport: the one way a request reaches a node and its answer comes back, used by
//! both request paths (the fast path in `fast`, and the general path, retries on debug nodes,
//! mirrors and admin replays through [`forward`]).
//!
//! Layers: [`head`] writes the head a node receives; [`conn`] is each worker's pool of node
//! connections, [`lane`] its pipelined mode; [`answer`] reads a node's answer to its end. [`send`]
//! strings them together under the rules every request gets, whichever path it came by:
//!
//! * one write per request (per batch on a lane), the answer read whole within
//!   `upstream.max_response_body_bytes` (or the caller's limit) and `upstream.request_timeout_ms`;
//! * re-sent once, on a new connection, only when the node cannot have seen it: a reused
//!   connection whose write failed, or a lane that never wrote it. A failure after the request
//!   went out is not re-sent to the same node (that could hide the very crash the router is there
//!   to catch): it is a `reset` fault, judged by the caller. One exception, the stale keep-alive
//!   connection (as pingora, envoy and hyper have it): a *reused* connection (pooled, or a lane
//!   that carried earlier batches) that is reset or closed before any byte of the answer came, for
//!   a request safe to repeat (an idempotent method or an `Idempotency-Key`), is re-sent once on a
//!   new connection and is no fault (`janus_router_upstream_stale_resent_total`). The node that
//!   crashed on it is still caught: the new connection fails too (a `reset` fault, also when it
//!   cannot be made). Pooled connections to an address are never reused once the address was
//!   retired ([`retire`]: the node left or joined, stopped, or was found unhealthy);
//! * abandoned as soon as the node turns unhealthy or is reported stopped.

pub(crate) mod answer;
pub(crate) mod conn;
pub(crate) mod head;
pub(crate) mod lane;
pub mod retire;

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::{Instant, Sleep};

use self::answer::{ExchangeError, RawResponse};
use self::conn::RawConn;
use crate::config::Config;
use crate::ids::Pool;
use crate::metrics::{Counter, RouterMetrics};
use crate::pool::Node;
use crate::upstream::{BufferedRequest, BufferedResponse, HOP_BY_HOP, UpstreamError};

/// Most header fields a head may carry on the fast path (the general path applies the configured
/// `downstream.max_headers` to requests; a node's answer with more is a malformed answer).
pub(crate) const MAX_FIELDS: usize = 128;
/// Read buffers grow by at least this much before a read.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// A buffer grown larger than this (by a big body) is given back once its request is done.
pub(crate) const KEEP_CAPACITY: usize = 64 * 1024;

/// Header slots for one parse, left uninitialised (httparse fills what it uses): no 4 KiB memset per
/// parse on the hot path.
pub(crate) fn field_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS] {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}

/// The limits and timeouts of node exchanges (`[upstream]`), read once per request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Requests a lane takes per batch; 0: no lanes.
    pub(crate) depth: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// Idle connections (and idle lanes) kept per node and worker.
    pub(crate) max_idle: usize,
    pub(crate) max_body: usize,
    /// An answer at the front of a lane slower than this hands the requests behind it back.
    pub(crate) stall: Duration,
}

impl Limits {
    pub(crate) fn of(cfg: &Config) -> Self {
        let u = &cfg.upstream;
        Self {
            depth: u.pipeline_depth,
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            request_timeout: cfg.upstream_request_timeout(),
            idle_timeout: Duration::from_millis(u.pool_idle_timeout_ms),
            max_idle: u.pool_max_idle_per_node,
            max_body: u.max_response_body_bytes,
            stall: Duration::from_millis(u.pipeline_stall_ms),
        }
    }
}

/// A request ready to go: its bytes as the node gets them (head from [`head`], then the body).
pub(crate) struct Outgoing<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) method: &'a Method,
    pub(crate) has_body: bool,
    /// The caller runs on a downstream worker's runtime, where this worker's lanes live.
    pub(crate) lanes_allowed: bool,
}

impl Outgoing<'_> {
    fn head_request(&self) -> bool {
        *self.method == Method::HEAD
    }

    /// Whether the request may reach the node twice: an idempotent method or an `Idempotency-Key`
    /// field (the replay rule of `proxy::replay_refusal`). Read only after a reused connection
    /// failed, so the head is parsed again only then.
    fn repeatable(&self) -> bool {
        if crate::proxy::idempotent(self.method) {
            return true;
        }
        let mut slots = field_slots();
        let mut parsed = httparse::Request::new(&mut []);
        let parse = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut parsed,
            self.bytes,
            &mut slots,
        );
        matches!(parse, Ok(httparse::Status::Complete(_)))
            && parsed.headers.iter().any(|h| {
                h.name
                    .eq_ignore_ascii_case(crate::proxy::IDEMPOTENCY_KEY.as_str())
            })
    }

    /// Whether the request goes on a lane: pipelining is on, the node is a stable one (a unikernel
    /// serves one request at a time anyway: pipelining costs its requests no parallelism; debug
    /// nodes, instrumented and multi-threaded, keep one request per connection), and the request
    /// has no body and an idempotent method (whatever happens to the requests around it, it was safe
    /// to send). `HEAD` is left out: a node that wrongly sends a body with its answer would derail
    /// the answers behind it, where on a connection of its own it costs only that connection.
    fn pipelined(&self, limits: &Limits, node: &Node) -> bool {
        self.lanes_allowed
            && limits.depth > 0
            && node.pool == Pool::Stable
            && !self.has_body
            && matches!(*self.method, Method::GET | Method::OPTIONS)
    }
}

/// Where a node's answer was read: an exclusive connection (kept for the next request if it can
/// carry one) or a lane (the answer's bytes were taken off it).
enum Via {
    Conn(RawConn),
    Lane(Vec<u8>),
}

/// A node's whole answer, read by [`send`].
pub(crate) struct Exchange {
    via: Via,
    pub(crate) raw: RawResponse,
}

impl Exchange {
    /// The answer as the node sent it (head, then body as framed).
    fn bytes(&self) -> &[u8] {
        match &self.via {
            Via::Conn(c) => &c.buf,
            Via::Lane(b) => b,
        }
    }

    /// The answer's head.
    pub(crate) fn head(&self) -> &[u8] {
        &self.bytes()[..self.raw.head_len]
    }

    /// The answer's body (decoded if it was chunked).
    pub(crate) fn body(&self) -> &[u8] {
        self.raw.body(self.bytes())
    }

    /// The answer in the buffered form of the general path.
    pub(crate) fn to_buffered(&self) -> BufferedResponse {
        answer::buffered_response(self.bytes(), &self.raw)
    }

    /// Done with the answer: an exclusive connection that can carry another request goes back to
    /// the pool. `now` is about now (a time the caller already read).
    pub(crate) fn release(self, limits: &Limits, node: &Node, now: Instant) {
        self.release_to(limits, node.addr.0, now);
    }

    fn release_to(self, limits: &Limits, addr: SocketAddr, now: Instant) {
        if let Via::Conn(mut conn) = self.via
            && self.raw.reusable
        {
            conn.buf.clear();
            conn::checkin(limits, addr, conn, now);
        }
    }
}

/// Phase *forward*, the transport's one entry: `req` to `node` on a lane or on a pooled (or new)
/// exclusive connection, its whole answer read by `started + limits.request_timeout` (on `timer`,
/// which the caller may reuse from request to request), abandoned if the node turns unhealthy.
pub(crate) async fn send(
    node: &Node,
    limits: &Limits,
    req: &Outgoing<'_>,
    metrics: &RouterMetrics,
    started: Instant,
    mut timer: Pin<&mut Sleep>,
) -> Result<Exchange, UpstreamError> {
    let exchange_on_node = async {
        let pooled = if req.pipelined(limits, node) {
            match lane::submit(node.addr.0, *limits, req.bytes, req.head_request()).await {
                Ok(a) => {
                    metrics.pipelined_requests.inc();
                    if a.first {
                        metrics.pipelined_batches.inc();
                    }
                    return Ok(Exchange {
                        via: Via::Lane(a.buf),
                        raw: a.raw,
                    });
                }
                // The lane never wrote it, or handed it back from behind a slow answer: once more,
                // on a new exclusive connection of its own.
                Err(ExchangeError::Unsent(_)) => {
                    metrics.lane_resent.inc();
                    None
                }
                // A lane's requests are idempotent: safe to repeat.
                Err(ExchangeError::Stale(why)) => {
                    metrics.stale_resent.inc();
                    return once_more_fresh(limits, node.addr.0, node.id.as_str(), req, why).await;
                }
                Err(e) => return Err(upstream_error(node.id.as_str(), e, limits.max_body)),
            }
        } else {
            conn::checkout(limits, node.addr.0, started)
        };
        let stale_resent = Some(&metrics.stale_resent);
        exclusive(
            limits,
            node.addr.0,
            node.id.as_str(),
            pooled,
            req,
            stale_resent,
        )
        .await
    };
    timer.as_mut().reset(started + limits.request_timeout);
    tokio::select! {
        biased;
        r = exchange_on_node => r,
        () = timer => Err(UpstreamError::Timeout {
            node: node.id.to_string(),
            timeout_ms: limits.request_timeout.as_millis() as u64,
        }),
        () = node.until_unhealthy() => Err(node.abandoned()),
    }
}

/// One exchange on an exclusive connection: `pooled` if the pool had one, else a new one. The
/// retry-on-failed-write rule: a reused connection the node had closed before the request reached
/// it (the write itself failed) cannot have delivered the request, which goes out once more on a
/// new connection; so does a repeatable request on a stale reused connection (counted in
/// `stale_resent`); any other failure is the caller's to judge.
async fn exclusive(
    limits: &Limits,
    addr: SocketAddr,
    name: &str,
    pooled: Option<RawConn>,
    req: &Outgoing<'_>,
    stale_resent: Option<&Counter>,
) -> Result<Exchange, UpstreamError> {
    let head_request = req.head_request();
    let (mut conn, reused) = match pooled {
        Some(c) => (c, true),
        None => (conn::connect(limits, addr, name).await?, false),
    };
    let raw = match conn::exchange(&mut conn, req.bytes, head_request, limits.max_body).await {
        Err(ExchangeError::Unsent(_)) if reused => {
            conn = conn::connect(limits, addr, name).await?;
            conn::exchange(&mut conn, req.bytes, head_request, limits.max_body).await
        }
        Err(ExchangeError::Unanswered(why)) if reused && req.repeatable() => {
            if let Some(c) = stale_resent {
                c.inc();
            }
            return once_more_fresh(limits, addr, name, req, why).await;
        }
        r => r,
    }
    .map_err(|e| upstream_error(name, e, limits.max_body))?;
    Ok(Exchange {
        via: Via::Conn(conn),
        raw,
    })
}

/// A repeatable request once more, on a new connection, after a reused connection ended before any
/// byte of its answer (`why`). If no new connection can be made the node is gone, and the reset
/// stands.
async fn once_more_fresh(
    limits: &Limits,
    addr: SocketAddr,
    name: &str,
    req: &Outgoing<'_>,
    why: String,
) -> Result<Exchange, UpstreamError> {
    let Ok(mut conn) = conn::connect(limits, addr, name).await else {
        return Err(UpstreamError::Reset {
            node: name.to_owned(),
            reason: why,
        });
    };
    let raw = conn::exchange(&mut conn, req.bytes, req.head_request(), limits.max_body)
        .await
        .map_err(|e| upstream_error(name, e, limits.max_body))?;
    Ok(Exchange {
        via: Via::Conn(conn),
        raw,
    })
}

/// Phase *forward* for a buffered request (the general path, a retry on a debug node, a mirror, an
/// admin replay): its head written by [`head`], then [`send`] on an exclusive connection (these
/// callers also run on the admin runtime, whose tasks move between threads, while lanes belong to
/// one worker's thread). `extra` fields replace any the client sent; `max_body` bounds the answer.
pub async fn forward(
    cfg: &Config,
    metrics: &RouterMetrics,
    node: &Node,
    req: &BufferedRequest,
    extra: &[(HeaderName, HeaderValue)],
    max_body: usize,
) -> Result<BufferedResponse, UpstreamError> {
    let started = Instant::now();
    let limits = Limits {
        max_body,
        ..Limits::of(cfg)
    };
    let client_ip = req.client_ip.map(|ip| ip.to_string());
    let default_host = node.addr.0.to_string();
    let has_body = !req.body.is_empty();
    let mut bytes = Vec::with_capacity(512 + req.body.len());
    head::write_request_head(
        &mut bytes,
        req.method.as_str(),
        &req.path,
        req.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        &head::Added {
            trace_id: Some(req.trace_id.as_str()),
            client_ip: client_ip.as_deref(),
            extra,
            // Methods whose requests carry content say its length even when it is empty.
            content_length: (has_body
                || matches!(req.method, Method::POST | Method::PUT | Method::PATCH))
            .then_some(req.body.len() as u64),
            default_host: Some(&default_host),
        },
    );
    bytes.extend_from_slice(&req.body);
    let out = Outgoing {
        bytes: &bytes,
        method: &req.method,
        has_body,
        lanes_allowed: false,
    };
    let timer = std::pin::pin!(tokio::time::sleep_until(started + limits.request_timeout));
    let exchange = send(node, &limits, &out, metrics, started, timer).await?;
    let resp = exchange.to_buffered();
    exchange.release(&limits, node, Instant::now());
    Ok(resp)
}

/// `GET path` on a node's admin API (`addr`) with a bearer token: a pooled exclusive connection,
/// the same head writer, answer reader and retry-on-failed-write rule as service requests, the
/// whole exchange within `timeout`. Never abandoned when the node turns unhealthy: health checks
/// are what decide that.
pub(crate) async fn admin_get(
    limits: &Limits,
    addr: SocketAddr,
    node: &str,
    authorization: &str,
    path: &str,
    timeout: Duration,
) -> Result<BufferedResponse, UpstreamError> {
    let started = Instant::now();
    let host = addr.to_string();
    let mut bytes = Vec::with_capacity(256);
    head::write_request_head(
        &mut bytes,
        "GET",
        path,
        [("authorization", authorization.as_bytes())],
        &head::Added {
            trace_id: None,
            client_ip: None,
            extra: &[],
            content_length: None,
            default_host: Some(&host),
        },
    );
    let req = Outgoing {
        bytes: &bytes,
        method: &Method::GET,
        has_body: false,
        lanes_allowed: false,
    };
    let pooled = conn::checkout(limits, addr, started);
    let exchange = tokio::time::timeout(timeout, exclusive(limits, addr, node, pooled, &req, None))
        .await
        .map_err(|_| UpstreamError::Timeout {
            node: node.to_owned(),
            timeout_ms: timeout.as_millis() as u64,
        })??;
    let resp = exchange.to_buffered();
    exchange.release_to(limits, addr, Instant::now());
    Ok(resp)
}

fn upstream_error(node: &str, e: ExchangeError, limit: usize) -> UpstreamError {
    let node = node.to_owned();
    match e {
        ExchangeError::Connect(reason) => UpstreamError::Connect { node, reason },
        ExchangeError::Unsent(reason)
        | ExchangeError::Unanswered(reason)
        | ExchangeError::Stale(reason)
        | ExchangeError::Reset(reason) => UpstreamError::Reset { node, reason },
        ExchangeError::CutOff(reason) => UpstreamError::BodyCutOff { node, reason },
        ExchangeError::TooLarge => UpstreamError::ResponseTooLarge { node, limit },
    }
}

// --- small wire helpers --------------------------------------------------------------------------

pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A `Content-Length` value: 1 to 19 ASCII digits, nothing else.
pub(crate) fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Parsed header fields as a `HeaderMap` (fields `http` refuses are left out).
pub(crate) fn header_map(fields: &[httparse::Header<'_>]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len());
    for h in fields {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            map.append(n, v);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use janus_http1::push_decimal;

    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal(b" 42 "), Some(42));
        assert_eq!(parse_decimal(b"+1"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"99999999999999999999"), None);
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        push_decimal(&mut out, 1234);
        assert_eq!(out, b"01234");
    }

    #[test]
    fn repeatable_requests_have_an_idempotent_method_or_an_idempotency_key() {
        let out = |bytes: &'static [u8], method: &'static Method| Outgoing {
            bytes,
            method,
            has_body: false,
            lanes_allowed: false,
        };
        let get = b"GET /a HTTP/1.1\r\nhost: n\r\n\r\n";
        assert!(out(get, &Method::GET).repeatable());
        assert!(out(b"PUT /a HTTP/1.1\r\n\r\n", &Method::PUT).repeatable());
        let post = b"POST /c HTTP/1.1\r\nhost: n\r\ncontent-length: 0\r\n\r\n";
        assert!(!out(post, &Method::POST).repeatable());
        let keyed = b"POST /c HTTP/1.1\r\nIdempotency-Key: k1\r\ncontent-length: 2\r\n\r\n{}";
        assert!(out(keyed, &Method::POST).repeatable());
    }
}
