//! Wire layer: stateless, checked parsing of message heads and framing decisions.
//!
//! Each parser takes untrusted bytes and returns `Ok(Some((value, consumed)))` when a complete
//! head is at the start of the buffer, `Ok(None)` when more bytes are needed, or an [`Error`].
//! Nothing here keeps state or panics.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::error::Error;
use crate::headers::{Headers, split_list, trim_ows};
use crate::limits::Limits;

/// HTTP protocol version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.0: connections close after each exchange unless `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: persistent connections unless `Connection: close`.
    Http11,
}

impl Version {
    /// `"HTTP/1.0"` or `"HTTP/1.1"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// A request method. Methods are case-sensitive; unknown tokens are kept in [`Method::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`: the response carries headers but no body.
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `OPTIONS`
    Options,
    /// `PATCH`
    Patch,
    /// `TRACE`
    Trace,
    /// `CONNECT` (parsed, but its authority-form target is rejected with 400).
    Connect,
    /// Any other token.
    Other(String),
}

impl Method {
    /// Parses a method token (not validated here; `httparse` already checked it is a token).
    pub fn from_token(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            "TRACE" => Method::Trace,
            "CONNECT" => Method::Connect,
            other => Method::Other(other.to_string()),
        }
    }

    /// The method as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Trace => "TRACE",
            Method::Connect => "CONNECT",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed request head (request line and header fields): the `Repr` of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The request target exactly as sent (e.g. `/kv/a?x=1`).
    pub target: String,
    /// The path part of the target (`/kv/a`); `*` for `OPTIONS *`. Not percent-decoded. For an
    /// absolute-form target (`http://host/p`) this is the path (`/p`).
    pub path: String,
    /// The query part of the target without the `?` (`x=1`), if there was a `?`.
    pub query: Option<String>,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Header fields in order.
    pub headers: Headers,
}

impl RequestHead {
    /// Whether the connection stays open after this exchange: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        if self.headers.has_token("connection", "close") {
            return false;
        }
        match self.version {
            Version::Http11 => true,
            Version::Http10 => self.headers.has_token("connection", "keep-alive"),
        }
    }

    /// Whether the client waits for `100 Continue` before sending the body. `Expect` values other
    /// than `100-continue` are an error (417). HTTP/1.0 requests never expect 100 (RFC 9110 §10.1.1).
    pub fn expects_continue(&self) -> Result<bool, Error> {
        let mut expects = false;
        for value in self.headers.get_all("expect") {
            for element in split_list(value) {
                if element.eq_ignore_ascii_case(b"100-continue") {
                    expects = true;
                } else {
                    return Err(Error::ExpectationFailed);
                }
            }
        }
        Ok(expects && self.version == Version::Http11)
    }

    /// Whether the method is `HEAD`.
    pub fn is_head(&self) -> bool {
        self.method == Method::Head
    }
}

/// A complete request as delivered by [`crate::ServerConn::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target exactly as sent.
    pub target: String,
    /// The path part of the target (see [`RequestHead::path`]).
    pub path: String,
    /// The query part of the target, without the `?`.
    pub query: Option<String>,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// Header fields in order; look up with [`Headers::get`] (case-insensitive).
    pub headers: Headers,
    /// The decoded body (empty when the request had none).
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body (kept apart from `headers`).
    pub trailers: Headers,
    /// Whether the connection stays open after the response (see [`RequestHead::keep_alive`]).
    pub keep_alive: bool,
}

impl Request {
    /// Whether the method is `HEAD` (the response will be sent without its body).
    pub fn is_head(&self) -> bool {
        self.method == Method::Head
    }

    pub(crate) fn from_head(head: RequestHead, body: Vec<u8>, trailers: Headers) -> Request {
        let keep_alive = head.keep_alive();
        Request {
            method: head.method,
            target: head.target,
            path: head.path,
            query: head.query,
            version: head.version,
            headers: head.headers,
            body,
            trailers,
            keep_alive,
        }
    }
}

