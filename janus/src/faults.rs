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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lb_router::{FaultFilter, FaultRecord, FaultStore};
use serde::Serialize;

use crate::client::{self, Reply};
use crate::cluster::run_dir;
use crate::conformance::{Case, Expect, Req, Table};
use crate::supervisor::{ClusterState, ProcSpec, Role, now_ms};
use crate::up::{admin_get, free_addr, healthy};

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
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>4}  {:<12} {:>5} {:<11} {:<6} {:<28} {:<9} {:<14} {:<8} {:<10}",
        "ID", "TIME", "COUNT", "KIND", "METHOD", "PATH", "STABLE", "OUTCOME", "DEBUG", "ANSWER"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>4}  {:<12} {:>5} {:<11} {:<6} {:<28} {:<9} {:<14} {:<8} {:<10}",
            r.id,
            clock(r.time_ms),
            r.count,
            r.kind,
            r.method,
            cut(&r.path, 28),
            r.stable_node.as_deref().unwrap_or("-"),
            r.stable_outcome.as_deref().unwrap_or("-"),
            r.debug_node.as_deref().unwrap_or("-"),
            r.debug_outcome.as_deref().unwrap_or("-"),
        );
    }
    Ok(s)
}

fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        ms.rem_euclid(1000)
    )
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
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
    let mut s = String::new();
    let sm = &f.summary;
    let _ = writeln!(
        s,
        "fault {} ({}) at {} UTC, route {}",
        sm.id,
        sm.kind,
        clock(sm.time_ms),
        sm.route
    );
    let _ = writeln!(
        s,
        "request   {} {}   trace {}",
        sm.method, sm.path, sm.trace_id
    );
    for (name, value) in request_headers(&f) {
        let _ = writeln!(s, "  {name}: {value}");
    }
    if !f.request_body.is_empty() {
        let _ = writeln!(
            s,
            "  body ({} bytes{}): {}",
            f.request_body.len(),
            if f.request_body_truncated {
                ", truncated"
            } else {
                ""
            },
            cut(&String::from_utf8_lossy(&f.request_body), 200)
        );
    }
    let _ = writeln!(
        s,
        "stable    {} -> {}{}   state seq before the request: {} ({})",
        sm.stable_node.as_deref().unwrap_or("-"),
        sm.stable_outcome.as_deref().unwrap_or("-"),
        f.stable_status
            .map(|c| format!(" (status {c})"))
            .unwrap_or_default(),
        f.stable_state_seq
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unknown".into()),
        f.stable_state_seq_source.as_deref().unwrap_or("-"),
    );
    if let Some(b) = &f.stable_response_body {
        let _ = writeln!(s, "  answer: {}", cut(&String::from_utf8_lossy(b), 300));
    }
    if let Some(d) = &sm.detail {
        let _ = writeln!(s, "  detail: {d}");
    }
    let _ = writeln!(
        s,
        "debug     {} -> {}   trace {}",
        sm.debug_node.as_deref().unwrap_or("-"),
        sm.debug_outcome.as_deref().unwrap_or("-"),
        f.debug_trace_id.as_deref().unwrap_or("-"),
    );
    if let Some(b) = &f.debug_response_body {
        let _ = writeln!(s, "  answer: {}", cut(&String::from_utf8_lossy(b), 300));
    }
    match (&f.debug_trace, &f.debug_trace_error) {
        (Some(t), _) => {
            let _ = writeln!(s, "debug trace:");
            s.push_str(&render_trace(t));
        }
        (None, Some(e)) => {
            let _ = writeln!(s, "debug trace unavailable: {e}");
        }
        _ => {}
    }
    Ok(s)
}

/// The captured request headers as (name, value), without redacted values.
fn request_headers(f: &FaultRecord) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(&f.request_headers).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(map) = v.as_object() {
        for (name, values) in map {
            let values = match values {
                serde_json::Value::Array(a) => a.clone(),
                other => vec![other.clone()],
            };
            for val in values {
                if let Some(text) = val.as_str() {
                    out.push((name.clone(), text.to_string()));
                }
            }
        }
    }
    out
}

