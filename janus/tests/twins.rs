//! Shadow twins end to end, as a user runs them: `janus up` with `[debug] twins = true` gives the
//! stable node (a unikernel under QEMU; `JANUS_TEST_STABLE_FLAVOR=unix` for a process) a twin that
//! follows its store, and the real router mirrors the stable node's GETs to that twin at the same seq.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cluster, admin_json, mirrors, mirrors_settled, stable_flavor, text, twin_converged};
use janus::supervisor::Role;
use janus_integration::client;

/// Polls `ok` for up to 30 s.
fn wait_until(what: &str, ok: impl FnMut() -> bool) {
    common::wait_until(what, Duration::from_secs(30), ok)
}

#[test]
fn twins_follow_their_stable_node_and_mirrors_compare_at_the_same_seq() {
    let c = Cluster::up(
        &format!("twins-{}", std::process::id()),
        &format!(
            r#"service = "{svc}"
[stable]
count = 1
flavor = "{flavor}"
memory_mib = 64
[debug]
count = 1
spare = 0
twins = true
[router]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
stable_weight = 100
debug_weight = 0
[[router.mirror]]
prefix = "/kv"
fraction = 1.0
[[router.mirror]]
prefix = "/stats"
fraction = 1.0
[[router.mirror]]
prefix = "/avg"
fraction = 1.0
[[router.mirror]]
prefix = "/nonce"
fraction = 1.0
"#,
            svc = janus_integration::sample_dir("faulty").display(),
            flavor = stable_flavor(),
        ),
    );
    let proc = |id: &str| c.proc(id);
    let (stable, twin, router) = (proc("stable-0"), proc("twin-stable-0"), proc("router"));
    assert_eq!(twin.spec.role, Role::Twin);
    let addr: SocketAddr = router.spec.listen;

    // Writes through the router (all to the stable node), each key read back and /stats now and
    // then: every GET is mirrored to the twin with the stable answer's seq.
    for i in 0..150 {
        let key = format!("/kv/k{}", i % 20);
        let r = client::request(addr, "PUT", &key, &[], format!("v{i}").as_bytes()).expect("PUT");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-janus-node"), Some("stable-0"));
        let r = client::get(addr, &key, &[]).expect("GET");
        assert_eq!(r.text(), format!("v{i}"));
        if i % 10 == 0 {
            assert_eq!(client::get(addr, "/stats", &[]).expect("stats").status, 200);
        }
    }
    wait_until("the twin applies the stable node's last seq", || {
        twin_converged(&stable, &twin)
    });
    wait_until("every mirror has an outcome", || mirrors_settled(&router));
    let matched = mirrors(&router, "match");
    assert!(matched > 0, "no mirror compared");
    assert_eq!(mirrors(&router, "diverged"), 0, "a false divergence");
    let h = admin_json(&twin, "/health");
    assert_eq!(
        h["twin"]["mirrors_answered"].as_u64(),
        Some(matched),
        "the twin answered exactly the compared mirrors: {h}"
    );
    let faults = c.faults_json();
    assert!(
        faults.iter().all(|f| f["kind"] != "divergence"),
        "{faults:?}"
    );

    // A twin whose state is ahead of the stable answers (here an operator restored a state at a
    // far seq into it) cannot answer at the stable answer's seq: skipped, never compared; it then
    // notices (409 from the log) and takes the stable node's snapshot again.
    let mut entries = std::collections::BTreeMap::new();
    entries.insert("kv/k1".to_owned(), b"wrong".to_vec());
    let far = runtime_abi::store::encode_snapshot(1_000_000, &entries);
    let r = client::request(
        twin.spec.admin,
        "PUT",
        "/state",
        &[("authorization", &format!("Bearer {}", twin.spec.token))],
        &far,
    )
    .expect("PUT /state");
    assert_eq!(r.status, 204, "{}", r.text());
    let skipped = mirrors(&router, "skipped_lag");
    for _ in 0..5 {
        assert_eq!(client::get(addr, "/kv/k1", &[]).expect("GET").status, 200);
    }
    wait_until("every mirror has an outcome", || mirrors_settled(&router));
    assert!(mirrors(&router, "skipped_lag") > skipped, "no skipped_lag");
    assert_eq!(
        mirrors(&router, "diverged"),
        0,
        "a skipped mirror was compared"
    );
    wait_until("the twin takes the stable node's state again", || {
        twin_converged(&stable, &twin)
    });
    let matched = mirrors(&router, "match");
    assert_eq!(client::get(addr, "/kv/k1", &[]).expect("GET").status, 200);
    wait_until("the mirror after the resync matches", || {
        mirrors(&router, "match") > matched
    });
    assert_eq!(mirrors(&router, "diverged"), 0);

    // A route whose answers differ on the stable node itself at the same seq is noisy, not divergent.
    let noisy = mirrors(&router, "noisy");
    for _ in 0..3 {
        assert_eq!(client::get(addr, "/nonce", &[]).expect("nonce").status, 200);
    }
    wait_until("the nonce mirrors are judged", || {
        mirrors_settled(&router) && mirrors(&router, "noisy") >= noisy + 3
    });
    assert_eq!(
        mirrors(&router, "diverged"),
        0,
        "noise recorded as a divergence"
    );
    // Reported per route, with the key the stable node itself varies on; no other route is.
    let noisy = admin_json(&router, "/mirrors/noisy");
    let routes = noisy["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 1, "{noisy}");
    assert_eq!(routes[0]["route"], "/nonce", "{noisy}");
    assert!(
        routes[0]["count"].as_u64().is_some_and(|c| c >= 3),
        "{noisy}"
    );
    assert!(
        routes[0]["keys"].as_array().is_some_and(|k| k
            .iter()
            .any(|k| k.as_str().is_some_and(|k| k.contains("nonce")))),
        "{noisy}"
    );

    // Bug 5, a build difference: the unikernel wraps the u8 sum and answers a wrong average; its
    // twin (the checked debug build) panics on the same request at the same seq: a divergence
    // whose debug side is the panic.
    if stable_flavor() == "uk" {
        let r = client::get(addr, "/avg?values=200,100", &[]).expect("GET /avg");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json().expect("json")["avg"], 22, "the stable build wraps");
        // Counted when judged, listed once written to the fault store: wait for both.
        wait_until("the divergence is recorded", || {
            mirrors(&router, "diverged") == 1
                && c.faults_json().iter().any(|f| f["kind"] == "divergence")
        });
        let faults = c.faults_json();
        let f = faults
            .iter()
            .find(|f| f["kind"] == "divergence")
            .unwrap_or_else(|| panic!("no divergence: {faults:?}"));
        assert_eq!(f["debug_node"], "twin-stable-0", "{f}");
        assert_eq!(f["debug_outcome"], "panic", "{f}");
        let detail = f["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("twin twin-stable-0 at seq"), "{f}");
        // Reproduced as build-specific, with the unikernel's own evidence attached.
        let id = f["id"].as_i64().expect("id").to_string();
        let o = c.faults(&["repro", &id, "--json"]);
        let report: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
        assert_eq!(report["verdict"], "build_specific", "{report}");
        let evidence = &report["stable_evidence"];
        let counters = evidence["counters"].as_array().expect("counters");
        assert!(
            !counters.is_empty()
                && counters
                    .iter()
                    .all(|c| c.as_str().is_some_and(|c| c.starts_with("janus_uk_"))),
            "{evidence}"
        );
        assert!(
            evidence["console"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
                && evidence["console_log"]
                    .as_str()
                    .is_some_and(|l| l.ends_with("logs/stable-0.log")),
            "no unikernel console: {evidence}"
        );
        let o = c.faults(&["repro", &id]);
        assert!(
            text(&o).contains("attached: the unikernel's console and janus_uk_* counters"),
            "{}",
            text(&o)
        );

        // Bug 6 under the resource envelope: a blob bigger than the unikernel's heap ends it out
        // of memory; reproduced on a debug node running under that heap size as an allocation
        // past the envelope, with the allocation's backtrace, instead of "not reproduced".
        let heap = admin_json(&stable, "/health")["heap_bytes"]
            .as_u64()
            .expect("a unikernel reports its heap size");
        let kib = heap / 1024 + 1024;
        let r = client::request(addr, "POST", &format!("/blob?kib={kib}"), &[], b"");
        assert!(r.as_ref().map_or(true, |r| r.status >= 500), "{r:?}");
        let mut id = None;
        wait_until("the out-of-memory fault is recorded", || {
            let faults = c.faults(&["list", "--json"]);
            let faults: Vec<serde_json::Value> =
                serde_json::from_slice(&faults.stdout).unwrap_or_default();
            id = faults
                .iter()
                .find(|f| {
                    f["kind"] == "fault"
                        && f["path"].as_str().is_some_and(|p| p.starts_with("/blob"))
                })
                .and_then(|f| f["id"].as_i64());
            id.is_some()
        });
        let id = id.expect("fault id").to_string();
        let o = c.faults(&["repro", &id, "--json"]);
        let report: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
        assert_eq!(report["envelope_bytes"].as_u64(), Some(heap), "{report}");
        assert_eq!(report["replay"], "panic", "{report}");
        assert_eq!(report["verdict"], "reproduced", "{report}");
        let trace = report["trace"].as_str().unwrap_or_default();
        assert!(trace.contains("exceeds the resource envelope"), "{trace}");
        assert_eq!(o.status.code(), Some(0));
    }
}
