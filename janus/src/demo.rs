//! `janus demo`: the whole story in one command. Brings up the `faulty` sample on unikernel (stable)
//! and process (debug) nodes behind the router, each stable node with a shadow twin (a debug node
//! following its store), drives traffic that triggers its bugs on stable nodes, shows what clients
//! saw, lists the captured faults, reproduces each on a debug node with a verdict (the
//! state-triggered one is state-dependent, the u8 overflow is build-specific: it wraps on the
//! unikernel and panics on the checked debug build), shows that `/stats` mirrored to the twins at
//! the same seq does not diverge (its bug is shared by both builds: A/B cannot see it), then tears
//! everything down.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{self, Reply};
use crate::cluster::ClusterFile;
use crate::faults::{self, ReproOpts, ReproReport};
use crate::supervisor::now_ms;
use crate::up::{self, free_addr};

/// What happened to one bug.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BugOutcome {
    /// Which bug.
    pub bug: &'static str,
    /// The triggering request.
    pub request: String,
    /// Requests sent in this phase.
    pub requests: u32,
    /// Answers the client saw that were errors (5xx or no answer) from a request that went to a
    /// stable node (answered there, or retried on a debug node after it failed).
    pub client_errors: u32,
    /// Error answers from a debug node that the mix picked first: the debug build's own answer
    /// (its checked arithmetic panics where the unikernel wraps), never a stable node's.
    pub debug_pool_errors: u32,
    /// What the client saw for the faulting request.
    pub client_saw: String,
    /// The captured fault.
    pub fault_id: Option<i64>,
    /// Where it ran when it failed.
    pub stable_node: Option<String>,
    /// Reproduction with the mirrored state.
    pub reproduced: Option<bool>,
    /// The verdict of `janus faults repro`.
    pub verdict: Option<faults::Verdict>,
    /// What the demo expects for this bug.
    pub expected: &'static str,
    /// Reproduction on an empty state (state bug only).
    pub reproduced_without_state: Option<bool>,
    /// From capture to verdict.
    pub fault_to_verdict_ms: Option<u64>,
    /// The resource envelope the replay ran under (the unikernel's heap size), if any.
    pub envelope_bytes: Option<u64>,
    /// Whether the replay failed as an allocation past the envelope (the debug build's panic
    /// "exceeds the resource envelope", with the allocation's backtrace in its trace).
    pub allocation_failure: bool,
}

/// The demo's summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoSummary {
    /// One row per bug.
    pub bugs: Vec<BugOutcome>,
    /// Wall time of the whole demo.
    pub wall_ms: u64,
    /// Whether every injected fault ended as expected (captured with its expected verdict, or for
    /// the shared wrong answer, no divergence).
    pub ok: bool,
}

struct Driver {
    router: SocketAddr,
    n: u32,
}