/// Headers that are replayed: not redacted, not hop-by-hop, not Janus's own.
fn replayable(headers: &[(String, String)]) -> Vec<(String, String)> {
    const SKIP: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "traceparent",
        "te",
        "upgrade",
    ];
    headers
        .iter()
        .filter(|(n, v)| {
            v != "[redacted]" && !SKIP.contains(&n.as_str()) && !n.starts_with("x-janus-")
        })
        .cloned()
        .collect()
}

/// Renders a flight-recorder trace (JSON) for a terminal: the panic (message, location, the first
/// frames of the backtrace) when there is one, then the spans and the events.
pub fn render_trace(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return format!("  {}\n", cut(text, 2000));
    };
    let mut s = String::new();
    let events: Vec<&serde_json::Value> = v
        .get("events")
        .and_then(|x| x.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if let Some(panic) = events
        .iter()
        .map(|e| &e["fields"])
        .find(|f| f.get("panic_message").is_some())
    {
        let field = |k: &str| panic.get(k).and_then(|x| x.as_str()).unwrap_or("-");
        let _ = writeln!(s, "  PANIC: {}", field("panic_message"));
        let _ = writeln!(s, "    at {}", field("panic_location"));
        if let Some(bt) = panic.get("panic_backtrace").and_then(|b| b.as_str()) {
            let _ = writeln!(s, "  backtrace (innermost first):");
            for line in bt.lines().filter(|l| !l.trim().is_empty()).take(8) {
                let _ = writeln!(s, "    {}", cut(line.trim_end(), 150));
            }
        }
    }
    if let Some(spans) = v.get("spans").and_then(|x| x.as_array()) {
        let _ = writeln!(s, "  spans:");
        // Consecutive identical spans (a polling loop) print once with a count.
        let mut runs: Vec<(String, usize)> = Vec::new();
        for span in spans {
            let name = span.get("name").and_then(|x| x.as_str()).unwrap_or("?");
            let fields = span
                .get("fields")
                .map(|f| f.to_string())
                .unwrap_or_default();
            let line = format!("{name} {}", cut(&fields, 160));
            match runs.last_mut() {
                Some((last, n)) if *last == line => *n += 1,
                _ => runs.push((line, 1)),
            }
        }
        for (line, n) in runs.iter().take(40) {
            let times = if *n > 1 {
                format!("  (x{n})")
            } else {
                String::new()
            };
            let _ = writeln!(s, "    {line}{times}");
        }
    }
    if !events.is_empty() {
        let _ = writeln!(s, "  events:");
        for ev in events.iter().take(50) {
            let mut fields = ev["fields"].clone();
            if let Some(m) = fields.as_object_mut() {
                m.remove("panic_backtrace");
            }
            let _ = writeln!(
                s,
                "    {} {} {}",
                ev["level"].as_str().unwrap_or(""),
                ev["message"].as_str().unwrap_or(""),
                cut(&fields.to_string(), 160)
            );
        }
    }
    if s.is_empty() {
        let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
        for line in pretty.lines().take(80) {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

/// How a node failed (or not), coarse enough to compare a unikernel with a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    /// The service panicked (a unikernel stops; a process answers 500 with `x-janus-fault: panic`).
    Panic,
    /// No answer within the deadline.
    Hang,
    /// A 5xx answer.
    ServerError(u16),
    /// An answer that is not a fault.
    Answered(u16),
    /// The node could not be reached at all (nothing to reproduce).
    Unavailable,
}

/// The class of a stable node's outcome as the router recorded it.
pub fn stable_class(outcome: &str) -> OutcomeClass {
    match outcome {
        // node_stopped: the engine reported the VM stopped under the request (libvirt discovery).
        "panic" | "reset" | "body_cut_off" | "node_stopped" => OutcomeClass::Panic,
        "timeout" | "abandoned_unhealthy" => OutcomeClass::Hang,
        "connect_error" => OutcomeClass::Unavailable,
        o => match o.strip_prefix("status_").or_else(|| o.strip_prefix("ok_")) {
            Some(code) => {
                let c = code.parse().unwrap_or(0);
                if c >= 500 {
                    OutcomeClass::ServerError(c)
                } else {
                    OutcomeClass::Answered(c)
                }
            }
            None => OutcomeClass::Unavailable,
        },
    }
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

/// What a reproduction concluded. `janus faults repro` exits 0 for `reproduced` and
/// `state_dependent`, 3 for `not_reproduced`, 4 for `build_specific`, 5 for `inconclusive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The debug build fails the same way under the same state, and also without it.
    Reproduced,
    /// The debug build fails the same way under the mirrored state only (an empty state does not).
    StateDependent,
    /// The two builds differ on the same state: the stable node failed (or answered differently)
    /// and the debug build, given that state, did not: a difference of the builds (for a
    /// divergence, the debug build's side is the finding).
    BuildSpecific,
    /// The debug build does not fail (or, for a divergence, gives the stable answer), and the
    /// stable node's exact state was not available (or the divergence came from the mirror
    /// target's own state, not from the build).
    NotReproduced,
    /// The replay could not be judged (the debug node could not be reached or cut the
    /// connection): never counted as reproduced.
    Inconclusive,
}

impl Verdict {
    /// Whether the failure was reproduced on the debug build.
    pub fn reproduced(self) -> bool {
        matches!(self, Verdict::Reproduced | Verdict::StateDependent)
    }

    /// The exit status of `janus faults repro`.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Reproduced | Verdict::StateDependent => 0,
            Verdict::NotReproduced => 3,
            Verdict::BuildSpecific => 4,
            Verdict::Inconclusive => 5,
        }
    }

    /// The headline of the report.
    pub fn headline(self) -> &'static str {
        match self {
            Verdict::Reproduced => "REPRODUCED",
            Verdict::StateDependent => {
                "REPRODUCED, STATE-DEPENDENT (only with the mirrored state, not on an empty one)"
            }
            Verdict::BuildSpecific => {
                "BUILD-SPECIFIC (the builds differ on the same state; caught on the instrumented build)"
            }
            Verdict::NotReproduced => "NOT REPRODUCED",
            Verdict::Inconclusive => "INCONCLUSIVE (the replay could not be judged)",
        }
    }
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
    let opts = crate::node::NodeOpts {
        listen: Some(listen),
        admin: Some(admin),
        admin_token: Some(token.clone()),
        node_id: Some(id.clone()),
        ..crate::node::NodeOpts::default()
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

pub(crate) fn admin_put(p: &ProcSpec, path: &str, body: &[u8]) -> anyhow::Result<Reply> {
    let auth = format!("Bearer {}", p.token);
    client::request(p.admin, "PUT", path, &[("authorization", &auth)], body)
}

/// Sends the captured request to `addr`.
pub(crate) fn replay(
    f: &FaultRecord,
    addr: std::net::SocketAddr,
    trace_id: &str,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n",
        f.summary.method, f.summary.path
    );
    for (n, v) in replayable(&request_headers(f)) {
        let _ = write!(head, "{n}: {v}\r\n");
    }
    let _ = write!(
        head,
        "x-janus-trace-id: {trace_id}\r\ncontent-length: {}\r\n\r\n",
        f.request_body.len()
    );
    let mut raw = head.into_bytes();
    raw.extend_from_slice(&f.request_body);
    client::send_raw(addr, &raw, timeout)
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
    let (verdict, why) = if replay_class == OutcomeClass::Unavailable {
        (
            Verdict::Inconclusive,
            format!(
                "the replay on {} failed in transport: {}",
                node.spec.id,
                result
                    .as_ref()
                    .err()
                    .map(|e| format!("{e:#}"))
                    .unwrap_or_default()
            ),
        )
    } else if f.summary.kind == "divergence" {
        let same = matches!(replay_class, OutcomeClass::Answered(c) if Some(c) == f.stable_status)
            && replay_answer.is_some()
            && replay_answer == stable_answer;
        if same {
            (
                Verdict::NotReproduced,
                "given the stable node's state the debug build gives the stable answer: the \
                 builds agree, the divergence came from the mirror target's own state"
                    .to_owned(),
            )
        } else if exact_state {
            (
                Verdict::BuildSpecific,
                format!(
                    "given the stable node's state the debug build answers {replay_class:?}, \
                     the stable build answered {}",
                    f.stable_status.map_or("?".to_owned(), |s| s.to_string())
                ),
            )
        } else {
            (
                Verdict::NotReproduced,
                "the stable node's state was not available: the answers cannot be compared \
                 on the same state"
                    .to_owned(),
            )
        }
    } else if stable != OutcomeClass::Unavailable && replay_class == stable {
        if exact_state {
            // Does it need the state? The same replay on an empty state says.
            let control = crate::secret::random_token()?;
            let empty = MirroredState::empty("control: an empty state");
            let (without, _) = replay_on(&node, &f, &empty, &control, opts.timeout)?;
            if without == stable {
                (
                    Verdict::Reproduced,
                    "the debug build fails the same way, with or without the mirrored state"
                        .to_owned(),
                )
            } else {
                (
                    Verdict::StateDependent,
                    format!(
                        "the debug build fails the same way under the mirrored state; on an \
                         empty state it answers {without:?}"
                    ),
                )
            }
        } else {
            (
                Verdict::Reproduced,
                "the debug build fails the same way".to_owned(),
            )
        }
    } else if stable != OutcomeClass::Unavailable && exact_state {
        (
            Verdict::BuildSpecific,
            format!(
                "the stable node failed ({stable:?}); the debug build under the same state \
                 answers {replay_class:?}: see the unikernel's panic report, console and \
                 janus_uk_* counters"
            ),
        )
    } else {
        (
            Verdict::NotReproduced,
            format!(
                "the debug build answers {replay_class:?}{}",
                if exact_state {
                    ""
                } else {
                    " (without the stable node's exact state)"
                }
            ),
        )
    };
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
struct Envelope(ProcSpec);

impl Envelope {
    fn set(node: &ProcSpec, bytes: u64) -> anyhow::Result<Envelope> {
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

/// Restores `state` into the repro node and replays the captured request there. A transport error
/// that is not a timeout is [`OutcomeClass::Unavailable`] (inconclusive, never a reproduction).
fn replay_on(
    node: &ReproNode,
    f: &FaultRecord,
    state: &MirroredState,
    trace_id: &str,
    timeout: Duration,
) -> anyhow::Result<(OutcomeClass, anyhow::Result<Reply>)> {
    let r = admin_put(&node.spec, "/state", &state.bytes)?;
    if r.status != 204 && r.status != 200 {
        bail!(
            "restoring the state into {} was refused: {} {}",
            node.spec.id,
            r.status,
            r.text()
        );
    }
    let result = replay(f, node.spec.listen, trace_id, timeout);
    let class = replay_class(&result, OutcomeClass::Unavailable);
    Ok((class, result))
}

/// How a replayed request ended: a timeout is a hang, an answer marked `x-janus-fault` a panic, and
/// a dropped connection is `dropped`: inconclusive on a repro process, a panic on a recorded
/// unikernel (its kernel stops on a panic and the connection goes with it).
pub(crate) fn replay_class(result: &anyhow::Result<Reply>, dropped: OutcomeClass) -> OutcomeClass {
    match result {
        Err(e) if is_timeout(e) => OutcomeClass::Hang,
        Err(_) => dropped,
        Ok(r) if r.header("x-janus-fault").is_some() => OutcomeClass::Panic,
        Ok(r) if r.status >= 500 => OutcomeClass::ServerError(r.status),
        Ok(r) => OutcomeClass::Answered(r.status),
    }
}

fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        })
    })
}

