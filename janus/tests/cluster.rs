//! `janus up` / `faults repro` / `faults export` / `down` end to end, as a user runs them: the real
//! `janus` binary, a real supervisor, unikernel stable nodes under QEMU (set
//! `JANUS_TEST_STABLE_FLAVOR=unix` to use process nodes instead), process debug nodes, the real router.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, janus, stable_flavor, test_accel, text};
use janus::supervisor::ClusterState;
use janus_integration::child::{Node, artifact, free_addr};
use janus_integration::client;
use janus_integration::conformance;

/// A cluster of `stable` stable nodes, one debug node with a spare, `/stats` mirrored.
fn faulty_cluster(stable: u32) -> Cluster {
    Cluster::up(
        &format!("it-{}", std::process::id()),
        &format!(
            r#"service = "{svc}"
[stable]
count = {stable}
flavor = "{flavor}"
accel = "{accel}"
memory_mib = 64
[debug]
count = 1
spare = 1
[router]
listen = "{router}"
admin = "{admin}"
request_timeout_ms = 1500
[[router.mirror]]
prefix = "/stats"
fraction = 1.0
"#,
            svc = janus_integration::sample_dir("faulty").display(),
            flavor = stable_flavor(),
            accel = test_accel(),
            router = free_addr(),
            admin = free_addr(),
        ),
    )
}

/// A request through the router, with an idempotency key (so a failed stable try is retried).
fn send(c: &Cluster, method: &str, path: &str, key: &str) -> anyhow::Result<client::Reply> {
    client::request(c.router(), method, path, &[("idempotency-key", key)], b"v")
}

fn stable_panic(f: &serde_json::Value, path: &str) -> bool {
    f["path"].as_str().is_some_and(|p| p.starts_with(path))
        && f["stable_node"]
            .as_str()
            .is_some_and(|n| n.starts_with("stable-"))
        && matches!(
            f["stable_outcome"].as_str(),
            Some("panic" | "reset" | "body_cut_off")
        )
}

