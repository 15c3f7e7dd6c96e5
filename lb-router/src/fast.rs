//! The downstream fast path: how nearly every client request is served.
//!
//! The client side only: a plain HTTP/1.1 request (origin-form target, `Host`, no body or a
//! `Content-Length` one) is parsed in place with `httparse`, its head for the node written by
//! `transport::head` into the connection's reused buffer, sent by `transport::send` (the transport
//! the general path uses too), and the node's answer relayed by `relay` as one write: no `http`
//! types are built, no second task is woken, no buffer is allocated per request. It takes the same
//! decisions as the general path with the same functions (`proxy::classify_channel`,
//! `proxy::choose_node`, the same health, metrics, budget and mirror calls), and hands over whatever
//! it does not do itself:
//!
//! * a request it does not take (HTTP/1.0, chunked or `Expect` bodies, upgrades, absolute-form
//!   targets, malformed or over-limit heads) moves, bytes already read included, to the general
//!   hyper path in `server`, which answers it (or its 400/413/431) for the rest of the connection;
//! * a stable fault (5xx, `x-janus-fault`, reset, timeout, cut-off body) goes to `proxy::finish`:
//!   retry on a debug node, fault capture, the same answer the general path gives;
//! * a mirrored request is copied into the buffered types `mirror` compares.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, timeout, timeout_at};

use crate::config::Config;
use crate::ids::{Pool, TraceId};
use crate::proxy::{self, Channel, ProxyError};
use crate::relay;
use crate::router::Router;
use crate::transport::{
    self, KEEP_CAPACITY, Limits, Outgoing, READ_CHUNK, field_slots, header_map, parse_decimal,
};
use crate::upstream::{BufferedRequest, Verdict};

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
                    relay::encode_general(resp, false, false, &mut c.out).await;
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
    let limits = Limits::of(cfg);
    let outgoing = Outgoing {
        bytes: &c.fwd,
        method: &req.method,
        has_body: req.body_len > 0,
        lanes_allowed: true,
    };
    let forwarded = {
        let _in_flight = node.start_request();
        let timer = c.node_timer.as_mut();
        transport::send(&node, &limits, &outgoing, &router.metrics, started, timer).await
    };
    let answer = match forwarded {
        Ok(x) => x,
        Err(e) => {
            let breq = buffered_request(&c.buf, head_len, req, c.peer);
            let primary = proxy::account(router, node, Err(e));
            let resp = proxy::finish(router.clone(), cfg.clone(), breq, primary, started).await;
            return answer_general(c, resp, req, cfg).await;
        }
    };
    let scan = relay::relay_head(
        answer.head(),
        &node,
        answer.body(),
        req.keep_alive,
        &mut c.out,
    );
    if crate::upstream::judge_answer(scan.status, scan.fault) != Verdict::Good {
        let breq = buffered_request(&c.buf, head_len, req, c.peer);
        let bresp = answer.to_buffered();
        answer.release(&limits, &node, started);
        let primary = proxy::account(router, node, Ok(bresp));
        let resp = proxy::finish(router.clone(), cfg.clone(), breq, primary, started).await;
        return answer_general(c, resp, req, cfg).await;
    }
    proxy::record_good(&node, scan.seq);
    if node.pool == Pool::Stable && crate::mirror::sampled(cfg, req.path_str(&c.buf)) {
        let breq = buffered_request(&c.buf, head_len, req, c.peer);
        let bresp = answer.to_buffered();
        crate::mirror::mirror_sampled(router, cfg, &breq, &node, &bresp);
    }
    if !req.head_request {
        c.out.extend_from_slice(answer.body());
    }
    router.metrics.record_response(
        node.pool,
        scan.flavor,
        scan.status,
        started.elapsed().as_micros() as u64,
    );
    answer.release(&limits, &node, started);
    write_out(&mut c.stream, &c.out, cfg).await.is_ok() && req.keep_alive
}

/// Writes an answer of the general path and returns whether the connection stays open.
async fn answer_general(
    c: &mut Client,
    resp: Response<Full<Bytes>>,
    req: &Prepared,
    cfg: &Config,
) -> bool {
    relay::encode_general(resp, req.keep_alive, req.head_request, &mut c.out).await;
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

    transport::head::write_request_head(
        fwd,
        method.as_str(),
        target,
        headers.iter().map(|h| (h.name, h.value)),
        &transport::head::Added {
            trace_id: Some(trace_id.as_str()),
            client_ip: Some(peer_ip),
            extra: &[],
            content_length,
            default_host: None,
        },
    );

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
}
