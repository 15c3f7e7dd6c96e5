//! One downstream connection, served by janus-http1's `ServerConn`: the same sans-IO HTTP/1.1 codec
//! the uk build runs over smoltcp, here over a tokio socket. Every verdict on the bytes (what is a
//! request, which status refuses it, when the connection closes) is the codec's, so both builds
//! answer the same bytes the same way by construction (docs/HTTP.md lists the rules).
//!
//! The loop: bytes in (`feed`, `feed_eof` on FIN), events out (`poll`: a request is answered by
//! [`crate::public::handle`] in this task before the next event; a refused request gets its answer
//! from [`crate::public::PublicCtx::refused`], queued by the codec after the answers it still owes),
//! bytes out (one write per batch of answers). Timers are the codec's (idle, head, body), read
//! against a per-connection millisecond clock. A request followed at once by FIN is answered before
//! the close; pipelined requests followed by garbage are answered, then the garbage gets its 400.

use std::sync::Arc;
use std::time::Duration;

use janus_http1::{Event, ServerConn};
use runtime_abi::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::public::{self, PublicCtx};

/// Most header fields in one request head (the codec's default, as on the uk build).
pub const MAX_HEADERS: usize = janus_http1::Limits::DEFAULT.max_headers;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Time allowed for a request body, from the end of its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits of the connection layer.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest request head in bytes (431 over it).
    pub max_header_bytes: usize,
    /// Largest request body in bytes (413 over it).
    pub max_body_bytes: usize,
    /// Time to send a whole head, from its first byte (408 over it).
    pub header_timeout: Duration,
    /// Time a connection may wait for the first byte of a request (silent close over it).
    pub idle_timeout: Duration,
}

impl ConnLimits {
    /// The codec's limits for these settings.
    pub fn codec(&self) -> janus_http1::Limits {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        janus_http1::Limits {
            max_head_bytes: self.max_header_bytes,
            max_headers: MAX_HEADERS,
            max_body_bytes: self.max_body_bytes,
            head_timeout_ms: ms(self.header_timeout),
            idle_timeout_ms: ms(self.idle_timeout),
            body_timeout_ms: ms(BODY_TIMEOUT),
            ..janus_http1::Limits::DEFAULT
        }
    }
}

/// The sans-IO part of a connection: the codec plus the bytes read that it has not taken yet
/// (its buffer was full). [`serve`] drives it from a tokio socket; the differential fuzz target in
/// `http1/fuzz` drives it the way the uk build drives a bare `ServerConn`, and compares.
#[derive(Debug)]
pub struct Front {
    conn: ServerConn,
    pending: Vec<u8>,
    eof: bool,
    refused: bool,
}

impl Front {
    /// A connection with these codec limits.
    pub fn new(limits: janus_http1::Limits) -> Front {
        Front {
            conn: ServerConn::new(limits),
            pending: Vec::new(),
            eof: false,
            refused: false,
        }
    }

    /// The codec (to set the error answer, respond, and read the output).
    pub fn conn(&mut self) -> &mut ServerConn {
        &mut self.conn
    }

    /// Bytes read from the socket.
    pub fn on_bytes(&mut self, bytes: &[u8]) {
        if self.pending.is_empty() {
            let taken = self.conn.feed(bytes);
            if let Some(rest) = bytes.get(taken..) {
                self.pending.extend_from_slice(rest);
            }
        } else {
            self.pending.extend_from_slice(bytes);
            self.refeed();
        }
    }

    /// The peer closed its sending side.
    pub fn on_eof(&mut self) {
        self.eof = true;
        self.conn.feed_eof();
    }

