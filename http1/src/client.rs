//! Client side (calls to upstream services): request encoding and response parsing.

use alloc::string::String;
use alloc::vec::Vec;

use crate::body::{BodyDecoder, consume_front};
use crate::error::{EncodeError, Error};
use crate::headers::{Headers, is_token, is_valid_value};
use crate::limits::Limits;
use crate::response::{push_decimal, push_field};
use crate::wire::{
    BodyFraming, HeadScan, Method, ResponseHead, Version, parse_response_head, response_framing,
};

/// A request to send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    /// The method.
    pub method: Method,
    /// The `Host` header value (`host` or `host:port`).
    pub host: String,
    /// The origin-form target, e.g. `/kv/a?x=1` (or `*`).
    pub path: String,
    /// Extra header fields. `Host`, `Content-Length` and `Transfer-Encoding` here are ignored:
    /// the encoder writes them.
    pub headers: Headers,
    /// The body, sent with `Content-Length`.
    pub body: Vec<u8>,
}

impl ClientRequest {
    /// A request with no extra headers and an empty body.
    pub fn new(method: Method, host: &str, path: &str) -> Self {
        ClientRequest {
            method,
            host: String::from(host),
            path: String::from(path),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push(name, value.as_ref());
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Appends the encoded request to `out`: request line, `Host`, the extra fields,
    /// `Content-Length` (when the body is non-empty or the method is POST/PUT/PATCH), the body.
    /// On error nothing is written.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if !is_token(self.method.as_str().as_bytes()) {
            return Err(EncodeError::InvalidMethod);
        }
        let path = self.path.as_bytes();
        let path_ok = (path == b"*" || path.first() == Some(&b'/'))
            && path.iter().all(|&b| b > 0x20 && b != 0x7f && b != b'#');
        if !path_ok {
            return Err(EncodeError::InvalidPath);
        }
        let host = self.host.as_bytes();
        let host_ok = !host.is_empty()
            && host
                .iter()
                .all(|&b| b > 0x20 && b != 0x7f && !b"/?#@".contains(&b));
        if !host_ok {
            return Err(EncodeError::InvalidHost);
        }
        for field in &self.headers {
            if !is_token(field.name.as_bytes()) || !is_valid_value(&field.value) {
                return Err(EncodeError::InvalidHeader);
            }
        }
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(path);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        push_field(out, b"Host", host);
        for field in &self.headers {
            let owned = ["host", "content-length", "transfer-encoding"]
                .iter()
                .any(|n| field.name.eq_ignore_ascii_case(n));
            if !owned {
                push_field(out, field.name.as_bytes(), &field.value);
            }
        }
        let needs_length = !self.body.is_empty()
            || matches!(self.method, Method::Post | Method::Put | Method::Patch);
        if needs_length {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, u64::try_from(self.body.len()).unwrap_or(u64::MAX));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        Ok(())
    }
}

/// A complete response from upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// The status code (never 1xx: interim responses are skipped).
    pub status: u16,
    /// The reason phrase as sent.
    pub reason: String,
    /// Header fields in order.
    pub headers: Headers,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Headers,
    /// Whether the connection may be reused for another request.
    pub keep_alive: bool,
}

#[derive(Debug)]
enum State {
    Head {
        since: Option<u64>,
    },
    Body {
        head: ResponseHead,
        decoder: BodyDecoder,
        framing: BodyFraming,
        since: u64,
    },
    Done,
}

/// Parses one response from upstream (sans-IO, same limits and no-panic guarantee as the
/// server side). Interim 1xx responses (e.g. `100 Continue`) are skipped; `101` is an error.
#[derive(Debug)]
pub struct ResponseParser {
    limits: Limits,
    request_was_head: bool,
    input: Vec<u8>,
    state: State,
    eof: bool,
    scan: HeadScan,
}

impl ResponseParser {
    /// A parser for the response to a request with this method (`HEAD` responses have no body).
    pub fn new(limits: Limits, request_method: &Method) -> Self {
        ResponseParser {
            limits,
            request_was_head: *request_method == Method::Head,
            input: Vec::new(),
            state: State::Head { since: None },
            eof: false,
            scan: HeadScan::default(),
        }
    }

