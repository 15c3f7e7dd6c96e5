//! What `janus faults repro` attaches to a `build-specific` verdict: the debug build, given the
//! same state and envelope, did not fail, so the only evidence is the unikernel's own: its console
//! (the supervisor's log of the node, around the fault's trace id when the console names it) and
//! its kernel counters (`janus_uk_*` from its admin `/metrics`). The panic report comes from the
//! supervisor's record of the node's exit (`faults::repro`).

use std::path::Path;

use serde::Serialize;

use crate::supervisor::ClusterState;

/// Console lines kept around the fault (or at the end of the log).
const CONSOLE_LINES: usize = 30;

/// A unikernel node's evidence.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UkEvidence {
    /// The log the console lines come from.
    pub console_log: String,
    /// Console lines: around the first one naming the fault's trace id, else the last ones.
    pub console: Vec<String>,
    /// `janus_uk_*` samples from the node's admin `/metrics` (empty when it does not answer).
    pub counters: Vec<String>,
}

/// The evidence of unikernel node `node` of the cluster in `run_dir` for the fault `trace_id`;
/// `None` when the node is not a unikernel node of the cluster.
pub fn uk_evidence(run_dir: &Path, node: &str, trace_id: &str) -> Option<UkEvidence> {
    let state = ClusterState::read(run_dir).ok()?;
    let spec = state.proc(node)?.spec.clone();
    if spec.kind != "uk" {
        return None;
    }
    let log = run_dir.join("logs").join(format!("{node}.log"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let console = console_window(&lines, trace_id)
        .iter()
        .map(|l| l.to_string())
        .collect();
    let counters = crate::up::admin_get(&spec, "/metrics")
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| uk_counters(&r.text()))
        .unwrap_or_default();
    Some(UkEvidence {
        console_log: log.display().to_string(),
        console,
        counters,
    })
}

/// The console lines to show: from a few before the first line naming `trace_id` on, else the
/// last [`CONSOLE_LINES`].
fn console_window<'a>(lines: &[&'a str], trace_id: &str) -> Vec<&'a str> {
    let start = match lines
        .iter()
        .position(|l| !trace_id.is_empty() && l.contains(trace_id))
    {
        Some(i) => i.saturating_sub(5),
        None => lines.len().saturating_sub(CONSOLE_LINES),
    };
    lines
        .iter()
        .skip(start)
        .take(CONSOLE_LINES)
        .copied()
        .collect()
}

/// The `janus_uk_*` samples of a Prometheus text exposition.
fn uk_counters(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("janus_uk_"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_window_centres_on_the_trace_or_keeps_the_tail() {
        let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let mut refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let tail = console_window(&refs, "abc");
        assert_eq!(tail.first(), Some(&"line 70"));
        assert_eq!(tail.last(), Some(&"line 99"));
        refs[40] = "panic trace abc";
        let around = console_window(&refs, "abc");
        assert_eq!(around.first(), Some(&"line 35"));
        assert!(around.contains(&"panic trace abc"));
        assert_eq!(around.len(), CONSOLE_LINES);
    }

    #[test]
    fn only_uk_counters_are_kept() {
        let m = "# HELP janus_uk_x x\njanus_uk_heap_bytes 5\njanus_requests_total{a=\"b\"} 3\n\
                 janus_uk_tcp_sockets_in_use 1\n";
        assert_eq!(
            uk_counters(m),
            ["janus_uk_heap_bytes 5", "janus_uk_tcp_sockets_in_use 1"]
        );
    }
}
