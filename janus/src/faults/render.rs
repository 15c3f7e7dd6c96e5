//! Terminal output of `janus faults`: the fault table, one fault in detail, a flight-recorder
//! trace, a reproduction's verdict.

use std::fmt::Write as _;

use lb_router::{FaultRecord, FaultSummary};

use super::ReproReport;
use super::replay::request_headers;

/// The table `janus faults list` prints.
pub(crate) fn fault_table(rows: Vec<FaultSummary>) -> String {
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
    s
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

/// One fault in detail, as `janus faults show ID` prints it.
pub(crate) fn fault_detail(f: &FaultRecord) -> String {
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
    for (name, value) in request_headers(f) {
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
    s
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
