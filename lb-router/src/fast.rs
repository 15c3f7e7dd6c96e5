//! The downstream fast path: how nearly every client request is served.
//!
//! A plain HTTP/1.1 request (origin-form target, `Host`, no body or a `Content-Length` one) is parsed
//! in place with `httparse`, forwarded on one of this worker's raw keep-alive connections to the node
//! as one write, and the node's answer is relayed as one write: no `http` types are built, no second
//! task is woken, no buffer is allocated per request. It takes the same decisions as the general path
//! with the same functions (`proxy::classify_channel`, `proxy::choose_node`, the same health,
//! metrics, budget and mirror calls), and hands over whatever it does not do itself:
//!
//! * a request it does not take (HTTP/1.0, chunked or `Expect` bodies, upgrades, absolute-form
//!   targets, malformed or over-limit heads) moves, bytes already read included, to the general
//!   hyper path in `server`, which answers it (or its 400/413/431) for the rest of the connection;
//! * a stable fault (5xx, `x-janus-fault`, reset, timeout, cut-off body) goes to `proxy::finish`:
//!   retry on a debug node, fault capture, the same answer the general path gives;
//! * a mirrored request is copied into the buffered types `mirror` compares.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout, timeout_at};

use crate::config::Config;
use crate::ids::{Pool, TraceId};
use crate::metrics::Flavor;
use crate::pool::Node;
use crate::proxy::{self, Channel, ProxyError};
use crate::router::Router;
use crate::upstream::{BufferedRequest, BufferedResponse, HOP_BY_HOP, UpstreamError, Verdict};
use janus_http1::{push_decimal, push_field};

mod lane;

/// Most header fields a head may carry on the fast path (the general path applies the configured
/// `downstream.max_headers` to requests; a node's answer with more is a malformed answer).
const MAX_FIELDS: usize = 128;
/// Header slots for one parse, left uninitialised (httparse fills what it uses): no 4 KiB memset per
/// parse on the hot path.
fn field_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_FIELDS] {
    [const { MaybeUninit::uninit() }; MAX_FIELDS]
}
/// Largest response head accepted from a node.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line accepted from a node.
const MAX_CHUNK_LINE: usize = 4096;
/// Read buffers grow by at least this much before a read.
const READ_CHUNK: usize = 16 * 1024;
/// A client buffer grown larger than this (by a big body) is given back once the request is done.
const KEEP_CAPACITY: usize = 64 * 1024;

/// One client connection on the fast path.
struct Client {
    stream: TcpStream,
    peer: IpAddr,
    /// `peer` as forwarded in `x-forwarded-for`.
    peer_ip: String,
    /// Bytes read from the client and not yet consumed (a pipelined next request may follow).
    buf: Vec<u8>,
    /// The request as forwarded to the node.
    fwd: Vec<u8>,
    /// The answer being written to the client.
    out: Vec<u8>,
    /// Deadline of the request head being read. One timer per connection, moved forward per request:
    /// moving a tokio timer later costs a store, a new one a timer-wheel insert and removal.
    head_timer: Pin<Box<Sleep>>,
    /// Deadline of the node's answer (`upstream.request_timeout_ms`), likewise.
    node_timer: Pin<Box<Sleep>>,
}

/// Serves one client connection until it closes, or hands it to the general path.
pub async fn serve_connection(router: Arc<Router>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut c = Client {
        stream,
        peer: peer.ip(),
        peer_ip: peer.ip().to_string(),
        buf: Vec::with_capacity(READ_CHUNK),
        fwd: Vec::with_capacity(1024),
        out: Vec::with_capacity(1024),
        head_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        node_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
    };
    loop {
        let head_len = match read_head(&mut c, &router.snapshot().0).await {
            HeadRead::Complete(n) => n,
            HeadRead::Closed => return,
            HeadRead::TimedOut => {
                router.metrics.record_router_response(408);
                let cfg = router.config();
                let _ =
                    write_out(&mut c.stream, crate::server::REQUEST_TIMEOUT_RESPONSE, &cfg).await;
                return;
            }
            HeadRead::General => break,
        };
        // The config and nodes in force when the request arrived (not when the connection went idle).
        let (cfg, topo) = router.snapshot();
        let started = Instant::now();
        let Some(req) = prepare(&cfg, &c.buf[..head_len], &c.peer_ip, &mut c.fwd) else {
            break;
        };
        let total = head_len + req.body_len;
        if c.buf.len() < total {
            match read_body(&mut c, total, &cfg).await {
                BodyRead::Complete => {}
                BodyRead::Closed => return,
                BodyRead::TimedOut => {
                    let err = ProxyError::BodyTimeout {
                        timeout_ms: cfg.downstream.body_read_timeout_ms,
                    };
                    let resp = proxy::router_response(&router, &err, Some(&req.trace_id));
                    encode_general(resp, false, false, &mut c.out).await;
                    let _ = write_out(&mut c.stream, &c.out, &cfg).await;
                    return;
                }
            }
        }
        c.fwd.extend_from_slice(&c.buf[head_len..total]);
        router.budget.deposit();

        let keep_alive = serve_request(&router, &cfg, &topo, &mut c, &req, head_len, started).await;
        c.buf.drain(..total);
        // A big body grew a buffer: give the memory back rather than keep it per idle connection.
        if c.buf.capacity() > KEEP_CAPACITY && c.buf.len() < READ_CHUNK {
            c.buf.shrink_to(READ_CHUNK);
        }
        for v in [&mut c.fwd, &mut c.out] {
            if v.capacity() > KEEP_CAPACITY {
                *v = Vec::with_capacity(1024);
            }
        }
        if !keep_alive {
            let _ = c.stream.shutdown().await;
            return;
        }
    }
    let Client { stream, buf, .. } = c;
    crate::server::serve_general(router, stream, peer, buf).await;
}

