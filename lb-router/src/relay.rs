//! Phase *respond*: the one writer of the answer head every client gets, whichever path served it.
//! One rule ([`write_head`]): hop-by-hop fields and the framing are not passed on, the router sets
//! `content-length` itself (keeping a node's own for an empty `HEAD`/304 answer), adds who answered
//! (`x-janus-node` unless the node said, `x-janus-pool`, and for a retried or recorded fault
//! `x-janus-retried-from`, `x-janus-fault-id`), a `date` if there is none and `connection: close`
//! when the client asked for it. It writes to a [`HeadOut`]:
//!
//! * bytes, for a client of the fast path: a node's answer relayed as it was read ([`relay_head`]),
//!   or an answer the general path's phases made ([`encode_general`]);
//! * the fields of a `Response`, for a buffered answer ([`relay_buffered`], called by
//!   `proxy::respond`): what a connection served by hyper gets (hyper only frames it: status line,
//!   these fields, the body), and what the fast path encodes after a retry or a fault.

use std::cell::RefCell;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use janus_http1::{push_decimal, push_field};

use crate::ids::NodeId;
use crate::metrics::Flavor;
use crate::pool::Node;
use crate::proxy::{X_FAULT_ID, X_POOL, X_RETRIED_FROM};
use crate::transport::{field_slots, is_hop_by_hop};
use crate::upstream::BufferedResponse;

/// Where [`write_head`] writes an answer head.
pub(crate) trait HeadOut {
    /// Starts the head (forgetting any earlier one).
    fn status(&mut self, status: u16, reason: &str);
    fn field(&mut self, name: &[u8], value: &[u8]);
    /// After the last field.
    fn end(&mut self) {}
}

/// The head as bytes on the wire (fast-path clients).
impl HeadOut for Vec<u8> {
    fn status(&mut self, status: u16, reason: &str) {
        self.clear();
        self.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(self, u64::from(status));
        self.push(b' ');
        self.extend_from_slice(reason.as_bytes());
        self.extend_from_slice(b"\r\n");
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        push_field(self, name, value);
    }

    fn end(&mut self) {
        self.extend_from_slice(b"\r\n");
    }
}

/// The head as a `Response`'s status and fields (hyper frames it).
struct Fields {
    status: StatusCode,
    headers: HeaderMap,
}

impl HeadOut for Fields {
    fn status(&mut self, status: u16, _reason: &str) {
        self.status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        self.headers.clear();
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        // The fields come from a `HeaderMap` or are the router's own: always valid.
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            self.headers.append(n, v);
        }
    }
}

/// Who answered, for [`write_head`] to say.
pub(crate) struct Answerer<'a> {
    pub(crate) node: &'a Node,
    /// The stable node whose fault this debug node's answer replaces.
    pub(crate) retried_from: Option<&'a NodeId>,
    /// The fault row recorded for this request.
    pub(crate) fault_id: Option<i64>,
}

/// What the relay learnt from the node's answer head, for *judge outcome*.
pub(crate) struct Scan {
    pub(crate) status: u16,
    pub(crate) fault: bool,
    pub(crate) flavor: Flavor,
    pub(crate) seq: Option<u64>,
}

/// A node's answer head, rewritten for the client into `out`; the body is appended by the caller.
pub(crate) fn relay_head(
    head: &[u8],
    node: &Node,
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Scan {
    let mut slots = field_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let _ = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        head,
        &mut slots,
    );
    let status = parsed.code.unwrap_or(502);
    let fields = parsed.headers.iter().map(|h| (h.name, h.value));
    let reason = parsed.reason.unwrap_or_default();
    let by = Answerer {
        node,
        retried_from: None,
        fault_id: None,
    };
    write_head(
        out,
        status,
        reason,
        fields,
        body.len(),
        Some(&by),
        keep_alive,
    )
}

/// A node's buffered answer as the `Response` a client gets (`proxy::respond`): the same head as
/// [`relay_head`] writes, as fields.
pub(crate) fn relay_buffered(
    resp: BufferedResponse,
    by: &Answerer<'_>,
) -> (Response<Full<Bytes>>, Scan) {
    let mut head = Fields {
        status: resp.status,
        headers: HeaderMap::with_capacity(resp.headers.len() + 4),
    };
    let fields = resp.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()));
    let reason = resp.status.canonical_reason().unwrap_or("");
    let scan = write_head(
        &mut head,
        resp.status.as_u16(),
        reason,
        fields,
        resp.body.len(),
        Some(by),
        true,
    );
    let mut out = Response::new(Full::new(resp.body));
    *out.status_mut() = head.status;
    *out.headers_mut() = head.headers;
    (out, scan)
}

/// Encodes an answer of the general path's phases for a client of the fast path.
pub(crate) async fn encode_general(
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
    let fields = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()));
    let reason = parts.status.canonical_reason().unwrap_or("");
    let status = parts.status.as_u16();
    write_head(out, status, reason, fields, body.len(), None, keep_alive);
    if !head_request {
        out.extend_from_slice(&body);
    }
}