impl Driver {
    fn send(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Reply> {
        self.n += 1;
        let key = format!("demo-{}-{}", now_ms(), self.n);
        client::request(
            self.router,
            method,
            path,
            &[("idempotency-key", &key)],
            body,
        )
    }
}

fn is_error(r: &anyhow::Result<Reply>) -> bool {
    match r {
        Ok(r) => r.status >= 500,
        Err(_) => true,
    }
}

/// Whether an answer came from a debug node the mix picked first (`x-janus-pool: debug` with no
/// `x-janus-retried-from`): no stable node saw the request.
fn from_debug_pick(r: &anyhow::Result<Reply>) -> bool {
    match r {
        Ok(r) => {
            r.header("x-janus-pool") == Some("debug") && r.header("x-janus-retried-from").is_none()
        }
        Err(_) => false,
    }
}

fn describe(r: &anyhow::Result<Reply>) -> String {
    match r {
        Ok(r) => format!(
            "HTTP {} from {} node {} (trace {})",
            r.status,
            r.header("x-janus-flavor").unwrap_or("?"),
            r.header("x-janus-node").unwrap_or("?"),
            r.header("x-janus-trace-id").unwrap_or("-"),
        ),
        Err(e) => format!("no answer: {e:#}"),
    }
}

/// Waits until the router has recorded a fault matching `pred` since `since_ms`.
fn wait_fault(
    cluster: &str,
    since_ms: i64,
    timeout: Duration,
    pred: impl Fn(&lb_router::FaultSummary) -> bool,
) -> anyhow::Result<Option<lb_router::FaultSummary>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(f) = faults::since(cluster, since_ms)?.into_iter().find(&pred) {
            return Ok(Some(f));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_stable_crash(f: &lb_router::FaultSummary) -> bool {
    f.kind == "fault"
        && f.stable_node
            .as_deref()
            .is_some_and(|n| n.starts_with("stable-"))
        && matches!(
            faults::stable_class(f.stable_outcome.as_deref().unwrap_or("")),
            faults::OutcomeClass::Panic
        )
}

/// Guest memory of the demo's unikernel nodes (`--memory 8`).
pub const DEMO_STABLE_MEMORY_MIB: u32 = 8;

/// Runs the demo; `out` receives the narration as it happens.
pub fn demo(out: &mut dyn FnMut(&str)) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let mut cluster = ClusterFile::load(None)?;
    cluster.name = "demo".into();
    cluster.service = crate::janus_home().join("samples/faulty");
    cluster.router.listen = free_addr()?;
    cluster.router.admin = free_addr()?;
    cluster.debug.twins = crate::cluster::GdbStubSpec::All(true);
    // Small unikernels, as on an edge host: bug 6 exhausts their heap (phase 6).
    cluster.stable.memory_mib = DEMO_STABLE_MEMORY_MIB;
    cluster.router.mirror = ["/stats", "/avg"]
        .map(|prefix| crate::cluster::MirrorSpec {
            prefix: prefix.into(),
            fraction: 1.0,
        })
        .to_vec();
    out(&format!(
        "== janus demo: the faulty sample on {} unikernel (stable) + {} process (debug) nodes, {}/{} mix\n",
        cluster.stable.count,
        cluster.debug.count,
        cluster.router.stable_weight,
        cluster.router.debug_weight
    ));
    let up = up::up_cluster(&cluster)?;
    out(&up::describe(&up));
    let result = drive(&cluster, out);
    out("\n== tearing down\n");
    match up::down(&cluster.name) {
        Ok(msg) => out(&format!("{msg}\n")),
        Err(e) => out(&format!("janus down failed: {e:#}\n")),
    }
    let bugs = result?;
    let ok = bugs.iter().all(as_expected);
    let summary = DemoSummary {
        bugs,
        wall_ms: started.elapsed().as_millis() as u64,
        ok,
    };
    out(&render_summary(&summary));
    Ok(summary)
}

/// Whether a bug ended as the demo expects it to.
fn as_expected(b: &BugOutcome) -> bool {
    use faults::Verdict;
    match b.bug {
        // Shared by both builds: mirrored at the same seq, no divergence is recorded.
        "shared wrong answer" => b.fault_id.is_none() && b.client_errors == 0,
        "build" => {
            b.fault_id.is_some()
                && b.verdict == Some(Verdict::BuildSpecific)
                && b.client_errors == 0
        }
        "state" => {
            b.fault_id.is_some()
                && b.verdict == Some(Verdict::StateDependent)
                && b.client_errors == 0
        }
        // Out of memory on the unikernel, an allocation failure under its heap size on the twin.
        "memory" => {
            b.fault_id.is_some()
                && b.verdict == Some(Verdict::Reproduced)
                && b.envelope_bytes.is_some()
                && b.allocation_failure
        }
        // input, hang
        _ => b.fault_id.is_some() && b.verdict == Some(Verdict::Reproduced),
    }
}

fn drive(cluster: &ClusterFile, out: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<BugOutcome>> {
    let name = cluster.name.as_str();
    let mut d = Driver {
        router: cluster.router.listen,
        n: 0,
    };
    let mut bugs = Vec::new();
    let repro_opts = ReproOpts {
        cluster: name.to_string(),
        without_state: false,
        timeout: Duration::from_secs(4),
    };

    // Phase 1: ordinary writes, so that every stable node holds more than 16 keys.
    out("\n== 1. ordinary traffic: 120 PUTs through the router\n");
    let mut errors = 0;
    for i in 0..120 {
        if is_error(&d.send("PUT", &format!("/kv/item-{i:03}"), b"v")) {
            errors += 1;
        }
    }
    out(&format!("   client errors: {errors}\n"));

    // Phase 2: a wrong answer both builds share: mirrored to the twins at the same seq, it matches.
    out(
        "\n== 2. GET /stats after the writes (mirrored to each stable node's twin at the same seq)\n",
    );
    let stats = trigger(
        &mut d,
        name,
        "GET",
        "/stats",
        5,
        Duration::from_secs(1),
        |f| f.kind == "divergence" && f.path.starts_with("/stats"),
    )?;
    let shared = repro_bug(
        "shared wrong answer",
        "no divergence",
        stats,
        &repro_opts,
        out,
    )?;
    if shared.fault_id.is_none() {
        out(
            "   no divergence: both builds under-count the same way (bug 3); A/B cannot see a bug both builds share\n",
        );
    }
    bugs.push(shared);

    // Phase 2b: a build difference: the u8 sum wraps on the unikernel, panics on the checked twin.
    out("\n== 2b. GET /avg?values=200,100 (mirrored to the twin: the builds differ)\n");
    let avg = trigger(
        &mut d,
        name,
        "GET",
        "/avg?values=200,100",
        5,
        Duration::from_secs(2),
        |f| f.kind == "divergence" && f.path.starts_with("/avg"),
    )?;
    bugs.push(repro_bug("build", "build-specific", avg, &repro_opts, out)?);

    // Phase 3: the state-triggered panic.
    out("\n== 3. POST /counter/visits/incr until a stable node's counter passes its table\n");
    let incr = trigger(
        &mut d,
        name,
        "POST",
        "/counter/visits/incr",
        80,
        Duration::ZERO,
        |f| f.path.starts_with("/counter/") && is_stable_crash(f),
    )?;
    let mut state_bug = repro_bug("state", "state-dependent", incr, &repro_opts, out)?;
    state_bug.reproduced_without_state = state_bug
        .verdict
        .map(|v| v != faults::Verdict::StateDependent);
    bugs.push(state_bug);

    // Phase 4: the input-triggered panic.
    out("\n== 4. GET /div?a=1&b=0 until it lands on a stable node\n");
    let div = trigger(
        &mut d,
        name,
        "GET",
        "/div?a=1&b=0",
        20,
        Duration::from_millis(1500),
        |f| f.path.starts_with("/div") && is_stable_crash(f),
    )?;
    bugs.push(repro_bug("input", "reproduced", div, &repro_opts, out)?);

    // Phase 5: the hang. A request the mix sends to the debug pool first is not a stable fault, so
    // send until one lands on a stable node (each attempt waits out the router's timeout).
    out("\n== 5. GET /wait?key=never-written (a request that never completes)\n");
    let hang = trigger(
        &mut d,
        name,
        "GET",
        "/wait?key=never-written",
        6,
        Duration::from_secs(3),
        |f| {
            // A node still restarting after phase 4 refuses the connection: that is not the hang.
            f.path.starts_with("/wait")
                && f.kind == "fault"
                && f.stable_outcome.as_deref() == Some("timeout")
                && f.stable_node
                    .as_deref()
                    .is_some_and(|n| n.starts_with("stable-"))
        },
    )?;
    bugs.push(repro_bug("hang", "reproduced", hang, &repro_opts, out)?);

    // Phase 6: a blob bigger than a unikernel's heap: out of memory there; reproduced on a debug
    // node running under that heap size (the resource envelope) as an allocation failure.
    let heap = faults::stable_heap_bytes(&crate::cluster::run_dir(name), Some("stable-0"));
    out(&format!(
        "\n== 6. POST /blob?kib=N past the heap of the {DEMO_STABLE_MEMORY_MIB} MiB unikernels ({} KiB)\n",
        heap.map_or("?".to_owned(), |h| (h / 1024).to_string())
    ));
    let kib = heap.map_or(1024, |h| h / 1024 + 1024);
    let blob = trigger(
        &mut d,
        name,
        "POST",
        &format!("/blob?kib={kib}"),
        6,
        Duration::from_millis(1500),
        |f| f.path.starts_with("/blob") && is_stable_crash(f),
    )?;
    bugs.push(repro_bug("memory", "reproduced", blob, &repro_opts, out)?);

    out("\n== captured faults\n");
    out(&faults::list(
        name,
        &lb_router::FaultFilter {
            limit: Some(50),
            ..lb_router::FaultFilter::default()
        },
        false,
    )?);
    Ok(bugs)
}

/// What one phase sent and caught.
struct Triggered {
    request: String,
    sent: u32,
    errors: u32,
    debug_pool_errors: u32,
    saw: String,
    found: Option<lb_router::FaultSummary>,
}

/// Sends `method path` up to `tries` times until the router has recorded a fault matching `pred`
/// (waiting up to `wait` after each request).
fn trigger(
    d: &mut Driver,
    cluster: &str,
    method: &str,
    path: &str,
    tries: u32,
    wait: Duration,
    pred: impl Fn(&lb_router::FaultSummary) -> bool,
) -> anyhow::Result<Triggered> {
    let t = now_ms() as i64;
    let mut out = Triggered {
        request: format!("{method} {path}"),
        sent: 0,
        errors: 0,
        debug_pool_errors: 0,
        saw: String::new(),
        found: None,
    };
    for _ in 0..tries {
        let r = d.send(method, path, b"");
        out.sent += 1;
        if is_error(&r) {
            if from_debug_pick(&r) {
                out.debug_pool_errors += 1;
            } else {
                out.errors += 1;
            }
        }
        out.saw = describe(&r);
        out.found = wait_fault(cluster, t, wait, &pred)?;
        if out.found.is_some() {
            break;
        }
    }
    if out.found.is_none() {
        // Fault rows are written before the client's answer, but give the last one a moment.
        out.found = wait_fault(cluster, t, Duration::from_secs(3), &pred)?;
    }
    Ok(out)
}

fn repro_bug(
    bug: &'static str,
    expected: &'static str,
    t: Triggered,
    opts: &ReproOpts,
    out: &mut dyn FnMut(&str),
) -> anyhow::Result<BugOutcome> {
    out(&format!(
        "   {} requests, {} client-visible errors from stable nodes ({} more from debug nodes the mix \
         picked first); the client got: {}\n",
        t.sent, t.errors, t.debug_pool_errors, t.saw
    ));
    let mut outcome = BugOutcome {
        bug,
        request: t.request,
        requests: t.sent,
        client_errors: t.errors,
        debug_pool_errors: t.debug_pool_errors,
        client_saw: t.saw,
        fault_id: None,
        stable_node: None,
        reproduced: None,
        verdict: None,
        expected,
        reproduced_without_state: None,
        fault_to_verdict_ms: None,
        envelope_bytes: None,
        allocation_failure: false,
    };
    let fault = t.found;
    let Some(f) = fault else {
        out("   no fault captured\n");
        return Ok(outcome);
    };
    outcome.fault_id = Some(f.id);
    outcome.stable_node = f.stable_node.clone();
    out(&format!(
        "   captured fault {} ({}): stable {} -> {}, answered by {} -> {}\n",
        f.id,
        f.kind,
        f.stable_node.as_deref().unwrap_or("-"),
        f.stable_outcome.as_deref().unwrap_or("-"),
        f.debug_node.as_deref().unwrap_or("-"),
        f.debug_outcome.as_deref().unwrap_or("-"),
    ));
    out(&format!(
        "   $ janus faults repro {} --cluster {}\n",
        f.id, opts.cluster
    ));
    let report: ReproReport = faults::repro(f.id, opts).context("repro failed")?;
    for line in faults::render_report(&report).lines().take(40) {
        out(&format!("   {line}\n"));
    }
    outcome.reproduced = Some(report.reproduced);
    outcome.verdict = Some(report.verdict);
    outcome.fault_to_verdict_ms = Some(report.fault_to_verdict_ms);
    outcome.envelope_bytes = report.envelope_bytes;
    outcome.allocation_failure = [Some(&report.trace), report.replay_answer.as_ref()]
        .into_iter()
        .flatten()
        .any(|t| t.contains(ENVELOPE_PANIC));
    if let (true, Some(bytes)) = (outcome.allocation_failure, outcome.envelope_bytes) {
        out(&format!(
            "   under the unikernel's heap size ({} KiB) as its envelope, the debug build failed \
             the allocation (a panic with the allocation's backtrace, in the trace above)\n",
            bytes / 1024
        ));
    }
    Ok(outcome)
}

/// What the debug build's panic says for an allocation past the resource envelope
/// (backend-unix `public.rs`).
const ENVELOPE_PANIC: &str = "exceeds the resource envelope";

/// The summary table.
pub fn render_summary(s: &DemoSummary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n== summary");
    let _ = writeln!(
        o,
        "{:<19} {:<24} {:>8} {:>13} {:>6} {:<9} {:<16} {:<16} {:>10}",
        "BUG",
        "REQUEST",
        "REQUESTS",
        "CLIENT ERRORS",
        "FAULT",
        "STABLE",
        "VERDICT",
        "EXPECTED",
        "FAULT->VERDICT"
    );
    for b in &s.bugs {
        let _ = writeln!(
            o,
            "{:<19} {:<24} {:>8} {:>13} {:>6} {:<9} {:<16} {:<16} {:>10}",
            b.bug,
            b.request,
            b.requests,
            b.client_errors,
            b.fault_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "none".into()),
            b.stable_node.as_deref().unwrap_or("-"),
            b.verdict
                .map(|v| serde_json::to_value(v)
                    .ok()
                    .and_then(|j| j.as_str().map(|t| t.replace('_', "-")))
                    .unwrap_or_default())
                .unwrap_or_else(|| "-".into()),
            b.expected,
            b.fault_to_verdict_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let _ = writeln!(
        o,
        "input and hang bugs fail on every build, so the client gets the debug node's answer (with its trace id) instead of a dropped connection; the state and wrong-answer bugs never reach the client as errors; the u8 overflow is a silent wrong answer on the unikernel that the checked twin turns into a panic."
    );
    let _ = writeln!(
        o,
        "demo wall time {:.1} s: {}",
        s.wall_ms as f64 / 1000.0,
        if s.ok {
            "every injected fault ended as expected"
        } else {
            "SOME FAULTS DID NOT END AS EXPECTED"
        }
    );
    o
}