/// Phases *pick pool* .. *respond* for one prepared request whose bytes are all in `c.buf`.
/// Returns whether the connection stays open.
async fn serve_request(
    router: &Arc<Router>,
    cfg: &Arc<Config>,
    topo: &crate::pool::Topology,
    c: &mut Client,
    req: &Prepared,
    head_len: usize,
    started: Instant,
) -> bool {
    let Some(node) = proxy::choose_node(router, cfg, topo, req.channel) else {
        let resp = proxy::router_response(router, &ProxyError::NoNode, Some(&req.trace_id));
        return answer_general(c, resp, req, cfg).await;
    };
    let forwarded = {
        let _in_flight = node.start_request();
        forward(
            cfg,
            &router.metrics,
            &node,
            &c.fwd,
            req,
            started,
            c.node_timer.as_mut(),
        )
        .await
    };
    let (via, raw) = match forwarded {
        Ok(x) => x,
        Err(e) => {
            let breq = buffered_request(&c.buf, head_len, req, c.peer);
            let primary = proxy::account(router, node, Err(e));
            let resp = proxy::finish(router.clone(), cfg.clone(), breq, primary, started).await;
            return answer_general(c, resp, req, cfg).await;
        }
    };
    let answer = via.buf();
    let scan = relay_head(
        &answer[..raw.head_len],
        &node,
        req,
        raw.body(answer),
        &mut c.out,
    );
    if crate::upstream::judge_answer(scan.status, scan.fault) != Verdict::Good {
        let breq = buffered_request(&c.buf, head_len, req, c.peer);
        let bresp = buffered_response(answer, &raw);
        via.release(cfg, &node, &raw, started);
        let primary = proxy::account(router, node, Ok(bresp));
        let resp = proxy::finish(router.clone(), cfg.clone(), breq, primary, started).await;
        return answer_general(c, resp, req, cfg).await;
    }
    node.health.record_success();
    if let Some(seq) = scan.seq {
        node.observe_seq(seq);
    }
    if node.pool == Pool::Stable && crate::mirror::sampled(cfg, req.path_str(&c.buf)) {
        let breq = buffered_request(&c.buf, head_len, req, c.peer);
        let bresp = buffered_response(answer, &raw);
        crate::mirror::mirror_sampled(router, cfg, &breq, &node, &bresp);
    }
    if !req.head_request {
        c.out.extend_from_slice(raw.body(answer));
    }
    router.metrics.record_response(
        node.pool,
        scan.flavor,
        scan.status,
        started.elapsed().as_micros() as u64,
    );
    via.release(cfg, &node, &raw, started);
    write_out(&mut c.stream, &c.out, cfg).await.is_ok() && req.keep_alive
}

/// Writes an answer of the general path and returns whether the connection stays open.
async fn answer_general(
    c: &mut Client,
    resp: Response<Full<Bytes>>,
    req: &Prepared,
    cfg: &Config,
) -> bool {
    encode_general(resp, req.keep_alive, req.head_request, &mut c.out).await;
    write_out(&mut c.stream, &c.out, cfg).await.is_ok() && req.keep_alive
}

/// Writes all of `data` unless the client makes no room for it within `downstream.write_timeout_ms`.
async fn write_out(stream: &mut TcpStream, data: &[u8], cfg: &Config) -> std::io::Result<()> {
    // Nearly always the socket takes the whole answer at once: no timer for that.
    let written = match stream.try_write(data) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let limit = Duration::from_millis(cfg.downstream.write_timeout_ms);
    match timeout(limit, stream.write_all(rest)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "downstream: client read nothing of its answer in time",
        )),
    }
}

// --- the client side -----------------------------------------------------------------------------

enum HeadRead {
    /// A complete head of this many bytes is at the start of the buffer.
    Complete(usize),
    /// The client closed, or stayed idle past the header timeout between requests: close quietly.
    Closed,
    /// A started head did not complete in time: answer 408.
    TimedOut,
    /// Over the size limit: the general path answers (431).
    General,
}