fn fetch_trace(node: &ProcSpec, trace_id: &str) -> String {
    // The flight recorder may finish the trace a moment after the answer: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match admin_get(node, &format!("/traces/{trace_id}")) {
            Ok(r) if r.status == 200 => return render_trace(&r.text()),
            Ok(r) if Instant::now() > deadline => {
                return format!("  (trace not available: {} {})\n", r.status, r.text());
            }
            Err(e) if Instant::now() > deadline => {
                return format!("  (trace not available: {e:#})\n");
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Renders a verdict for a terminal.
pub fn render_report(r: &ReproReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fault {} ({}): {}   {}",
        r.fault,
        r.kind,
        r.request,
        r.verdict.headline()
    );
    let _ = writeln!(s, "  {}", r.why);
    if let Some(bytes) = r.envelope_bytes {
        let _ = writeln!(
            s,
            "  resource envelope: {} KiB (the stable node's heap)",
            bytes / 1024
        );
    }
    let _ = writeln!(
        s,
        "  state mirrored: {} (seq {})",
        r.state_source,
        r.state_seq
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into())
    );
    let _ = writeln!(
        s,
        "  {:<28} {:<28}",
        "stable node (unikernel)",
        format!("debug node {}", r.debug_node)
    );
    let _ = writeln!(
        s,
        "  {:<28} {:<28}",
        format!("{:?}", r.stable),
        format!("{:?}", r.replay)
    );
    if r.kind == "divergence" || !r.verdict.reproduced() {
        let _ = writeln!(
            s,
            "  stable answer: {}",
            cut(r.stable_answer.as_deref().unwrap_or("-"), 200)
        );
        let _ = writeln!(
            s,
            "  replay answer: {}",
            cut(r.replay_answer.as_deref().unwrap_or("-"), 200)
        );
    }
    if !r.stable_panic_report.is_empty() {
        let _ = writeln!(s, "  the unikernel's panic report:");
        for l in r.stable_panic_report.iter().take(8) {
            let _ = writeln!(s, "    {l}");
        }
    }
    if let Some(e) = &r.stable_evidence {
        let _ = writeln!(
            s,
            "  attached: the unikernel's console and janus_uk_* counters (the debug build did not fail)"
        );
        let _ = writeln!(s, "  the unikernel's console ({}):", e.console_log);
        for l in &e.console {
            let _ = writeln!(s, "    {l}");
        }
        let _ = writeln!(s, "  the unikernel's janus_uk_* counters:");
        for l in &e.counters {
            let _ = writeln!(s, "    {l}");
        }
    }
    let _ = writeln!(s, "  debug trace {}:", r.trace_id);
    s.push_str(&r.trace);
    let _ = writeln!(
        s,
        "  reproduction took {} ms; fault to verdict {} ms",
        r.repro_ms, r.fault_to_verdict_ms
    );
    s
}

