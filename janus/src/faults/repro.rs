//! The debug node a reproduction runs on (a spare of the cluster, else a temporary process node) and
//! the resource envelope (the stable node's heap size) set on it for the reproduction's length.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::replay::admin_put;
use crate::supervisor::{ClusterState, ProcSpec, Role};
use crate::up::{admin_get, free_addr, healthy};

/// A debug node to reproduce on: a spare of the cluster, else a temporary process node started from
/// the cluster's debug binary (stopped when dropped).
pub struct ReproNode {
    /// Its spec.
    pub spec: ProcSpec,
    child: Option<std::process::Child>,
}

impl Drop for ReproNode {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Finds or starts the debug node for a reproduction.
pub fn repro_node(dir: &Path) -> anyhow::Result<ReproNode> {
    let state = ClusterState::read(dir)?;
    if let Some(spare) = state
        .procs
        .iter()
        .find(|p| p.spec.role == Role::Spare && p.state == "running")
    {
        return Ok(ReproNode {
            spec: spare.spec.clone(),
            child: None,
        });
    }
    let debug = state
        .procs
        .iter()
        .find(|p| p.spec.kind == "unix")
        .context("the cluster has no process node to take the debug binary from")?;
    let listen = free_addr()?;
    let admin = free_addr()?;
    let token = crate::secret::random_token()?;
    let id = format!("repro-{}", listen.port());
    let opts = crate::launch::NodeOpts {
        listen: Some(listen),
        admin: Some(admin),
        admin_token: Some(token.clone()),
        node_id: Some(id.clone()),
        ..crate::launch::NodeOpts::default()
    };
    let child = opts
        .unix_command(&debug.spec.program)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", debug.spec.program.display()))?;
    let node = ReproNode {
        spec: ProcSpec {
            id,
            role: Role::Spare,
            kind: "unix".into(),
            program: debug.spec.program.clone(),
            args: opts.unix_args(),
            env: Vec::new(),
            listen,
            admin,
            token,
            listen_on_stdin: false,
            domain: None,
        },
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(&node.spec) {
        if Instant::now() > deadline {
            bail!("the temporary debug node did not become healthy");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(node)
}

/// The heap size a unikernel stable node reports (`/health` `heap_bytes`), waiting a few seconds for
/// one that is restarting after a crash.
pub fn stable_heap_bytes(dir: &Path, stable: Option<&str>) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let spec = ClusterState::read(dir).ok()?.proc(stable?)?.spec.clone();
        if spec.kind != "uk" {
            return None;
        }
        if let Ok(r) = admin_get(&spec, "/health")
            && r.status == 200
        {
            return r.json().ok()?["heap_bytes"].as_u64();
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A resource envelope set on a repro node for the reproduction's length.
pub(super) struct Envelope(ProcSpec);

impl Envelope {
    pub(super) fn set(node: &ProcSpec, bytes: u64) -> anyhow::Result<Envelope> {
        let r = admin_put(node, "/envelope", bytes.to_string().as_bytes())?;
        if r.status != 200 {
            bail!(
                "{} refused the resource envelope: {} {}",
                node.id,
                r.status,
                r.text()
            );
        }
        Ok(Envelope(node.clone()))
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        let _ = admin_put(&self.0, "/envelope", b"0");
    }
}