async fn read_head(c: &mut Client, cfg: &Config) -> HeadRead {
    let max = cfg.downstream.max_header_bytes;
    let mut scanned = 0;
    let mut armed = false;
    loop {
        if let Some(end) = head_end(&c.buf, scanned) {
            return if end > max {
                HeadRead::General
            } else {
                HeadRead::Complete(end)
            };
        }
        if c.buf.len() > max {
            return HeadRead::General;
        }
        scanned = c.buf.len().saturating_sub(3);
        if !armed {
            // A later deadline than the last one: tokio only moves the entry's expiry, no wheel work.
            c.head_timer
                .as_mut()
                .reset(Instant::now() + cfg.header_read_timeout());
            armed = true;
        }
        c.buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            biased;
            r = c.stream.read_buf(&mut c.buf) => r,
            () = c.head_timer.as_mut() => {
                return if c.buf.is_empty() { HeadRead::Closed } else { HeadRead::TimedOut };
            }
        };
        if matches!(read, Ok(0) | Err(_)) {
            return HeadRead::Closed;
        }
    }
}

/// The end of the first head in `buf` (after its empty line, CRLF or bare LF), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let lf = i + off;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

enum BodyRead {
    Complete,
    Closed,
    TimedOut,
}

async fn read_body(c: &mut Client, total: usize, cfg: &Config) -> BodyRead {
    let deadline = Instant::now() + cfg.body_read_timeout();
    while c.buf.len() < total {
        c.buf.reserve((total - c.buf.len()).max(READ_CHUNK));
        match timeout_at(deadline, c.stream.read_buf(&mut c.buf)).await {
            Err(_) => return BodyRead::TimedOut,
            Ok(Ok(0) | Err(_)) => return BodyRead::Closed,
            Ok(Ok(_)) => {}
        }
    }
    BodyRead::Complete
}

/// What the fast path keeps of a parsed request head.
struct Prepared {
    method: Method,
    /// The request target within the head.
    path: Range<usize>,
    body_len: usize,
    keep_alive: bool,
    head_request: bool,
    trace_id: TraceId,
    channel: Channel,
}

impl Prepared {
    fn path_str<'a>(&self, buf: &'a [u8]) -> &'a str {
        std::str::from_utf8(&buf[self.path.clone()]).unwrap_or("/")
    }
}

/// Parses a complete request head and writes the request line and header fields to send to the node
/// into `fwd`. `None`: not a request for the fast path (the general path takes the connection).
fn prepare(cfg: &Config, head: &[u8], peer_ip: &str, fwd: &mut Vec<u8>) -> Option<Prepared> {
    let mut slots = field_slots();
    let mut parsed = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        head,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let (method, target) = (parsed.method?, parsed.path?);
    // Anything else (other forms, fragments, CONNECT) goes to the general path, which refuses what
    // the nodes refuse (`proxy::check_request`).
    if parsed.version != Some(1)
        || !target.starts_with('/')
        || target.contains('#')
        || method == "CONNECT"
    {
        return None;
    }
    let headers: &[httparse::Header<'_>] = parsed.headers;
    if headers.len() > cfg.downstream.max_headers {
        return None;
    }
    let mut content_length = None;
    let mut keep_alive = true;
    let mut has_host = false;
    let mut trace = None;
    let mut traceparent = None;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_decimal(h.value)?;
            if content_length.is_some_and(|c| c != n) {
                return None;
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case("host") {
            // A second or invalid Host: the general path answers 400, as the nodes do.
            if has_host || !janus_http1::valid_host(h.value.trim_ascii()) {
                return None;
            }
            has_host = true;
        } else if name.eq_ignore_ascii_case(crate::upstream::X_TRACE_ID.as_str()) {
            trace = trace.or_else(|| std::str::from_utf8(h.value).ok().and_then(TraceId::parse));
        } else if name.eq_ignore_ascii_case("traceparent") {
            traceparent = traceparent.or_else(|| {
                std::str::from_utf8(h.value)
                    .ok()
                    .and_then(TraceId::from_traceparent)
            });
        }
    }
    let body_len = usize::try_from(content_length.unwrap_or(0)).ok()?;
    if !has_host || body_len > cfg.downstream.max_body_bytes {
        return None;
    }
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let trace_id = trace.or(traceparent).unwrap_or_else(TraceId::generate);
    let channel = proxy::classify_channel(&cfg.channels, headers);

    fwd.clear();
    fwd.extend_from_slice(method.as_str().as_bytes());
    fwd.push(b' ');
    fwd.extend_from_slice(target.as_bytes());
    fwd.extend_from_slice(b" HTTP/1.1\r\n");
    for h in headers {
        if is_hop_by_hop(h.name)
            || h.name.eq_ignore_ascii_case("content-length")
            || h.name
                .eq_ignore_ascii_case(crate::upstream::X_TRACE_ID.as_str())
        {
            continue;
        }
        push_field(fwd, h.name.as_bytes(), h.value);
    }
    push_field(fwd, b"x-janus-trace-id", trace_id.as_str().as_bytes());
    push_field(fwd, b"x-forwarded-for", peer_ip.as_bytes());
    if let Some(n) = content_length {
        fwd.extend_from_slice(b"content-length: ");
        push_decimal(fwd, n);
        fwd.extend_from_slice(b"\r\n");
    }
    fwd.extend_from_slice(b"\r\n");

    let path_start = target.as_ptr() as usize - head.as_ptr() as usize;
    Some(Prepared {
        head_request: method == Method::HEAD,
        method,
        path: path_start..path_start + target.len(),
        body_len,
        keep_alive,
        trace_id,
        channel,
    })
}

/// The request in the buffered form of the general path (for a fault, a replay or a mirror).
fn buffered_request(
    buf: &[u8],
    head_len: usize,
    req: &Prepared,
    client_ip: IpAddr,
) -> BufferedRequest {
    let mut slots = field_slots();
    let mut parsed = httparse::Request::new(&mut []);
    let _ = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        &buf[..head_len],
        &mut slots,
    );
    BufferedRequest {
        method: req.method.clone(),
        path: req.path_str(buf).to_owned(),
        headers: header_map(parsed.headers),
        body: Bytes::copy_from_slice(&buf[head_len..head_len + req.body_len]),
        trace_id: req.trace_id,
        client_ip: Some(client_ip),
    }
}