/// Every file of the run directory that holds an admin token is readable by its owner only.
fn assert_token_files_private(c: &Cluster) {
    use std::os::unix::fs::PermissionsExt as _;
    let tokens: Vec<String> = c
        .state()
        .procs
        .iter()
        .map(|p| p.spec.token.clone())
        .collect();
    let mut holders = Vec::new();
    let mut dirs = vec![c.dir.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read run dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            if tokens.iter().any(|t| text.contains(t.as_str())) {
                let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
                assert_eq!(
                    mode & 0o777,
                    0o600,
                    "{} holds a token but has mode {:o}",
                    path.display(),
                    mode & 0o777
                );
                holders.push(
                    path.file_name()
                        .expect("name")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    for expected in ["plan.json", "state.json", "router.toml"] {
        assert!(
            holders.iter().any(|h| h == expected),
            "{expected} should hold tokens; token files: {holders:?}"
        );
    }
}

/// No running process of the cluster (QEMU, process nodes, router) has an admin token on its
/// command line, which every user of the host can read.
fn assert_tokens_off_command_lines(c: &Cluster) {
    let st = c.state();
    let tokens: Vec<&str> = st.procs.iter().map(|p| p.spec.token.as_str()).collect();
    for p in &st.procs {
        let pid = p.pid.unwrap_or_else(|| panic!("{} has no pid", p.spec.id));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            cmdline.contains(p.spec.program.to_str().expect("utf8")),
            "pid {pid} is not {}: {cmdline}",
            p.spec.id
        );
        for t in &tokens {
            assert!(
                !cmdline.contains(t),
                "{} has an admin token on its command line: {cmdline}",
                p.spec.id
            );
        }
        if p.spec.kind == "uk" {
            assert!(cmdline.contains("name=opt/janus/token,file="), "{cmdline}");
        }
    }
}

#[test]
fn faults_of_stable_nodes_are_captured_and_reproduced() {
    let c = faulty_cluster(2);
    let st = c.state();
    assert_eq!(st.procs.len(), 5, "2 stable + 1 debug + 1 spare + router");
    assert!(st.procs.iter().all(|p| p.state == "running"), "{st:?}");
    assert_token_files_private(&c);
    assert_tokens_off_command_lines(&c);

    // State-triggered bug: a stable node's 8th increment panics; the client sees the debug node's 200.
    let mut client_errors = 0;
    let mut fault = None;
    for i in 0..60 {
        let r = send(&c, "POST", "/counter/hits/incr", &format!("incr-{i}"));
        if r.as_ref().map_or(true, |r| r.status >= 500) {
            client_errors += 1;
        }
        fault = c.wait_fault(Duration::ZERO, |f| stable_panic(f, "/counter/"));
        if fault.is_some() {
            break;
        }
    }
    let fault = fault.expect("a state-triggered fault on a stable node is captured");
    assert_eq!(client_errors, 0, "the client never saw the state bug");
    let id = fault.to_string();
    let o = janus(&["faults", "repro", &id, "--cluster", &c.name]);
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "repro with mirrored state:\n{out}"
    );
    assert!(
        out.contains("REPRODUCED, STATE-DEPENDENT") && out.contains("index out of bounds"),
        "{out}"
    );
    let o = janus(&[
        "faults",
        "repro",
        &id,
        "--cluster",
        &c.name,
        "--without-state",
    ]);
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(3),
        "without the state it must not reproduce:\n{out}"
    );
    assert!(out.contains("NOT REPRODUCED"), "{out}");

    // The exported regression case fails on both builds until the bug is fixed.
    let case_dir = std::env::temp_dir().join(format!("janus-export-{}", std::process::id()));
    let o = janus(&[
        "faults",
        "export",
        &id,
        "--as-test",
        case_dir.to_str().expect("utf8"),
        "--cluster",
        &c.name,
    ]);
    assert!(o.status.success(), "export: {}", text(&o));
    let case = case_dir.join("case.toml");
    for flavor in [janus::Flavor::Unix, janus::Flavor::Uk] {
        if flavor == janus::Flavor::Uk && stable_flavor() != "uk" {
            continue;
        }
        let node = Node::start(&artifact("faulty", flavor), janus::NodeOpts::default())
            .expect("fresh node");
        let failures = conformance::run_file(&case, &node, true).expect("case runs");
        assert!(
            !failures.is_empty(),
            "the exported case passed on {flavor}, but the bug is not fixed"
        );
    }

    // Input-triggered bug. The state bug may have crashed both stable VMs: wait for them first,
    // since a request that spills over to the debug pool never reaches a stable node.
    c.wait_running("stable-0", 0);
    c.wait_running("stable-1", 0);
    let mut fault = None;
    for i in 0..20 {
        let _ = send(&c, "GET", "/div?a=1&b=0", &format!("div-{i}"));
        fault = c.wait_fault(Duration::from_millis(500), |f| stable_panic(f, "/div"));
        if fault.is_some() {
            break;
        }
    }
    let id = fault
        .expect("an input-triggered fault on a stable node")
        .to_string();
    let o = janus(&["faults", "repro", &id, "--cluster", &c.name]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("divide by zero"), "{out}");

    // A wrong answer flagged by mirroring to a debug node (no twins here), whose store is its own:
    // given the stable node's state the debug build answers the same, so the builds agree and the
    // verdict says the divergence came from the mirror target's state (exit 3, not reproduced).
    for i in 0..80 {
        let _ = send(&c, "PUT", &format!("/kv/k{i:03}"), &format!("put-{i}"));
    }
    // The bugs above crash stable VMs, and a GET answered while the stable nodes are restarting
    // goes to the debug pool (spill-over) and is not mirrored: first wait for both stable nodes,
    // then ask until a mirrored answer diverges.
    c.wait_running("stable-0", 0);
    c.wait_running("stable-1", 0);
    let mut divergence = None;
    for i in 0..40 {
        let _ = send(&c, "GET", "/stats", &format!("stats-{i}"));
        divergence = c.wait_fault(Duration::from_millis(500), |f| f["kind"] == "divergence");
        if divergence.is_some() {
            break;
        }
    }
    let id = divergence
        .unwrap_or_else(|| {
            let top = janus(&["top", "--once", "--cluster", &c.name]);
            panic!("a divergence on /stats; the cluster:\n{}", text(&top))
        })
        .to_string();
    let o = janus(&["faults", "repro", &id, "--cluster", &c.name]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("the builds agree"), "{}", text(&o));

    // A killed stable node is restarted by the supervisor and served again. The bugs above may
    // have crashed stable-0 (a unikernel panic ends the VM), so first wait until it runs again.
    let before = c.wait_running("stable-0", 0);
    let victim = before.pid.expect("a running process has a pid");
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .expect("kill");
    c.wait_running("stable-0", before.restarts + 1);

    // Down leaves nothing running.
    let pids: Vec<u32> = c.state().procs.iter().filter_map(|p| p.pid).collect();
    let sup = c.state().supervisor_pid;
    let o = janus(&["down", "--cluster", &c.name]);
    assert!(o.status.success(), "{}", text(&o));
    for pid in pids.into_iter().chain([sup]) {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        });
        assert!(!alive, "pid {pid} still running after janus down");
    }
}

