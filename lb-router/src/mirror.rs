//! Shadow mirroring: a configured share of good stable traffic (per route prefix) is also sent to a
//! debug node, fire-and-forget. The primary answer is never delayed or altered: the mirror runs in its
//! own task, only if a slot of the bounded semaphore is free at once (else it is dropped and counted),
//! and only for small bodies. The two answers are compared; a divergence becomes a fault of kind
//! `divergence` carrying both answers.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::capture::{self, Enrich, headers_json, route_label, unix_ms};
use crate::config::{Config, MirrorConfig};
use crate::faults::NewFault;
use crate::ids::Pool;
use crate::pool::Node;
use crate::rand;
use crate::router::Router;
use crate::upstream::{BufferedRequest, BufferedResponse, X_MIRROR};

/// Starts a mirror of this request if the route's fraction, the method, the size and a free slot allow.
pub fn maybe_mirror(
    router: &Arc<Router>,
    cfg: &Arc<Config>,
    req: &BufferedRequest,
    primary_node: &Arc<Node>,
    primary: &BufferedResponse,
) {
    if sampled(cfg, &req.path) {
        mirror_sampled(router, cfg, req, primary_node, primary);
    }
}

/// Draws whether a request to `path` is in its route's mirrored share.
pub fn sampled(cfg: &Config, path: &str) -> bool {
    cfg.route_for(path)
        .is_some_and(|route| route.mirror_fraction > 0.0 && rand::unit() < route.mirror_fraction)
}

/// Starts a mirror of a request already drawn by [`sampled`], if the method, the size and a free
/// slot allow.
pub fn mirror_sampled(
    router: &Arc<Router>,
    cfg: &Arc<Config>,
    req: &BufferedRequest,
    primary_node: &Arc<Node>,
    primary: &BufferedResponse,
) {
    if !cfg
        .mirror
        .methods
        .iter()
        .any(|m| m.as_str() == req.method.as_str())
        || req.body.len() > cfg.mirror.max_body_bytes
        || primary.body.len() > cfg.mirror.max_body_bytes
    {
        return;
    }
    let Ok(permit) = router.mirror_slots.clone().try_acquire_owned() else {
        router.metrics.mirror_dropped.inc();
        return;
    };
    let Some(debug) =
        router
            .pools
            .current()
            .pick_node(Pool::Debug, Some(&primary_node.id), rand::next_u64())
    else {
        router.metrics.mirror_dropped.inc();
        return;
    };
    router.metrics.mirror_sent.inc();
    let (router, cfg, req, primary, primary_node) = (
        router.clone(),
        cfg.clone(),
        req.clone(),
        primary.clone(),
        primary_node.clone(),
    );
    tokio::spawn(async move {
        let _permit = permit;
        let extra = [(X_MIRROR, HeaderValue::from_static("1"))];
        let shadow = crate::upstream::local(&cfg.upstream)
            .forward(
                &debug,
                &req,
                &extra,
                cfg.upstream_request_timeout(),
                cfg.mirror.max_body_bytes,
            )
            .await;
        let shadow = match shadow {
            Ok(s) => s,
            Err(e) => {
                router.metrics.mirror_errors.inc();
                tracing::debug!(error = %e, "mirror request failed");
                return;
            }
        };
        match compare(&cfg.mirror, &primary, &shadow) {
            None => router.metrics.mirror_match.inc(),
            Some(diff) => {
                router.metrics.mirror_diverged.inc();
                let (body, truncated) = if req.body.len() > cfg.faults.max_body_bytes {
                    (req.body[..cfg.faults.max_body_bytes].to_vec(), true)
                } else {
                    (req.body.to_vec(), false)
                };
                let redact = &cfg.faults.redact_headers;
                let f = NewFault {
                    time_ms: unix_ms(),
                    kind: "divergence".to_owned(),
                    route: route_label(&cfg, &req.path),
                    method: req.method.to_string(),
                    path: req.path.clone(),
                    request_headers: headers_json(&req.headers, redact),
                    request_body: body,
                    request_body_truncated: truncated,
                    trace_id: req.trace_id.to_string(),
                    stable_node: Some(primary_node.id.to_string()),
                    stable_outcome: Some(format!("ok_{}", primary.status.as_u16())),
                    stable_status: Some(primary.status.as_u16()),
                    stable_state_seq: primary.state_seq(),
                    stable_state_seq_source: primary.state_seq().map(|_| "response".to_owned()),
                    debug_node: Some(debug.id.to_string()),
                    debug_outcome: Some(format!("ok_{}", shadow.status.as_u16())),
                    debug_status: Some(shadow.status.as_u16()),
                    debug_trace_id: Some(req.trace_id.to_string()),
                    stable_response_headers: Some(headers_json(&primary.headers, redact)),
                    stable_response_body: Some(primary.body.to_vec()),
                    debug_response_headers: Some(headers_json(&shadow.headers, redact)),
                    debug_response_body: Some(shadow.body.to_vec()),
                    detail: Some(diff),
                };
                if let Some(rec) = capture::insert(&router, f).await {
                    capture::spawn_enrichment(
                        router.clone(),
                        rec.id,
                        Enrich {
                            stable: None,
                            debug: Some((debug.clone(), req.trace_id.to_string())),
                        },
                    );
                }
            }
        }
    });
}