fn header_map(fields: &[httparse::Header<'_>]) -> HeaderMap {
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

// --- the node side -------------------------------------------------------------------------------

/// A keep-alive connection to a node's service listener, owned by one worker thread.
struct RawConn {
    stream: TcpStream,
    /// The answer being read (cleared before each request).
    buf: Vec<u8>,
    idle_since: std::time::Instant,
}

thread_local! {
    /// This worker's idle node connections, per node address: checkout and checkin take no lock.
    /// A short list searched linearly (a router has few nodes; no hashing per request).
    static IDLE: RefCell<Vec<(SocketAddr, Vec<RawConn>)>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to `addr` that is still open and quiet, if this worker has one. `now` is about
/// now (a time the caller already read).
fn checkout(cfg: &Config, addr: SocketAddr, now: Instant) -> Option<RawConn> {
    let idle_timeout = Duration::from_millis(cfg.upstream.pool_idle_timeout_ms);
    let now = now.into_std();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let (_, list) = idle.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some(conn) = list.pop() {
            if now.saturating_duration_since(conn.idle_since) <= idle_timeout && quiet(&conn.stream)
            {
                return Some(conn);
            }
        }
        None
    })
}

/// An idle connection has nothing to read: no readiness was signalled since its last answer was read
/// to the end. A node that closed it (or sent something unasked) makes it readable.
fn quiet(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(stream.poll_read_ready(&mut cx), Poll::Pending)
}

/// Keeps `conn` for the next request; `now` is about now (a time the caller already read).
fn checkin(cfg: &Config, addr: SocketAddr, mut conn: RawConn, now: Instant) {
    conn.idle_since = now.into_std();
    if conn.buf.capacity() > KEEP_CAPACITY {
        conn.buf = Vec::with_capacity(READ_CHUNK);
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = per_node(&mut idle, addr);
        if list.len() < cfg.upstream.pool_max_idle_per_node {
            list.push(conn);
        }
    });
}

/// The entry for `addr` in a worker's short per-node list, made if missing.
fn per_node<T>(lists: &mut Vec<(SocketAddr, Vec<T>)>, addr: SocketAddr) -> &mut Vec<T> {
    let i = lists
        .iter()
        .position(|(a, _)| *a == addr)
        .unwrap_or_else(|| {
            lists.push((addr, Vec::new()));
            lists.len() - 1
        });
    &mut lists[i].1
}

