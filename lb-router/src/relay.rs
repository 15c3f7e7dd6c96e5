//! Phase *respond* as bytes: the answer head a client of the fast path gets, whether relayed from
//! a node ([`relay_head`]) or made by the general path's phases ([`encode_general`]: a fault's
//! answer, a router error). One rule for both: hop-by-hop fields and the framing are not passed on,
//! the router sets `content-length` itself (keeping a node's own for an empty `HEAD`/304 answer),
//! adds who answered (`x-janus-node` unless the node said, `x-janus-pool`), a `date` if there is
//! none and `connection: close` when the client asked for it. (Connections served by hyper get the
//! same fields from `proxy::respond`; hyper frames them.)

use std::cell::RefCell;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use janus_http1::{push_decimal, push_field};

use crate::metrics::Flavor;
use crate::pool::Node;
use crate::transport::{field_slots, is_hop_by_hop};

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
    write_head(
        out,
        status,
        reason,
        fields,
        body.len(),
        Some(node),
        keep_alive,
    )
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

/// The status line and fields of an answer of `body_len` bytes, ending with the empty line; `node`:
/// who answered, if the fields do not say yet.
fn write_head<'f>(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    fields: impl Iterator<Item = (&'f str, &'f [u8])>,
    body_len: usize,
    node: Option<&Node>,
    keep_alive: bool,
) -> Scan {
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
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut has_node, mut has_date) = (false, false);
    let mut node_length = None;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("content-length") {
            node_length = Some(value);
            continue;
        }
        if is_hop_by_hop(name) {
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
        push_field(out, name.as_bytes(), value);
    }
    // An empty body with a length is a HEAD (or 304) answer: keep the node's length.
    match node_length {
        _ if status == 204 => {}
        Some(v) if body_len == 0 => push_field(out, b"content-length", v),
        None if status == 304 => {}
        _ => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, body_len as u64);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(node) = node {
        if !has_node {
            push_field(out, b"x-janus-node", node.id.as_str().as_bytes());
        }
        push_field(out, b"x-janus-pool", node.pool.as_str().as_bytes());
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
            push_field(out, b"date", d.1.as_bytes());
        });
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    scan
}

thread_local! {
    /// The `date` value, formatted once a second.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}
