//! One TCP connection of a node: the janus-http1 codec fed from the socket, requests handed to the
//! node (a service request abandoned when its client leaves), answers written back with a stall
//! limit.

use alloc::vec;

use janus_http1::{Event, Limits, ServerConn};
use runtime_abi::Service;

use crate::metrics::{KERNEL, KernelCounters};
use crate::net::TcpStream;
use crate::node::Node;
use crate::{clock, kprintln, rt};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Service,
    Admin,
}
fn now_ms() -> u64 {
    clock::monotonic_ns() / 1_000_000
}
/// How long a client may take none of an answer before its connection is reset.
const WRITE_STALL_MS: u64 = 10_000;

/// Writes `data`; a client that takes none of it for [`WRITE_STALL_MS`] (it stopped reading,
/// its window stays shut) has its connection reset. A slow reader that keeps taking bytes is
/// never cut.
async fn write_out(
    stream: &mut TcpStream,
    mut data: &[u8],
    timers: &alloc::sync::Arc<crate::executor::Timers>,
) -> Result<(), ()> {
    while !data.is_empty() {
        let deadline = now_ms() + WRITE_STALL_MS;
        match crate::executor::timeout(timers, deadline, stream.write(data)).await {
            Some(Ok(n)) => data = &data[n..],
            Some(Err(_)) => return Err(()),
            None => {
                KernelCounters::bump(&KERNEL.write_timeouts);
                stream.abort();
                return Err(());
            }
        }
    }
    Ok(())
}

pub(crate) async fn serve_conn<S: Service>(
    node: &'static Node<S>,
    mut stream: TcpStream,
    kind: Kind,
) {
    let mut conn = ServerConn::new(match kind {
        Kind::Service => Limits::DEFAULT,
        Kind::Admin => node.admin_limits(crate::mm::heap::size() as usize),
    });
    let mut buf = vec![0u8; 8192];
    let mut pending: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
    let timers = rt::timers();
    loop {
        // Offer buffered input (the codec may take less when its buffer is full).
        if !pending.is_empty() {
            let taken = conn.feed(&pending);
            pending.drain(..taken);
        }
        while let Some(event) = conn.poll(now_ms()) {
            match event {
                Event::Request(req) => {
                    let resp = match kind {
                        Kind::Service => {
                            // A client that leaves takes its handler with it (and frees
                            // this task and its socket), however long the handler would run.
                            let answer = crate::executor::unless(
                                stream.peer_closed(),
                                node.handle_service(req),
                            );
                            match answer.await {
                                Some(resp) => resp,
                                None => {
                                    KernelCounters::bump(&KERNEL.abandoned);
                                    return;
                                }
                            }
                        }
                        Kind::Admin => {
                            if let Some((since, wait)) = node.log_wait(&req)
                                && let Some(store) = &node.store
                            {
                                let _ = crate::executor::timeout(
                                    &timers,
                                    now_ms().saturating_add(wait),
                                    store.changed_from(since),
                                )
                                .await;
                            }
                            node.handle_admin(&req)
                        }
                    };
                    if let Err(e) = conn.respond(&resp) {
                        kprintln!("http: cannot encode response: {e}");
                        let _ = conn.respond(&janus_http1::Response::text(
                            500,
                            "response could not be encoded\n",
                        ));
                    }
                }
                Event::Error(e) => {
                    if kind == Kind::Service {
                        node.metrics.record_request(e.status(), 0);
                    }
                }
                Event::IdleTimeout => {}
            }
            if !pending.is_empty() {
                let taken = conn.feed(&pending);
                pending.drain(..taken);
            }
        }
        if !conn.output().is_empty() {
            let out = conn.take_output();
            if write_out(&mut stream, &out, &timers).await.is_err() {
                return;
            }
        }
        if conn.should_close() {
            return;
        }
        if !pending.is_empty() {
            // The codec is full and has nothing to say: the peer pipelines beyond the limit.
            continue;
        }
        let read = match conn.next_deadline() {
            Some(deadline) => {
                match crate::executor::timeout(&timers, deadline, stream.read(&mut buf)).await {
                    Some(r) => r,
                    None => continue,
                }
            }
            None => stream.read(&mut buf).await,
        };
        match read {
            Ok(0) => conn.feed_eof(),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(_) => return,
        }
    }
}
