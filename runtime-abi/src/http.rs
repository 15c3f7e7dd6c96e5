//! Portable HTTP types: [`Method`], [`StatusCode`], case-insensitive [`Headers`], [`Request`] and
//! [`Response`] with builders and JSON helpers.
//!
//! MUST rules for backends:
//! - A backend MUST hand the service a [`Request`] whose `path` is the raw request path (no query string,
//!   not percent-decoded), whose `query` is the raw query string without `?` (or `None`), and whose body
//!   is complete (chunked bodies already de-chunked).
//! - A backend MUST set `content-length` itself when writing a [`Response`]; a service never sets it.
//! - Header names are stored lowercase; lookups are case-insensitive.

use alloc::borrow::ToOwned;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::trace::TraceId;

/// An HTTP request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// `OPTIONS`
    Options,
    /// Any other token, kept as sent.
    Other(String),
}

impl Method {
    /// Parses a method token (case-sensitive, as RFC 9110 says).
    pub fn parse(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The method token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other(s) => s,
        }
    }

    /// Whether repeating the request has the same effect as sending it once (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options
        )
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HTTP status code (100..=999).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StatusCode(u16);

impl StatusCode {
    /// 200 OK
    pub const OK: StatusCode = StatusCode(200);
    /// 201 Created
    pub const CREATED: StatusCode = StatusCode(201);
    /// 204 No Content
    pub const NO_CONTENT: StatusCode = StatusCode(204);
    /// 400 Bad Request
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    /// 404 Not Found
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    /// 405 Method Not Allowed
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405);
    /// 409 Conflict
    pub const CONFLICT: StatusCode = StatusCode(409);
    /// 413 Content Too Large
    pub const PAYLOAD_TOO_LARGE: StatusCode = StatusCode(413);
    /// 500 Internal Server Error
    pub const INTERNAL_SERVER_ERROR: StatusCode = StatusCode(500);
    /// 502 Bad Gateway
    pub const BAD_GATEWAY: StatusCode = StatusCode(502);
    /// 503 Service Unavailable
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);
    /// 504 Gateway Timeout
    pub const GATEWAY_TIMEOUT: StatusCode = StatusCode(504);

    /// A status code from its number; `None` outside 100..=999.
    pub const fn new(code: u16) -> Option<StatusCode> {
        if code >= 100 && code <= 999 {
            Some(StatusCode(code))
        } else {
            None
        }
    }

    /// The number.
    pub const fn as_u16(self) -> u16 {
        self.0
    }

    /// 2xx
    pub const fn is_success(self) -> bool {
        self.0 >= 200 && self.0 < 300
    }

    /// 5xx
    pub const fn is_server_error(self) -> bool {
        self.0 >= 500 && self.0 < 600
    }

    /// The canonical reason phrase, or `""` for codes without one.
    pub fn reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            204 => "No Content",
            301 => "Moved Permanently",
            302 => "Found",
            304 => "Not Modified",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            410 => "Gone",
            411 => "Length Required",
            413 => "Content Too Large",
            414 => "URI Too Long",
            415 => "Unsupported Media Type",
            422 => "Unprocessable Content",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "",
        }
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An ordered list of header fields with case-insensitive names (stored lowercase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Appends a field (keeps earlier fields of the same name).
    pub fn append(&mut self, name: &str, value: &str) {
        self.fields
            .push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// Replaces every field of this name with one field.
    pub fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.append(name, value);
    }

    /// Removes every field of this name.
    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The first value of this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of this name, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a field of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All fields as (lowercase name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// No fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Why a JSON body could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(pub String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON: {}", self.0)
    }
}

/// A complete HTTP request as a service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The raw path, without the query string.
    pub path: String,
    /// The raw query string without `?`.
    pub query: Option<String>,
    /// Header fields.
    pub headers: Headers,
    /// The complete body.
    pub body: Vec<u8>,
    /// The trace id the backend assigned to this request.
    pub trace_id: TraceId,
}

impl Request {
    /// A request with no headers and no body, and a zero trace id (backends assign the real one).
    pub fn new(method: Method, target: &str) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Request {
            method,
            path,
            query,
            headers: Headers::new(),
            body: Vec::new(),
            trace_id: TraceId::ZERO,
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers.append(name, value);
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Path and query as sent (`/a/b?x=1`).
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => alloc::format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }

