//! The state to mirror into a debug node: where it comes from, in order (the router's snapshot at
//! fault time, the unikernel's `JANUS-STATE` panic dump, the stable node's admin `/state?seq=N`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use lb_router::FaultRecord;

use super::classify::{OutcomeClass, stable_class};
use crate::supervisor::ClusterState;
use crate::up::admin_get;

/// A stable node's state to mirror into a debug node.
#[derive(Debug, Clone)]
pub struct MirroredState {
    /// Snapshot bytes.
    pub bytes: Vec<u8>,
    /// Its sequence number.
    pub seq: Option<u64>,
    /// Where it came from.
    pub source: String,
}

impl MirroredState {
    fn new(bytes: Vec<u8>, seq: Option<u64>, source: impl Into<String>) -> Self {
        MirroredState {
            bytes,
            seq,
            source: source.into(),
        }
    }

    /// A fresh node's (empty) state.
    pub fn empty(source: &str) -> Self {
        MirroredState::new(empty_state(), Some(0), source)
    }
}

/// The state to mirror, or `None` when no source has it.
pub fn resolve_state(dir: &Path, f: &FaultRecord) -> anyhow::Result<Option<MirroredState>> {
    if let Some(bytes) = &f.stable_state {
        return Ok(Some(MirroredState::new(
            bytes.clone(),
            f.stable_state_seq,
            "the router's snapshot of the stable node at fault time",
        )));
    }
    let stable = f.summary.stable_node.as_deref().unwrap_or("");
    let crashed =
        stable_class(f.summary.stable_outcome.as_deref().unwrap_or("")) == OutcomeClass::Panic;
    // A crashed unikernel's exit is recorded by the supervisor a moment after the router saw the
    // connection drop: give it a few seconds to appear.
    let deadline = Instant::now() + Duration::from_secs(if crashed { 5 } else { 0 });
    let state = loop {
        let state = ClusterState::read(dir).ok();
        let recorded = state
            .as_ref()
            .and_then(|s| s.proc(stable))
            .is_some_and(|p| {
                p.exits
                    .iter()
                    .any(|e| i64::try_from(e.at_ms).unwrap_or(i64::MAX) >= f.summary.time_ms - 1000)
            });
        if recorded || Instant::now() >= deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some(proc_state) = state.as_ref().and_then(|s| s.proc(stable)) {
        let trace = &f.summary.trace_id;
        let by_trace =
            proc_state.exits.iter().rev().find(|e| {
                e.state_file.is_some() && e.panic_report.iter().any(|l| l.contains(trace))
            });
        // Without a trace id match, a crash dump is only the right state for a fault that was itself a
        // crash, and only the first one recorded after it (a node that stayed up has no dump to give).
        let after_fault = proc_state.exits.iter().find(|e| {
            crashed
                && e.state_file.is_some()
                && i64::try_from(e.at_ms).unwrap_or(i64::MAX) >= f.summary.time_ms - 1000
        });
        if let Some(exit) = by_trace.or(after_fault)
            && let Some(file) = &exit.state_file
        {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            return Ok(Some(MirroredState::new(
                bytes,
                exit.state_seq,
                format!("the state {stable} dumped on its console when it panicked"),
            )));
        }
        if let Some(seq) = f.stable_state_seq
            && let Ok(r) = admin_get(&proc_state.spec, &format!("/state?seq={seq}"))
            && r.status == 200
        {
            return Ok(Some(MirroredState::new(
                r.body,
                Some(seq),
                format!("{stable}'s admin /state?seq={seq}"),
            )));
        }
    }
    Ok(None)
}

/// An empty store snapshot (a fresh node's state).
pub fn empty_state() -> Vec<u8> {
    runtime_abi::store::encode_snapshot(0, &BTreeMap::new())
}

#[cfg(test)]
mod tests {
    #[test]
    fn empty_state_decodes() {
        assert!(runtime_abi::store::decode_snapshot(&super::empty_state()).is_ok());
    }
}
