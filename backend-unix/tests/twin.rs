//! Shadow twins over real TCP: the op log on the admin port, a twin following a leader (log replay,
//! snapshot on a gap or a new epoch), mirrored requests answered at exactly the asked seq.

mod common;

use std::time::Duration;

use backend_unix::Node;
use common::{admin, config, get, metric, poll, request, start};
use janus_samples_hello::Hello;
use janus_samples_kv::Kv;

async fn seq_of(node: &Node) -> u64 {
    admin(node, "GET", "/health", b"").await.json()["seq"]
        .as_u64()
        .expect("seq")
}

async fn twin_of(leader: &Node, id: &str) -> Node {
    let mut cfg = config(id);
    cfg.follow = Some(leader.admin_addr());
    cfg.mirror_wait_ms = 300;
    start::<Kv>(cfg).await
}

/// Waits until the twin has applied the leader's current seq.
async fn converged(leader: &Node, twin: &Node) -> u64 {
    let want = seq_of(leader).await;
    poll("twin reaches the leader's seq", || async {
        (seq_of(twin).await == want).then_some(want)
    })
    .await
}

async fn put(node: &Node, key: &str, value: &str) {
    let r = request(
        node.public_addr(),
        "PUT",
        &format!("/kv/{key}"),
        &[],
        value.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_log_long_polls_and_refuses_what_it_cannot_give() {
    let node = start::<Kv>(config("log-leader")).await;
    put(&node, "a", "1").await;
    put(&node, "b", "2").await;
    let log = admin(&node, "GET", "/state/log?since=0", b"").await;
    assert_eq!(log.status, 200);
    assert_eq!(log.header("x-janus-state-seq"), Some("2"));
    assert!(log.header("x-janus-state-epoch").is_some());
    let ops = runtime_abi::decode_ops(&log.body).expect("op log");
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[1].key, "b");
    assert_eq!(ops[1].value.as_deref(), Some(&b"2"[..]));
    // Up to date: the long-poll answers with the next write.
    let addr = node.public_addr();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        request(addr, "DELETE", "/kv/a", &[], b"").await
    });
    let next = admin(&node, "GET", "/state/log?since=2&wait_ms=10000", b"").await;
    assert_eq!(writer.await.expect("writer").status, 204);
    let ops = runtime_abi::decode_ops(&next.body).expect("op log");
    assert_eq!((ops.len(), ops[0].seq, ops[0].value.clone()), (1, 3, None));
    let empty = admin(&node, "GET", "/state/log?since=3&wait_ms=20", b"").await;
    assert_eq!(empty.status, 200);
    assert!(
        runtime_abi::decode_ops(&empty.body)
            .expect("op log")
            .is_empty()
    );
    assert_eq!(
        admin(&node, "GET", "/state/log?since=9", b"").await.status,
        409
    );
    assert_eq!(admin(&node, "GET", "/state/log", b"").await.status, 400);
    assert_eq!(
        admin(&node, "GET", "/state/log?since=x", b"").await.status,
        400
    );
    assert_eq!(
        admin(&node, "GET", "/state/log?since=0&wait_ms=99999999", b"")
            .await
            .status,
        400
    );
    assert_eq!(admin(&node, "PUT", "/state/log", b"").await.status, 405);
    // After a restore the history before it is gone: 410, the follower's cue for a snapshot.
    let snap = admin(&node, "GET", "/state", b"").await;
    assert_eq!(admin(&node, "PUT", "/state", &snap.body).await.status, 204);
    assert_eq!(
        admin(&node, "GET", "/state/log?since=1", b"").await.status,
        410
    );
    node.stop().await;
    let hello = start::<Hello>(config("log-hello")).await;
    assert_eq!(
        admin(&hello, "GET", "/state/log?since=0", b"").await.status,
        404
    );
    hello.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_follows_by_log_and_by_snapshot() {
    let leader = start::<Kv>(config("twin-leader")).await;
    // More writes than the log retains before the twin starts: it must begin with a snapshot.
    for i in 0..1100 {
        put(&leader, &format!("k{}", i % 50), &i.to_string()).await;
    }
    let twin = twin_of(&leader, "twin-1").await;
    converged(&leader, &twin).await;
    let h = admin(&twin, "GET", "/health", b"").await.json();
    assert_eq!(h["twin"]["resyncs"], 1, "{h}");
    // Then by log replay.
    for i in 0..200 {
        put(&leader, &format!("n{}", i % 7), &i.to_string()).await;
    }
    request(leader.public_addr(), "DELETE", "/kv/n3", &[], b"").await;
    let seq = converged(&leader, &twin).await;
    assert_eq!(
        admin(&twin, "GET", "/state", b"").await.body,
        admin(&leader, "GET", "/state", b"").await.body,
        "same state, byte for byte, at seq {seq}"
    );
    let h = admin(&twin, "GET", "/health", b"").await.json();
    assert_eq!(h["twin"]["resyncs"], 1, "{h}");
    assert!(
        h["twin"]["ops_applied"].as_u64().expect("ops") >= 201,
        "{h}"
    );
    // A restore on the leader starts a new epoch: the twin takes a snapshot again.
    let mut other = runtime_abi::MemStore::new(runtime_abi::StoreLimits::default());
    other.put("only", b"this".to_vec()).expect("put");
    assert_eq!(
        admin(&leader, "PUT", "/state", &other.snapshot())
            .await
            .status,
        204
    );
    poll("twin takes the restored state", || async {
        (get(twin.public_addr(), "/kv/only").await.status == 200).then_some(())
    })
    .await;
    assert_eq!(get(twin.public_addr(), "/kv/n0").await.status, 404);
    leader.stop().await;
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_answer_at_exactly_the_asked_seq() {
    let leader = start::<Kv>(config("mirror-leader")).await;
    let twin = twin_of(&leader, "mirror-twin").await;
    put(&leader, "a", "1").await;
    let seq = converged(&leader, &twin).await;
    let at = seq.to_string();
    let r = request(
        twin.public_addr(),
        "GET",
        "/kv/a",
        &[("x-janus-mirror-seq", &at)],
        b"",
    )
    .await;
    assert_eq!((r.status, r.text()), (200, "1".to_owned()));
    assert_eq!(r.header("x-janus-state-seq"), Some(at.as_str()));

    // A mirror for a seq the twin has not reached waits for it (the leader's write comes later).
    let next = (seq + 1).to_string();
    let twin_addr = twin.public_addr();
    let waiting = tokio::spawn(async move {
        request(
            twin_addr,
            "GET",
            "/kv/a",
            &[("x-janus-mirror-seq", &next)],
            b"",
        )
        .await
    });
    // The write only once the twin holds the mirror (it waits for seq `next`).
    poll("the twin holding the mirror", || async {
        (metric(&twin, "janus_requests_in_flight").await == Some(1.0)).then_some(())
    })
    .await;
    put(&leader, "a", "2").await;
    let r = waiting.await.expect("mirror");
    assert_eq!((r.status, r.text()), (200, "2".to_owned()));
    assert_eq!(
        r.header("x-janus-state-seq"),
        Some((seq + 1).to_string().as_str())
    );

    // Past seq (the twin is ahead) and a seq that never comes: skipped, marked as lag.
    converged(&leader, &twin).await;
    for asked in [seq.to_string(), (seq + 100).to_string()] {
        let r = request(
            twin.public_addr(),
            "GET",
            "/kv/a",
            &[("x-janus-mirror-seq", &asked)],
            b"",
        )
        .await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("x-janus-mirror-skipped"), Some("lag"));
    }
    let h = admin(&twin, "GET", "/health", b"").await.json();
    assert_eq!(h["twin"]["mirrors_skipped_lag"], 2, "{h}");
    assert_eq!(h["twin"]["mirrors_answered"], 2, "{h}");

    // What a request writes on a twin is rolled back: its state stays the leader's.
    let before = seq_of(&twin).await;
    put(&twin, "local", "x").await;
    assert_eq!(seq_of(&twin).await, before);
    assert_eq!(get(twin.public_addr(), "/kv/local").await.status, 404);
    put(&leader, "b", "3").await;
    converged(&leader, &twin).await;
    assert_eq!(
        admin(&twin, "GET", "/state", b"").await.body,
        admin(&leader, "GET", "/state", b"").await.body
    );
    leader.stop().await;
    twin.stop().await;
}
