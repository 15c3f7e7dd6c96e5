//! Fault capture (phase *record*): writes a fault row durably before the client is answered (group
//! commit; a repeat of the same failure is counted into its row, see `faults`), then
//! attaches, in the background, the debug node's trace (`GET /traces/{trace_id}` on its admin API) and
//! the stable node's state snapshot as of the request (`GET /state?seq=N`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::config::Config;
use crate::faults::{NewFault, Recorded, WriteOp};
use crate::pool::Node;
use crate::proxy::{Attempt, RetryOutcome};
use crate::router::Router;
use crate::upstream::{BufferedRequest, BufferedResponse, FaultKind, X_TRACE_ID};

/// Everything known about one stable fault.
pub struct FaultContext<'a> {
    pub cfg: &'a Config,
    pub req: &'a BufferedRequest,
    pub stable: &'a Attempt,
    pub kind: FaultKind,
    pub retry: &'a RetryOutcome,
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Headers as a JSON object `{name: [values]}` with the configured names redacted.
pub fn headers_json(headers: &HeaderMap, redact: &[String]) -> String {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<serde_json::Value> = headers
            .get_all(name)
            .iter()
            .map(|v| {
                if redact.iter().any(|r| r.eq_ignore_ascii_case(name.as_str())) {
                    serde_json::Value::from("[redacted]")
                } else {
                    serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned())
                }
            })
            .collect();
        map.insert(name.as_str().to_owned(), serde_json::Value::Array(values));
    }
    serde_json::Value::Object(map).to_string()
}

pub fn route_label(cfg: &Config, path: &str) -> String {
    cfg.route_for(path)
        .map_or_else(|| "default".to_owned(), |r| r.prefix.clone())
}

fn capped(body: &[u8], cap: usize) -> (Vec<u8>, bool) {
    if body.len() > cap {
        (body[..cap].to_vec(), true)
    } else {
        (body.to_vec(), false)
    }
}

/// The state seq a node's state is to be asked for: its failed answer's `x-janus-state-seq`, else
/// the last one the router saw from it.
fn state_seq_of(attempt: &Attempt) -> (Option<u64>, Option<String>) {
    match attempt
        .result
        .as_ref()
        .ok()
        .and_then(BufferedResponse::state_seq)
    {
        Some(s) => (Some(s), Some("response".to_owned())),
        None => match attempt.node.last_seq() {
            Some(s) => (Some(s), Some("last_seen".to_owned())),
            None => (None, None),
        },
    }
}

/// A fault row's request part.
fn request_fault(cfg: &Config, req: &BufferedRequest, kind: &str) -> NewFault {
    let (body, truncated) = capped(&req.body, cfg.faults.max_body_bytes);
    NewFault {
        time_ms: unix_ms(),
        kind: kind.to_owned(),
        route: route_label(cfg, &req.path),
        method: req.method.to_string(),
        path: req.path.clone(),
        request_headers: headers_json(&req.headers, &cfg.faults.redact_headers),
        request_body: body,
        request_body_truncated: truncated,
        trace_id: req.trace_id.to_string(),
        ..NewFault::default()
    }
}

/// Fills a fault row's debug part from a debug node's attempt (`outcome` as judged).
fn debug_part(cfg: &Config, req: &BufferedRequest, f: &mut NewFault, d: &Attempt, outcome: String) {
    f.debug_node = Some(d.node.id.to_string());
    f.debug_outcome = Some(outcome);
    if let Ok(r) = &d.result {
        f.debug_status = Some(r.status.as_u16());
        let trace = r
            .headers
            .get(X_TRACE_ID)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| req.trace_id.to_string(), str::to_owned);
        f.debug_trace_id = Some(trace);
        let (b, _) = capped(&r.body, cfg.faults.max_body_bytes);
        f.debug_response_headers = Some(headers_json(&r.headers, &cfg.faults.redact_headers));
        f.debug_response_body = Some(b);
    }
}

