//! Response encoding (server side): status line, headers, framing, body.

use alloc::format;
use alloc::vec::Vec;

use crate::error::{EncodeError, Error};
use crate::headers::{Headers, is_token, is_valid_value};
use crate::status::{reason_phrase, status_has_no_body};
use crate::wire::{Request, Version};

/// A response to encode. The encoder owns the framing: any `Content-Length`,
/// `Transfer-Encoding` or `Connection` fields given here are not sent as given; it writes
/// `Content-Length` itself, and a `Connection: close` given here makes the connection close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, 100..=999.
    pub status: u16,
    /// Header fields to send, in order.
    pub headers: Headers,
    /// The body (not sent for `HEAD` requests or 1xx/204/304 statuses).
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: &str) -> Self {
        Response::new(status)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(body.as_bytes())
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

    /// Appends the encoded response to `out` (the `emit` of this `Repr`).
    ///
    /// Writes `HTTP/1.1 <status> <reason>`, the header fields, `Content-Length` (also for
    /// `HEAD`, giving the length the body would have; omitted for 1xx/204/304), then
    /// `Connection: close` when the connection will close, or `Connection: keep-alive` to an
    /// HTTP/1.0 client that keeps it open, then the body unless the request was `HEAD` or the
    /// status has no body. Returns whether the connection stays open afterwards.
    /// On error nothing is written.
    pub fn encode(&self, ctx: &ResponseContext, out: &mut Vec<u8>) -> Result<bool, EncodeError> {
        if !(100..=999).contains(&self.status) {
            return Err(EncodeError::InvalidStatus(self.status));
        }
        let mut keep_alive = ctx.keep_alive;
        for field in &self.headers {
            if !is_token(field.name.as_bytes()) || !is_valid_value(&field.value) {
                return Err(EncodeError::InvalidHeader);
            }
            if field.name.eq_ignore_ascii_case("connection")
                && crate::headers::split_list(&field.value)
                    .any(|t| t.eq_ignore_ascii_case(b"close"))
            {
                keep_alive = false;
            }
        }
        let interim = (100..200).contains(&self.status);
        let no_body = status_has_no_body(self.status);

        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason_phrase(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        for field in &self.headers {
            let framing = ["content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|n| field.name.eq_ignore_ascii_case(n));
            if framing {
                continue;
            }
            push_field(out, field.name.as_bytes(), &field.value);
        }
        if interim {
            out.extend_from_slice(b"\r\n");
            return Ok(ctx.keep_alive);
        }
        if !no_body {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, u64::try_from(self.body.len()).unwrap_or(u64::MAX));
            out.extend_from_slice(b"\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if ctx.version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !ctx.is_head && !no_body {
            out.extend_from_slice(&self.body);
        }
        Ok(keep_alive)
    }
}

/// What the encoder needs to know about the request being answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseContext {
    /// The request's version (HTTP/1.0 keep-alive needs an explicit `Connection: keep-alive`).
    pub version: Version,
    /// Whether the request was `HEAD` (headers only, no body).
    pub is_head: bool,
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
}

impl ResponseContext {
    /// The context for answering `req`.
    pub fn for_request(req: &Request) -> Self {
        ResponseContext {
            version: req.version,
            is_head: req.is_head(),
            keep_alive: req.keep_alive,
        }
    }
}

/// Appends the error response for `err` to `out`: its status ([`Error::status`]), a short
/// `text/plain` body naming the problem, and `Connection: close`.
pub fn encode_error(err: &Error, out: &mut Vec<u8>) {
    let status = err.status();
    let body = format!("{status} {}: {err}\n", reason_phrase(status));
    let resp = Response::text(status, &body).with_header("Connection", "close");
    let ctx = ResponseContext {
        version: Version::Http11,
        is_head: false,
        keep_alive: false,
    };
    // Cannot fail: the status comes from `Error::status` (always 4xx/5xx) and the headers above
    // are valid tokens and values. Should it ever fail, nothing is written and the caller closes.
    let _ = resp.encode(&ctx, out);
}

/// Appends a header field line `name: value\r\n` (both already validated by the caller).
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without going through `core::fmt`.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut len: usize = 0;
    loop {
        if let Some(slot) = digits.get_mut(len) {
            *slot = b'0'.wrapping_add(u8::try_from(n % 10).unwrap_or(0));
        }
        len = len.saturating_add(1);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits.iter().take(len).rev());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_encoding() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, alloc::format!("{n}").into_bytes());
        }
    }

    #[test]
    fn every_error_encodes_with_its_status() {
        let all = [
            Error::MalformedHead("x"),
            Error::UnsupportedVersion,
            Error::InvalidTarget,
            Error::InvalidHost,
            Error::InvalidContentLength,
            Error::ConflictingFraming,
            Error::InvalidTransferEncoding,
            Error::UnsupportedTransferEncoding,
            Error::InvalidChunk("x"),
            Error::HeadTooLarge,
            Error::TooManyHeaders,
            Error::BodyTooLarge,
            Error::HeadTimeout,
            Error::BodyTimeout,
            Error::ExpectationFailed,
            Error::UnexpectedEof,
            Error::InvalidStatus,
        ];
        for e in all {
            let mut out = Vec::new();
            encode_error(&e, &mut out);
            let text = alloc::string::String::from_utf8(out).unwrap();
            let line = alloc::format!("HTTP/1.1 {} {}\r\n", e.status(), reason_phrase(e.status()));
            assert!(text.starts_with(&line), "{text}");
            assert!(text.ends_with(&alloc::format!("{e}\n")), "{text}");
            assert_ne!(reason_phrase(e.status()), "Unknown");
        }
    }
}
