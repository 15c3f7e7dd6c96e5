//! A node replaced at its address, as a deployment engine does when it destroys a VM and starts a
//! new one on the same IP (libvirt): the old node vanishes without a FIN, so the router's pooled
//! keep-alive connections (exclusive ones and lanes) to it look open and quiet, and the new node
//! answers what is written on them with a reset. That must cost the client nothing and record no
//! fault: a repeatable request on a reused connection that ends before any byte of its answer goes
//! once more on a new connection, and a node that left or joined has its connections retired. A
//! reset on a new connection is still a fault.
//!
//! Real parts: the `faulty` sample's unix build as the node, the real router (in-process, real
//! sockets), a real client. Each test runs as root in network and mount namespaces of its own
//! (`unshare`); the node lives in a third namespace behind a veth pair (10.87.0.2), and destroying it
//! cuts the veth, kills the process and deletes its namespace, so no FIN or reset reaches the router.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use janus::{Flavor, NodeOpts};
use janus_integration::{artifact, client};

const INSIDE: &str = "JANUS_NODE_REPLACED_SANDBOX";
const BINARY: &str = "JANUS_NODE_REPLACED_FAULTY";
const TOKEN: &str = "node-replaced-token";
const ADMIN_TOKEN: &str = "node-replaced-admin";
const NODE_IP: &str = "10.87.0.2";

/// Runs `name` again inside `unshare --net --mount` (as root), with the faulty unix build's path.
/// `true`: this is the run inside, go on.
fn sandboxed(name: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
    if !root {
        eprintln!("skipped: {name} makes network namespaces (needs root)");
        return false;
    }
    let faulty = artifact("faulty", Flavor::Unix);
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().expect("test exe"))
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(INSIDE, "1")
        .env(BINARY, &faulty.path)
        .status()
        .expect("unshare runs");
    assert!(status.success(), "{name} failed inside its namespaces");
    false
}

/// Inside: loopback up, and `ip netns` names on a tmpfs of this mount namespace (the names'
/// files would otherwise be left in the machine's /run/netns).
fn namespaces_ready() {
    ip(&["link", "set", "lo", "up"]);
    std::fs::create_dir_all("/run/netns").expect("/run/netns");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "janus-test", "/run/netns"])
        .status()
        .expect("mount runs");
    assert!(st.success(), "mount a tmpfs on /run/netns");
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node host: a network namespace behind a veth pair, and the faulty node in it.
struct Host {
    ns: String,
    node: Child,
}

impl Host {
    /// A new namespace `ns` at 10.87.0.2 and a faulty node there (service :8080, admin :8081);
    /// returns once the node answers its `/health`.
    fn start(ns: &str) -> Host {
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", "nr0", "type", "veth", "peer", "name", "eth0", "netns", ns,
        ]);
        ip(&["addr", "add", "10.87.0.1/24", "dev", "nr0"]);
        ip(&["link", "set", "nr0", "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        let opts = NodeOpts {
            listen: Some(service_addr()),
            admin: Some(admin_addr()),
            admin_token: Some(TOKEN.into()),
            node_id: Some("stable-0".into()),
            ..NodeOpts::default()
        };
        let program = PathBuf::from(std::env::var_os(BINARY).expect("the faulty build's path"));
        let node = in_namespace(ns, &opts.unix_command(&program))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the node starts");
        let host = Host {
            ns: ns.to_owned(),
            node,
        };
        poll("the node's /health", || {
            node_admin("/health").is_some_and(|r| r.status == 200)
        });
        host
    }

    /// The VM is destroyed: the link goes first, so the node's FIN and resets reach nobody.
    fn destroy(mut self) {
        ip(&["link", "del", "nr0"]);
        let _ = self.node.kill();
        let _ = self.node.wait();
        ip(&["netns", "del", &self.ns]);
    }

    /// The node process dies with its link up (its connections are closed as a crash closes them).
    fn kill(mut self) {
        let _ = self.node.kill();
        let _ = self.node.wait();
        ip(&["link", "del", "nr0"]);
        ip(&["netns", "del", &self.ns]);
    }
}

/// A host the test did not destroy (its last one, or one a failed assertion left behind): its node
/// goes with it. Nothing else would stop it, since its namespace lives on as long as it does.
impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.node.kill();
        let _ = self.node.wait();
    }
}

