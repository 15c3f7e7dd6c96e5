//! The resource envelope over real TCP (its own test binary: the envelope is process-wide): a request
//! whose live allocations pass the stable node's heap size fails as a panic naming the allocation,
//! with the allocation's backtrace; within it, and with the envelope off, the same request succeeds.

mod common;

use common::{admin, config, request, start};
use janus_samples_faulty::Faulty;

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