/// Inserts the row synchronously (durable when this returns `Some`), then spawns the enrichment.
pub async fn record_fault(router: &Arc<Router>, ctx: FaultContext<'_>) -> Option<i64> {
    let cfg = ctx.cfg;
    let stable_resp = ctx.stable.result.as_ref().ok();
    let (seq, seq_source) = state_seq_of(ctx.stable);
    let mut f = NewFault {
        stable_node: Some(ctx.stable.node.id.to_string()),
        stable_outcome: Some(ctx.kind.outcome()),
        stable_status: stable_resp.map(|r| r.status.as_u16()),
        stable_state_seq: seq,
        stable_state_seq_source: seq_source,
        ..request_fault(cfg, ctx.req, "fault")
    };
    if let Some(r) = stable_resp {
        let (b, _) = capped(&r.body, cfg.faults.max_body_bytes);
        f.stable_response_headers = Some(headers_json(&r.headers, &cfg.faults.redact_headers));
        f.stable_response_body = Some(b);
    } else if let Err(e) = &ctx.stable.result {
        f.detail = Some(e.to_string());
    }
    let mut debug_node = None;
    match ctx.retry {
        RetryOutcome::Answered(d) => {
            let outcome = match (&d.verdict, &d.result) {
                (crate::upstream::Verdict::Good, Ok(r)) => format!("ok_{}", r.status.as_u16()),
                (crate::upstream::Verdict::Fault(k), _) => k.outcome(),
                (crate::upstream::Verdict::Good, Err(_)) => "error".to_owned(),
            };
            debug_part(cfg, ctx.req, &mut f, d, outcome);
            debug_node = Some(d.node.clone());
        }
        RetryOutcome::NotReplayed(why) => {
            let prev = f
                .detail
                .take()
                .map(|d| format!("{d}; "))
                .unwrap_or_default();
            f.detail = Some(format!("{prev}not replayed: {why}"));
        }
    }
    let rec = insert(router, f.clone()).await?;
    let id = rec.id;
    if rec.merged {
        // Counted into the row of the first occurrence, which has its own trace and state.
        return Some(id);
    }
    spawn_enrichment(
        router.clone(),
        id,
        Enrich {
            stable: Some((ctx.stable.node.clone(), seq, ctx.kind.node_may_be_alive())),
            debug: debug_node.zip(f.debug_trace_id.clone()),
        },
    );
    Some(id)
}

/// A debug node failed a request it was picked for first (beta channel, the debug share of the mix,
/// spill-over): recorded like a stable fault, as kind `debug_fault`, with the debug node's trace and
/// its state as of the request (in the `stable_state*` columns: the state of the node that failed).
pub async fn record_debug_fault(
    router: &Arc<Router>,
    cfg: &Config,
    req: &BufferedRequest,
    debug: &Attempt,
    kind: FaultKind,
) -> Option<i64> {
    let (seq, seq_source) = state_seq_of(debug);
    let mut f = NewFault {
        stable_state_seq: seq,
        stable_state_seq_source: seq_source,
        ..request_fault(cfg, req, "debug_fault")
    };
    debug_part(cfg, req, &mut f, debug, kind.outcome());
    if let Err(e) = &debug.result {
        f.detail = Some(e.to_string());
    }
    // The trace is under the id the node answered with, else the router's (a node that died has none).
    let trace_id = f
        .debug_trace_id
        .clone()
        .unwrap_or_else(|| req.trace_id.to_string());
    let rec = insert(router, f).await?;
    if !rec.merged {
        spawn_enrichment(
            router.clone(),
            rec.id,
            Enrich {
                stable: Some((debug.node.clone(), seq, kind.node_may_be_alive())),
                debug: Some((debug.node.clone(), trace_id)),
            },
        );
    }
    Some(rec.id)
}