/// A parsed response head (status line and header fields), as read by the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The status code (100..=999).
    pub status: u16,
    /// The reason phrase as sent (may be empty).
    pub reason: String,
    /// Header fields in order.
    pub headers: Headers,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the peer closes the connection (responses only).
    UntilClose,
}

/// Which field of the start line holds the version: the third of a request line, the first
/// of a status line.
#[derive(Clone, Copy)]
enum StartLine {
    Request,
    Response,
}

fn map_httparse(e: httparse::Error, window: &[u8], kind: StartLine) -> Error {
    match e {
        httparse::Error::TooManyHeaders => Error::TooManyHeaders,
        httparse::Error::Version => {
            // A version field that starts with `HTTP/` is a version we do not speak (505);
            // anything else is malformed (400). Only bytes up to the one httparse rejected are
            // looked at, so the answer does not depend on how the input was split.
            let mut line = window;
            while let [b'\r' | b'\n', rest @ ..] = line {
                line = rest;
            }
            let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
            let field = match kind {
                StartLine::Response => Some(line),
                StartLine::Request => line.splitn(3, |&b| b == b' ').nth(2),
            };
            if field.is_some_and(|f| f.starts_with(b"HTTP/")) {
                Error::UnsupportedVersion
            } else {
                Error::MalformedHead("invalid HTTP version")
            }
        }
        httparse::Error::HeaderName => Error::MalformedHead("invalid header name"),
        httparse::Error::HeaderValue => Error::MalformedHead("invalid header value"),
        httparse::Error::NewLine => Error::MalformedHead("invalid line ending"),
        httparse::Error::Status => Error::MalformedHead("invalid status code"),
        httparse::Error::Token => Error::MalformedHead("invalid token in request line"),
    }
}

fn version_of(v: Option<u8>) -> Result<Version, Error> {
    match v {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(Error::UnsupportedVersion),
    }
}

fn collect_headers(raw: &[httparse::Header<'_>]) -> Headers {
    let mut headers = Headers::new();
    for h in raw {
        headers.push(h.name, trim_ows(h.value));
    }
    headers
}

/// The part of `buf` a head is parsed from: its first `max_head_bytes` bytes, cut after the
/// last LF (only complete lines are examined, so the result for a prefix of the input never
/// contradicts the result for the whole input, however the input was split), and the httparse
/// header array for it.
fn head_window<'a>(buf: &'a [u8], limits: &Limits) -> (&'a [u8], Vec<httparse::Header<'a>>) {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    let lines_end = window
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i.saturating_add(1));
    let lines = window.get(..lines_end).unwrap_or_default();
    (lines, header_slots(lines, limits))
}

/// The httparse header array for parsing `lines`: `max_headers` entries, but never more than
/// `lines` could hold (a field line takes at least 3 bytes), so a huge configured limit does not
/// turn into a huge allocation.
pub(crate) fn header_slots<'a>(lines: &[u8], limits: &Limits) -> Vec<httparse::Header<'a>> {
    let fit = (lines.len() / 2).saturating_add(1);
    vec![httparse::EMPTY_HEADER; limits.max_headers.min(fit)]
}

/// Incremental bookkeeping for a head arriving in pieces: it tells when parsing again could
/// change the answer (a new line completed, or the buffer passed `max_head_bytes`), so a head
/// sent one byte at a time costs one parse per line instead of one per byte.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HeadScan {
    /// Bytes of the window already searched for LF.
    scanned: usize,
    /// End of the last complete line found.
    lines_end: usize,
    /// `lines_end` at the last parse that needed more bytes.
    parsed: Option<usize>,
}

impl HeadScan {
    /// Whether parsing `buf` now could give an answer different from the last `Ok(None)`.
    pub(crate) fn worth_parsing(&mut self, buf: &[u8], limits: &Limits) -> bool {
        let window_end = buf.len().min(limits.max_head_bytes);
        if let Some(new) = buf.get(self.scanned..window_end) {
            if let Some(i) = new.iter().rposition(|&b| b == b'\n') {
                self.lines_end = self.scanned.saturating_add(i).saturating_add(1);
            }
            self.scanned = window_end;
        }
        buf.len() > limits.max_head_bytes || self.parsed != Some(self.lines_end)
    }

