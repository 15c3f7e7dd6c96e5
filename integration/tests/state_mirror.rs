//! State mirroring across builds: a snapshot taken from a unikernel node restores into a process node
//! byte for byte, and the other way round, including state as of an earlier sequence number.

use janus::Flavor;
use janus_integration::child::{Node, artifact};
use janus_integration::client;

fn kv(flavor: Flavor) -> Node {
    Node::start(&artifact("kv", flavor), janus::NodeOpts::default()).expect("kv node starts")
}

fn put(node: &Node, key: &str, value: &str) {
    let r = client::request(
        node.listen,
        "PUT",
        &format!("/kv/{key}"),
        &[],
        value.as_bytes(),
    )
    .expect("put");
    assert_eq!(r.status, 200, "{}", r.text());
}

fn snapshot(node: &Node, query: &str) -> Vec<u8> {
    let r = node
        .admin("GET", &format!("/state{query}"), b"")
        .expect("GET /state");
    assert_eq!(r.status, 200, "{}", r.text());
    r.body
}

fn mirror(from: &Node, to: &Node) {
    put(from, "user%2F1", "{\"name\":\"ada\"}");
    put(from, "bin", "\u{1}\u{2}\u{3}");
    let r = client::request(from.listen, "POST", "/counter/c/incr", &[], b"").expect("incr");
    assert_eq!(r.status, 200);
    put(from, "user%2F1", "{\"name\":\"grace\"}");
    let snap = snapshot(from, "");
    let r = to.admin("PUT", "/state", &snap).expect("PUT /state");
    assert!(
        r.status == 204 || r.status == 200,
        "restore: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(
        snapshot(to, ""),
        snap,
        "{:?} -> {:?} is not byte-identical",
        from.flavor,
        to.flavor
    );
    let r = client::get(to.listen, "/kv/user%2F1", &[]).expect("get");
    assert_eq!(r.text(), "{\"name\":\"grace\"}");
    assert_eq!(
        r.header("x-janus-state-seq"),
        Some("4"),
        "the sequence number travels too"
    );

    // State as of seq 2 (before the counter and the second write), taken on the source, restores too.
    let at2 = snapshot(from, "?seq=2");
    let r = to.admin("PUT", "/state", &at2).expect("PUT /state");
    assert!(r.status == 204 || r.status == 200);
    assert_eq!(snapshot(to, ""), at2);
    let r = client::get(to.listen, "/kv/user%2F1", &[]).expect("get");
    assert_eq!(r.text(), "{\"name\":\"ada\"}");
    assert_eq!(
        client::get(to.listen, "/kv/counter%2Fc", &[])
            .expect("get")
            .status,
        404
    );

    // A corrupt snapshot is refused and leaves the state as it was.
    let mut bad = at2.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let r = to.admin("PUT", "/state", &bad).expect("PUT /state");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(snapshot(to, ""), at2);
}

#[test]
fn uk_state_restores_into_unix_byte_identical() {
    mirror(&kv(Flavor::Uk), &kv(Flavor::Unix));
}

#[test]
fn unix_state_restores_into_uk_byte_identical() {
    mirror(&kv(Flavor::Unix), &kv(Flavor::Uk));
}
