//! The libvirt engine end to end: `janus up` of 2 unikernel domains + 1 unix debug node behind the
//! router, with a private libvirtd (scripts/libvirt-sandbox: its own virtlogd/libvirtd in new mount,
//! network and pid namespaces, so nothing of the machine's own libvirt or network is touched).
//! Traffic flows through the bridge; `virsh destroy` of a domain removes it from the router (lifecycle
//! event, not the 10 s re-listing) and the supervisor starts it again; a panic on a domain is
//! captured with the console's state dump and `janus faults repro` reproduces it; `janus down` leaves
//! no domain and no network. The cluster lists two connection URIs that reach the one sandboxed
//! libvirtd (`qemu:///system`, `qemu+unix:///system`): nodes are spread over both, addresses are not
//! given twice, and the router, which sees every domain on both URIs, keeps one node per id.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, janus, mirrors, mirrors_settled, text, twin_converged};
use janus_integration::client;

const INSIDE: &str = "JANUS_LIBVIRT_SANDBOX";

fn home() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn virsh(args: &[&str]) -> String {
    let o = Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .expect("virsh runs");
    assert!(o.status.success(), "virsh {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Processes whose command name is `name`.
fn count_procs(name: &str) -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn libvirt_engine_end_to_end() {
    if sandboxed("libvirt_engine_end_to_end") {
        inside();
    }
}

#[test]
fn twins_follow_a_libvirt_stable_node() {
    if sandboxed("twins_follow_a_libvirt_stable_node") {
        twins_inside();
    }
}

/// Runs test `name` again inside scripts/libvirt-sandbox (one sandbox at a time: the daemons
/// count below is the machine's). `true`: this is the run inside, go on.
fn sandboxed(name: &str) -> bool {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the libvirt engine test runs libvirtd's system instance (needs root)");
        return false;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let deps = Command::new(home().join("scripts/install-deps"))
        .args(["libvirt-daemon-system", "dnsmasq-base", "iproute2"])
        .status()
        .expect("install-deps");
    assert!(deps.success(), "scripts/install-deps failed");
    let daemons = (count_procs("libvirtd"), count_procs("virtlogd"));
    let status = Command::new(home().join("scripts/libvirt-sandbox"))
        .arg(std::env::current_exe().expect("test exe"))
        .args(["--exact", name, "--nocapture"])
        .env(INSIDE, "1")
        .env("JANUS_LIBVIRT_TEST_ID", std::process::id().to_string())
        .status()
        .expect("libvirt-sandbox runs");
    assert!(
        status.success(),
        "the test inside the libvirt sandbox failed"
    );
    assert_eq!(
        (count_procs("libvirtd"), count_procs("virtlogd")),
        daemons,
        "the sandbox's daemons are gone with it"
    );
    false
}

/// Bug 2, state-triggered: `POST /counter/hits/incr` (each with its own Idempotency-Key, so a
/// fault is retried on a debug node) until a stable node's panic is captured; that fault.
fn counter_panic(c: &Cluster) -> serde_json::Value {
    for i in 0..60 {
        let key = format!("incr-{i}");
        let _ = client::request(
            c.router(),
            "POST",
            "/counter/hits/incr",
            &[("idempotency-key", key.as_str())],
            b"v",
        );
        let fault = c.faults_json().into_iter().find(|f| {
            f["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/counter/"))
                && f["stable_node"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("stable-"))
        });
        if let Some(fault) = fault {
            // The VM stopped under the request: discovery's Stopped event ended it (no reset on
            // a TAP).
            assert!(
                matches!(
                    fault["stable_outcome"].as_str(),
                    Some("node_stopped" | "reset" | "body_cut_off")
                ),
                "{fault}"
            );
            return fault;
        }
    }
    panic!("no stable panic captured after 60 increments");
}

/// `janus up` with the libvirt engine and `[debug] twins = true`: the unikernel domain's twin (a
/// unix process on the host) follows its store through the bridge, mirrored GETs compare at the
/// same seq without a divergence, and a state-triggered panic on the domain is captured and
/// reproduced as state-dependent. The domain then restarts at the same address: the router's
/// connections to the destroyed VM are not taken for the new one's faults.
fn twins_inside() {
    let c = sandbox_cluster(
        "lt",
        &format!(
            r#"service = "{svc}"
[stable]
count = 1
memory_mib = 64
[debug]
count = 1
spare = 1
twins = true
[router]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
stable_weight = 100
debug_weight = 0
[[router.mirror]]
prefix = "/kv"
fraction = 1.0
[engine]
kind = "libvirt"
uri = ["qemu:///system"]
subnet = "10.79.0.0/24"
"#,
            svc = janus_integration::sample_dir("faulty").display(),
        ),
    );
    wait_router_nodes(&c, &["stable-0"], Duration::from_secs(30));
    let (stable, twin, router) = (
        c.proc("stable-0"),
        c.proc("twin-stable-0"),
        c.proc("router"),
    );
    assert!(
        stable.spec.admin.ip().to_string().starts_with("10.79.0."),
        "{:?}",
        stable.spec
    );
    let addr = c.router();
    for i in 0..40 {
        let key = format!("/kv/k{}", i % 10);
        let r = client::request(addr, "PUT", &key, &[], format!("v{i}").as_bytes()).expect("PUT");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-janus-node"), Some("stable-0"));
        let r = client::get(addr, &key, &[]).expect("GET");
        assert_eq!(r.text(), format!("v{i}"));
    }
    let within = Duration::from_secs(30);
    common::wait_until("the twin applies the domain's last seq", within, || {
        twin_converged(&stable, &twin)
    });
    common::wait_until("every mirror has an outcome", within, || {
        mirrors_settled(&router)
    });
    assert!(mirrors(&router, "match") > 0, "no mirror compared");
    assert_eq!(mirrors(&router, "diverged"), 0, "a false divergence");

    let fault = counter_panic(&c);
    let id = fault["id"].as_i64().expect("id").to_string();
    let o = c.faults(&["repro", &id, "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(report["verdict"], "state_dependent", "{report}");

    // The supervisor starts the domain again at the same address; reads reach the new VM (an
    // empty store) and nothing but the panic is a fault.
    let restarts = stable.restarts;
    common::wait_until("the domain runs again", within, || {
        c.proc("stable-0").restarts > restarts
    });
    wait_router_nodes(&c, &["stable-0"], within);
    for i in 0..10 {
        let r = client::get(addr, &format!("/kv/k{i}"), &[]).expect("GET");
        assert!(r.status == 200 || r.status == 404, "{}", r.text());
    }
    let faults = c.faults_json();
    assert!(
        faults.iter().all(|f| f["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/counter/"))),
        "{faults:?}"
    );
}

/// The ids of the router's nodes in `pool`.
fn router_nodes(c: &Cluster, pool: &str) -> Vec<String> {
    let r = janus::up::admin_get(&c.proc("router").spec, "/pools").expect("router /pools");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    v["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .filter(|p| p["pool"] == pool)
        .flat_map(|p| p["nodes"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect()
}

/// Polls until the router's stable pool is `want`; how long that took.
fn wait_router_nodes(c: &Cluster, want: &[&str], within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let mut got = router_nodes(c, "stable");
        got.sort();
        if got == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "router's stable pool {got:?}, want {want:?} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `janus up` inside the sandbox of a cluster named `prefix` and the outer test's pid (the pid
/// inside the sandbox's pid namespace repeats from run to run: the outer one does not).
fn sandbox_cluster(prefix: &str, body: &str) -> Cluster {
    let id = std::env::var("JANUS_LIBVIRT_TEST_ID").unwrap_or_default();
    Cluster::up(&format!("{prefix}{id}"), body)
}

fn inside() {
    let c = sandbox_cluster(
        "lv",
        &format!(
            r#"service = "{svc}"
[stable]
count = 2
memory_mib = 64
[debug]
count = 1
spare = 1
[router]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
request_timeout_ms = 1500
[engine]
kind = "libvirt"
uri = ["qemu:///system", "qemu+unix:///system"]
subnet = "10.78.0.0/24"
"#,
            svc = janus_integration::sample_dir("faulty").display(),
        ),
    );
    let dom = |id: &str| format!("janus-{}-{id}", c.name);
    let listed = virsh(&["list", "--name"]);
    for id in ["stable-0", "stable-1"] {
        assert!(listed.contains(&dom(id)), "{listed}");
        let meta = virsh(&["metadata", &dom(id), "--uri", janus::libvirt::METADATA_NS]);
        let meta = janus::libvirt::parse_metadata(&meta).expect("Janus metadata");
        assert_eq!(
            (meta.cluster.as_str(), meta.node.as_str()),
            (c.name.as_str(), id)
        );
        assert!(meta.addr.to_string().starts_with("10.78.0."), "{meta:?}");
    }
    // The admin token reaches the guest through fw_cfg from a 0600 file: in no domain XML (readable
    // with read-only libvirt access) and on no command line.
    let token = c.proc("stable-0").spec.token;
    for id in ["stable-0", "stable-1"] {
        let xml = virsh(&["dumpxml", &dom(id)]);
        assert!(
            !xml.contains(&token) && xml.contains("name=opt/janus/token,file="),
            "{xml}"
        );
        let pid = c.state().proc(id).and_then(|p| p.pid).expect("QEMU pid");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
    }
    // Each host got the image and the token through the storage API (the janus pool), mode 0600.
    let vols = virsh(&["vol-list", "--pool", "janus"]);
    assert!(vols.contains(&format!("janus-{}.img", c.name)), "{vols}");
    let token_vol = format!("janus-{}.token", c.name);
    let path = virsh(&["vol-path", "--pool", "janus", &token_vol]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(path.trim())
            .expect("token volume")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "token volume mode {mode:o}");
    // The stable nodes are in the router by discovery only (the config lists the debug node).
    let router_toml = std::fs::read_to_string(c.dir.join("router.toml")).expect("router.toml");
    assert!(router_toml.contains("kind = \"libvirt\"") && !router_toml.contains("10.78.0."));
    wait_router_nodes(&c, &["stable-0", "stable-1"], Duration::from_secs(30));
    let st = c.state();
    let uris: Vec<&str> = ["stable-0", "stable-1"]
        .iter()
        .map(|id| {
            st.proc(id)
                .and_then(|p| p.spec.domain.as_ref())
                .map(|d| d.uri.as_str())
                .expect("a domain")
        })
        .collect();
    assert_eq!(uris, ["qemu:///system", "qemu+unix:///system"]);

    // Traffic flows through the bridge to both domains.
    let router: SocketAddr = c.router();
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let r = client::get(router, "/stats", &[]).expect("GET /stats");
        assert_eq!(r.status, 200);
        if let Some(n) = r.header("x-janus-node") {
            served.insert(n.to_string());
        }
    }
    assert!(
        served.contains("stable-0") && served.contains("stable-1"),
        "{served:?}"
    );

    // `virsh destroy`: out of the router by its lifecycle event (the re-listing runs every 10 s),
    // started again by the supervisor, back in the router after a passing health check.
    let restarts = c.proc("stable-0").restarts;
    virsh(&["destroy", &dom("stable-0")]);
    let gone = wait_router_nodes(&c, &["stable-1"], Duration::from_secs(2));
    eprintln!("destroyed domain left the router after {gone:?}");
    let back = wait_router_nodes(&c, &["stable-0", "stable-1"], Duration::from_secs(30));
    eprintln!("and was back after {back:?}");
    let st = c.state();
    let p = st.proc("stable-0").expect("stable-0");
    assert!(p.restarts > restarts, "{p:?}");
    assert!(
        p.exits
            .last()
            .is_some_and(|e| e.status.contains("Destroyed")),
        "{:?}",
        p.exits
    );

    // A state-triggered panic on a domain (faulty's 8th increment of a counter) is captured with
    // the console's state dump and reproduced on a spare debug node.
    let fault = counter_panic(&c);
    let node = fault["stable_node"].as_str().expect("node").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        let st = c.state();
        let p = st.proc(&node).expect("node");
        if let Some(e) = p.exits.iter().find(|e| e.state_file.is_some()) {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no crash dump: {:?}", p.exits);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        exit.panic_report
            .iter()
            .any(|l| l.contains("index out of bounds")),
        "{exit:?}"
    );
    let dump = std::fs::read(exit.state_file.as_ref().expect("file")).expect("state dump");
    assert!(!dump.is_empty());
    let id = fault["id"].as_i64().expect("id").to_string();
    let o = janus(&["faults", "repro", &id, "--cluster", &c.name]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "repro:\n{out}");
    assert!(
        out.contains("REPRODUCED") && out.contains("index out of bounds"),
        "{out}"
    );

    // `janus ps` and `janus logs` work as on the local engine (the console comes from libvirt's file).
    let o = janus(&["ps", "--cluster", &c.name]);
    assert!(
        o.status.success() && text(&o).contains("stable-1"),
        "{}",
        text(&o)
    );
    let o = janus(&["logs", "stable-1", "--cluster", &c.name]);
    assert!(text(&o).contains("listening on :80"), "{}", text(&o));

    // A SIGKILLed supervisor leaves its domains running; `janus up` again replaces them and keeps
    // knowing the network is its own, so the `down` below still removes it.
    let sup = c.state().supervisor_pid;
    Command::new("kill")
        .args(["-KILL", &sup.to_string()])
        .status()
        .expect("kill");
    common::wait_until(
        "the supervisor dies of SIGKILL",
        Duration::from_secs(10),
        || !janus::up::pid_alive(sup) || janus::up::is_zombie(sup),
    );
    let o = janus(&["up", c.file.to_str().expect("utf8")]);
    assert!(o.status.success(), "janus up again:\n{}", text(&o));
    wait_router_nodes(&c, &["stable-0", "stable-1"], Duration::from_secs(30));

    // Down leaves no domain and no network.
    let o = janus(&["down", "--cluster", &c.name]);
    assert!(o.status.success(), "down: {}", text(&o));
    let all = virsh(&["list", "--all", "--name"]);
    assert!(!all.contains(&c.name), "domains left: {all}");
    let nets = virsh(&["net-list", "--all", "--name"]);
    assert!(!nets.contains(&c.name), "networks left: {nets}");
    let pools = virsh(&["pool-list", "--all", "--name"]);
    assert!(!pools.contains("janus"), "storage pools left: {pools}");
    assert!(count_procs("qemu-system-x86") == 0, "a QEMU is left");
}
