//! lb-router end to end with real Janus nodes: `faulty` and `kv` samples built by `janus build`, started
//! as real processes (stable pool: unikernel images when `JANUS_ROUTER_STABLE_FLAVOR=uk`, else unix
//! builds; debug pool: unix builds), a real router (in-process, real sockets), a real client.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use janus::{Flavor, NodeOpts};
use janus_integration::client;
use janus_integration::{Node, artifact};

const TOKEN: &str = "router-e2e-node-token";
const ADMIN_TOKEN: &str = "router-e2e-admin";

fn stable_flavor() -> Flavor {
    match std::env::var("JANUS_ROUTER_STABLE_FLAVOR").as_deref() {
        Ok("uk") => Flavor::Uk,
        _ => Flavor::Unix,
    }
}

fn node(sample: &str, flavor: Flavor, id: &str) -> Node {
    let opts = NodeOpts {
        admin_token: Some(TOKEN.into()),
        node_id: Some(id.into()),
        ..NodeOpts::default()
    };
    Node::start(&artifact(sample, flavor), opts).expect("node starts")
}

fn node_toml(n: &Node, pool: &str) -> String {
    format!(
        "[[nodes]]\nid = \"{}\"\npool = \"{pool}\"\naddr = \"{}\"\nadmin_addr = \"{}\"\n\n",
        n.node_id, n.listen, n.admin
    )
}

struct Router {
    rt: tokio::runtime::Runtime,
    running: lb_router::Running,
    dir: PathBuf,
}

fn start_router(name: &str, extra: &str, nodes: &[(&Node, &str)]) -> Router {
    let dir = std::env::temp_dir().join(format!("janus-router-real-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut cfg = format!(
        "[downstream]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [upstream]\nadmin_token = \"{TOKEN}\"\n[faults]\npath = \"{}\"\n{extra}\n",
        dir.join("faults.db").display()
    );
    for (n, pool) in nodes {
        cfg.push_str(&node_toml(n, pool));
    }
    let path = dir.join("router.toml");
    std::fs::write(&path, cfg).expect("write config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let source = lb_router::ConfigSource {
        file: Some(path),
        flags: lb_router::FlagOverrides::default(),
    };
    let running = rt
        .block_on(lb_router::start(source))
        .expect("router starts");
    Router { rt, running, dir }
}

fn admin(r: &Router, path: &str) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    client::get(r.running.admin_addr, path, &[("authorization", &auth)])
        .expect("admin")
        .json()
        .expect("json")
}

fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn faulty_panic_on_stable_is_answered_by_debug_and_recorded_with_its_trace() {
    let stable = node("faulty", stable_flavor(), "stable-1");
    let debug = node("faulty", Flavor::Unix, "debug-1");
    let r = start_router(
        "faulty",
        "[mix]\nstable_weight = 100\ndebug_weight = 0\n[health]\nconsecutive_failures = 50\n",
        &[(&stable, "stable"), (&debug, "debug")],
    );
    let ok = client::get(r.running.downstream_addr, "/div?a=6&b=3", &[]).expect("get");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("x-janus-node"), Some("stable-1"));
    // Input-triggered panic on the stable node: the request is replayed on the debug node.
    let resp = client::get(r.running.downstream_addr, "/div?a=1&b=0", &[]).expect("get");
    assert_eq!(
        resp.header("x-janus-node"),
        Some("debug-1"),
        "{:?}",
        resp.headers
    );
    assert_eq!(resp.header("x-janus-flavor"), Some("unix"));
    assert_eq!(resp.header("x-janus-retried-from"), Some("stable-1"));
    let id = resp
        .header("x-janus-fault-id")
        .expect("fault id")
        .to_owned();
    let fault = poll(Duration::from_secs(15), || {
        let f = admin(&r, &format!("/faults/{id}"));
        (!f["debug_trace"].is_null() || !f["debug_trace_error"].is_null()).then_some(f)
    });
    assert_eq!(fault["stable_node"], "stable-1");
    assert!(
        matches!(fault["stable_outcome"].as_str(), Some("panic" | "reset")),
        "{fault}"
    );
    assert_eq!(fault["debug_node"], "debug-1");
    assert_eq!(fault["path"], "/div?a=1&b=0");
    let trace = fault["debug_trace"]
        .as_str()
        .unwrap_or_else(|| panic!("no debug trace: {fault}"));
    let trace: serde_json::Value = serde_json::from_str(trace).expect("trace is JSON");
    assert!(
        trace
            .to_string()
            .contains(fault["trace_id"].as_str().expect("trace id")),
        "{trace}"
    );
    // The store is readable with the public API the janus CLI uses.
    let store = lb_router::FaultStore::open(r.dir.join("faults.db")).expect("open");
    assert!(store.get(id.parse().expect("id")).expect("get").is_some());
    r.running.shutdown();
    drop(r.rt);
}

#[test]
fn kv_mirrored_wrong_answer_is_a_divergence() {
    let stable = node("kv", stable_flavor(), "kv-stable-1");
    let debug = node("kv", Flavor::Unix, "kv-debug-1");
    let r = start_router(
        "kv",
        "[mix]\nstable_weight = 100\ndebug_weight = 0\n[[routes]]\nprefix = \"/kv\"\nmirror_fraction = 1.0\n",
        &[(&stable, "stable"), (&debug, "debug")],
    );
    // The write lands on the stable node only (PUT is not mirrored), so the debug node answers a
    // mirrored GET differently: a divergence.
    let put =
        client::request(r.running.downstream_addr, "PUT", "/kv/colour", &[], b"blue").expect("put");
    assert!(put.status < 300, "{}", put.text());
    let get = client::get(r.running.downstream_addr, "/kv/colour", &[]).expect("get");
    assert_eq!(get.status, 200);
    assert_eq!(
        get.text(),
        "blue",
        "the primary answer is the stable node's, unaltered"
    );
    let list = poll(Duration::from_secs(15), || {
        let l = admin(&r, "/faults?kind=divergence");
        (!l["faults"].as_array().expect("array").is_empty()).then_some(l)
    });
    let f = &list["faults"][0];
    assert_eq!(f["route"], "/kv");
    assert_eq!(f["stable_node"], "kv-stable-1");
    assert_eq!(f["debug_node"], "kv-debug-1");
    assert!(
        f["detail"].as_str().expect("detail").contains("status"),
        "{f}"
    );
    r.running.shutdown();
    drop(r.rt);
}
