//! One downstream connection: hyper's HTTP/1.1 server over a guarded socket.
//!
//! hyper answers a header timeout by closing the connection silently, and its own 400/431 answers
//! carry none of the `x-janus-*` headers. So the socket is wrapped in [`GuardedIo`], which watches the
//! bytes of each request head before hyper sees them: it times the head from its first byte, bounds its
//! size and parses it with `httparse`. On a fault it keeps the bytes from hyper, fails the read, and
//! [`serve`] answers 408, 431 or 400 itself with the full set of node headers, then closes.
//!
//! The guard knows a head is due at connection start and after each response (the request handler
//! sets [`ConnShared::expect_head`] when it has consumed the body and produced its answer). Heads that
//! arrive pipelined in the same read as the previous request are checked by hyper's own limits only.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

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
    expect_head: AtomicBool,
    fault: Mutex<Option<HeadFault>>,
}

impl ConnShared {
    /// The handler produced its answer: the next bytes read start a new head.
    pub fn expect_head(&self) {
        self.expect_head.store(true, Ordering::Release);
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

enum Phase {
    Head {
        buf: Vec<u8>,
        deadline: Pin<Box<Sleep>>,
    },
    Body,
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
            phase: Phase::Head {
                buf: Vec::new(),
                deadline: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            },
        }
    }

    fn fail(&mut self, fault: HeadFault) -> Poll<io::Result<()>> {
        self.shared.set_fault(fault);
        self.phase = Phase::Body;
        Poll::Ready(Err(io::Error::other("request head refused")))
    }

    /// Checks newly read head bytes; `Some(fault)` when the head must be refused.
    fn inspect(&mut self, new: &[u8]) -> Option<HeadFault> {
        let Phase::Head { buf, deadline } = &mut self.phase else {
            return None;
        };
        if new.is_empty() {
            return None;
        }
        if buf.is_empty() {
            // First byte of the head: the header timeout starts now.
            deadline
                .as_mut()
                .reset((Instant::now() + self.limits.header_timeout).into());
        }
        let room = (self.limits.max_header_bytes + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&new[..new.len().min(room)]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) if n > self.limits.max_header_bytes => {
                Some(self.too_large())
            }
            Ok(httparse::Status::Complete(_)) => {
                self.phase = Phase::Body;
                None
            }
            Ok(httparse::Status::Partial) if buf.len() > self.limits.max_header_bytes => {
                Some(self.too_large())
            }
            Ok(httparse::Status::Partial) => None,
            Err(httparse::Error::TooManyHeaders) => Some(HeadFault::TooLarge(format!(
                "request head has more than {MAX_HEADERS} header fields"
            ))),
            Err(e) => Some(HeadFault::Malformed(format!("malformed request head: {e}"))),
        }
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
        if matches!(this.phase, Phase::Body)
            && this.shared.expect_head.swap(false, Ordering::AcqRel)
        {
            this.phase = Phase::Head {
                buf: Vec::new(),
                deadline: Box::pin(tokio::time::sleep(this.limits.idle_timeout)),
            };
        }
        if let Phase::Head { buf, deadline } = &mut this.phase
            && deadline.as_mut().poll(cx).is_ready()
        {
            let fault = if buf.is_empty() {
                HeadFault::Idle
            } else {
                HeadFault::Timeout
            };
            return this.fail(fault);
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
    if let Some(bytes) = fault.as_ref().and_then(answer_fault) {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    }
    linger_close(&mut stream).await;
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