    /// The first value of query parameter `name`, percent-decoded (`+` means space).
    /// `None` when absent or not valid UTF-8 after decoding.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(k)? == name {
                percent_decode(v)
            } else {
                None
            }
        })
    }

    /// The path segments after `prefix`, when the path starts with it (`/kv/` on `/kv/a` gives `a`).
    pub fn path_after<'a>(&'a self, prefix: &str) -> Option<&'a str> {
        self.path.strip_prefix(prefix)
    }

    /// Parses the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, JsonError> {
        serde_json::from_slice(&self.body).map_err(|e| JsonError(e.to_string()))
    }
}

/// Decodes `%XX` escapes and `+`; `None` on a bad escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// Header fields (the backend adds `content-length` and the `x-janus-*` headers).
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: StatusCode) -> Response {
        Response {
            status,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into().into_bytes())
    }

    /// A JSON response; a value that cannot be serialised gives a 500 naming the problem.
    pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(e) => Response::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &alloc::format!("response serialisation failed: {e}"),
            ),
        }
    }

    /// A JSON error body `{"error": message}` with this status.
    pub fn error(status: StatusCode, message: &str) -> Response {
        let body = serde_json::json!({ "error": message });
        Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(body.to_string().into_bytes())
    }

    /// 404 with a JSON error body naming the path.
    pub fn not_found(path: &str) -> Response {
        Response::error(
            StatusCode::NOT_FOUND,
            &alloc::format!("no route for {path}"),
        )
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.append(name, value);
        self
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// Parses the body as JSON.
    pub fn json_body<T: DeserializeOwned>(&self) -> Result<T, JsonError> {
        serde_json::from_slice(&self.body).map_err(|e| JsonError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive_and_ordered() {
        let mut h = Headers::new();
        h.append("X-A", "1");
        h.append("x-a", "2");
        h.append("Content-Type", "text/plain");
        assert_eq!(h.get("x-A"), Some("1"));
        assert_eq!(h.get_all("X-a").collect::<Vec<_>>(), ["1", "2"]);
        h.set("X-A", "3");
        assert_eq!(h.get_all("x-a").collect::<Vec<_>>(), ["3"]);
        assert_eq!(h.iter().next(), Some(("content-type", "text/plain")));
        h.remove("CONTENT-TYPE");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn target_splits_path_and_query_and_decodes_params() {
        let r = Request::new(Method::Get, "/echo?msg=hello+world%21&x=%zz&e");
        assert_eq!(r.path, "/echo");
        assert_eq!(r.query_param("msg").as_deref(), Some("hello world!"));
        assert_eq!(r.query_param("x"), None, "bad escape is not a value");
        assert_eq!(r.query_param("e").as_deref(), Some(""));
        assert_eq!(r.query_param("missing"), None);
        assert_eq!(r.target(), "/echo?msg=hello+world%21&x=%zz&e");
        assert_eq!(Request::new(Method::Get, "/").query, None);
    }

    #[test]
    fn percent_decode_rejects_truncated_and_non_utf8() {
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
    }

    #[test]
    fn methods_round_trip_and_idempotency() {
        for m in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW",
        ] {
            assert_eq!(Method::parse(m).as_str(), m);
        }
        assert!(Method::Put.is_idempotent());
        assert!(!Method::Post.is_idempotent());
        assert!(
            !Method::parse("get").is_idempotent(),
            "methods are case-sensitive"
        );
    }

    #[test]
    fn status_bounds_and_reasons() {
        assert_eq!(StatusCode::new(99), None);
        assert_eq!(StatusCode::new(1000), None);
        assert_eq!(
            StatusCode::new(431).map(StatusCode::reason),
            Some("Request Header Fields Too Large")
        );
        assert!(StatusCode::BAD_GATEWAY.is_server_error());
        assert!(!StatusCode::NOT_FOUND.is_success());
    }

    #[test]
    fn json_helpers() {
        #[derive(serde::Deserialize)]
        struct In {
            a: u32,
        }
        let ok = Request::new(Method::Post, "/json").with_body(&b"{\"a\":7}"[..]);
        assert_eq!(ok.json::<In>().map(|v| v.a), Ok(7));
        let bad = Request::new(Method::Post, "/json").with_body(&b"{\"a\":"[..]);
        assert!(bad.json::<In>().is_err());
        let resp = Response::json(StatusCode::OK, &serde_json::json!({"b": 2}));
        assert_eq!(resp.headers.get("content-type"), Some("application/json"));
        let v: serde_json::Value = resp.json_body().expect("valid json");
        assert_eq!(v["b"], 2);
        let err = Response::error(StatusCode::BAD_REQUEST, "nope");
        assert_eq!(err.body, b"{\"error\":\"nope\"}");
    }
}