async fn connect(cfg: &Config, node: &Node) -> Result<RawConn, UpstreamError> {
    let limit = Duration::from_millis(cfg.upstream.connect_timeout_ms);
    let connect_error = |reason: String| UpstreamError::Connect {
        node: node.id.to_string(),
        reason,
    };
    let stream = timeout(limit, TcpStream::connect(node.addr.0))
        .await
        .map_err(|_| connect_error(format!("no connection within {} ms", limit.as_millis())))?
        .map_err(|e| connect_error(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(RawConn {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
        idle_since: std::time::Instant::now(),
    })
}

/// A node's answer read to its end, in its connection's buffer.
#[derive(Debug)]
struct RawResponse {
    head_len: usize,
    body: RawBody,
    /// The connection can carry another request.
    reusable: bool,
}

#[derive(Debug)]
enum RawBody {
    /// The body as sent, at this range of the buffer.
    InBuf(Range<usize>),
    /// A chunked body, decoded.
    Decoded(Vec<u8>),
}

impl RawResponse {
    fn body<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match &self.body {
            RawBody::InBuf(r) => &buf[r.clone()],
            RawBody::Decoded(v) => v,
        }
    }
}

/// How one exchange failed: `Unsent`, the request could not be written; `Unanswered`, it was
/// written and nothing at all came back.
#[derive(Debug)]
enum ExchangeError {
    /// No connection to the node could be made (lanes connect in their own task).
    Connect(String),
    Unsent(String),
    Unanswered(String),
    Reset(String),
    CutOff(String),
    TooLarge,
}

/// Where a node's answer was read: an exclusive connection (kept for the next request if it can
/// carry one) or a lane (the answer's bytes were taken off it).
enum Via {
    Conn(RawConn),
    Lane(Vec<u8>),
}

impl Via {
    fn buf(&self) -> &[u8] {
        match self {
            Via::Conn(c) => &c.buf,
            Via::Lane(b) => b,
        }
    }

    /// Done with the answer: an exclusive connection that can carry another request is kept.
    fn release(self, cfg: &Config, node: &Node, raw: &RawResponse, now: Instant) {
        if let Via::Conn(mut conn) = self
            && raw.reusable
        {
            conn.buf.clear();
            checkin(cfg, node.addr.0, conn, now);
        }
    }
}

/// Lane settings if `req` goes on a lane: pipelining is on, the node is a stable one (a unikernel
/// serves one request at a time anyway: pipelining costs its requests no parallelism; debug nodes,
/// instrumented and multi-threaded, keep one request per connection), and the request has no body
/// and an idempotent method (whatever happens to the requests around it, it was safe to send).
/// `HEAD` is left out: a node that wrongly sends a body with its answer would derail the answers
/// behind it, where on a connection of its own it costs only that connection.
fn lane_limits(cfg: &Config, node: &Node, req: &Prepared) -> Option<lane::LaneLimits> {
    let depth = cfg.upstream.pipeline_depth;
    let safe = matches!(req.method, Method::GET | Method::OPTIONS);
    (depth > 0 && node.pool == Pool::Stable && req.body_len == 0 && safe).then(|| {
        lane::LaneLimits {
            depth,
            connect_timeout: Duration::from_millis(cfg.upstream.connect_timeout_ms),
            request_timeout: cfg.upstream_request_timeout(),
            idle_timeout: Duration::from_millis(cfg.upstream.pool_idle_timeout_ms),
            max_idle: cfg.upstream.pool_max_idle_per_node,
            max_body: cfg.upstream.max_response_body_bytes,
            stall: Duration::from_millis(cfg.upstream.pipeline_stall_ms),
        }
    })
}

/// Phase *forward* on the fast path: the request on a lane or on a pooled (or new) exclusive
/// connection, the whole answer read within `upstream.request_timeout_ms`.
async fn forward(
    cfg: &Config,
    metrics: &crate::metrics::RouterMetrics,
    node: &Node,
    fwd: &[u8],
    req: &Prepared,
    started: Instant,
    mut timer: Pin<&mut Sleep>,
) -> Result<(Via, RawResponse), UpstreamError> {
    let limit = cfg.upstream_request_timeout();
    let max_body = cfg.upstream.max_response_body_bytes;
    let exchange_on_node = async {
        let pooled = if let Some(limits) = lane_limits(cfg, node, req) {
            match lane::submit(node.addr.0, limits, fwd, req.head_request).await {
                Ok(a) => {
                    metrics.pipelined_requests.inc();
                    if a.first {
                        metrics.pipelined_batches.inc();
                    }
                    return Ok((Via::Lane(a.buf), a.raw));
                }
                // The lane never wrote it, or handed it back from behind a slow answer: once more,
                // on a new exclusive connection of its own.
                Err(ExchangeError::Unsent(_)) => {
                    metrics.lane_resent.inc();
                    None
                }
                Err(e) => return Err(upstream_error(node, e, max_body)),
            }
        } else {
            checkout(cfg, node.addr.0, started)
        };
        let (mut conn, reused) = match pooled {
            Some(c) => (c, true),
            None => (connect(cfg, node).await?, false),
        };
        match exchange(&mut conn, fwd, req.head_request, max_body).await {
            Ok(r) => Ok((Via::Conn(conn), r)),
            // The node had closed this kept-alive connection before the request reached it (the
            // write itself failed): it cannot have seen the request, which goes out once more on a
            // new connection. A failure after the request went out is never re-sent to the same
            // node: that could hide the very crash the router is there to catch; it is judged as a
            // fault (and retried on a debug node if that is safe).
            Err(ExchangeError::Unsent(_)) if reused => {
                let mut conn = connect(cfg, node).await?;
                match exchange(&mut conn, fwd, req.head_request, max_body).await {
                    Ok(r) => Ok((Via::Conn(conn), r)),
                    Err(e) => Err(upstream_error(node, e, max_body)),
                }
            }
            Err(e) => Err(upstream_error(node, e, max_body)),
        }
    };
    timer.as_mut().reset(started + limit);
    tokio::select! {
        biased;
        r = exchange_on_node => r,
        () = timer => Err(UpstreamError::Timeout {
            node: node.id.to_string(),
            timeout_ms: limit.as_millis() as u64,
        }),
        () = node.until_unhealthy() => Err(node.abandoned()),
    }
}

fn upstream_error(node: &Node, e: ExchangeError, limit: usize) -> UpstreamError {
    let node = node.id.to_string();
    match e {
        ExchangeError::Connect(reason) => UpstreamError::Connect { node, reason },
        ExchangeError::Unsent(reason)
        | ExchangeError::Unanswered(reason)
        | ExchangeError::Reset(reason) => UpstreamError::Reset { node, reason },
        ExchangeError::CutOff(reason) => UpstreamError::BodyCutOff { node, reason },
        ExchangeError::TooLarge => UpstreamError::ResponseTooLarge { node, limit },
    }
}

/// How the body of an answer ends.
enum Framing {
    Empty,
    Length(usize),
    Chunked(ChunkedBody),
    UntilClose,
}

/// Writes the request, reads the answer (skipping 1xx interim answers) to its end.
async fn exchange(
    conn: &mut RawConn,
    fwd: &[u8],
    head_request: bool,
    max_body: usize,
) -> Result<RawResponse, ExchangeError> {
    conn.buf.clear();
    if let Err(e) = conn.stream.write_all(fwd).await {
        return Err(ExchangeError::Unsent(e.to_string()));
    }
    let mut reader = AnswerReader::default();
    loop {
        if let Some((mut raw, end)) = reader.step(&mut conn.buf, head_request, max_body)? {
            raw.reusable &= conn.buf.len() == end;
            return Ok(raw);
        }
        conn.buf.reserve(READ_CHUNK);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => return reader.at_close(&conn.buf),
            Ok(_) => {}
            Err(e) => return Err(reader.on_error(&conn.buf, e)),
        }
    }
}