    fn refeed(&mut self) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let taken = self.conn.feed(&self.pending);
        self.pending.drain(..taken);
        taken
    }

    /// The next event (answer a request with `conn().respond` before asking again).
    pub fn next_event(&mut self, now_ms: u64) -> Option<Event> {
        loop {
            if let Some(event) = self.conn.poll(now_ms) {
                if matches!(event, Event::Error(_)) {
                    self.refused = true;
                }
                self.refeed();
                return Some(event);
            }
            if self.refeed() == 0 {
                return None;
            }
        }
    }

    /// Whether the connection is done (everything answered and written, or the peer is gone and
    /// nothing more can come).
    pub fn done(&self) -> bool {
        self.conn.should_close() || (self.eof && self.pending.is_empty())
    }

    /// Whether to read from the socket now (not while unread bytes wait for room in the codec).
    pub fn wants_read(&self) -> bool {
        self.pending.is_empty() && !self.eof
    }

    /// Whether a request was refused (the close then lingers to let the client read the answer).
    pub fn refused(&self) -> bool {
        self.refused
    }
}

/// Serves one connection until it closes, the client misbehaves, or shutdown is signalled (then the
/// request in progress completes, its answer says `Connection: close`, and the connection closes).
pub async fn serve<S: Service>(
    mut stream: TcpStream,
    limits: ConnLimits,
    ctx: Arc<PublicCtx<S>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let clock = Instant::now();
    let now_ms = || u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut front = Front::new(limits.codec());
    let refused_ctx = Arc::clone(&ctx);
    front
        .conn()
        .set_error_response(Box::new(move |e| refused_ctx.refused(e)));
    let mut buf = vec![0u8; READ_CHUNK];
    let mut timer = Box::pin(tokio::time::sleep_until(clock));
    let mut timer_at: Option<u64> = None;
    loop {
        while let Some(event) = front.next_event(now_ms()) {
            if let Event::Request(req) = event {
                let closing = *shutdown.borrow();
                let resp = public::handle(&ctx, req, closing).await;
                if let Err(e) = front.conn().respond(&resp) {
                    tracing::error!(error = %e, "answer could not be encoded");
                    let fallback = janus_http1::Response::text(
                        500,
                        "the service's answer could not be encoded\n",
                    );
                    if front.conn().respond(&fallback).is_err() {
                        return;
                    }
                }
            }
        }
        let conn = front.conn();
        if !conn.output().is_empty() {
            if write_out(&mut stream, conn.output()).await.is_err() {
                return;
            }
            let n = conn.output().len();
            conn.consume_output(n);
        }
        if front.done() {
            break;
        }
        match front.conn().next_deadline() {
            Some(at) if timer_at != Some(at) => {
                timer_at = Some(at);
                timer
                    .as_mut()
                    .reset(clock + Duration::from_millis(at.saturating_add(1)));
            }
            Some(_) => {}
            None => timer_at = None,
        }
        tokio::select! {
            biased;
            read = stream.read(&mut buf), if front.wants_read() => match read {
                Ok(0) => front.on_eof(),
                Ok(n) => front.on_bytes(&buf[..n]),
                Err(_) => return,
            },
            () = &mut timer, if timer_at.is_some() => timer_at = None,
            () = crate::conn::stopped(&mut shutdown), if !*shutdown.borrow() => {}
        }
        if *shutdown.borrow() && front.conn().pending_responses() == 0 {
            // Draining: no request is being answered; close (an answer already sent stays sent).
            break;
        }
    }
    if front.refused() {
        linger_close(&mut stream).await;
    } else {
        let _ = stream.shutdown().await;
    }
}

async fn write_out(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    // Most answers fit in the socket's buffer: written at once, without reading the clock for a
    // deadline that is not needed.
    let rest = match stream.try_write(bytes) {
        Ok(n) if n == bytes.len() => return Ok(()),
        Ok(n) => bytes.get(n..).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => bytes,
        Err(e) => return Err(e),
    };
    // A client that reads nothing cannot pin the connection forever.
    match tokio::time::timeout(Duration::from_secs(30), stream.write_all(rest)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Half-closes and reads what the client still sends for a moment, so an unread request body does
/// not turn the close into a reset that destroys the answer before the client reads it.
async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while total < (64 << 20) {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Completes once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