/// `janus faults export ID --as-test DIR`: the captured request, the mirrored state and the expected
/// outcome (no fault; for a divergence, not the captured wrong answer) as a conformance case.
pub fn export(cluster: &str, id: i64, out: &Path) -> anyhow::Result<PathBuf> {
    let (dir, store) = open(cluster)?;
    let f = get(&store, id)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mirrored = resolve_state(&dir, &f)?
        .unwrap_or_else(|| MirroredState::empty("none found (empty state)"));
    std::fs::write(out.join("state.bin"), &mirrored.bytes)?;
    let state = ClusterState::read(&dir).ok();
    let service = state.map(|s| s.service).unwrap_or_default();
    let headers: BTreeMap<String, String> = replayable(&request_headers(&f)).into_iter().collect();
    let divergence = f.summary.kind == "divergence";
    let table = Table {
        service,
        state: Some("state.bin".into()),
        cases: vec![Case {
            name: format!(
                "fault {id}: {} {} ({}, stable {}; state seq {} from {})",
                f.summary.method,
                f.summary.path,
                f.summary.kind,
                f.summary.stable_outcome.as_deref().unwrap_or("-"),
                mirrored
                    .seq
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                mirrored.source,
            ),
            request: Req {
                method: f.summary.method.clone(),
                path: f.summary.path.clone(),
                headers,
                body: String::from_utf8_lossy(&f.request_body).into_owned(),
                ..Req::default()
            },
            expect: Expect {
                no_fault: true,
                not_body: if divergence {
                    f.stable_response_body
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                } else {
                    None
                },
                janus_headers: false,
                ..Expect::default()
            },
        }],
    };
    let path = out.join("case.toml");
    table.save(&path)?;
    Ok(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_classes() {
        assert_eq!(stable_class("reset"), OutcomeClass::Panic);
        assert_eq!(stable_class("panic"), OutcomeClass::Panic);
        assert_eq!(stable_class("timeout"), OutcomeClass::Hang);
        assert_eq!(stable_class("status_503"), OutcomeClass::ServerError(503));
        assert_eq!(stable_class("ok_200"), OutcomeClass::Answered(200));
        assert_eq!(stable_class("connect_error"), OutcomeClass::Unavailable);
    }

    #[test]
    fn replay_drops_redacted_and_hop_headers() {
        let h = vec![
            ("authorization".to_string(), "[redacted]".to_string()),
            ("connection".to_string(), "close".to_string()),
            ("x-janus-trace-id".to_string(), "ab".to_string()),
            ("idempotency-key".to_string(), "k1".to_string()),
        ];
        assert_eq!(
            replayable(&h),
            vec![("idempotency-key".to_string(), "k1".to_string())]
        );
        assert!(runtime_abi::store::decode_snapshot(&empty_state()).is_ok());
    }
}
