//! The admin listener over real TCP: auth, health, metrics, log level, flight recorder, panics, state.

mod common;

use std::collections::BTreeMap;

use common::{admin, config, get, metric, request, start};
use janus_samples_faulty::Faulty;
use janus_samples_hello::Hello;
use janus_samples_kv::Kv;
use runtime_abi::store::encode_snapshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_bearer_token() {
    let node = start::<Kv>(config("kv-auth")).await;
    let addr = node.admin_addr();
    let none = request(addr, "GET", "/health", &[], b"").await;
    assert_eq!(none.status, 401);
    let wrong = request(
        addr,
        "GET",
        "/health",
        &[("authorization", "Bearer test-tokeN")],
        b"",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let state = request(addr, "GET", "/state", &[], b"").await;
    assert_eq!(state.status, 401, "state is protected too");
    let ok = admin(&node, "GET", "/health", b"").await;
    assert_eq!(ok.status, 200);
    let v = ok.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["node"], "kv-auth");
    assert_eq!(v["flavor"], "unix");
    assert_eq!(v["service"], "kv");
    assert_eq!(v["seq"], 0);
    node.stop().await;

    let hello = start::<Hello>(config("hello-health")).await;
    let v = admin(&hello, "GET", "/health", b"").await.json();
    assert!(v["seq"].is_null(), "no store: seq is null");
    hello.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_token_is_written_to_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let mut cfg = config("kv-token-file-test");
    cfg.admin_token = None;
    let node = start::<Kv>(cfg).await;
    let path = node.token_file().expect("token file").to_path_buf();
    assert!(
        path.to_string_lossy()
            .ends_with("janus-kv-token-file-test.token")
    );
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).expect("read token");
    assert_eq!(token.trim(), node.admin_token());
    assert!(node.admin_token().len() >= 32);
    assert_eq!(admin(&node, "GET", "/health", b"").await.status, 200);
    node.stop().await;
    assert!(!path.exists(), "the token file is removed with the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_store_ops_and_latency() {
    let node = start::<Kv>(config("kv-metrics")).await;
    let addr = node.public_addr();
    for i in 0..3 {
        let r = request(addr, "PUT", &format!("/kv/k{i}"), &[], b"v").await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(get(addr, "/kv/k0").await.status, 200);
    assert_eq!(get(addr, "/kv/missing").await.status, 404);
    let text = admin(&node, "GET", "/metrics", b"").await.text();
    assert!(text.contains("# TYPE janus_request_duration_seconds histogram"));
    assert_eq!(
        metric(&node, "janus_requests_total{status=\"200\"}").await,
        Some(4.0)
    );
    assert_eq!(
        metric(&node, "janus_requests_total{status=\"404\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&node, "janus_store_ops_total{op=\"put\"}").await,
        Some(3.0)
    );
    assert_eq!(
        metric(&node, "janus_store_ops_total{op=\"get\"}").await,
        Some(2.0)
    );
    assert_eq!(
        metric(&node, "janus_request_duration_seconds_count").await,
        Some(5.0)
    );
    assert_eq!(
        metric(&node, "janus_request_duration_seconds_bucket{le=\"+Inf\"}").await,
        Some(5.0)
    );
    assert_eq!(metric(&node, "janus_requests_in_flight").await, Some(0.0));
    assert_eq!(metric(&node, "janus_panics_total").await, Some(0.0));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_at_run_time_and_bad_directives_keep_the_old_one() {
    let node = start::<Hello>(config("hello-log")).await;
    assert_eq!(admin(&node, "GET", "/log-level", b"").await.text(), "info");
    let r = admin(&node, "PUT", "/log-level", b"debug,hyper=warn").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        admin(&node, "GET", "/log-level", b"").await.text(),
        "debug,hyper=warn"
    );
    let bad = admin(&node, "PUT", "/log-level", b"=[[nope").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .expect("error")
            .contains("nope")
    );
    assert_eq!(
        admin(&node, "GET", "/log-level", b"").await.text(),
        "debug,hyper=warn"
    );
    assert_eq!(admin(&node, "PUT", "/log-level", b"  ").await.status, 400);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_recorder_keeps_store_spans_under_the_request_span() {
    let node = start::<Kv>(config("kv-traces")).await;
    let trace = "abcdefabcdefabcdefabcdefabcdef01";
    let r = request(
        node.public_addr(),
        "PUT",
        "/kv/alpha",
        &[("x-janus-trace-id", trace)],
        b"one",
    )
    .await;
    assert_eq!(r.status, 200);
    let t = admin(&node, "GET", &format!("/traces/{trace}"), b"").await;
    assert_eq!(t.status, 200);
    let t = t.json();
    assert_eq!(t["trace_id"], trace);
    assert_eq!(t["in_flight"], false);
    let spans = t["spans"].as_array().expect("spans");
    assert_eq!(spans[0]["name"], "request");
    assert_eq!(spans[0]["fields"]["method"], "PUT");
    assert_eq!(spans[0]["fields"]["path"], "/kv/alpha");
    assert_eq!(spans[0]["fields"]["status"], 200);
    assert!(spans[0]["end_us"].is_u64());
    let put = spans
        .iter()
        .find(|s| s["name"] == "store.put")
        .expect("store.put span");
    assert_eq!(put["parent"], 0);
    assert_eq!(put["fields"]["key"], "alpha");
    assert_eq!(put["fields"]["seq"], 1);
    let events = t["events"].as_array().expect("events");
    let stored = events
        .iter()
        .find(|e| e["message"] == "stored")
        .expect("the service's event");
    assert_eq!(stored["fields"]["key"], "alpha");
    assert_eq!(stored["span"], 0);

    // Unknown ids are 404; the list has the newest first.
    let missing = admin(
        &node,
        "GET",
        "/traces/00000000000000000000000000000009",
        b"",
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(get(node.public_addr(), "/kv/alpha").await.status, 200);
    let list = admin(&node, "GET", "/traces?last=1", b"").await.json();
    let list = list["traces"].as_array().expect("traces");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["spans"][0]["fields"]["method"], "GET");
    let get_span = list[0]["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .find(|s| s["name"] == "store.get")
        .expect("store.get recorded at the default info log level");
    assert_eq!(get_span["fields"]["seq"], 1);
    assert_eq!(admin(&node, "GET", "/traces?last=x", b"").await.status, 400);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_becomes_a_500_with_a_full_trace_and_the_node_keeps_serving() {
    let node = start::<Faulty>(config("faulty-panic")).await;
    let r = get(node.public_addr(), "/div?a=1&b=0").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-janus-fault"), Some("panic"));
    r.assert_node_headers("faulty-panic");
    let body = r.json();
    let trace_id = r.header("x-janus-trace-id").expect("trace").to_string();
    assert_eq!(body["trace_id"], trace_id.as_str());
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("divide by zero"),
        "{body}"
    );
    let t = admin(&node, "GET", &format!("/traces/{trace_id}"), b"")
        .await
        .json();
    let events = t["events"].as_array().expect("events");
    let panic = events
        .iter()
        .find(|e| e["target"] == "janus::panic")
        .expect("panic event in the trace");
    assert_eq!(panic["level"], "ERROR");
    assert!(
        panic["fields"]["panic_message"]
            .as_str()
            .expect("message")
            .contains("divide by zero")
    );
    assert!(
        panic["fields"]["panic_location"]
            .as_str()
            .expect("location")
            .contains("faulty")
    );
    let bt = panic["fields"]["panic_backtrace"]
        .as_str()
        .expect("backtrace");
    assert!(bt.lines().count() > 3, "{bt}");
    let first = bt.lines().next().unwrap_or("");
    assert!(
        !first.contains("panicking") && !first.contains("telemetry"),
        "the backtrace starts at the panicking code: {bt}"
    );
    assert!(bt.contains("samples/faulty/src/lib.rs"), "{bt}");
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "dividing" && e["fields"]["b"] == 0),
        "the service's own event before the panic"
    );
    assert_eq!(t["spans"][0]["fields"]["status"], 500);
    // The node keeps serving.
    let ok = get(node.public_addr(), "/div?a=9&b=3").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["quotient"], 3);
    assert_eq!(metric(&node, "janus_panics_total").await, Some(1.0));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_snapshot_as_of_restore_and_corrupt_input() {
    let node = start::<Kv>(config("kv-state")).await;
    let addr = node.public_addr();
    assert_eq!(request(addr, "PUT", "/kv/a", &[], b"1").await.status, 200);
    assert_eq!(request(addr, "PUT", "/kv/b", &[], b"2").await.status, 200);
    assert_eq!(request(addr, "PUT", "/kv/a", &[], b"3").await.status, 200);

    let now = admin(&node, "GET", "/state", b"").await;
    assert_eq!(now.status, 200);
    assert_eq!(now.header("content-type"), Some("application/octet-stream"));
    assert_eq!(now.header("x-janus-state-seq"), Some("3"));
    let mut expect = BTreeMap::new();
    expect.insert("a".to_string(), b"3".to_vec());
    expect.insert("b".to_string(), b"2".to_vec());
    assert_eq!(now.body, encode_snapshot(3, &expect));

    let at1 = admin(&node, "GET", "/state?seq=1", b"").await;
    assert_eq!(at1.status, 200);
    assert_eq!(at1.header("x-janus-state-seq"), Some("1"));
    let mut one = BTreeMap::new();
    one.insert("a".to_string(), b"1".to_vec());
    assert_eq!(at1.body, encode_snapshot(1, &one));
    assert_eq!(admin(&node, "GET", "/state?seq=9", b"").await.status, 400);
    assert_eq!(admin(&node, "GET", "/state?seq=x", b"").await.status, 400);

    // Restore the as-of-1 snapshot into a second node.
    let other = start::<Kv>(config("kv-state-2")).await;
    let put = admin(&other, "PUT", "/state", &at1.body).await;
    assert_eq!(put.status, 204);
    assert_eq!(put.header("x-janus-state-seq"), Some("1"));
    assert_eq!(get(other.public_addr(), "/kv/a").await.text(), "1");
    assert_eq!(get(other.public_addr(), "/kv/b").await.status, 404);
    // History before a restore is gone: 410.
    let gone = admin(&other, "GET", "/state?seq=0", b"").await;
    assert_eq!(gone.status, 410);

    // Corrupt and truncated snapshots are refused and change nothing.
    let mut flipped = now.body.clone();
    flipped[8] ^= 0x55;
    let bad = admin(&other, "PUT", "/state", &flipped).await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .expect("error")
            .contains("corrupt")
    );
    let cut = admin(&other, "PUT", "/state", &now.body[..now.body.len() - 3]).await;
    assert_eq!(cut.status, 400);
    let garbage = admin(&other, "PUT", "/state", b"hello").await;
    assert_eq!(garbage.status, 400);
    assert_eq!(
        admin(&other, "GET", "/state", b"").await.body,
        at1.body,
        "state unchanged"
    );
    node.stop().await;
    other.stop().await;

    let hello = start::<Hello>(config("hello-state")).await;
    assert_eq!(admin(&hello, "GET", "/state", b"").await.status, 404);
    assert_eq!(admin(&hello, "PUT", "/state", b"x").await.status, 404);
    hello.stop().await;
}