/// Records one fault (group commit, see `faults`); `None` (and a metric) if the store failed. When
/// this returns the row (or the count of the row it was counted into) is committed.
pub async fn insert(router: &Arc<Router>, f: NewFault) -> Option<Recorded> {
    let kind = f.kind.clone();
    match router.faults.submit(WriteOp::Insert(Box::new(f))).await {
        Ok(Ok(rec)) => {
            router.metrics.fault_recorded(&kind);
            if rec.merged {
                tracing::debug!(fault_id = rec.id, kind, "fault counted into its row");
            } else {
                tracing::info!(fault_id = rec.id, kind, "fault recorded");
            }
            Some(rec)
        }
        Ok(Err(e)) => {
            router.metrics.fault_store_errors.inc();
            tracing::error!(error = %e, "could not record fault");
            None
        }
        Err(_) => {
            router.metrics.fault_store_errors.inc();
            tracing::error!("fault store writer is gone");
            None
        }
    }
}

/// Queues an attachment to a row (committed with the next batch; nobody waits for it).
fn attach(router: &Router, op: WriteOp) {
    drop(router.faults.submit(op));
}

/// What to attach to a fault row after it is written.
pub struct Enrich {
    /// Stable node, the seq to ask for, and whether it may still be alive.
    pub stable: Option<(Arc<Node>, Option<u64>, bool)>,
    /// Debug node and the trace id it answered under.
    pub debug: Option<(Arc<Node>, String)>,
}

pub fn spawn_enrichment(router: Arc<Router>, id: i64, what: Enrich) {
    tokio::spawn(async move {
        let cfg = router.config();
        let token = cfg.upstream.admin_token.clone();
        let timeout = Duration::from_millis(cfg.health.timeout_ms.max(1000));
        if cfg.faults.fetch_trace
            && let Some((node, trace_id)) = &what.debug
        {
            let trace = fetch_trace(&router, node, &token, trace_id, timeout).await;
            attach(&router, WriteOp::AttachTrace(id, trace));
        }
        if cfg.faults.fetch_state
            && let Some((node, seq, may_be_alive)) = &what.stable
        {
            let state = if !may_be_alive {
                Err(format!(
                    "{} node {} was unreachable; last seq {:?} stored, state to come from its console dump",
                    node.pool, node.id, seq
                ))
            } else {
                let path = seq.map_or_else(|| "/state".to_owned(), |s| format!("/state?seq={s}"));
                match router
                    .upstream
                    .admin_get(node, &token, &path, timeout)
                    .await
                {
                    Ok(r) if r.status.is_success() => Ok(r.body.to_vec()),
                    Ok(r) => Err(format!(
                        "{} node {} admin {path} answered {}",
                        node.pool, node.id, r.status
                    )),
                    Err(e) => Err(format!(
                        "{e}; last seq {seq:?} stored, state to come from its console dump"
                    )),
                }
            };
            attach(&router, WriteOp::AttachState(id, state));
        }
    });
}

/// Fetches a trace; the node may finish writing it just after answering, so 404 is retried briefly.
async fn fetch_trace(
    router: &Router,
    node: &Node,
    token: &str,
    trace_id: &str,
    timeout: Duration,
) -> Result<String, String> {
    let path = format!("/traces/{trace_id}");
    let mut last = String::new();
    for attempt in 0..5u32 {
        match router.upstream.admin_get(node, token, &path, timeout).await {
            Ok(r) if r.status.is_success() => {
                return Ok(String::from_utf8_lossy(&r.body).into_owned());
            }
            Ok(r) => last = format!("debug node {} admin {path} answered {}", node.id, r.status),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn redaction_hides_secrets() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.append("cookie", HeaderValue::from_static("sid=1"));
        h.insert("x-user-id", HeaderValue::from_static("u1"));
        let json = headers_json(&h, &Config::default().faults.redact_headers);
        assert!(
            !json.contains("secret") && !json.contains("sid=1"),
            "{json}"
        );
        assert!(json.contains("\"x-user-id\":[\"u1\"]"), "{json}");
    }
}