/// Reads one answer out of a connection buffer as its bytes arrive: the head (1xx interim answers
/// skipped), then the body by its framing. Shared by the exclusive connections and the lanes.
#[derive(Default)]
struct AnswerReader {
    /// The final answer's head once parsed: its length, body framing, whether the node closes after.
    head: Option<(usize, Framing, bool)>,
}

impl AnswerReader {
    /// The answer if `buf` (which starts with it) holds all of it, with the offset where it ends.
    fn step(
        &mut self,
        buf: &mut Vec<u8>,
        head_request: bool,
        max_body: usize,
    ) -> Result<Option<(RawResponse, usize)>, ExchangeError> {
        loop {
            if self.head.is_some() {
                break;
            }
            match parse_response_head(buf, head_request, max_body)? {
                HeadParse::Partial if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(ExchangeError::Reset(format!(
                        "response head larger than {MAX_RESPONSE_HEAD} bytes"
                    )));
                }
                HeadParse::Partial => return Ok(None),
                HeadParse::Interim(n) => {
                    buf.drain(..n);
                }
                HeadParse::Complete(n, framing, close) => self.head = Some((n, framing, close)),
            }
        }
        let Some((head_len, framing, close)) = &mut self.head else {
            return Ok(None);
        };
        let (head_len, close) = (*head_len, *close);
        let done = match framing {
            Framing::Empty => Some((RawBody::InBuf(head_len..head_len), head_len)),
            Framing::Length(n) => (buf.len() >= head_len + *n)
                .then(|| (RawBody::InBuf(head_len..head_len + *n), head_len + *n)),
            Framing::Chunked(chunked) => {
                if chunked.advance(buf, max_body)? {
                    Some((
                        RawBody::Decoded(std::mem::take(&mut chunked.body)),
                        chunked.pos,
                    ))
                } else {
                    None
                }
            }
            Framing::UntilClose if buf.len() - head_len > max_body => {
                return Err(ExchangeError::TooLarge);
            }
            Framing::UntilClose => None,
        };
        Ok(done.map(|(body, end)| {
            self.head = None;
            (
                RawResponse {
                    head_len,
                    body,
                    reusable: !close,
                },
                end,
            )
        }))
    }

    /// The node closed the connection: the answer if it is close-delimited, else how it failed.
    fn at_close(&self, buf: &[u8]) -> Result<RawResponse, ExchangeError> {
        match &self.head {
            None if buf.is_empty() => Err(ExchangeError::Unanswered(
                "connection closed before any answer".into(),
            )),
            None => Err(ExchangeError::Reset(
                "connection closed in the middle of the response head".into(),
            )),
            Some((head_len, Framing::UntilClose, _)) => Ok(RawResponse {
                head_len: *head_len,
                body: RawBody::InBuf(*head_len..buf.len()),
                reusable: false,
            }),
            Some(_) => Err(ExchangeError::CutOff(
                "connection closed before the end of the body".into(),
            )),
        }
    }

    /// A read failed: how the answer failed, by how far it had come.
    fn on_error(&self, buf: &[u8], e: std::io::Error) -> ExchangeError {
        match &self.head {
            None if buf.is_empty() => ExchangeError::Unanswered(e.to_string()),
            None => ExchangeError::Reset(e.to_string()),
            Some(_) => ExchangeError::CutOff(e.to_string()),
        }
    }
}

enum HeadParse {
    Partial,
    /// A 1xx interim answer of this many bytes, to skip.
    Interim(usize),
    /// A final answer's head: its length, body framing, and whether the node closes afterwards.
    Complete(usize, Framing, bool),
}

fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    max_body: usize,
) -> Result<HeadParse, ExchangeError> {
    let mut slots = field_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(HeadParse::Partial),
        Err(e) => {
            return Err(ExchangeError::Reset(format!(
                "malformed response head: {e}"
            )));
        }
    };
    let code = parsed.code.unwrap_or(0);
    if (100..200).contains(&code) {
        if code == 101 {
            return Err(ExchangeError::Reset(
                "unexpected 101 Switching Protocols".into(),
            ));
        }
        return Ok(HeadParse::Interim(n));
    }
    let mut close = parsed.version != Some(1);
    let mut length = None;
    let mut coding = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(v) = parse_decimal(h.value) else {
                return Err(ExchangeError::Reset("invalid content-length".into()));
            };
            if length.is_some_and(|l| l != v) {
                return Err(ExchangeError::Reset("conflicting content-length".into()));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            coding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let framing = if head_request || code == 204 || code == 304 {
        Framing::Empty
    } else if let Some(chunked) = coding {
        if chunked {
            Framing::Chunked(ChunkedBody {
                pos: n,
                body: Vec::new(),
                trailers: false,
            })
        } else {
            close = true;
            Framing::UntilClose
        }
    } else if let Some(len) = length {
        let len = usize::try_from(len).map_err(|_| ExchangeError::TooLarge)?;
        if len > max_body {
            return Err(ExchangeError::TooLarge);
        }
        Framing::Length(len)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(HeadParse::Complete(n, framing, close))
}

/// Incremental decoding of a chunked body within the connection buffer.
struct ChunkedBody {
    /// Next undecoded byte in the buffer.
    pos: usize,
    body: Vec<u8>,
    trailers: bool,
}

impl ChunkedBody {
    /// Decodes what has arrived; `true` once the last chunk and the trailer section are in.
    fn advance(&mut self, buf: &[u8], max_body: usize) -> Result<bool, ExchangeError> {
        let bad = |e: janus_http1::Error| ExchangeError::CutOff(format!("bad chunked body: {e}"));
        loop {
            let rest = &buf[self.pos..];
            if self.trailers {
                let limits = janus_http1::Limits::default();
                return match janus_http1::chunked::parse_trailers(rest, &limits).map_err(bad)? {
                    Some((_, n)) => {
                        self.pos += n;
                        Ok(true)
                    }
                    None => Ok(false),
                };
            }
            let Some((size, line)) =
                janus_http1::chunked::parse_chunk_line(rest, MAX_CHUNK_LINE).map_err(bad)?
            else {
                return Ok(false);
            };
            if size == 0 {
                self.pos += line;
                self.trailers = true;
                continue;
            }
            let size = usize::try_from(size).map_err(|_| ExchangeError::TooLarge)?;
            if self.body.len().saturating_add(size) > max_body {
                return Err(ExchangeError::TooLarge);
            }
            let Some(data) = rest.get(line..line + size + 2) else {
                return Ok(false);
            };
            if !data.ends_with(b"\r\n") {
                return Err(ExchangeError::CutOff(
                    "bad chunked body: chunk not followed by CRLF".into(),
                ));
            }
            self.body.extend_from_slice(&data[..size]);
            self.pos += line + size + 2;
        }
    }
}

/// What the relay learnt from the node's answer head.
struct Scan {
    status: u16,
    fault: bool,
    flavor: Flavor,
    seq: Option<u64>,
}

/// Phase *respond* on the fast path: writes the status line and header fields for the client into
/// `out` (the node's minus hop-by-hop ones, plus who answered and the framing), and reports what
/// *judge outcome* needs. The body is appended by the caller.
fn relay_head(head: &[u8], node: &Node, req: &Prepared, body: &[u8], out: &mut Vec<u8>) -> Scan {
    let mut slots = field_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let _ = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        head,
        &mut slots,
    );
    let status = parsed.code.unwrap_or(502);
    let mut scan = Scan {
        status,
        fault: false,
        flavor: Flavor::Unknown,
        seq: None,
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(parsed.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut has_node, mut has_date) = (false, false);
    let mut node_length = None;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            node_length = Some(h.value);
            continue;
        }
        if is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-janus-fault") {
            scan.fault = true;
        } else if name.eq_ignore_ascii_case("x-janus-flavor") {
            scan.flavor = Flavor::parse(std::str::from_utf8(h.value).ok());
        } else if name.eq_ignore_ascii_case("x-janus-state-seq") {
            scan.seq = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        } else if name.eq_ignore_ascii_case("x-janus-node") {
            has_node = true;
        } else if name.eq_ignore_ascii_case("date") {
            has_date = true;
        }
        push_field(out, name.as_bytes(), h.value);
    }
    // An empty body with a length is a HEAD (or 304) answer: keep the node's length.
    match node_length {
        _ if status == 204 => {}
        Some(v) if body.is_empty() => push_field(out, b"content-length", v),
        None if status == 304 => {}
        _ => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !has_node {
        push_field(out, b"x-janus-node", node.id.as_str().as_bytes());
    }
    push_field(out, b"x-janus-pool", node.pool.as_str().as_bytes());
    finish_head(out, has_date, req.keep_alive);
    scan
}

/// The node's answer in the buffered form of the general path.
fn buffered_response(buf: &[u8], raw: &RawResponse) -> BufferedResponse {
    let mut slots = field_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let _ = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        &buf[..raw.head_len],
        &mut slots,
    );
    BufferedResponse {
        status: parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY),
        headers: header_map(parsed.headers),
        body: Bytes::copy_from_slice(raw.body(buf)),
    }
}

