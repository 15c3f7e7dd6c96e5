//! The resource envelope over real TCP (its own test binary: the envelope is process-wide): a request
//! whose live allocations pass the stable node's heap size fails as a panic naming the allocation,
//! with the allocation's backtrace; within it, and with the envelope off, the same request succeeds.
//! Under the envelope the node also holds no more client connections than the unikernel would.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{admin, config, request, start};
use janus_samples_faulty::Faulty;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection that got an answer to one request and stays open (keep-alive), or `None` when the
/// node closed it unanswered.
async fn answered_and_open(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /div?a=6&b=3 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf[..n].starts_with(b"HTTP/1.1 200").then_some(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_envelope_panics_with_the_allocations_backtrace() {
    let mut cfg = config("envelope");
    cfg.heap_envelope = Some(4 << 20);
    let node = start::<Faulty>(cfg).await;
    let addr = node.public_addr();
    let small = request(addr, "POST", "/blob?kib=64", &[], b"").await;
    assert_eq!(small.status, 200, "{}", small.text());

    let big = request(addr, "POST", "/blob?kib=8192", &[], b"").await;
    assert_eq!(big.status, 500, "{}", big.text());
    assert_eq!(big.header("x-janus-fault"), Some("panic"));
    let trace = big.header("x-janus-trace-id").expect("trace id").to_owned();
    let t = admin(&node, "GET", &format!("/traces/{trace}"), b"")
        .await
        .text();
    assert!(t.contains("exceeds the resource envelope"), "{t}");
    assert!(t.contains("allocation of 8388608 bytes"), "{t}");
    assert!(
        t.contains("blob"),
        "the allocation's backtrace names the service function: {t}"
    );

    // The unikernel's TCP socket cap for that heap: as many client connections as it holds are
    // served, the next is closed unanswered, and one closing makes room again.
    let cap = runtime_abi::node::uk_connection_cap(4 << 20);
    let mut held = Vec::new();
    while let Some(c) = answered_and_open(addr).await {
        held.push(c);
        assert!(held.len() <= cap, "more than {cap} connections held");
    }
    assert_eq!(held.len(), cap, "connections held under the envelope");
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let again = loop {
        if let Some(c) = answered_and_open(addr).await {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::task::yield_now().await;
    };
    // With the envelope off (below) the cap goes with it.
    drop((held, again));

    // The node keeps serving, and with the envelope off the same request succeeds.
    assert_eq!(
        admin(&node, "GET", "/envelope", b"").await.json()["envelope_bytes"],
        4 << 20
    );
    assert_eq!(admin(&node, "PUT", "/envelope", b"0").await.status, 200);
    assert_eq!(admin(&node, "PUT", "/envelope", b"lots").await.status, 400);
    let big = request(addr, "POST", "/blob?kib=8192", &[], b"").await;
    assert_eq!(big.status, 200, "{}", big.text());
    node.stop().await;
}
