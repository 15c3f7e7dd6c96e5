//! The downstream listener: accepts clients under a connection cap and serves HTTP/1.1 keep-alive with
//! the client-side limits (header read timeout -> 408, header size/count -> 431, body size -> 413, body
//! read timeout -> 408, malformed -> 400), so a slow or hostile client cannot pin the router.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::router::Router;

/// A client connection shared between hyper and the router, so that the router can still answer
/// `408` on the socket after hyper gives up on a request head that came too slowly.
struct SharedConn {
    stream: Arc<TcpStream>,
    /// Bytes of a request head/body were read and no response was written since.
    mid_request: Arc<AtomicBool>,
}

impl AsyncRead for SharedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.stream.try_read(unfilled) {
                Ok(n) => {
                    if n > 0 {
                        self.mid_request.store(true, Ordering::Relaxed);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => {
                    self.mid_request.store(false, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Ok(n) => {
                    self.mid_request.store(false, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The socket closes when the last handle drops, right after the connection task ends.
        Poll::Ready(Ok(()))
    }
}

const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 57\r\nx-janus-router-error: header_timeout\r\n\r\ndownstream: request head not received in time (retry ok)\n";

/// Serves clients forever on `listener`.
/// `slots` is shared by all workers: it caps open client connections router-wide.
pub async fn serve_downstream(router: Arc<Router>, listener: TcpListener, slots: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "downstream accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            router.metrics.downstream_rejected.inc();
            drop(stream);
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(router, stream, peer).await;
        });
    }
}

async fn serve_connection(router: Arc<Router>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let cfg = router.config();
    let stream = Arc::new(stream);
    let mid_request = Arc::new(AtomicBool::new(false));
    let io = SharedConn {
        stream: stream.clone(),
        mid_request: mid_request.clone(),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(cfg.header_read_timeout())
        .max_buf_size(cfg.downstream.max_header_bytes.max(8192) + 8192)
        .max_header_size(cfg.downstream.max_header_bytes)
        .max_headers(cfg.downstream.max_headers);
    let svc_router = router.clone();
    let service = service_fn(move |req| {
        let router = svc_router.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                crate::proxy::handle(router, req, Some(peer.ip())).await,
            )
        }
    });
    let result = builder.serve_connection(TokioIo::new(io), service).await;
    if let Err(e) = result {
        if e.is_timeout() && mid_request.load(Ordering::Relaxed) {
            router.metrics.record_router_response(408);
            let _ = write_all(&stream, REQUEST_TIMEOUT_RESPONSE).await;
        }
        tracing::debug!(error = %e, %peer, "downstream connection ended with an error");
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
