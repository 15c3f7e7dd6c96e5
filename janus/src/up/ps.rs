//! `janus ps`.

use std::fmt::Write as _;

use super::procs::{admin_get, pid_alive};
use crate::cluster::run_dir;
use crate::supervisor::{ClusterState, ProcSpec, Role, now_ms};

fn fmt_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Requests served, from the process's `/metrics` (sum of `janus_requests_total` series, or the
/// router's `janus_router_requests_total`).
fn requests(p: &ProcSpec) -> Option<u64> {
    let r = admin_get(p, "/metrics").ok()?;
    if r.status != 200 {
        return None;
    }
    let prefix = if p.role == Role::Router {
        "janus_router_requests_total"
    } else {
        "janus_requests_total"
    };
    let total: f64 = r
        .text()
        .lines()
        .filter(|l| l.starts_with(prefix) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(total as u64)
}

/// `janus ps`.
pub fn ps(cluster: &str, json: bool) -> anyhow::Result<String> {
    let dir = run_dir(cluster);
    let state = ClusterState::read(&dir)?;
    let alive = pid_alive(state.supervisor_pid);
    let rows: Vec<serde_json::Value> = state
        .procs
        .iter()
        .map(|p| {
            let uptime = match (p.state.as_str(), p.started_ms) {
                ("running", Some(t)) => Some(now_ms().saturating_sub(t)),
                _ => None,
            };
            let last = p.exits.last();
            serde_json::json!({
                "node": p.spec.id,
                "role": p.spec.role,
                "flavor": p.spec.kind,
                "state": if alive { p.state.clone() } else { "stopped (no supervisor)".into() },
                "pid": p.pid,
                "uptime_ms": uptime,
                "restarts": p.restarts,
                "last_exit": last.map(|e| format!("{}: {}", e.status, e.reason)),
                "requests": if p.state == "running" { requests(&p.spec) } else { None },
                "listen": p.spec.listen,
            })
        })
        .collect();
    if json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<9} {:<7} {:<7} {:<9} {:>8} {:>8} {:>9}  LAST EXIT",
        "NODE", "ROLE", "FLAVOR", "STATE", "UPTIME", "RESTARTS", "REQUESTS"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<9} {:<7} {:<7} {:<9} {:>8} {:>8} {:>9}  {}",
            r["node"].as_str().unwrap_or(""),
            r["role"].as_str().unwrap_or(""),
            r["flavor"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["uptime_ms"]
                .as_u64()
                .map(fmt_duration)
                .unwrap_or_else(|| "-".into()),
            r["restarts"],
            r["requests"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            r["last_exit"].as_str().unwrap_or("-"),
        );
    }
    Ok(s)
}
