//! `janus faults list | show | repro | export`: read the router's fault store and reproduce a fault
//! of a stable (unikernel) node on an instrumented debug node.
//!
//! Reproduction mirrors the stable node's state *as of the sequence number before the faulting
//! request* into a debug node, replays the captured request there with a fresh trace id, and judges:
//! reproduced when the debug node fails the same way (same outcome class: panic, hang, 5xx, or for a
//! divergence the same wrong answer), with its full trace (panic message, location, backtrace).
//!
//! Where the state comes from, in order: the snapshot the router fetched from the live stable node at
//! fault time; the `JANUS-STATE` dump the unikernel printed at its panic, kept by the supervisor (matched
//! by trace id); the stable node's admin `/state?seq=N`, if it still retains that sequence number.
//!
//! The parts, one job each: `render` (terminal output), `classify` (outcome classes and
//! verdicts), `state` (which state to mirror), `repro` (the debug node a reproduction runs on
//! and its resource envelope), `replay` (sending the captured request), `export` (a fault as a
//! conformance case), [`timetravel`] (record and replay a unikernel fault under QEMU).

mod classify;
mod export;
mod render;
mod replay;
mod repro;
mod state;
pub mod timetravel;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use lb_router::{FaultFilter, FaultRecord, FaultStore};
use serde::Serialize;

use crate::cluster::run_dir;
use crate::supervisor::{ClusterState, now_ms};

use classify::Judged;
pub(crate) use classify::replay_class;
pub use classify::{OutcomeClass, Verdict, stable_class};
pub use export::export;
pub use render::{render_report, render_trace};
pub(crate) use replay::{admin_put, replay};
pub use repro::{ReproNode, repro_node, stable_heap_bytes};
pub use state::{MirroredState, empty_state, resolve_state};

use replay::{fetch_trace, replay_on};
use repro::Envelope;

/// Opens a cluster's fault store.
pub fn open(cluster: &str) -> anyhow::Result<(PathBuf, FaultStore)> {
    let dir = run_dir(cluster);
    let path = dir.join("faults.db");
    anyhow::ensure!(
        path.exists(),
        "no fault store at {} (is cluster '{cluster}' up, or was it ever?)",
        path.display()
    );
    let store =
        FaultStore::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok((dir, store))
}

/// `janus faults list`.
pub fn list(cluster: &str, filter: &FaultFilter, json: bool) -> anyhow::Result<String> {
    let (_, store) = open(cluster)?;
    let rows = store.list(filter)?;
    if json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    Ok(render::fault_table(rows))
}

fn get(store: &FaultStore, id: i64) -> anyhow::Result<FaultRecord> {
    store
        .get(id)?
        .with_context(|| format!("no fault {id} in the store (see `janus faults list`)"))
}

/// `janus faults show ID`.
pub fn show(cluster: &str, id: i64, json: bool) -> anyhow::Result<String> {
    let (_, store) = open(cluster)?;
    let f = get(&store, id)?;
    if json {
        return Ok(serde_json::to_string_pretty(&f)?);
    }
    Ok(render::fault_detail(&f))
}

/// Options of `janus faults repro`.
#[derive(Debug, Clone)]
pub struct ReproOpts {
    /// Cluster name.
    pub cluster: String,
    /// Replay on a fresh, empty state instead of the mirrored one (to show the mirroring matters).
    pub without_state: bool,
    /// How long the replay may take before it counts as a hang.
    pub timeout: Duration,
}

/// The verdict of a reproduction.
#[derive(Debug, Clone, Serialize)]
pub struct ReproReport {
    /// Fault id.
    pub fault: i64,
    /// Fault kind.
    pub kind: String,
    /// `METHOD path`.
    pub request: String,
    /// How the stable node failed.
    pub stable: OutcomeClass,
    /// How the replay on the debug node ended.
    pub replay: OutcomeClass,
    /// The resource envelope the replay ran under (the stable node's heap size), if any.
    pub envelope_bytes: Option<u64>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in one sentence.
    pub why: String,
    /// Whether the failure was reproduced (`reproduced` or `state_dependent`).
    pub reproduced: bool,
    /// Where the mirrored state came from.
    pub state_source: String,
    /// Its sequence number.
    pub state_seq: Option<u64>,
    /// The debug node used.
    pub debug_node: String,
    /// The replay's trace id.
    pub trace_id: String,
    /// The stable node's answer (divergences).
    pub stable_answer: Option<String>,
    /// The replay's answer.
    pub replay_answer: Option<String>,
    /// The debug node's trace of the replay, rendered.
    pub trace: String,
    /// The unikernel's panic report, when the supervisor kept one.
    pub stable_panic_report: Vec<String>,
    /// For a build-specific verdict on a unikernel: its console and `janus_uk_*` counters.
    pub stable_evidence: Option<crate::evidence::UkEvidence>,
    /// Time the reproduction took.
    pub repro_ms: u64,
    /// From the fault's capture to the verdict.
    pub fault_to_verdict_ms: u64,
}

