//! lb-router end to end with real Janus nodes: `faulty` and `kv` samples built by `janus build`, started
//! as real processes (stable pool: unikernel images under QEMU, or unix builds with
//! `JANUS_TEST_STABLE_FLAVOR=unix`; debug pool: unix builds), a real router (in-process, real sockets),
//! a real client.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use janus::{Flavor, NodeOpts};
use janus_integration::client;
use janus_integration::{Node, artifact};

const TOKEN: &str = "router-e2e-node-token";
const ADMIN_TOKEN: &str = "router-e2e-admin";

fn stable_flavor() -> Flavor {
    // Real unikernel images by default; `JANUS_TEST_STABLE_FLAVOR=unix` runs the stable pool as unix
    // builds (faster, and where QEMU/KVM is missing).
    match std::env::var("JANUS_TEST_STABLE_FLAVOR").as_deref() {
        Ok("unix") => Flavor::Unix,
        _ => Flavor::Uk,
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
    start_router_with(name, "", extra, nodes)
}

/// [`start_router`] with more `[upstream]` keys (`upstream`, lines of TOML).
fn start_router_with(name: &str, upstream: &str, extra: &str, nodes: &[(&Node, &str)]) -> Router {
    let dir = std::env::temp_dir().join(format!("janus-router-real-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = format!(
        "[downstream]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n\
         [upstream]\nadmin_token = \"{TOKEN}\"\n{upstream}\n[faults]\npath = \"{}\"\n{extra}\n",
        dir.join("faults.db").display()
    );
    for (n, pool) in nodes {
        cfg.push_str(&node_toml(n, pool));
    }
    let (rt, running) = support::start_router(&dir, &cfg);
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
    // The debug node panicked too: the client gets its status and trace id, not the panic message,
    // which stays in the trace.
    assert_eq!(resp.status, 500, "{}", resp.text());
    assert!(
        !resp.text().contains("divide") && !resp.text().contains("panicked"),
        "the panic message reached the client: {}",
        resp.text()
    );
    assert!(
        resp.text()
            .contains(resp.header("x-janus-trace-id").expect("trace id")),
        "{}",
        resp.text()
    );
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
    assert!(trace.to_string().contains("divide by zero"), "{trace}");
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

#[test]
fn faulty_state_dependent_panic_post_is_replayed_only_with_idempotency_key_and_state_is_captured() {
    let stable = node("faulty", stable_flavor(), "state-stable-1");
    let debug = node("faulty", Flavor::Unix, "state-debug-1");
    let r = start_router(
        "state",
        // Active checks far apart: a unikernel exits on its panic, and a check that found it gone before
        // the keyed POST would (rightly) send that POST to the debug pool as plain traffic, not a fault.
        "[mix]\nstable_weight = 100\ndebug_weight = 0\n[health]\nconsecutive_failures = 50\n\
         interval_ms = 600000\n",
        &[(&stable, "stable"), (&debug, "debug")],
    );
    let addr = r.running.downstream_addr;
    // Seven increments are fine on the stable node.
    for i in 0..7 {
        let ok = client::request(addr, "POST", "/counter/c/incr", &[], b"").expect("post");
        assert_eq!(ok.status, 200, "increment {i}: {}", ok.text());
        assert_eq!(ok.header("x-janus-node"), Some("state-stable-1"));
    }
    // The 8th panics on the stable node. Without an Idempotency-Key it is not replayed.
    let no_key = client::request(addr, "POST", "/counter/c/incr", &[], b"").expect("post");
    assert!(no_key.status >= 500, "{}", no_key.text());
    assert_eq!(no_key.header("x-janus-retried-from"), None);
    let refusal = format!(
        "{} {}",
        no_key.header("x-janus-router-error").unwrap_or(""),
        no_key.text()
    );
    assert!(
        refusal.contains("not replayed") && refusal.contains("Idempotency-Key"),
        "{refusal}"
    );
    // The stable counter is still 7 (the panic aborted the increment), so the 8th panics again; with an
    // Idempotency-Key it is replayed on the debug node, whose counter is lower: the client gets a 200.
    let keyed = client::request(
        addr,
        "POST",
        "/counter/c/incr",
        &[("idempotency-key", "k-8")],
        b"",
    )
    .expect("post");
    assert_eq!(keyed.status, 200, "{}", keyed.text());
    assert_eq!(keyed.header("x-janus-node"), Some("state-debug-1"));
    let id = keyed
        .header("x-janus-fault-id")
        .expect("fault id")
        .to_owned();
    let fault = poll(Duration::from_secs(15), || {
        let f = admin(&r, &format!("/faults/{id}"));
        (!f["stable_state"].is_null() || !f["stable_state_error"].is_null()).then_some(f)
    });
    assert_eq!(fault["method"], "POST");
    let seq = fault["stable_state_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq stored: {fault}"));
    match stable_flavor() {
        // A unix node survives its panic: its state as of the seq before the request is fetched.
        Flavor::Unix => {
            assert_eq!(fault["stable_state_seq_source"], "response");
            assert!(
                !fault["stable_state"].is_null(),
                "snapshot fetched from the live stable node: {fault}"
            );
        }
        // A unikernel exits on its panic (at the first, unkeyed POST): the router keeps the last seq
        // it saw (from answers and /health) and says the state must come from the console dump.
        Flavor::Uk => {
            assert_eq!(fault["stable_state_seq_source"], "last_seen");
            assert!(
                (6..=7).contains(&seq),
                "last seen seq {seq} (7 increments were applied)"
            );
            assert!(fault["stable_state"].is_null());
            let why = fault["stable_state_error"].as_str().unwrap_or("");
            assert!(why.contains("console dump"), "{fault}");
        }
    }
    r.running.shutdown();
    drop(r.rt);
}

#[test]
fn killed_stable_node_costs_no_get_and_is_ejected_then_readmitted() {
    let mut s1 = node("faulty", stable_flavor(), "kill-stable-1");
    let _s2 = node("faulty", stable_flavor(), "kill-stable-2");
    let debug = node("faulty", Flavor::Unix, "kill-debug-1");
    let r = start_router(
        "kill",
        "[mix]\nstable_weight = 100\ndebug_weight = 0\n[health]\ninterval_ms = 100\ntimeout_ms = 300\n\
         consecutive_failures = 2\neject_base_ms = 300\neject_max_ms = 2000\n",
        &[(&s1, "stable"), (&_s2, "stable"), (&debug, "debug")],
    );
    let addr = r.running.downstream_addr;
    let (listen, admin_addr) = (s1.listen, s1.admin);
    s1.signal("KILL").expect("kill stable-1");
    let _ = s1.wait_exit(Duration::from_secs(10));
    for i in 0..100 {
        let resp = client::get(addr, "/div?a=6&b=3", &[]).expect("get");
        assert_eq!(
            resp.status,
            200,
            "GET {i} failed after a stable node died: {}",
            resp.text()
        );
    }
    let state_of = |id: &str| -> String {
        let pools = admin(&r, "/pools");
        pools["pools"]
            .as_array()
            .expect("pools")
            .iter()
            .flat_map(|p| p["nodes"].as_array().expect("nodes").iter())
            .find(|n| n["id"] == id)
            .and_then(|n| n["state"].as_str())
            .expect("listed")
            .to_owned()
    };
    let state = state_of("kill-stable-1");
    assert!(state == "ejected" || state == "unhealthy", "{state}");
    let opts = NodeOpts {
        listen: Some(listen),
        admin: Some(admin_addr),
        admin_token: Some(TOKEN.into()),
        node_id: Some("kill-stable-1".into()),
        ..NodeOpts::default()
    };
    let _s1 =
        Node::start(&artifact("faulty", stable_flavor()), opts).expect("restart on the same ports");
    poll(Duration::from_secs(15), || {
        (state_of("kill-stable-1") == "healthy").then_some(())
    });
    r.running.shutdown();
    drop(r.rt);
}

/// State of every node, by id, from the router's `/pools`.
fn node_states(r: &Router) -> std::collections::HashMap<String, String> {
    admin(r, "/pools")["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .flat_map(|p| p["nodes"].as_array().expect("nodes").iter())
        .map(|n| {
            (
                n["id"].as_str().expect("id").to_owned(),
                n["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

/// Stable nodes wedged by SIGSTOP (they accept connections and never answer, like a frozen QEMU):
/// active checks take them out whatever the ejection cap (2 of 3, then all 3, where the cap of 50%
/// would allow one), requests in flight on them are abandoned and answered by the debug node instead
/// of waiting for `upstream.request_timeout_ms`, later requests never reach them (the stable pool's
/// lost share spills over to the debug pool), and they come back once they answer again.
#[test]
fn wedged_stable_nodes_are_taken_out_whatever_the_cap_and_in_flight_gets_are_retried() {
    let stable: Vec<Node> = (1..=3)
        .map(|i| node("faulty", Flavor::Unix, &format!("wedge-stable-{i}")))
        .collect();
    let debug = node("faulty", Flavor::Unix, "wedge-debug-1");
    let mut nodes: Vec<(&Node, &str)> = stable.iter().map(|n| (n, "stable")).collect();
    nodes.push((&debug, "debug"));
    let r = start_router_with(
        "wedge",
        "request_timeout_ms = 20000",
        "[mix]\nstable_weight = 100\ndebug_weight = 0\n[retry]\nbudget_min_per_sec = 100\n",
        &nodes,
    );
    let addr = r.running.downstream_addr;
    let get = move || client::get(addr, "/div?a=6&b=3", &[]).expect("get");
    for _ in 0..30 {
        assert_eq!(get().status, 200);
    }
    let wedged = ["wedge-stable-1", "wedge-stable-2"];
    struct Cont<'a>(&'a [Node]);
    impl Drop for Cont<'_> {
        fn drop(&mut self) {
            for n in self.0 {
                let _ = n.signal("CONT");
            }
        }
    }
    let _cont = Cont(&stable);
    stable[0].signal("STOP").expect("stop");
    stable[1].signal("STOP").expect("stop");

    // Requests sent at once: some land on a wedged node before any check noticed.
    let in_flight: Vec<_> = (0..12).map(|_| std::thread::spawn(get)).collect();
    let replies: Vec<_> = in_flight
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let mut abandoned = 0;
    for resp in &replies {
        assert_eq!(resp.status, 200, "{}", resp.text());
        if let Some(from) = resp.header("x-janus-retried-from") {
            assert!(wedged.contains(&from), "retried from {from}");
            assert_eq!(resp.header("x-janus-node"), Some("wedge-debug-1"));
            let id = resp.header("x-janus-fault-id").expect("fault id");
            let fault = admin(&r, &format!("/faults/{id}"));
            // Abandoned when the node was found wedged, not after the 20 s request timeout.
            assert_eq!(fault["stable_outcome"], "abandoned_unhealthy", "{fault}");
            abandoned += 1;
        }
    }
    assert!(
        abandoned >= 1,
        "no request reached a wedged node: {replies:?}"
    );

    poll(Duration::from_secs(10), || {
        let s = node_states(&r);
        wedged.iter().all(|id| s[*id] == "unhealthy").then_some(())
    });
    // Nothing reaches a wedged node any more; the stable pool's lost share spills to the debug pool
    // (health score 1/3 * 1.4: about 47% stay on stable-3).
    let mut by_node = std::collections::HashMap::<String, u32>::new();
    for _ in 0..200 {
        let resp = get();
        assert_eq!(resp.status, 200);
        assert!(resp.header("x-janus-retried-from").is_none());
        let node = resp.header("x-janus-node").expect("node").to_owned();
        assert!(
            node == "wedge-stable-3" || node == "wedge-debug-1",
            "{node}"
        );
        *by_node.entry(node).or_default() += 1;
    }
    assert!(by_node.len() == 2, "spill-over: {by_node:?}");

    // The whole stable pool wedged: all three out, traffic goes to the debug pool.
    stable[2].signal("STOP").expect("stop");
    poll(Duration::from_secs(10), || {
        (node_states(&r)["wedge-stable-3"] == "unhealthy").then_some(())
    });
    for _ in 0..20 {
        let resp = get();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-janus-node"), Some("wedge-debug-1"));
    }

    for n in &stable {
        n.signal("CONT").expect("cont");
    }
    poll(Duration::from_secs(15), || {
        let s = node_states(&r);
        s.values().all(|v| v == "healthy").then_some(())
    });
    poll(Duration::from_secs(5), || {
        (get().header("x-janus-pool") == Some("stable")).then_some(())
    });
    r.running.shutdown();
    drop(r.rt);
}
