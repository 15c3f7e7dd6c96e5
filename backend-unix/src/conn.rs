//! One downstream connection: hyper's HTTP/1.1 server over a guarded socket.
//!
//! hyper answers a header timeout by closing the connection silently, and its own 400/431 answers
//! carry none of the `x-janus-*` headers. So the socket is wrapped in [`GuardedIo`], which watches the
//! bytes of each request head before hyper sees them: it times the head from its first byte, bounds its
//! size and parses it with `httparse`. On a fault it keeps the bytes from hyper, fails the read, and
//! [`serve`] answers 408, 431 or 400 itself with the full set of node headers, then closes.
//!
//! The guard follows the request framing itself (head, then `content-length` bytes of body, then the
//! next head), so pipelined requests are checked too. After a chunked body it waits for the handler's
//! answer before expecting the next head; if hyper ever dispatches a request whose head the guard did
//! not see, the guard switches off for that connection and hyper's own limits apply. The idle timer
//! runs only while no request is between its head and its answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::Service as HyperService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Sleep;

/// Most header fields in one request head.
pub const MAX_HEADERS: usize = 128;

/// Limits of the connection layer.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Time to send a whole head, from its first byte.
    pub header_timeout: Duration,
    /// Time a connection may sit idle between requests.
    pub idle_timeout: Duration,
}

/// Why the connection layer refused a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadFault {
    /// Part of a head arrived but not all of it in time: 408.
    Timeout,
    /// The head is larger than the limit or has too many fields: 431.
    TooLarge(String),
    /// The head does not parse: 400.
    Malformed(String),
    /// No byte of a new request arrived in time: close without an answer.
    Idle,
}

impl HeadFault {
    /// The status to answer with (`None`: close silently).
    pub fn status(&self) -> Option<u16> {
        match self {
            HeadFault::Timeout => Some(408),
            HeadFault::TooLarge(_) => Some(431),
            HeadFault::Malformed(_) => Some(400),
            HeadFault::Idle => None,
        }
    }

    /// A sentence for the client and the log.
    pub fn reason(&self, limits: &ConnLimits) -> String {
        match self {
            HeadFault::Timeout => format!(
                "request head not complete within {} ms",
                limits.header_timeout.as_millis()
            ),
            HeadFault::TooLarge(why) | HeadFault::Malformed(why) => why.clone(),
            HeadFault::Idle => "idle".to_string(),
        }
    }
}

/// State shared by the guard and the request handler of one connection.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Heads the guard has seen complete.
    heads: AtomicU64,
    /// Requests hyper handed to the handler.
    started: AtomicU64,
    /// Requests the handler has answered.
    finished: AtomicU64,
    /// The guard lost track of the framing: hyper's own limits apply from here on.
    off: AtomicBool,
    /// An answer was sent before the request body was read: linger on close.
    unread_body: AtomicBool,
    fault: Mutex<Option<HeadFault>>,
}

impl ConnShared {
    /// The handler got a request. If the guard never saw its head (it arrived pipelined behind a
    /// chunked body), the guard switches itself off for the rest of the connection.
    pub fn request_started(&self) {
        let started = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        if started > self.heads.load(Ordering::Acquire) {
            self.off.store(true, Ordering::Release);
        }
    }

    /// The handler produced its answer.
    pub fn request_finished(&self) {
        self.finished.fetch_add(1, Ordering::AcqRel);
    }

    /// The handler answered without reading the whole body (the connection will close).
    pub fn body_left_unread(&self) {
        self.unread_body.store(true, Ordering::Release);
    }

    /// No request is between its head and its answer.
    fn idle(&self) -> bool {
        self.heads.load(Ordering::Acquire) == self.finished.load(Ordering::Acquire)
    }

    fn set_fault(&self, fault: HeadFault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
    }

    /// The fault that ended the connection, if any.
    pub fn take_fault(&self) -> Option<HeadFault> {
        self.fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Where the guard is in the byte stream.
enum Phase {
    /// Reading a head; `deadline` is the idle timer while `buf` is empty, the header timer after.
    Head {
        buf: Vec<u8>,
        deadline: Option<Pin<Box<Sleep>>>,
    },
    /// Inside a body of known length.
    Body { remaining: u64 },
    /// Inside a chunked body: the next head starts once the handler has answered.
    Chunked,
    /// Framing unknown: pass everything through.
    Off,
}

impl Phase {
    fn head() -> Phase {
        Phase::Head {
            buf: Vec::new(),
            deadline: None,
        }
    }
}

/// How the body of a parsed head is framed.
enum Framing {
    Length(u64),
    Chunked,
    Invalid,
}

fn framing(headers: &[httparse::Header<'_>]) -> Framing {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Framing::Chunked;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (parsed, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Framing::Invalid,
            }
        }
    }
    Framing::Length(length.unwrap_or(0))
}

/// The socket as hyper sees it, with the head guard described in the module docs.
pub struct GuardedIo {
    stream: Arc<TcpStream>,
    shared: Arc<ConnShared>,
    limits: ConnLimits,
    phase: Phase,
}

impl GuardedIo {
    /// Wraps a freshly accepted socket (a head is due first).
    pub fn new(stream: Arc<TcpStream>, shared: Arc<ConnShared>, limits: ConnLimits) -> GuardedIo {
        GuardedIo {
            stream,
            shared,
            limits,
            phase: Phase::head(),
        }
    }

