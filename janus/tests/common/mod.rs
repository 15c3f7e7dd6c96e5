//! What the CLI's end-to-end tests share: running the real `janus` binary, polling for a
//! condition, and a cluster brought up with `janus up` that `janus down` takes away when dropped,
//! even when the test fails.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use janus::supervisor::{ClusterState, ProcState};

pub use janus_integration::output_text as text;

pub fn janus_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_janus"))
}

/// Runs `janus ARGS` to completion.
pub fn janus(args: &[&str]) -> Output {
    Command::new(janus_bin())
        .args(args)
        .output()
        .expect("janus runs")
}

/// The stable nodes' flavour: `uk` unless `JANUS_TEST_STABLE_FLAVOR` says otherwise.
pub fn stable_flavor() -> String {
    std::env::var("JANUS_TEST_STABLE_FLAVOR").unwrap_or_else(|_| "uk".into())
}

/// The stable VMs' accelerator: `JANUS_TEST_ACCEL=tcg` runs them as CI machines without KVM do.
pub fn test_accel() -> String {
    std::env::var("JANUS_TEST_ACCEL").unwrap_or_else(|_| "auto".into())
}

/// Polls `ok` every 20 ms until it holds; fails the test after `within`, naming `what`.
pub fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An admin GET on process `p` with its token, answered 200 with JSON.
pub fn admin_json(p: &ProcState, path: &str) -> serde_json::Value {
    let auth = format!("Bearer {}", p.spec.token);
    let r = janus_integration::client::get(p.spec.admin, path, &[("authorization", &auth)])
        .expect("admin GET");
    assert_eq!(r.status, 200, "{} {path}: {}", p.spec.id, r.text());
    r.json().expect("json")
}

/// The router's `janus_router_mirror_total{result="<result>"}`.
pub fn mirrors(router: &ProcState, result: &str) -> u64 {
    let auth = format!("Bearer {}", router.spec.token);
    let r =
        janus_integration::client::get(router.spec.admin, "/metrics", &[("authorization", &auth)])
            .expect("router metrics");
    let key = format!("janus_router_mirror_total{{result=\"{result}\"}} ");
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {}", r.text()))
}

/// Every mirror sent has an outcome (matched, diverged, skipped, failed).
pub fn mirrors_settled(router: &ProcState) -> bool {
    let sent = mirrors(router, "sent");
    sent == ["match", "diverged", "skipped_lag", "noisy", "error"]
        .iter()
        .map(|r| mirrors(router, r))
        .sum::<u64>()
}

/// The twin has applied the stable node's current seq.
pub fn twin_converged(stable: &ProcState, twin: &ProcState) -> bool {
    let want = admin_json(stable, "/health")["seq"].as_u64();
    let h = admin_json(twin, "/health");
    want.is_some() && h["twin"]["applied_seq"].as_u64() == want && h["seq"].as_u64() == want
}

/// A cluster started by `janus up`; dropped, it runs `janus down` and removes its cluster file.
pub struct Cluster {
    pub name: String,
    /// The run directory (`state.json`, `router.toml`, the fault store).
    pub dir: PathBuf,
    /// The cluster file `janus up` was given.
    pub file: PathBuf,
}

impl Cluster {
    /// Writes `cluster.toml` (`name = "<name>"` then `body`) in a temporary directory and runs
    /// `janus up` on it; fails the test with janus's output if that fails.
    pub fn up(name: &str, body: &str) -> Cluster {
        let tmp = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&tmp).expect("mkdir");
        let file = tmp.join("cluster.toml");
        std::fs::write(&file, format!("name = \"{name}\"\n{body}")).expect("write cluster file");
        // Built before `up` so that a failed start is still taken down.
        let c = Cluster {
            name: name.to_string(),
            dir: janus::cluster::run_dir(name),
            file: file.clone(),
        };
        let o = janus(&["up", file.to_str().expect("utf8")]);
        assert!(o.status.success(), "janus up failed:\n{}", text(&o));
        c
    }

    pub fn state(&self) -> ClusterState {
        ClusterState::read(&self.dir).expect("state.json")
    }

    /// Process `id` as the supervisor last recorded it.
    pub fn proc(&self, id: &str) -> ProcState {
        self.state()
            .proc(id)
            .unwrap_or_else(|| panic!("no {id} in the cluster state"))
            .clone()
    }

    /// The router's client listener.
    pub fn router(&self) -> SocketAddr {
        self.proc("router").spec.listen
    }

    /// The router's admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.proc("router").spec.admin
    }

    /// The router's admin token.
    pub fn token(&self) -> String {
        self.proc("router").spec.token
    }

    /// Runs `janus faults ARGS --cluster <name>`.
    pub fn faults(&self, args: &[&str]) -> Output {
        let mut a = vec!["faults"];
        a.extend_from_slice(args);
        a.extend(["--cluster", &self.name]);
        janus(&a)
    }

    /// `janus faults list --json`.
    pub fn faults_json(&self) -> Vec<serde_json::Value> {
        let o = self.faults(&["list", "--json"]);
        assert!(o.status.success(), "faults list: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("faults list --json")
    }

    /// Polls until a fault matching `pred` is listed; its id, or `None` after `timeout`.
    pub fn wait_fault(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.faults_json().into_iter().find(|f| pred(f)) {
                return f["id"].as_i64();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until process `id` has been restarted at least `restarts` times, runs, and answers
    /// its health check; returns its state then. Fails after 60 s with the last state seen.
    pub fn wait_running(&self, id: &str, restarts: u32) -> ProcState {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = self.proc(id);
            if p.restarts >= restarts
                && p.state == "running"
                && p.pid.is_some()
                && janus::up::healthy(&p.spec)
            {
                return p;
            }
            assert!(Instant::now() < deadline, "{id} not running: {p:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let o = janus(&["down", "--cluster", &self.name]);
        if !o.status.success() {
            eprintln!("janus down: {}", text(&o));
        }
        if let Some(tmp) = self.file.parent() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}
