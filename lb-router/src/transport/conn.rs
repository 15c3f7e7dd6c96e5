//! The node-connection pool: each worker's idle keep-alive connections to nodes' service listeners
//! (a short per-node list in a thread-local: checkout and checkin take no lock), new connections
//! within `upstream.connect_timeout_ms`, and one request-answer exchange on an exclusive connection.
//! Lanes ([`super::lane`]) are the pool's pipelined mode.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::answer::{AnswerReader, ExchangeError, RawResponse};
use super::{KEEP_CAPACITY, Limits, READ_CHUNK};
use crate::upstream::UpstreamError;

/// A keep-alive connection to a node's service listener, owned by one worker thread.
pub(crate) struct RawConn {
    stream: TcpStream,
    /// The answer being read (cleared before each request).
    pub(crate) buf: Vec<u8>,
    idle_since: std::time::Instant,
    /// The generation it was made at (see [`super::retire`]).
    generation: u64,
}

thread_local! {
    /// This worker's idle node connections, per node address: checkout and checkin take no lock.
    /// A short list searched linearly (a router has few nodes; no hashing per request).
    static IDLE: RefCell<Vec<(SocketAddr, Vec<RawConn>)>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection to `addr` that is still open and quiet, if this worker has one. `now` is about
/// now (a time the caller already read).
pub(crate) fn checkout(limits: &Limits, addr: SocketAddr, now: Instant) -> Option<RawConn> {
    let idle_timeout = limits.idle_timeout;
    let now = now.into_std();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let (_, list) = idle.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some(mut conn) = list.pop() {
            if now.saturating_duration_since(conn.idle_since) <= idle_timeout
                && quiet(&conn.stream)
                && super::retire::still_current(addr, &mut conn.generation)
            {
                return Some(conn);
            }
        }
        None
    })
}

/// An idle connection has nothing to read: no readiness was signalled since its last answer was read
/// to the end. A node that closed it (or sent something unasked) makes it readable.
fn quiet(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(stream.poll_read_ready(&mut cx), Poll::Pending)
}

/// Keeps `conn` for the next request; `now` is about now (a time the caller already read).
pub(crate) fn checkin(limits: &Limits, addr: SocketAddr, mut conn: RawConn, now: Instant) {
    conn.idle_since = now.into_std();
    if conn.buf.capacity() > KEEP_CAPACITY {
        conn.buf = Vec::with_capacity(READ_CHUNK);
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = per_node(&mut idle, addr);
        if list.len() < limits.max_idle {
            list.push(conn);
        }
    });
}

/// The entry for `addr` in a worker's short per-node list, made if missing.
pub(crate) fn per_node<T>(lists: &mut Vec<(SocketAddr, Vec<T>)>, addr: SocketAddr) -> &mut Vec<T> {
    let i = lists
        .iter()
        .position(|(a, _)| *a == addr)
        .unwrap_or_else(|| {
            lists.push((addr, Vec::new()));
            lists.len() - 1
        });
    &mut lists[i].1
}

pub(crate) async fn connect(
    limits: &Limits,
    addr: SocketAddr,
    node: &str,
) -> Result<RawConn, UpstreamError> {
    let limit = limits.connect_timeout;
    let connect_error = |reason: String| UpstreamError::Connect {
        node: node.to_owned(),
        reason,
    };
    let generation = super::retire::generation();
    let stream = timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_error(format!("no connection within {} ms", limit.as_millis())))?
        .map_err(|e| connect_error(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(RawConn {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
        idle_since: std::time::Instant::now(),
        generation,
    })
}

/// Writes the request, reads the answer (skipping 1xx interim answers) to its end.
pub(crate) async fn exchange(
    conn: &mut RawConn,
    fwd: &[u8],
    head_request: bool,
    max_body: usize,
) -> Result<RawResponse, ExchangeError> {
    conn.buf.clear();
    if let Err(e) = conn.stream.write_all(fwd).await {
        return Err(ExchangeError::Unsent(e.to_string()));
    }
    let mut reader = AnswerReader::default();
    loop {
        if let Some((mut raw, end)) = reader.step(&mut conn.buf, head_request, max_body)? {
            raw.reusable &= conn.buf.len() == end;
            return Ok(raw);
        }
        conn.buf.reserve(READ_CHUNK);
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => return reader.at_close(&conn.buf),
            Ok(_) => {}
            Err(e) => return Err(reader.on_error(&conn.buf, e)),
        }
    }
}
