//! `janus down`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::procs::{is_zombie, pid_alive};
use crate::cluster::run_dir;
use crate::supervisor::{ClusterState, Plan, write_json_atomic};

/// `janus down`: stops the supervisor (which stops every process) and checks nothing is left.
pub fn down(cluster: &str) -> anyhow::Result<String> {
    let dir = run_dir(cluster);
    let state = ClusterState::read(&dir)?;
    let sup = state.supervisor_pid;
    if pid_alive(sup) {
        let _ = kill(
            Pid::from_raw(i32::try_from(sup).unwrap_or(i32::MAX)),
            Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while pid_alive(sup) && !is_zombie(sup) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Anything still alive after the supervisor is gone is killed, so nothing leaks.
    let leftovers = reap_leftovers(&state);
    if pid_alive(sup) && !is_zombie(sup) {
        let _ = kill(
            Pid::from_raw(i32::try_from(sup).unwrap_or(i32::MAX)),
            Signal::SIGKILL,
        );
    }
    // libvirt: the supervisor undefined its domains as it stopped; what a dead one left, and the
    // networks `janus up` created, go now.
    let mut engine_errors = Vec::new();
    for p in &state.procs {
        if let Some(d) = &p.spec.domain
            && let Err(e) = crate::libvirt::remove_domain(&d.uri, &d.name)
        {
            engine_errors.push(format!("{e:#}"));
        }
    }
    let mut uris: Vec<&str> = state
        .procs
        .iter()
        .filter_map(|p| p.spec.domain.as_ref().map(|d| d.uri.as_str()))
        .collect();
    uris.sort_unstable();
    uris.dedup();
    for uri in uris {
        if let Err(e) = crate::libvirt::remove_volumes(uri, &state.cluster) {
            engine_errors.push(format!("{e:#}"));
        }
    }
    let plan: Option<Plan> = std::fs::read(dir.join("plan.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(mut plan) = plan
        && !plan.libvirt_networks.is_empty()
    {
        // Kept in the plan until removed: a later `up` or `down` retries.
        plan.libvirt_networks.retain(
            |(uri, net)| match crate::libvirt::remove_network(uri, net) {
                Ok(()) => false,
                Err(e) => {
                    engine_errors.push(format!("{e:#}"));
                    true
                }
            },
        );
        write_json_atomic(&dir.join("plan.json"), &plan)?;
    }
    std::fs::remove_file(dir.join("state.json")).ok();
    if !engine_errors.is_empty() {
        bail!(
            "cluster '{cluster}' is stopped but libvirt kept: {}",
            engine_errors.join("; ")
        );
    }
    let mut s = format!("cluster '{cluster}' is down");
    if !leftovers.is_empty() {
        let _ = write!(s, " (killed leftovers: {})", leftovers.join(", "));
    }
    let _ = write!(s, "; logs and the fault store stay in {}", dir.display());
    Ok(s)
}

/// Kills the processes of a cluster whose supervisor is gone (their pid and program as recorded in
/// its state); returns their ids.
pub(super) fn reap_leftovers(state: &ClusterState) -> Vec<String> {
    let mut leftovers = Vec::new();
    for p in &state.procs {
        if let Some(pid) = p.pid
            && pid_alive(pid)
            && !is_zombie(pid)
            && cmdline_matches(pid, &p.spec.program)
        {
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                Signal::SIGKILL,
            );
            leftovers.push(p.spec.id.clone());
        }
    }
    leftovers
}

fn cmdline_matches(pid: u32, program: &Path) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let first = cmd.split(|b| *b == 0).next().unwrap_or(&[]);
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    name.is_some_and(|n| String::from_utf8_lossy(first).ends_with(&n))
}