/// Compares two answers; `None` if equivalent, else a description of the first differences.
pub fn compare(cfg: &MirrorConfig, a: &BufferedResponse, b: &BufferedResponse) -> Option<String> {
    let mut diffs = Vec::new();
    if a.status != b.status {
        diffs.push(format!(
            "status: stable {} vs debug {}",
            a.status.as_u16(),
            b.status.as_u16()
        ));
    }
    for name in &cfg.compare_headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        let va: Vec<_> = a.headers.get_all(&name).iter().collect();
        let vb: Vec<_> = b.headers.get_all(&name).iter().collect();
        if va != vb {
            diffs.push(format!("header {name}: stable {va:?} vs debug {vb:?}"));
        }
    }
    if a.body != b.body {
        match (
            serde_json::from_slice::<serde_json::Value>(&a.body),
            serde_json::from_slice::<serde_json::Value>(&b.body),
        ) {
            (Ok(ja), Ok(jb)) => json_diff("$", &ja, &jb, &cfg.ignore_json_fields, &mut diffs),
            _ => diffs.push(format!(
                "body: {} bytes vs {} bytes, contents differ",
                a.body.len(),
                b.body.len()
            )),
        }
    }
    if diffs.is_empty() {
        None
    } else {
        diffs.truncate(20);
        Some(diffs.join("; "))
    }
}

/// Field-by-field JSON comparison. A field is ignored when its name or its path (`$.a.b`) is listed.
fn json_diff(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    ignore: &[String],
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            let mut keys: Vec<&String> = ma.keys().chain(mb.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                if ignore.iter().any(|i| i == k || *i == p) {
                    continue;
                }
                match (ma.get(k), mb.get(k)) {
                    (Some(x), Some(y)) => json_diff(&p, x, y, ignore, out),
                    (x, y) => out.push(format!("{p}: stable {x:?} vs debug {y:?}")),
                }
            }
        }
        (Value::Array(va), Value::Array(vb)) if va.len() == vb.len() => {
            for (i, (x, y)) in va.iter().zip(vb).enumerate() {
                json_diff(&format!("{path}[{i}]"), x, y, ignore, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: stable {a} vs debug {b}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn resp(body: &str, date: &'static str) -> BufferedResponse {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("date", HeaderValue::from_static(date));
        BufferedResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn json_compared_field_by_field_with_ignores() {
        let cfg = MirrorConfig {
            ignore_json_fields: vec!["node".into()],
            ..MirrorConfig::default()
        };
        let a = resp(r#"{"v":1,"node":"uk-1","t":[1,2]}"#, "Mon");
        let b = resp(r#"{"t":[1,2], "node":"dbg-1","v":1}"#, "Tue");
        assert_eq!(
            compare(&cfg, &a, &b),
            None,
            "key order, ignored field and Date must not matter"
        );
        let c = resp(r#"{"v":2,"node":"x","t":[1,3]}"#, "Mon");
        let d = compare(&cfg, &a, &c).expect("diverges");
        assert!(d.contains("$.v") && d.contains("$.t[1]"), "{d}");
        let e = BufferedResponse {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..resp("x", "Mon")
        };
        assert!(compare(&cfg, &a, &e).expect("diverges").contains("status"));
    }
}