/// The status line and fields of an answer of `body_len` bytes, ending with the empty line; `by`:
/// who answered, if the fields do not say yet (`None`: an answer whose head was written by this
/// function already, or made by the router).
fn write_head<'f>(
    out: &mut impl HeadOut,
    status: u16,
    reason: &str,
    fields: impl Iterator<Item = (&'f str, &'f [u8])>,
    body_len: usize,
    by: Option<&Answerer<'_>>,
    keep_alive: bool,
) -> Scan {
    let mut scan = Scan {
        status,
        fault: false,
        flavor: Flavor::Unknown,
        seq: None,
    };
    out.status(status, reason);
    let (mut has_node, mut has_date) = (false, false);
    let mut node_length = None;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("content-length") {
            node_length = Some(value);
            continue;
        }
        if is_hop_by_hop(name) || by.is_some() && routers_own(name) {
            continue;
        }
        if name.eq_ignore_ascii_case("x-janus-fault") {
            scan.fault = true;
        } else if name.eq_ignore_ascii_case("x-janus-flavor") {
            scan.flavor = Flavor::parse(std::str::from_utf8(value).ok());
        } else if name.eq_ignore_ascii_case("x-janus-state-seq") {
            scan.seq = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        } else if name.eq_ignore_ascii_case("x-janus-node") {
            has_node = true;
        } else if name.eq_ignore_ascii_case("date") {
            has_date = true;
        }
        out.field(name.as_bytes(), value);
    }
    // An empty body with a length is a HEAD (or 304) answer: keep the node's length.
    match node_length {
        _ if status == 204 => {}
        Some(v) if body_len == 0 => out.field(b"content-length", v),
        None if status == 304 => {}
        _ => out.field(b"content-length", decimal(body_len as u64, &mut [0; 20])),
    }
    if let Some(by) = by {
        if !has_node {
            out.field(b"x-janus-node", by.node.id.as_str().as_bytes());
        }
        out.field(X_POOL.as_str().as_bytes(), by.node.pool.as_str().as_bytes());
        if let Some(from) = by.retried_from {
            out.field(X_RETRIED_FROM.as_str().as_bytes(), from.as_str().as_bytes());
        }
        if let Some(id) = by.fault_id {
            out.field(X_FAULT_ID.as_str().as_bytes(), id.to_string().as_bytes());
        }
    }
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
            out.field(b"date", d.1.as_bytes());
        });
    }
    if !keep_alive {
        out.field(b"connection", b"close");
    }
    out.end();
    scan
}

/// `n` in decimal digits, in `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Fields only the router says of an answer it relays: a node's own are not passed on.
fn routers_own(name: &str) -> bool {
    [X_POOL, X_RETRIED_FROM, X_FAULT_ID]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f.as_str()))
}

thread_local! {
    /// The `date` value, formatted once a second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::ids::{AdminAddr, Pool, UpstreamAddr};

    fn node() -> Node {
        Node::new(&NodeConfig {
            id: NodeId::new("debug-1"),
            pool: Pool::Debug,
            addr: UpstreamAddr("127.0.0.1:1".parse().expect("addr")),
            admin_addr: AdminAddr("127.0.0.1:2".parse().expect("addr")),
            weight: 1,
            admin_token: None,
            twin_of: None,
        })
    }

    /// The head hyper frames for a buffered answer has the fields the fast path writes as bytes.
    #[test]
    fn both_paths_get_the_same_head() {
        let node = node();
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\nx-janus-pool: stable\r\nx-janus-flavor: unix\r\n\r\n";
        let mut bytes = Vec::new();
        let scan = relay_head(head, &node, b"hello", true, &mut bytes);
        assert_eq!((scan.status, scan.flavor), (200, Flavor::Unix));
        // The date may turn to the next second between the two heads: compared apart.
        let wire: String = String::from_utf8(bytes)
            .expect("ascii")
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect();

        let mut headers = HeaderMap::new();
        for (n, v) in [
            ("content-type", "text/plain"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("x-janus-pool", "stable"),
            ("x-janus-flavor", "unix"),
        ] {
            headers.append(n, HeaderValue::from_static(v));
        }
        let resp = BufferedResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
        };
        let by = Answerer {
            node: &node,
            retried_from: None,
            fault_id: None,
        };
        let (out, _) = relay_buffered(resp, &by);
        let mut fields = String::new();
        for (n, v) in out.headers().iter().filter(|(n, _)| n.as_str() != "date") {
            fields.push_str(&format!("{n}: {}\r\n", v.to_str().expect("ascii")));
        }
        assert_eq!(wire, format!("HTTP/1.1 200 OK\r\n{fields}\r\n"));
        let h = out.headers();
        assert_eq!(h["content-length"], "5");
        assert_eq!(h["x-janus-node"], "debug-1");
        assert_eq!(h.get_all("x-janus-pool").iter().count(), 1);
        assert_eq!(
            h["x-janus-pool"], "debug",
            "the node's own is not passed on"
        );
        assert!(h.contains_key("date"));
        assert!(!h.contains_key("connection") && !h.contains_key("transfer-encoding"));
    }

    #[test]
    fn a_retried_fault_says_so() {
        let node = node();
        let from = NodeId::new("stable-1");
        let resp = BufferedResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        let by = Answerer {
            node: &node,
            retried_from: Some(&from),
            fault_id: Some(42),
        };
        let (out, _) = relay_buffered(resp, &by);
        let h = out.headers();
        assert_eq!(h["x-janus-retried-from"], "stable-1");
        assert_eq!(h["x-janus-fault-id"], "42");
        assert_eq!(h["content-length"], "0");
    }
}