/// Encodes an answer of the general path (a fault's answer, a router error) for the client.
async fn encode_general(
    resp: Response<Full<Bytes>>,
    keep_alive: bool,
    head_request: bool,
    out: &mut Vec<u8>,
) {
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(never) => match never {},
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(parts.status.as_u16()));
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name.as_str()) {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        && parts.status != StatusCode::NO_CONTENT
    {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    finish_head(
        out,
        parts.headers.contains_key(http::header::DATE),
        keep_alive,
    );
    if !head_request {
        out.extend_from_slice(&body);
    }
}

/// `date` (if the node sent none), `connection: close` (if the client asked for it) and the empty line.
fn finish_head(out: &mut Vec<u8>, has_date: bool, keep_alive: bool) {
    if !has_date {
        DATE.with(|d| {
            let mut d = d.borrow_mut();
            let now = std::time::SystemTime::now();
            let secs = now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if d.0 != secs {
                *d = (secs, httpdate::fmt_http_date(now));
            }
            push_field(out, b"date", d.1.as_bytes());
        });
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` value, formatted once a second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

// --- small helpers -------------------------------------------------------------------------------

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A `Content-Length` value: 1 to 19 ASCII digits, nothing else.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_finds_crlf_and_bare_lf_heads() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
    }

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

    fn cfg() -> Config {
        Config::default()
    }

    #[test]
    fn prepare_rewrites_the_head_for_the_node() {
        let head = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nX-Janus-Trace-Id: 0123456789abcdef0123456789abcdef\r\nAccept: */*\r\n\r\n";
        let mut fwd = Vec::new();
        let p = prepare(&cfg(), head, "10.0.0.1", &mut fwd).expect("fast path");
        let fwd = String::from_utf8(fwd).expect("utf8");
        assert!(
            fwd.starts_with("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n"),
            "{fwd}"
        );
        assert!(!fwd.to_ascii_lowercase().contains("connection"), "{fwd}");
        assert!(fwd.contains("x-janus-trace-id: 0123456789abcdef0123456789abcdef\r\n"));
        assert_eq!(
            fwd.matches("x-janus-trace-id").count() + fwd.matches("X-Janus-Trace-Id").count(),
            1
        );
        assert!(fwd.contains("x-forwarded-for: 10.0.0.1\r\n") && fwd.ends_with("\r\n\r\n"));
        assert!(p.keep_alive && !p.head_request && p.body_len == 0);
        assert_eq!(p.path_str(head), "/a?b=1");
    }

    #[test]
    fn prepare_leaves_unusual_requests_to_the_general_path() {
        let general = |head: &[u8]| prepare(&cfg(), head, "1.2.3.4", &mut Vec::new()).is_none();
        assert!(general(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"));
        assert!(general(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(general(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(general(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(general(b"GET / HTTP/1.1\r\n\r\n"), "no Host");
        assert!(general(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        ));
        assert!(general(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n"
        ));
        assert!(general(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        ));
        assert!(general(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n"));
        let p = prepare(
            &cfg(),
            b"POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
            "1.2.3.4",
            &mut Vec::new(),
        )
        .expect("fast");
        assert!(!p.keep_alive && p.method == Method::POST && p.body_len == 3);
    }

    #[test]
    fn chunked_answers_are_decoded_incrementally() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n";
        let HeadParse::Complete(n, Framing::Chunked(mut c), close) =
            parse_response_head(wire, false, 1024).expect("parses")
        else {
            panic!("chunked framing expected");
        };
        assert!(!close);
        assert_eq!(c.pos, n);
        for cut in n..wire.len() {
            let mut part = ChunkedBody {
                pos: n,
                body: Vec::new(),
                trailers: false,
            };
            assert!(
                !part.advance(&wire[..cut], 1024).expect("valid so far"),
                "done at {cut}"
            );
        }
        assert!(c.advance(wire, 1024).expect("valid"));
        assert_eq!(c.body, b"hello world");
        assert_eq!(c.pos, wire.len());
        let mut small = ChunkedBody {
            pos: n,
            body: Vec::new(),
            trailers: false,
        };
        assert!(matches!(
            small.advance(wire, 8),
            Err(ExchangeError::TooLarge)
        ));
    }

    #[test]
    fn response_framing() {
        let frame = |wire: &[u8], head: bool| match parse_response_head(wire, head, 100) {
            Ok(HeadParse::Complete(_, f, close)) => (
                match f {
                    Framing::Empty => "empty".to_owned(),
                    Framing::Length(n) => format!("len {n}"),
                    Framing::Chunked(_) => "chunked".into(),
                    Framing::UntilClose => "close".into(),
                },
                close,
            ),
            Ok(HeadParse::Interim(_)) => ("interim".into(), false),
            Ok(HeadParse::Partial) => ("partial".into(), false),
            Err(ExchangeError::TooLarge) => ("too large".into(), true),
            Err(_) => ("error".into(), true),
        };
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            ("len 5".into(), false)
        );
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            ("empty".into(), false)
        );
        assert_eq!(
            frame(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            ("empty".into(), false)
        );
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\n\r\n", false),
            ("close".into(), true)
        );
        assert_eq!(
            frame(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            ("len 1".into(), true)
        );
        assert_eq!(
            frame(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            ("len 1".into(), true)
        );
        assert_eq!(frame(b"HTTP/1.1 100 Continue\r\n\r\n", false).0, "interim");
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", false).0,
            "too large"
        );
        assert_eq!(
            frame(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .0,
            "error"
        );
        assert_eq!(frame(b"HTTP/1.1 200 OK\r\nContent-Len", false).0, "partial");
    }
}