// --- process lifetime: port allocation and orphans --------------------------------------------------
// Process nodes in the stable pool (`[stable] flavor = "unix"`): port allocation and process lifetime
// do not depend on the node flavour, and 20 cycles of unikernel boots would cost minutes.

/// A cluster file of `hello` with every port 0; returns its path and the cluster's name.
fn port0_cluster(tag: &str) -> (PathBuf, String) {
    port0_cluster_of(tag, "hello", 0)
}

/// A cluster file of `sample` (2 unix stable nodes, 1 debug, `spare` spares) with every port 0.
fn port0_cluster_of(tag: &str, sample: &str, spare: u32) -> (PathBuf, String) {
    let name = format!("lifetime-{tag}-{}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("cluster.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nservice = \"{}\"\n[stable]\ncount = 2\nflavor = \"unix\"\n\
             [debug]\ncount = 1\nspare = {spare}\n[router]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n",
            janus_integration::sample_dir(sample).display()
        ),
    )
    .expect("write cluster file");
    (file, name)
}

fn up(file: &PathBuf) -> ClusterState {
    let o = janus(&["up", file.to_str().expect("utf8")]);
    assert!(o.status.success(), "janus up failed:\n{}", text(&o));
    let name = std::fs::read_to_string(file)
        .expect("cluster file")
        .lines()
        .find_map(|l| {
            l.strip_prefix("name = \"")
                .map(|n| n.trim_end_matches('"').to_owned())
        })
        .expect("name");
    ClusterState::read(&janus::cluster::run_dir(&name)).expect("state.json")
}

fn down(name: &str) {
    let o = janus(&["down", "--cluster", name]);
    assert!(o.status.success(), "janus down failed:\n{}", text(&o));
}

fn alive_not_zombie(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    janus::up::pid_alive(pid) && !janus::up::is_zombie(pid)
}

/// Port 0 everywhere, up and down 20 times in a row: every cycle comes up healthy with no two
/// listeners of the cluster on one port, and answers through the router.
#[test]
fn a_port_0_cluster_comes_up_and_down_20_times() {
    let (file, name) = port0_cluster("ports");
    for cycle in 0..20 {
        let state = up(&file);
        let mut addrs: Vec<_> = state
            .procs
            .iter()
            .flat_map(|p| [p.spec.listen, p.spec.admin])
            .collect();
        let n = addrs.len();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(
            addrs.len(),
            n,
            "cycle {cycle}: a port given twice: {addrs:?}"
        );
        let router = state.proc("router").expect("router").spec.listen;
        let r = client::get(router, "/", &[]).expect("GET through the router");
        assert_eq!(r.status, 200, "cycle {cycle}: {}", r.text());
        down(&name);
    }
}

