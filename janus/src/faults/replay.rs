//! Sending a captured request again: which headers are replayed, the mirrored state restored first,
//! the debug node's trace of the replay fetched after.

use std::time::{Duration, Instant};

use anyhow::bail;
use lb_router::FaultRecord;

use super::classify::{OutcomeClass, replay_class};
use super::render::render_trace;
use super::repro::ReproNode;
use super::state::MirroredState;
use crate::client::{self, Reply};
use crate::supervisor::ProcSpec;
use crate::up::admin_get;

/// The captured request headers as (name, value), without redacted values.
pub(super) fn request_headers(f: &FaultRecord) -> Vec<(String, String)> {
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
pub(super) fn replayable(headers: &[(String, String)]) -> Vec<(String, String)> {
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
    let headers = replayable(&request_headers(f));
    let mut fields: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    fields.push(("x-janus-trace-id", trace_id));
    client::request_timeout(
        addr,
        &f.summary.method,
        &f.summary.path,
        &fields,
        &f.request_body,
        timeout,
    )
}

/// Restores `state` into the repro node and replays the captured request there. A transport error
/// that is not a timeout is [`OutcomeClass::Unavailable`] (inconclusive, never a reproduction).
pub(super) fn replay_on(
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

pub(super) fn fetch_trace(node: &ProcSpec, trace_id: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