    fn fail(&mut self, fault: HeadFault) -> Poll<io::Result<()>> {
        self.shared.set_fault(fault);
        self.phase = Phase::Off;
        Poll::Ready(Err(io::Error::other("request head refused")))
    }

    /// Follows the framing through newly read bytes; `Some(fault)` when a head must be refused.
    fn inspect(&mut self, new: &[u8]) -> Option<HeadFault> {
        let max = self.limits.max_header_bytes;
        let mut rest = new;
        while !rest.is_empty() {
            match &mut self.phase {
                Phase::Off | Phase::Chunked => return None,
                Phase::Body { remaining } => {
                    let take = (*remaining).min(rest.len() as u64);
                    *remaining -= take;
                    rest = &rest[usize::try_from(take).unwrap_or(rest.len())..];
                    if *remaining == 0 {
                        self.phase = Phase::head();
                    }
                }
                Phase::Head { buf, deadline } => {
                    if buf.is_empty() {
                        // First byte of a head: the header timeout starts now.
                        *deadline = Some(Box::pin(tokio::time::sleep(self.limits.header_timeout)));
                    }
                    let before = buf.len();
                    let take = (max + 1).saturating_sub(before).min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(buf) {
                        Ok(httparse::Status::Complete(n)) if n > max => {
                            return Some(self.too_large());
                        }
                        Ok(httparse::Status::Complete(n)) => {
                            let next = match framing(req.headers) {
                                Framing::Length(0) => Phase::head(),
                                Framing::Length(len) => Phase::Body { remaining: len },
                                Framing::Chunked => Phase::Chunked,
                                Framing::Invalid => {
                                    return Some(HeadFault::Malformed(
                                        "invalid or conflicting content-length".to_string(),
                                    ));
                                }
                            };
                            self.shared.heads.fetch_add(1, Ordering::AcqRel);
                            rest = &rest[n.saturating_sub(before)..];
                            self.phase = next;
                        }
                        Ok(httparse::Status::Partial) if buf.len() > max => {
                            return Some(self.too_large());
                        }
                        Ok(httparse::Status::Partial) => rest = &[],
                        Err(httparse::Error::TooManyHeaders) => {
                            return Some(HeadFault::TooLarge(format!(
                                "request head has more than {MAX_HEADERS} header fields"
                            )));
                        }
                        Err(e) => {
                            return Some(HeadFault::Malformed(format!(
                                "malformed request head: {e}"
                            )));
                        }
                    }
                }
            }
        }
        None
    }

    fn too_large(&self) -> HeadFault {
        HeadFault::TooLarge(format!(
            "request head larger than {} bytes",
            self.limits.max_header_bytes
        ))
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.off.load(Ordering::Acquire) {
            this.phase = Phase::Off;
        }
        if matches!(this.phase, Phase::Chunked) && this.shared.idle() {
            this.phase = Phase::head();
        }
        if let Phase::Head { buf, deadline } = &mut this.phase {
            if buf.is_empty() && deadline.is_none() && this.shared.idle() {
                *deadline = Some(Box::pin(tokio::time::sleep(this.limits.idle_timeout)));
            }
            if let Some(d) = deadline
                && d.as_mut().poll(cx).is_ready()
            {
                let fault = if buf.is_empty() {
                    HeadFault::Idle
                } else {
                    HeadFault::Timeout
                };
                return this.fail(fault);
            }
        }
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let unfilled = out.initialize_unfilled();
            match this.stream.try_read(unfilled) {
                Ok(n) => {
                    if let Some(fault) = this.inspect(&unfilled[..n]) {
                        return this.fail(fault);
                    }
                    out.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            ready!(this.stream.poll_write_ready(cx))?;
            match this.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket is shut down by `serve` once hyper is done with it (after any fault answer).
        Poll::Ready(Ok(()))
    }
}

/// Builds the raw answer to a refused head.
pub type FaultAnswer = Box<dyn FnOnce(&HeadFault) -> Option<Vec<u8>> + Send>;

/// Serves one connection until it closes, the client misbehaves, or shutdown is signalled (then the
/// request in progress completes and the connection closes).
pub async fn serve<Svc>(
    stream: TcpStream,
    limits: ConnLimits,
    shared: Arc<ConnShared>,
    service: Svc,
    answer_fault: FaultAnswer,
    mut shutdown: watch::Receiver<bool>,
) where
    Svc: HyperService<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<http_body_util::Full<bytes::Bytes>>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    Svc::Future: Send + 'static,
{
    let stream = Arc::new(stream);
    let io = GuardedIo::new(Arc::clone(&stream), Arc::clone(&shared), limits);
    let backstop = limits
        .max_header_bytes
        .saturating_mul(2)
        .saturating_add(1024);
    let mut conn = Box::pin(
        http1::Builder::new()
            .keep_alive(true)
            .max_headers(MAX_HEADERS)
            .max_header_size(backstop)
            .max_buf_size(backstop.max(400 * 1024))
            .serve_connection(TokioIo::new(io), service),
    );
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    drop(conn);
    let fault = shared.take_fault();
    if fault.is_none()
        && let Err(e) = &result
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    let Ok(mut stream) = Arc::try_unwrap(stream) else {
        return;
    };
    let linger = fault.is_some() || shared.unread_body.load(Ordering::Acquire);
    if let Some(bytes) = fault.as_ref().and_then(answer_fault) {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    }
    if linger {
        linger_close(&mut stream).await;
    } else {
        let _ = stream.shutdown().await;
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
