//! Error types: every parse error names the HTTP status a server answers it with.

use core::fmt;

/// Why a request (server side) or response (client side) could not be parsed.
///
/// [`Error::status`] gives the status a server answers with; after any error the connection
/// closes once the error response is written. On the client side ([`crate::ResponseParser`])
/// every error means the upstream failed, and the caller usually answers 502 (or 504 for the
/// timeouts) downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The request line, status line or a header field is not valid HTTP/1.x syntax. (400)
    MalformedHead(&'static str),
    /// A version other than HTTP/1.0 or HTTP/1.1. (505)
    UnsupportedVersion,
    /// The request target is not origin-form (`/path?query`), absolute-form (`http(s)://authority`)
    /// or `*` for `OPTIONS`, or the method is `CONNECT`. (400)
    InvalidTarget,
    /// An HTTP/1.1 request without a `Host` header, more than one `Host`, or a `Host` value that is
    /// not `host[:port]`. (400)
    InvalidHost,
    /// A `Content-Length` that is not a decimal number, or several that disagree. (400)
    InvalidContentLength,
    /// Both `Content-Length` and `Transfer-Encoding` are present (request smuggling). (400)
    ConflictingFraming,
    /// A `Transfer-Encoding` whose final coding is not `chunked`, a repeated `chunked`, an empty
    /// coding, or any `Transfer-Encoding` in an HTTP/1.0 message. (400)
    InvalidTransferEncoding,
    /// A transfer coding other than `chunked` (e.g. `gzip, chunked`). (400: refused like every
    /// other `Transfer-Encoding` that is not exactly `chunked`, see docs/HTTP.md)
    UnsupportedTransferEncoding,
    /// A malformed chunk-size line, chunk extension, or missing CRLF after chunk data. (400)
    InvalidChunk(&'static str),
    /// The head (or a chunked trailer section) is larger than [`crate::Limits::max_head_bytes`]. (431)
    HeadTooLarge,
    /// More header fields (or trailer fields) than [`crate::Limits::max_headers`]. (431)
    TooManyHeaders,
    /// The body is, or would grow, larger than [`crate::Limits::max_body_bytes`]. (413)
    BodyTooLarge,
    /// The head did not arrive within [`crate::Limits::head_timeout_ms`]. (408)
    HeadTimeout,
    /// The body did not arrive within [`crate::Limits::body_timeout_ms`]. (408)
    BodyTimeout,
    /// An `Expect` header other than `100-continue`. (417)
    ExpectationFailed,
    /// The peer closed the connection in the middle of a message. (400; client side: upstream failure)
    UnexpectedEof,
    /// Client side: a status code outside 100..=999 or a `101 Switching Protocols`. (502)
    InvalidStatus,
}

impl Error {
    /// The HTTP status code a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Error::MalformedHead(_)
            | Error::InvalidTarget
            | Error::InvalidHost
            | Error::InvalidContentLength
            | Error::ConflictingFraming
            | Error::InvalidTransferEncoding
            | Error::InvalidChunk(_)
            | Error::UnsupportedTransferEncoding
            | Error::UnexpectedEof => 400,
            Error::UnsupportedVersion => 505,
            Error::HeadTooLarge | Error::TooManyHeaders => 431,
            Error::BodyTooLarge => 413,
            Error::HeadTimeout | Error::BodyTimeout => 408,
            Error::ExpectationFailed => 417,
            Error::InvalidStatus => 502,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::MalformedHead(what) => write!(f, "malformed message head: {what}"),
            Error::UnsupportedVersion => {
                f.write_str("unsupported HTTP version (only HTTP/1.0 and HTTP/1.1)")
            }
            Error::InvalidTarget => f.write_str("invalid request target"),
            Error::InvalidHost => f.write_str("missing, repeated or invalid Host header"),
            Error::InvalidContentLength => f.write_str("invalid Content-Length"),
            Error::ConflictingFraming => {
                f.write_str("both Content-Length and Transfer-Encoding present")
            }
            Error::InvalidTransferEncoding => f.write_str("invalid Transfer-Encoding"),
            Error::UnsupportedTransferEncoding => {
                f.write_str("unsupported Transfer-Encoding (only chunked)")
            }
            Error::InvalidChunk(what) => write!(f, "invalid chunked body: {what}"),
            Error::HeadTooLarge => f.write_str("header section too large"),
            Error::TooManyHeaders => f.write_str("too many header fields"),
            Error::BodyTooLarge => f.write_str("body too large"),
            Error::HeadTimeout => f.write_str("timed out waiting for the message head"),
            Error::BodyTimeout => f.write_str("timed out waiting for the message body"),
            Error::ExpectationFailed => f.write_str("unsupported Expect value"),
            Error::UnexpectedEof => f.write_str("connection closed in the middle of a message"),
            Error::InvalidStatus => f.write_str("invalid or unsupported status code"),
        }
    }
}

impl core::error::Error for Error {}

/// Why a response or request could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The status code is outside 100..=999.
    InvalidStatus(u16),
    /// A header name is not a token, or a value contains CR, LF or NUL (response splitting).
    InvalidHeader,
    /// The method is not a token.
    InvalidMethod,
    /// The request path is empty, does not start with `/` (and is not `*`), or contains
    /// whitespace or control characters.
    InvalidPath,
    /// The host contains whitespace, control characters, `/`, `?` or `#`.
    InvalidHost,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::InvalidStatus(s) => write!(f, "invalid status code {s}"),
            EncodeError::InvalidHeader => {
                f.write_str("invalid header (name not a token, or CR/LF/NUL in value)")
            }
            EncodeError::InvalidMethod => f.write_str("invalid method (not a token)"),
            EncodeError::InvalidPath => f.write_str("invalid request path"),
            EncodeError::InvalidHost => f.write_str("invalid host"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why [`crate::ServerConn::respond`] refused a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespondError {
    /// No request is waiting for a response.
    NoPendingRequest,
    /// Interim (1xx) responses are sent by the codec itself (`100 Continue`), not by `respond`.
    InterimStatus(u16),
    /// The response could not be encoded; nothing was written and the request is still pending.
    Encode(EncodeError),
}

impl fmt::Display for RespondError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespondError::NoPendingRequest => f.write_str("no request is waiting for a response"),
            RespondError::InterimStatus(s) => {
                write!(f, "interim status {s} cannot be sent with respond")
            }
            RespondError::Encode(e) => write!(f, "cannot encode response: {e}"),
        }
    }
}

impl core::error::Error for RespondError {}

impl From<EncodeError> for RespondError {
    fn from(e: EncodeError) -> Self {
        RespondError::Encode(e)
    }
}