/// The supervisor killed with SIGKILL: its nodes and router die with it (no orphans), and the next
/// `janus up` of the cluster comes up.
#[test]
fn a_killed_supervisor_leaves_no_orphans() {
    let (file, name) = port0_cluster("orphans");
    let state = up(&file);
    let pids: Vec<u32> = state.procs.iter().filter_map(|p| p.pid).collect();
    assert_eq!(pids.len(), state.procs.len(), "{state:?}");
    assert!(pids.iter().all(|p| alive_not_zombie(*p)));
    let st = Command::new("kill")
        .args(["-KILL", &state.supervisor_pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive_not_zombie(*p)) {
        assert!(
            Instant::now() < deadline,
            "orphans left: {:?}",
            pids.iter()
                .filter(|p| alive_not_zombie(**p))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = up(&file);
    assert_ne!(again.supervisor_pid, state.supervisor_pid);
    down(&name);
}

/// The supervisor holds the router's listening socket across restarts: a client that connects while
/// the router is dead (SIGKILLed, its restart held back by a 2 s backoff) waits in the socket's
/// backlog and is answered by the restarted router instead of being refused.
#[test]
fn a_client_connecting_while_the_router_restarts_is_answered() {
    let (file, name) = port0_cluster("router-restart");
    let mut cluster = std::fs::read_to_string(&file).expect("cluster file");
    cluster.push_str("[restart]\nbackoff_initial_ms = 2000\nbackoff_max_ms = 2000\n");
    std::fs::write(&file, cluster).expect("write cluster file");
    let state = up(&file);
    let router = state.proc("router").expect("router");
    let (addr, pid) = (router.spec.listen, router.pid.expect("router pid"));
    let r = client::get(addr, "/", &[]).expect("GET before the kill");
    assert_eq!(r.status, 200, "{}", r.text());
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive_not_zombie(pid) {
        assert!(Instant::now() < deadline, "the router outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The router is dead and its restart at least 2 s away: without the held socket this connect
    // is refused.
    let r = client::get(addr, "/", &[]).expect("GET while the router restarts");
    assert_eq!(r.status, 200, "{}", r.text());
    let again = ClusterState::read(&janus::cluster::run_dir(&name)).expect("state.json");
    let restarted = again.proc("router").expect("router");
    assert!(restarted.restarts >= 1, "{restarted:?}");
    down(&name);
}

/// A debug node's own fault (a beta request, which always goes to the debug pool, hits faulty's
/// divide-by-zero panic there): listed by `janus faults list` as a `debug_fault` and reproduced by
/// `janus faults repro` on a spare debug node.
#[test]
fn a_debug_nodes_fault_is_listed_and_reproduced() {
    let (file, name) = port0_cluster_of("debug-fault", "faulty", 1);
    let state = up(&file);
    let router = state.proc("router").expect("router").spec.listen;
    let r = client::get(router, "/div?a=1&b=0", &[("x-janus-channel", "beta")]).expect("GET");
    assert_eq!(r.header("x-janus-node"), Some("debug-0"), "{}", r.text());
    let id = r.header("x-janus-fault-id").expect("fault id").to_owned();
    let o = janus(&["faults", "list", "--json", "--cluster", &name]);
    assert!(o.status.success(), "{}", text(&o));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).expect("json");
    let f = list
        .iter()
        .find(|f| f["id"].as_i64().map(|v| v.to_string()).as_deref() == Some(id.as_str()))
        .unwrap_or_else(|| panic!("fault {id} not listed: {list:?}"));
    assert_eq!(f["kind"], "debug_fault", "{f}");
    assert_eq!(f["debug_node"], "debug-0", "{f}");
    assert_eq!(f["debug_outcome"], "panic", "{f}");
    let o = janus(&["faults", "repro", &id, "--cluster", &name]);
    assert!(o.status.success(), "not reproduced:\n{}", text(&o));
    assert!(text(&o).contains("REPRODUCED"), "{}", text(&o));
    down(&name);
}
