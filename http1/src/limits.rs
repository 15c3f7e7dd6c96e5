//! Resource limits for one connection (server) or one response (client).

/// Limits applied to untrusted input. All sizes are in bytes, all timeouts in milliseconds of
/// the caller's clock (the `now_ms` passed to `poll`).
///
/// Each limit is inclusive: a head of exactly `max_head_bytes` bytes is accepted, one byte more
/// is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request/response head (request line or status line plus header fields plus the
    /// empty line), and separately the largest chunked trailer section. Over it: 431.
    pub max_head_bytes: usize,
    /// Most header fields in one head (and separately in one trailer section). Over it: 431.
    pub max_headers: usize,
    /// Largest decoded body. A `Content-Length` over it, or a chunked body growing over it: 413.
    pub max_body_bytes: usize,
    /// Longest chunk-size line (size, extensions and CRLF). Over it: 400.
    pub max_chunk_line_bytes: usize,
    /// Time allowed for a head to arrive completely, counted from its first byte. Over it: 408.
    pub head_timeout_ms: u64,
    /// Time a connection may wait for the first byte of a request (from its start, or from when
    /// the previous exchange finished). Over it the connection closes without an answer.
    pub idle_timeout_ms: u64,
    /// Time allowed for a body to arrive completely, counted from the end of its head. Over it: 408.
    pub body_timeout_ms: u64,
    /// Most unparsed input bytes held at once; `feed` takes fewer bytes beyond it (back-pressure).
    /// Raised internally to `max_head_bytes + max_chunk_line_bytes` if set lower, so that a
    /// head or chunk line of the maximum size can always be received.
    pub max_buffer_bytes: usize,
    /// Most requests handed out by `ServerConn::poll` and not yet answered with `respond`.
    /// Beyond it `poll` waits (pipelining back-pressure). Values below 1 act as 1.
    pub max_pipelined: usize,
    /// Reject HTTP/1.1 requests without exactly one `Host` header with 400 (RFC 9112 §3.2).
    pub require_host: bool,
}

impl Limits {
    /// The defaults: 8 KiB heads, 64 headers, 1 MiB bodies, 10 s idle / 10 s head / 30 s body
    /// timeouts.
    pub const DEFAULT: Limits = Limits {
        max_head_bytes: 8192,
        max_headers: 64,
        max_body_bytes: 1024 * 1024,
        max_chunk_line_bytes: 1024,
        head_timeout_ms: 10_000,
        idle_timeout_ms: 10_000,
        body_timeout_ms: 30_000,
        max_buffer_bytes: 64 * 1024,
        max_pipelined: 16,
        require_host: true,
    };

    /// The effective input buffer capacity (see [`Limits::max_buffer_bytes`]).
    pub fn buffer_capacity(&self) -> usize {
        let floor = self
            .max_head_bytes
            .saturating_add(self.max_chunk_line_bytes)
            .saturating_add(1);
        self.max_buffer_bytes.max(floor)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