/// `cmd` (program, arguments, environment) to run inside network namespace `ns`.
fn in_namespace(ns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

fn service_addr() -> SocketAddr {
    format!("{NODE_IP}:8080").parse().expect("addr")
}

fn admin_addr() -> SocketAddr {
    format!("{NODE_IP}:8081").parse().expect("addr")
}

fn node_admin(path: &str) -> Option<client::Reply> {
    let auth = format!("Bearer {TOKEN}");
    let head = format!(
        "GET {path} HTTP/1.1\r\nhost: n\r\nconnection: close\r\nauthorization: {auth}\r\n\r\n"
    );
    client::send_raw(admin_addr(), head.as_bytes(), Duration::from_millis(500)).ok()
}

fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The router, in-process: one downstream worker (so every request finds the same worker's pool
/// of node connections), the node in the stable pool, no debug node (a fault reaches the client as
/// an error), active health checks rare enough not to take part.
struct Router {
    _rt: tokio::runtime::Runtime,
    running: lb_router::Running,
    dir: PathBuf,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn router(name: &str) -> Router {
    let dir = std::env::temp_dir().join(format!("janus-{name}-{}", std::process::id()));
    let cfg = format!(
        "[downstream]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         token = \"{ADMIN_TOKEN}\"\n[upstream]\nadmin_token = \"{TOKEN}\"\n\
         [health]\ninterval_ms = 3600000\n[faults]\npath = \"{}\"\n\
         [[nodes]]\nid = \"stable-0\"\npool = \"stable\"\naddr = \"{}\"\nadmin_addr = \"{}\"\n",
        dir.join("faults.db").display(),
        service_addr(),
        admin_addr()
    );
    let (rt, running) = support::start_router(&dir, &cfg);
    Router {
        _rt: rt,
        running,
        dir,
    }
}

impl Router {
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> client::Reply {
        client::request(self.running.downstream_addr, method, path, headers, b"")
            .expect("the router answers")
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> client::Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        client::request(
            self.running.admin_addr,
            method,
            path,
            &[("authorization", &auth)],
            body.as_bytes(),
        )
        .expect("admin")
    }

    fn faults(&self) -> Vec<serde_json::Value> {
        let l = self.admin("GET", "/faults", "").json().expect("json");
        l["faults"].as_array().expect("faults").clone()
    }

    fn metric(&self, name: &str) -> u64 {
        let m = self.admin("GET", "/metrics", "").text();
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }
}

fn assert_ok(r: &client::Reply, what: &str) {
    assert!(
        r.status < 500,
        "{what}: {} {} (headers {:?})",
        r.status,
        r.text(),
        r.headers
    );
}

/// Inside the namespaces (after [`sandboxed`]): the router, loopback up, and `ip netns` ready.
fn sandboxed_router(name: &str) -> Option<Router> {
    if !sandboxed(name) {
        return None;
    }
    namespaces_ready();
    Some(router(name))
}

#[test]
fn a_node_replaced_at_its_address_costs_no_request_and_no_fault() {
    let Some(r) = sandboxed_router("a_node_replaced_at_its_address_costs_no_request_and_no_fault")
    else {
        return;
    };
    let stale = "janus_router_upstream_stale_resent_total";

    // Warm: a lane (GET) and a pooled exclusive connection (PUT, then POST reuses it).
    let host = Host::start("nr-1");
    assert_eq!(r.send("PUT", "/kv/a", &[]).status, 200);
    assert_eq!(r.send("GET", "/kv/a", &[]).status, 200);
    assert_eq!(
        r.send("POST", "/counter/c/incr", &[("idempotency-key", "k0")])
            .status,
        200
    );
    host.destroy();
    let host = Host::start("nr-2");
    // The new node's store is empty: these answers come from it, over new connections (the PUT
    // first: the pool hands out its newest connection, the one a resent request was answered on).
    let put = r.send("PUT", "/kv/b", &[]);
    assert_ok(&put, "PUT on a stale pooled connection");
    let got = r.send("GET", "/kv/a", &[]);
    assert_eq!(got.status, 404, "{}", got.text());
    // At least the GET went again (the pooled connection may also be found closed before use,
    // when a segment of the router's reached the new node in between and drew a reset).
    assert!(r.metric(stale) >= 1);

    // A POST with an Idempotency-Key on a stale pooled connection goes again too.
    host.destroy();
    let host = Host::start("nr-3");
    let post = r.send("POST", "/counter/c/incr", &[("idempotency-key", "k1")]);
    assert_ok(
        &post,
        "POST with an Idempotency-Key on a stale pooled connection",
    );
    let resent = r.metric(stale);

    // A node that leaves and joins again (the engine's discovery; here the admin API): its
    // connections are retired, so even a POST without a key (never sent twice) finds a new one.
    host.destroy();
    assert_eq!(r.admin("DELETE", "/nodes/stable-0", "").status, 200);
    let _host = Host::start("nr-4");
    let node = format!(
        "{{\"id\":\"stable-0\",\"pool\":\"stable\",\"addr\":\"{}\",\"admin_addr\":\"{}\",\"weight\":1}}",
        service_addr(),
        admin_addr()
    );
    assert_eq!(r.admin("POST", "/nodes", &node).status, 201);
    let post = r.send("POST", "/counter/c/incr", &[]);
    assert_eq!(post.status, 200, "{}", post.text());
    assert_eq!(r.metric(stale), resent, "nothing was sent twice");

    assert_eq!(
        r.faults(),
        Vec::<serde_json::Value>::new(),
        "no fault recorded"
    );
}

#[test]
fn a_reset_on_a_new_connection_is_still_a_fault() {
    let Some(r) = sandboxed_router("a_reset_on_a_new_connection_is_still_a_fault") else {
        return;
    };
    let host = Host::start("nr-1");
    assert_eq!(r.send("PUT", "/kv/a", &[]).status, 200);
    assert_eq!(r.send("GET", "/kv/a", &[]).status, 200);
    host.destroy();
    let host = Host::start("nr-2");

    // Bug 4: `/wait` for a key never written hangs. The stale lane resets it; it goes again on a new
    // connection, to the new node, which dies under it.
    let addr = r.running.downstream_addr;
    let client = std::thread::spawn(move || {
        client::get(addr, "/wait?key=never", &[]).expect("the router answers")
    });
    poll("the new node holding the request", || {
        node_admin("/metrics").is_some_and(|m| {
            m.text()
                .lines()
                .any(|l| l.starts_with("janus_requests_in_flight") && !l.ends_with(" 0"))
        })
    });
    host.kill();
    let answer = client.join().expect("client");
    assert_eq!(answer.status, 502, "{}", answer.text());
    let faults = r.faults();
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert_eq!(faults[0]["stable_outcome"], "reset", "{faults:?}");
    assert_eq!(faults[0]["path"], "/wait?key=never", "{faults:?}");
    assert!(
        r.metric("janus_router_upstream_stale_resent_total") <= 1,
        "sent again once at most (after the stale lane), never after the reset on the new one"
    );
}
