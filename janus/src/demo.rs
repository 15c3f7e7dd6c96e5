//! `janus demo`: the whole story in one command. Brings up the `faulty` sample on unikernel (stable)
//! and process (debug) nodes behind the router, drives traffic that triggers its bugs on stable nodes,
//! shows what clients saw, lists the captured faults, reproduces each on a debug node (and shows that
//! the state-triggered one is not reproduced without the mirrored state), then tears everything down.

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
    /// Answers the client saw that were errors (5xx or no answer).
    pub client_errors: u32,
    /// What the client saw for the faulting request.
    pub client_saw: String,
    /// The captured fault.
    pub fault_id: Option<i64>,
    /// Where it ran when it failed.
    pub stable_node: Option<String>,
    /// Reproduction with the mirrored state.
    pub reproduced: Option<bool>,
    /// Reproduction on an empty state (state bug only).
    pub reproduced_without_state: Option<bool>,
    /// From capture to verdict.
    pub fault_to_verdict_ms: Option<u64>,
}

/// The demo's summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoSummary {
    /// One row per bug.
    pub bugs: Vec<BugOutcome>,
    /// Wall time of the whole demo.
    pub wall_ms: u64,
    /// Whether every injected fault was captured and reproduced.
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

/// Runs the demo; `out` receives the narration as it happens.
pub fn demo(out: &mut dyn FnMut(&str)) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let mut cluster = ClusterFile::load(None)?;
    cluster.name = "demo".into();
    cluster.service = crate::janus_home().join("samples/faulty");
    cluster.router.listen = free_addr()?;
    cluster.router.admin = free_addr()?;
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
    let ok = bugs
        .iter()
        .all(|b| b.fault_id.is_some() && b.reproduced == Some(true))
        && bugs
            .iter()
            .filter(|b| b.bug == "state")
            .all(|b| b.reproduced_without_state == Some(false) && b.client_errors == 0);
    let summary = DemoSummary {
        bugs,
        wall_ms: started.elapsed().as_millis() as u64,
        ok,
    };
    out(&render_summary(&summary));
    Ok(summary)
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

    // Phase 2: the wrong answer, caught by shadow mirroring.
    out("\n== 2. GET /stats (mirrored to the debug pool and compared)\n");
    let stats = trigger(
        &mut d,
        name,
        "GET",
        "/stats",
        5,
        Duration::from_secs(2),
        |f| f.kind == "divergence" && f.path.starts_with("/stats"),
    )?;
    bugs.push(repro_bug("wrong answer", stats, &repro_opts, out)?);

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
    let found = incr.found.clone();
    let mut state_bug = repro_bug("state", incr, &repro_opts, out)?;
    if let Some(f) = &found {
        let without = ReproOpts {
            without_state: true,
            ..repro_opts.clone()
        };
        let r = faults::repro(f.id, &without)?;
        out(&format!(
            "   control: the same replay on a fresh, empty state -> {}\n",
            if r.reproduced {
                "REPRODUCED (unexpected)"
            } else {
                "not reproduced: the mirrored state is what makes it fail"
            }
        ));
        state_bug.reproduced_without_state = Some(r.reproduced);
    }
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
    bugs.push(repro_bug("input", div, &repro_opts, out)?);

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
    bugs.push(repro_bug("hang", hang, &repro_opts, out)?);

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
        saw: String::new(),
        found: None,
    };
    for _ in 0..tries {
        let r = d.send(method, path, b"");
        out.sent += 1;
        out.errors += u32::from(is_error(&r));
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
    t: Triggered,
    opts: &ReproOpts,
    out: &mut dyn FnMut(&str),
) -> anyhow::Result<BugOutcome> {
    out(&format!(
        "   {} requests, {} client-visible errors; the client got: {}\n",
        t.sent, t.errors, t.saw
    ));
    let mut outcome = BugOutcome {
        bug,
        request: t.request,
        requests: t.sent,
        client_errors: t.errors,
        client_saw: t.saw,
        fault_id: None,
        stable_node: None,
        reproduced: None,
        reproduced_without_state: None,
        fault_to_verdict_ms: None,
    };
    let fault = t.found;
    let Some(f) = fault else {
        out("   NO FAULT CAPTURED\n");
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
    outcome.fault_to_verdict_ms = Some(report.fault_to_verdict_ms);
    Ok(outcome)
}

/// The summary table.
pub fn render_summary(s: &DemoSummary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n== summary");
    let _ = writeln!(
        o,
        "{:<13} {:<28} {:>8} {:>13} {:>6} {:<9} {:>11} {:>10}",
        "BUG",
        "REQUEST",
        "REQUESTS",
        "CLIENT ERRORS",
        "FAULT",
        "STABLE",
        "REPRODUCED",
        "FAULT->VERDICT"
    );
    for b in &s.bugs {
        let _ = writeln!(
            o,
            "{:<13} {:<28} {:>8} {:>13} {:>6} {:<9} {:>11} {:>10}",
            b.bug,
            b.request,
            b.requests,
            b.client_errors,
            b.fault_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "none".into()),
            b.stable_node.as_deref().unwrap_or("-"),
            match (b.reproduced, b.reproduced_without_state) {
                (Some(true), Some(false)) => "yes (not w/o state)".to_string(),
                (Some(r), _) =>
                    if r {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                (None, _) => "-".into(),
            },
            b.fault_to_verdict_ms
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    let _ = writeln!(
        o,
        "input and hang bugs fail on every build, so the client gets the debug node's answer (with its trace id) instead of a dropped connection; the state and wrong-answer bugs never reach the client as errors."
    );
    let _ = writeln!(
        o,
        "demo wall time {:.1} s: {}",
        s.wall_ms as f64 / 1000.0,
        if s.ok {
            "every injected fault was captured and reproduced"
        } else {
            "SOME FAULTS WERE NOT CAPTURED OR NOT REPRODUCED"
        }
    );
    o
}