/// `janus faults repro ID`.
pub fn repro(id: i64, opts: &ReproOpts) -> anyhow::Result<ReproReport> {
    let started = Instant::now();
    let (dir, store) = open(&opts.cluster)?;
    let f = get(&store, id)?;
    // The outcome to reproduce: the stable node's, or for a `debug_fault` the debug node's (its state
    // is in the same `stable_state*` columns: the state of the node that failed).
    let debug_fault = f.summary.kind == "debug_fault";
    let failed = if debug_fault {
        &f.summary.debug_outcome
    } else {
        &f.summary.stable_outcome
    };
    let stable = stable_class(failed.as_deref().unwrap_or(""));
    let mirrored = if opts.without_state {
        MirroredState::empty("none: a fresh, empty state (--without-state)")
    } else {
        resolve_state(&dir, &f)?.unwrap_or_else(|| {
            MirroredState::empty("none found: replaying on a fresh, empty state")
        })
    };
    let node = repro_node(&dir)?;
    // Under the stable node's resource envelope (a unikernel's heap size), so a uk out-of-memory
    // replays as an allocation failure on the debug build; reset when the reproduction ends.
    let envelope = stable_heap_bytes(&dir, f.summary.stable_node.as_deref());
    let _envelope = match envelope {
        Some(bytes) => Some(Envelope::set(&node.spec, bytes)?),
        None => None,
    };
    let trace_id = crate::secret::random_token()?;
    let (replay_class, result) = replay_on(&node, &f, &mirrored, &trace_id, opts.timeout)?;
    let replay_answer = result.as_ref().ok().map(|r| r.text());
    let stable_answer = if debug_fault {
        &f.debug_response_body
    } else {
        &f.stable_response_body
    }
    .as_ref()
    .map(|b| String::from_utf8_lossy(b).into_owned());
    // The stable node's exact state (not the empty fallback) was what the replay ran on.
    let exact_state = !opts.without_state && !mirrored.source.starts_with("none");
    let (verdict, why) = classify::judge(
        &Judged {
            kind: &f.summary.kind,
            stable: &stable,
            replay: &replay_class,
            stable_status: f.stable_status,
            stable_answer: stable_answer.as_deref(),
            replay_answer: replay_answer.as_deref(),
            exact_state,
            transport_error: result.as_ref().err().map(|e| format!("{e:#}")),
            debug_node: &node.spec.id,
        },
        || {
            // Does it need the state? The same replay on an empty state says.
            let control = crate::secret::random_token()?;
            let empty = MirroredState::empty("control: an empty state");
            Ok(replay_on(&node, &f, &empty, &control, opts.timeout)?.0)
        },
    )?;
    let reproduced = verdict.reproduced();
    let trace = fetch_trace(&node.spec, &trace_id);
    let stable_panic_report = ClusterState::read(&dir)
        .ok()
        .and_then(|s| {
            let p = s.proc(f.summary.stable_node.as_deref()?)?.clone();
            p.exits
                .iter()
                .rev()
                .find(|e| {
                    e.panic_report
                        .iter()
                        .any(|l| l.contains(&f.summary.trace_id))
                })
                .map(|e| e.panic_report.clone())
        })
        .unwrap_or_default();
    let stable_evidence = if verdict == Verdict::BuildSpecific {
        f.summary
            .stable_node
            .as_deref()
            .and_then(|n| crate::evidence::uk_evidence(&dir, n, &f.summary.trace_id))
    } else {
        None
    };
    Ok(ReproReport {
        fault: id,
        kind: f.summary.kind.clone(),
        request: format!("{} {}", f.summary.method, f.summary.path),
        stable,
        replay: replay_class,
        envelope_bytes: envelope,
        verdict,
        why,
        reproduced,
        state_source: mirrored.source,
        state_seq: mirrored.seq,
        debug_node: node.spec.id.clone(),
        trace_id,
        stable_answer,
        replay_answer,
        trace,
        stable_panic_report,
        stable_evidence,
        repro_ms: started.elapsed().as_millis() as u64,
        fault_to_verdict_ms: now_ms().saturating_sub(u64::try_from(f.summary.time_ms).unwrap_or(0)),
    })
}

/// Faults newer than `since_ms`, oldest first.
pub fn since(cluster: &str, since_ms: i64) -> anyhow::Result<Vec<lb_router::FaultSummary>> {
    let (_, store) = open(cluster)?;
    let mut rows = store.list(&FaultFilter {
        since_ms: Some(since_ms),
        limit: Some(1000),
        ..FaultFilter::default()
    })?;
    rows.reverse();
    Ok(rows)
}
