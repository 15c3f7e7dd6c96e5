//! The downstream listener: accepts clients under a connection cap and serves HTTP/1.1 keep-alive with
//! the client-side limits (header read timeout -> 408, header size/count -> 431, body size -> 413, body
//! read timeout -> 408, malformed -> 400), so a slow or hostile client cannot pin the router.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::router::Router;

/// A client connection that remembers whether a request is under way (bytes read since the last
/// response bytes were written), so that the router can answer `408` (on a duplicate of the socket)
/// when hyper gives up on a request head that came too slowly, and close idle keep-alive connections
/// silently.
struct TrackedConn {
    stream: TcpStream,
    /// Bytes the fast path read before handing the connection over, served first.
    prefix: Vec<u8>,
    prefix_pos: usize,
    mid_request: Arc<AtomicBool>,
    /// A client that stops reading cannot pin the connection (and its buffered answer): a write that
    /// makes no progress for this long fails the connection.
    write_timeout: Duration,
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TrackedConn {
    /// Called when a write is pending: arms the stall timer, or fails once it fired.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.write_timeout;
        let sleep = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "downstream: client read nothing for {} ms",
                    timeout.as_millis()
                ),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for TrackedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(rest) = self.prefix.get(self.prefix_pos..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.prefix_pos += n;
            self.mid_request.store(true, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.mid_request.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TrackedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.write_stall = None;
                self.mid_request.store(false, Ordering::Relaxed);
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.write_stall = None;
                self.mid_request.store(false, Ordering::Relaxed);
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

pub(crate) const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 57\r\nx-janus-router-error: header_timeout\r\n\r\ndownstream: request head not received in time (retry ok)\n";

/// The downstream workers' client connections, kept even: a worker hands a connection it accepted
/// to the least loaded one when it holds more than that one. The kernel spreads connections over
/// `SO_REUSEPORT` listeners by a hash of their addresses and ports, not by load: 64 keep-alive
/// connections were seen split 42/22 over two workers, where every request of the busier
/// worker's connections waits behind nearly twice as many (its p50 and p99 both longer). HAProxy
/// assigns connections to its threads by load the same way.
pub struct Balance {
    /// Open client connections per worker.
    load: Vec<AtomicUsize>,
    handoff: Vec<mpsc::UnboundedSender<Handed>>,
}

/// A connection accepted by one worker and served by another.
pub struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    load: Load,
}

/// One connection counted in a worker's load until dropped.
pub struct Load {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.balance.load[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balance {
    /// For `workers` workers; each gets its receiving end of hand-overs.
    pub fn new(workers: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (tx, rx) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let load = (0..workers).map(|_| AtomicUsize::new(0)).collect();
        (Arc::new(Self { load, handoff: tx }), rx)
    }

    /// The worker that serves a connection `me` just accepted, counted in its load.
    fn assign(self: &Arc<Self>, me: usize) -> Load {
        let mine = self.load[me].load(Ordering::Relaxed);
        let (least, least_load) = self
            .load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, l)| l)
            .unwrap_or((me, mine));
        let worker = if least_load < mine { least } else { me };
        self.load[worker].fetch_add(1, Ordering::Relaxed);
        Load {
            balance: self.clone(),
            worker,
        }
    }
}

/// Serves clients forever on `listener` (worker `me`), and the connections other workers hand over.
/// `slots` is shared by all workers: it caps open client connections router-wide.
pub async fn serve_downstream(
    router: Arc<Router>,
    listener: TcpListener,
    slots: Arc<Semaphore>,
    balance: Arc<Balance>,
    me: usize,
    mut handed: mpsc::UnboundedReceiver<Handed>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "downstream accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(h) = handed.recv() => {
                if let Ok(stream) = TcpStream::from_std(h.stream) {
                    let router = router.clone();
                    tokio::spawn(async move {
                        let _held = (h.permit, h.load);
                        crate::fast::serve_connection(router, stream, h.peer).await;
                    });
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            router.metrics.downstream_rejected.inc();
            drop(stream);
            continue;
        };
        let load = balance.assign(me);
        if load.worker != me {
            let target = load.worker;
            if let Ok(stream) = stream.into_std() {
                let h = Handed {
                    stream,
                    peer,
                    permit,
                    load,
                };
                // A worker that ended (shutdown) drops what it is handed: the client sees a close.
                let _ = balance.handoff[target].send(h);
            }
            continue;
        }
        let router = router.clone();
        tokio::spawn(async move {
            let _held = (permit, load);
            crate::fast::serve_connection(router, stream, peer).await;
        });
    }
}

/// The general path: hyper serves the connection (from `prefix`, the bytes the fast path already
/// read) with every client-side limit, each request going through `proxy::handle`.
pub(crate) async fn serve_general(
    router: Arc<Router>,
    stream: TcpStream,
    peer: SocketAddr,
    prefix: Vec<u8>,
) {
    // A duplicate of the socket, kept to answer 408 after hyper has given the connection up.
    let (stream, dup) = match stream.into_std().and_then(|s| Ok((s.try_clone()?, s))) {
        Ok((dup, s)) => match TcpStream::from_std(s) {
            Ok(s) => (s, Some(dup)),
            Err(_) => return,
        },
        Err(_) => return,
    };
    let cfg = router.config();
    let mid_request = Arc::new(AtomicBool::new(false));
    let io = TrackedConn {
        stream,
        prefix,
        prefix_pos: 0,
        mid_request: mid_request.clone(),
        write_timeout: Duration::from_millis(cfg.downstream.write_timeout_ms),
        write_stall: None,
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
        if e.is_timeout()
            && mid_request.load(Ordering::Relaxed)
            && let Some(dup) = dup
            && let Ok(dup) = TcpStream::from_std(dup)
        {
            router.metrics.record_router_response(408);
            let _ = write_all(&dup, REQUEST_TIMEOUT_RESPONSE).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_worker() {
        let (balance, _handed) = Balance::new(2);
        let load = |b: &Balance| [0, 1].map(|w| b.load[w].load(Ordering::Relaxed));
        // Worker 0 accepts everything (the kernel's hash can send it every connection).
        let a = balance.assign(0);
        assert_eq!((a.worker, load(&balance)), (0, [1, 0]), "even: kept");
        let b = balance.assign(0);
        assert_eq!((b.worker, load(&balance)), (1, [1, 1]), "handed to 1");
        let c = balance.assign(0);
        assert_eq!((c.worker, load(&balance)), (0, [2, 1]));
        let d = balance.assign(0);
        assert_eq!((d.worker, load(&balance)), (1, [2, 2]));
        // Connections that close leave the count; the next one fills the gap.
        drop((b, d));
        assert_eq!(load(&balance), [2, 0]);
        let e = balance.assign(0);
        assert_eq!((e.worker, load(&balance)), (1, [2, 1]));
        let f = balance.assign(1);
        assert_eq!(
            (f.worker, load(&balance)),
            (1, [2, 2]),
            "worker 1 keeps its own when even"
        );
        drop((a, c, e, f));
        assert_eq!(load(&balance), [0, 0]);
    }
}