    /// Records that parsing needed more bytes.
    pub(crate) fn parsed_partial(&mut self) {
        self.parsed = Some(self.lines_end);
    }
}

/// Removes empty lines (CRLF or LF) before a head (RFC 9112 §2.2); a lone CR stays until the
/// next byte shows what it is. Returns whether anything was removed.
pub(crate) fn strip_leading_empty_lines(buf: &mut Vec<u8>) -> bool {
    let mut n: usize = 0;
    loop {
        match buf.get(n..) {
            Some([b'\r', b'\n', ..]) => n = n.saturating_add(2),
            Some([b'\n', ..]) => n = n.saturating_add(1),
            _ => break,
        }
    }
    crate::body::consume_front(buf, n);
    n > 0
}

/// Parses a request head at the start of `buf`.
///
/// Returns the head and the number of bytes it occupied. Leading empty lines are skipped
/// (RFC 9112 §2.2). Errors: 400 for syntax, target and `Host` problems, 431 when the head is
/// longer than `limits.max_head_bytes` or has more than `limits.max_headers` fields, 505 for
/// other versions.
pub fn parse_request_head(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(RequestHead, usize)>, Error> {
    let (window, mut raw) = head_window(buf, limits);
    let mut req = httparse::Request::new(&mut raw);
    let consumed = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head_bytes {
                Err(Error::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(map_httparse(e, window, StartLine::Request)),
    };
    let method_str = req.method.ok_or(Error::MalformedHead("missing method"))?;
    let target = req
        .path
        .ok_or(Error::MalformedHead("missing request target"))?;
    let version = version_of(req.version)?;
    let method = Method::from_token(method_str);
    let (path, query) = split_target(&method, target)?;
    let headers = collect_headers(req.headers);

    let hosts = headers.get_all("host").count();
    let host_ok = match version {
        Version::Http11 => hosts == 1 || (!limits.require_host && hosts == 0),
        Version::Http10 => hosts <= 1,
    };
    if !host_ok || !headers.get_all("host").all(valid_host) {
        return Err(Error::InvalidHost);
    }

    let head = RequestHead {
        method,
        target: target.to_string(),
        path,
        query,
        version,
        headers,
    };
    Ok(Some((head, consumed)))
}

/// Splits a request target into path and query (origin-form, absolute-form or `*`).
pub fn split_target(method: &Method, target: &str) -> Result<(String, Option<String>), Error> {
    if target.contains('#') || target.is_empty() {
        return Err(Error::InvalidTarget);
    }
    if *method == Method::Connect {
        // authority-form is CONNECT's only form (RFC 9112 §3.2.3); tunnels are not served.
        return Err(Error::InvalidTarget);
    }
    if target == "*" {
        return if *method == Method::Options {
            Ok(("*".to_string(), None))
        } else {
            Err(Error::InvalidTarget)
        };
    }
    let path_and_query = if target.starts_with('/') {
        target
    } else {
        let rest = strip_prefix_ignore_case(target, "http://")
            .or_else(|| strip_prefix_ignore_case(target, "https://"))
            .ok_or(Error::InvalidTarget)?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, pq) = rest.split_at_checked(end).ok_or(Error::InvalidTarget)?;
        if authority.is_empty() || !valid_host(authority.as_bytes()) {
            return Err(Error::InvalidTarget);
        }
        pq
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (path_and_query, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_string(), query))
}

/// Whether `v` is a valid `Host` value or absolute-form authority: `uri-host [ ":" port ]`
/// (RFC 9110 §7.2, RFC 3986 §3.2.2): a reg-name (unreserved, pct-encoded, sub-delims), an IPv4
/// address (a reg-name by syntax) or an IP-literal in brackets, then an optional decimal port. No
/// userinfo (`@`), whitespace, path or control bytes. An empty value is valid (RFC 9112 §3.2).
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let Some((literal, after)) = rest.split_at_checked(end) else {
            return false;
        };
        let literal_ok = !literal.is_empty()
            && literal.iter().all(|&b| {
                b.is_ascii_hexdigit() || b":.vV".contains(&b) || is_sub_delim(b) || is_unreserved(b)
            });
        if !literal_ok {
            return false;
        }
        (&b""[..], after.get(1..).unwrap_or_default())
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (
                v.get(..i).unwrap_or_default(),
                v.get(i..).unwrap_or_default(),
            ),
            None => (v, &b""[..]),
        }
    };
    let mut i = 0usize;
    while let Some(&b) = host.get(i) {
        if b == b'%' {
            let hex = host.get(i.saturating_add(1)..i.saturating_add(3));
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i = i.saturating_add(3);
        } else if is_unreserved(b) || is_sub_delim(b) {
            i = i.saturating_add(1);
        } else {
            return false;
        }
    }
    match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn is_sub_delim(b: u8) -> bool {
    b"!$&'()*+,;=".contains(&b)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Parses a response head at the start of `buf` (client side). Same limits as
/// [`parse_request_head`]; a status outside 100..=999 is [`Error::InvalidStatus`].
pub fn parse_response_head(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(ResponseHead, usize)>, Error> {
    let (window, mut raw) = head_window(buf, limits);
    let mut resp = httparse::Response::new(&mut raw);
    let consumed = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head_bytes {
                Err(Error::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => return Err(map_httparse(e, window, StartLine::Response)),
    };
    let version = version_of(resp.version)?;
    let status = resp
        .code
        .ok_or(Error::MalformedHead("missing status code"))?;
    if !(100..=999).contains(&status) {
        return Err(Error::InvalidStatus);
    }
    let head = ResponseHead {
        version,
        status,
        reason: resp.reason.unwrap_or_default().to_string(),
        headers: collect_headers(resp.headers),
    };
    Ok(Some((head, consumed)))
}

/// Parses every `Content-Length` field. `Ok(None)` when there is none; all values (including
/// comma-separated repeats such as `5, 5`) must be equal decimal numbers.
pub fn content_length(headers: &Headers) -> Result<Option<u64>, Error> {
    let mut found: Option<u64> = None;
    for value in headers.get_all("content-length") {
        for element in value.split(|&b| b == b',') {
            let n = parse_decimal(trim_ows(element)).ok_or(Error::InvalidContentLength)?;
            match found {
                Some(prev) if prev != n => return Err(Error::InvalidContentLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Parses a non-empty string of ASCII digits into a `u64` (no sign, no overflow).
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n
            .checked_mul(10)?
            .checked_add(u64::from(b.wrapping_sub(b'0')))?;
    }
    Some(n)
}

/// Checks that the `Transfer-Encoding` fields name exactly `chunked`: other codings before a
/// final `chunked` give 501, a non-final, repeated or malformed `chunked` list gives 400.
fn check_transfer_encoding(headers: &Headers) -> Result<(), Error> {
    let mut codings: Vec<&[u8]> = Vec::new();
    for value in headers.get_all("transfer-encoding") {
        for element in value.split(|&b| b == b',') {
            let coding = trim_ows(element);
            // A coding may carry parameters (`gzip;q=1`): the name is what precedes `;`.
            let name = coding
                .split(|&b| b == b';')
                .next()
                .map(trim_ows)
                .unwrap_or_default();
            if !crate::headers::is_token(name) {
                return Err(Error::InvalidTransferEncoding);
            }
            codings.push(name);
        }
    }
    let chunked_count = codings
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
        .count();
    let last_is_chunked = codings
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
    if !last_is_chunked || chunked_count != 1 {
        return Err(Error::InvalidTransferEncoding);
    }
    if codings.len() != 1 {
        return Err(Error::UnsupportedTransferEncoding);
    }
    Ok(())
}

/// Decides how a request body is delimited (RFC 9112 §6.3), refusing the ambiguous cases that
/// enable request smuggling: `Content-Length` together with `Transfer-Encoding` (400), a
/// `Transfer-Encoding` in HTTP/1.0 (400), disagreeing `Content-Length`s (400).
pub fn request_framing(head: &RequestHead) -> Result<BodyFraming, Error> {
    let has_te = head.headers.contains("transfer-encoding");
    let has_cl = head.headers.contains("content-length");
    if has_te && has_cl {
        return Err(Error::ConflictingFraming);
    }
    if has_te {
        if head.version == Version::Http10 {
            return Err(Error::InvalidTransferEncoding);
        }
        check_transfer_encoding(&head.headers)?;
        return Ok(BodyFraming::Chunked);
    }
    match content_length(&head.headers)? {
        Some(0) | None => Ok(BodyFraming::None),
        Some(n) => Ok(BodyFraming::Length(n)),
    }
}

/// Decides how a response body is delimited (RFC 9112 §6.3), given whether the request was
/// `HEAD`. 1xx, 204 and 304 responses and responses to `HEAD` have no body.
/// `Content-Length` together with `Transfer-Encoding` is refused (400) rather than guessed.
pub fn response_framing(head: &ResponseHead, request_was_head: bool) -> Result<BodyFraming, Error> {
    if request_was_head || crate::status::status_has_no_body(head.status) {
        return Ok(BodyFraming::None);
    }
    let has_te = head.headers.contains("transfer-encoding");
    if has_te {
        if head.headers.contains("content-length") {
            return Err(Error::ConflictingFraming);
        }
        if head.version == Version::Http10 {
            return Err(Error::InvalidTransferEncoding);
        }
        check_transfer_encoding(&head.headers)?;
        return Ok(BodyFraming::Chunked);
    }
    match content_length(&head.headers)? {
        Some(0) => Ok(BodyFraming::None),
        Some(n) => Ok(BodyFraming::Length(n)),
        None => Ok(BodyFraming::UntilClose),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"1a"), None);
        assert_eq!(parse_decimal(b"-1"), None);
    }

    #[test]
    fn targets() {
        let get = Method::Get;
        let ok = |t: &str| split_target(&get, t).unwrap();
        assert_eq!(ok("/"), ("/".into(), None));
        assert_eq!(ok("/a/b?c=d?e"), ("/a/b".into(), Some("c=d?e".into())));
        assert_eq!(ok("http://h"), ("/".into(), None));
        assert_eq!(ok("https://h:1?q"), ("/".into(), Some("q".into())));
        assert_eq!(ok("HTTP://h/x"), ("/x".into(), None));
        for bad in ["", "*", "x", "http://", "http:///x", "/a#frag", "ftp://h/"] {
            assert_eq!(split_target(&get, bad), Err(Error::InvalidTarget), "{bad}");
        }
        assert_eq!(split_target(&Method::Options, "*"), Ok(("*".into(), None)));
    }

    #[test]
    fn host_values() {
        for ok in [
            "",
            "h",
            "example.com",
            "example.com:8080",
            "h:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:80",
            "a%41b",
            "xn--bcher-kva.example",
            "a_b~c!$&'()*+,;=",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "a b",
            "user@h",
            "u:p@h:80",
            "h/x",
            "h?x",
            "h#x",
            "h:80:80",
            "h:8x",
            "h:123456",
            "[::1",
            "[]",
            "[::1]x",
            "a%4",
            "a%zz",
            "h\t",
            " h",
            "\u{e9}t\u{e9}",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
        assert!(!valid_host(b"h\x80"));
        assert!(!valid_host(b"h\t"));
    }

    #[test]
    fn connect_and_absolute_form_authorities() {
        assert_eq!(
            split_target(&Method::Connect, "h:443"),
            Err(Error::InvalidTarget)
        );
        assert_eq!(
            split_target(&Method::Connect, "/x"),
            Err(Error::InvalidTarget)
        );
        assert_eq!(
            split_target(&Method::Get, "http://u@h/x"),
            Err(Error::InvalidTarget)
        );
        assert_eq!(
            split_target(&Method::Get, "http://a b/x"),
            Err(Error::InvalidTarget)
        );
    }

    #[test]
    fn methods_round_trip() {
        for m in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
            "PURGE", "get",
        ] {
            assert_eq!(Method::from_token(m).as_str(), m);
        }
        assert_eq!(Method::from_token("get"), Method::Other("get".into()));
    }
}
