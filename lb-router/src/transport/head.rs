//! The request head writer: the one place that decides what a node receives of a client's request
//! head, for both request paths. Hop-by-hop fields (RFC 9110 section 7.6.1) and the client's
//! `Content-Length` and `x-janus-trace-id` are dropped; the router's `x-janus-trace-id`, an
//! `x-forwarded-for` with the client's address, the caller's extra fields (mirror markers) and the
//! body's length are added; a request without `Host` (HTTP/1.0) gets the node's address.

use http::header::{HeaderName, HeaderValue};
use janus_http1::{push_decimal, push_field};

use super::is_hop_by_hop;
use crate::upstream::X_TRACE_ID;

/// What the router adds to a forwarded head.
pub(crate) struct Added<'a> {
    /// `None` for the router's own calls (admin APIs).
    pub(crate) trace_id: Option<&'a str>,
    /// The client's address, for `x-forwarded-for`.
    pub(crate) client_ip: Option<&'a str>,
    /// Fields set by the router, replacing any the client sent under the same names.
    pub(crate) extra: &'a [(HeaderName, HeaderValue)],
    /// The body's length, if the request has a body (or declared an empty one).
    pub(crate) content_length: Option<u64>,
    /// `Host` for a request that has none (an HTTP/1.0 client's).
    pub(crate) default_host: Option<&'a str>,
}

/// Writes the request line and header fields a node gets into `out` (cleared first), ending with the
/// empty line. `fields` are the client's, in order.
pub(crate) fn write_request_head<'f>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    fields: impl IntoIterator<Item = (&'f str, &'f [u8])>,
    added: &Added<'_>,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_host = false;
    for (name, value) in fields {
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case(X_TRACE_ID.as_str())
            || added
                .extra
                .iter()
                .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str()))
        {
            continue;
        }
        has_host |= name.eq_ignore_ascii_case("host");
        push_field(out, name.as_bytes(), value);
    }
    if !has_host && let Some(host) = added.default_host {
        push_field(out, b"host", host.as_bytes());
    }
    if let Some(trace_id) = added.trace_id {
        push_field(out, X_TRACE_ID.as_str().as_bytes(), trace_id.as_bytes());
    }
    if let Some(ip) = added.client_ip {
        push_field(out, b"x-forwarded-for", ip.as_bytes());
    }
    for (name, value) in added.extra {
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(n) = added.content_length {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, n);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_framing_fields_are_replaced_by_the_routers() {
        let fields: [(&str, &[u8]); 7] = [
            ("Host", b"x"),
            ("Connection", b"keep-alive, x-secret"),
            ("Transfer-Encoding", b"chunked"),
            ("Content-Length", b"9"),
            ("X-Janus-Trace-Id", b"client-chosen"),
            ("x-janus-mirror", b"spoofed"),
            ("Accept", b"*/*"),
        ];
        let extra = [(
            HeaderName::from_static("x-janus-mirror"),
            HeaderValue::from_static("1"),
        )];
        let mut out = Vec::new();
        let added = Added {
            trace_id: Some("0123456789abcdef0123456789abcdef"),
            client_ip: Some("10.0.0.1"),
            extra: &extra,
            content_length: Some(3),
            default_host: Some("127.0.0.1:9"),
        };
        write_request_head(&mut out, "POST", "/a?b", fields, &added);
        assert_eq!(
            String::from_utf8(out.clone()).expect("utf8"),
            "POST /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\
             x-janus-trace-id: 0123456789abcdef0123456789abcdef\r\n\
             x-forwarded-for: 10.0.0.1\r\nx-janus-mirror: 1\r\ncontent-length: 3\r\n\r\n"
        );
        // No Host (HTTP/1.0): the node's address.
        write_request_head(&mut out, "GET", "/", [], &added);
        assert!(String::from_utf8_lossy(&out).contains("\r\nhost: 127.0.0.1:9\r\n"));
    }
}
