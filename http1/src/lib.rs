//! `janus-http1`: a sans-IO, `no_std` + `alloc` HTTP/1.1 codec for the Janus unikernel.
//!
//! # Layers
//!
//! The crate follows the shape of smoltcp's `wire` module and of sans-IO protocol libraries:
//!
//! 1. **Wire** ([`wire`], [`chunked`]): stateless, checked parsing of untrusted bytes into values
//!    (request head, response head, chunk-size lines, framing decisions) and emitting values back
//!    into bytes ([`Response::encode`], [`encode_error`], [`ClientRequest::encode`]). Every
//!    parser takes a byte slice and returns `Ok(Some(value, consumed))`, `Ok(None)` ("need more
//!    bytes") or an [`Error`]. Request lines and header fields are tokenised by `httparse`
//!    (`default-features = false`); everything HTTP-semantic on top of that is here.
//! 2. **Body decoding** (crate-private `body` module): an incremental decoder for
//!    `Content-Length`, `chunked` (with extensions and trailers) and read-until-close bodies,
//!    enforcing [`Limits::max_body_bytes`] as bytes arrive.
//! 3. **Connections** ([`ServerConn`], [`ResponseParser`]): per-connection state machines.
//!    Bytes in ([`ServerConn::feed`]), events out ([`ServerConn::poll`] returns [`Event`]s),
//!    bytes out ([`ServerConn::output`] / [`ServerConn::consume_output`]). Time is a `u64`
//!    millisecond timestamp passed in by the caller (`now_ms`); the crate has no clock, does no
//!    I/O and has no globals, so a smoltcp socket loop, a tokio task or a unit test drive it alike.
//!
//! # Why a codec of its own
//!
//! The unikernel needs HTTP/1.1 without `std`, without an async runtime and without a clock of
//! the library's own. hyper (and the crates built on it) needs `std` and a tokio-style runtime;
//! `httparse` is `no_std` and does the tokenising here, but it is only the head parser: body
//! framing (`Content-Length`, chunked with extensions and trailers, read-until-close),
//! pipelining, keep-alive, timeouts, size limits with their 4xx answers and response encoding
//! are the codec's job, and no maintained `no_std` crate does them. The unix build uses this same
//! codec for its service port, so both builds answer malformed input identically (the
//! `http_differential` test compares the two builds over real sockets, the fuzz targets the two
//! connection loops).
//!
//! # Server usage (from a TCP socket loop)
//!
//! ```text
//! let mut conn = ServerConn::new(Limits::default());
//! loop {
//!     // 1. bytes in: offer what the socket has; `feed` returns how much it took (back-pressure)
//!     socket.recv(|buf| { let n = conn.feed(buf); (n, ()) });
//!     if socket_peer_closed { conn.feed_eof(); }
//!     // 2. events out
//!     while let Some(event) = conn.poll(now_ms) {
//!         match event {
//!             Event::Request(req) => { let resp = app(req); conn.respond(&resp)?; }
//!             Event::Error(e) => log(e),       // the error response is already queued
//!             Event::IdleTimeout => {}         // nothing to send; conn.should_close() is now true
//!         }
//!     }
//!     // 3. bytes out
//!     let n = socket.send_slice(conn.output())?;
//!     conn.consume_output(n);
//!     if conn.should_close() { socket.close(); break; }
//!     // 4. sleep until data arrives or `conn.next_deadline()`
//! }
//! ```
//!
//! Timers: the idle timer ([`Limits::idle_timeout_ms`]) runs while the connection waits for the
//! first byte of a request and owes no answer (so a slow handler never causes a timeout); when
//! it expires [`Event::IdleTimeout`] closes the connection silently. The head timer
//! ([`Limits::head_timeout_ms`]) runs from the first byte of a head (408); the body timer
//! ([`Limits::body_timeout_ms`]) from the end of the head (408).
//!
//! # Client usage (calls to upstream services)
//!
//! ```text
//! let mut out = Vec::new();
//! ClientRequest::new(Method::Get, "upstream:8080", "/kv/a").encode(&mut out)?;  // write `out`
//! let mut parser = ResponseParser::new(Limits::default(), &Method::Get);
//! loop {
//!     let n = read(&mut buf)?;
//!     if n == 0 { parser.feed_eof(); } else { parser.feed(&buf[..n]); }
//!     if let Some(result) = parser.poll(now_ms) { break result; }  // Ok(ClientResponse) or Err(Error)
//! }
//! ```
//!
//! # No-panic guarantee
//!
//! No function in this crate panics on any input bytes, any split of them across `feed` calls,
//! any sequence of calls, or any `now_ms` values (time going backwards is treated as no time
//! passing). Malformed or hostile input yields an [`Error`] that names an HTTP status
//! ([`Error::status`]). Memory is bounded by [`Limits`]: the unparsed input buffer by
//! [`Limits::max_buffer_bytes`] (enforced by `feed` taking fewer bytes), a head by
//! [`Limits::max_head_bytes`], a body by [`Limits::max_body_bytes`]. The only remaining ways to
//! abort are allocation failure and bugs in `httparse` itself.
//!
//! This is enforced mechanically: outside tests the crate denies `clippy::indexing_slicing`,
//! `clippy::arithmetic_side_effects`, `clippy::unwrap_used`, `clippy::expect_used`,
//! `clippy::panic`, `clippy::unreachable` and `clippy::todo`, so every slice access goes through
//! `get` and every integer operation is checked or saturating. A property test (random and mutated
//! inputs, split at random points) and a cargo-fuzz target (`fuzz/`) exercise it.
//!
//! # What is not supported
//!
//! Upgrades/`101 Switching Protocols`, `CONNECT` (400), transfer codings other than `chunked`
//! (400), obsolete line folding (400), streaming bodies (a body is delivered whole,
//! bounded by the limits), percent-decoding of the path (the path is delivered as sent).
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![warn(missing_docs)]

extern crate alloc;

mod body;
pub mod chunked;
mod client;
mod error;
mod headers;
mod limits;
mod response;
mod server;
mod status;
pub mod wire;

pub use client::{ClientRequest, ClientResponse, ResponseParser};
pub use error::{EncodeError, Error, RespondError};
pub use headers::{HeaderField, Headers};
pub use limits::Limits;
pub use response::{Response, ResponseContext, encode_error, push_decimal, push_field};
pub use server::{ErrorResponseFn, Event, ServerConn};
pub use status::reason_phrase;
pub use wire::{Method, Request, RequestHead, Version, valid_host};