    /// Offers received bytes; returns how many were taken (see [`crate::ServerConn::feed`]).
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let room = self
            .limits
            .buffer_capacity()
            .saturating_sub(self.input.len());
        let take = room.min(data.len());
        self.input
            .extend_from_slice(data.get(..take).unwrap_or_default());
        take
    }

    /// The upstream closed the connection (completes a read-until-close body).
    pub fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// Bytes received after the end of the response (unparsed).
    pub fn remaining(&self) -> &[u8] {
        &self.input
    }

    /// The earliest `now_ms` at which `poll` reports a timeout, if a timer runs.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.state {
            State::Head { since } => since.map(|s| s.saturating_add(self.limits.head_timeout_ms)),
            State::Body { since, .. } => Some(since.saturating_add(self.limits.body_timeout_ms)),
            State::Done => None,
        }
    }

    /// Advances parsing. Returns `Some` exactly once: the response or the error; `None` while
    /// more bytes are needed and after the result was returned. The head timer starts at the
    /// first call.
    pub fn poll(&mut self, now_ms: u64) -> Option<Result<ClientResponse, Error>> {
        let result = self.step(now_ms)?;
        if result.is_err() {
            self.input.clear();
        }
        self.state = State::Done;
        Some(result)
    }

    fn step(&mut self, now_ms: u64) -> Option<Result<ClientResponse, Error>> {
        loop {
            match &mut self.state {
                State::Done => return None,
                State::Head { since } => {
                    let started = *since.get_or_insert(now_ms);
                    let parsed = if self.scan.worth_parsing(&self.input, &self.limits) {
                        parse_response_head(&self.input, &self.limits)
                    } else {
                        Ok(None)
                    };
                    if let Ok(None) = parsed {
                        self.scan.parsed_partial();
                    }
                    match parsed {
                        Err(e) => return Some(Err(e)),
                        Ok(None) => {
                            if self.eof {
                                return Some(Err(Error::UnexpectedEof));
                            }
                            if now_ms.saturating_sub(started) >= self.limits.head_timeout_ms {
                                return Some(Err(Error::HeadTimeout));
                            }
                            return None;
                        }
                        Ok(Some((head, used))) => {
                            consume_front(&mut self.input, used);
                            self.scan = HeadScan::default();
                            if head.status == 101 {
                                return Some(Err(Error::InvalidStatus));
                            }
                            if (100..200).contains(&head.status) {
                                continue;
                            }
                            let framing = match response_framing(&head, self.request_was_head) {
                                Ok(f) => f,
                                Err(e) => return Some(Err(e)),
                            };
                            let decoder = match BodyDecoder::new(framing, &self.limits) {
                                Ok(d) => d,
                                Err(e) => return Some(Err(e)),
                            };
                            self.state = State::Body {
                                head,
                                decoder,
                                framing,
                                since: now_ms,
                            };
                        }
                    }
                }
                State::Body { decoder, since, .. } => {
                    let started = *since;
                    let mut done = match decoder.decode(&mut self.input, &self.limits) {
                        Ok(done) => done,
                        Err(e) => return Some(Err(e)),
                    };
                    if !done && self.eof {
                        if let Err(e) = decoder.eof() {
                            return Some(Err(e));
                        }
                        done = true;
                    }
                    if !done {
                        if now_ms.saturating_sub(started) >= self.limits.body_timeout_ms {
                            return Some(Err(Error::BodyTimeout));
                        }
                        return None;
                    }
                    let State::Body {
                        head,
                        decoder,
                        framing,
                        ..
                    } = core::mem::replace(&mut self.state, State::Done)
                    else {
                        return None;
                    };
                    let (body, trailers) = decoder.finish();
                    let persistent = match head.version {
                        Version::Http11 => !head.headers.has_token("connection", "close"),
                        Version::Http10 => {
                            head.headers.has_token("connection", "keep-alive")
                                && !head.headers.has_token("connection", "close")
                        }
                    };
                    return Some(Ok(ClientResponse {
                        version: head.version,
                        status: head.status,
                        reason: head.reason,
                        headers: head.headers,
                        body,
                        trailers,
                        keep_alive: persistent && framing != BodyFraming::UntilClose,
                    }));
                }
            }
        }
    }
}
