//! Shadow mirroring: a configured share of good stable traffic (per route prefix) is also sent to a
//! debug node, fire-and-forget. The primary answer is never delayed or altered: the mirror runs in its
//! own task, only if a slot of the bounded semaphore is free at once (else it is dropped and counted),
//! and only for small bodies. A stable node with a shadow twin (a debug node following its store)
//! has its mirrors sent there with `x-janus-mirror-seq` (the stable answer's seq): the twin answers
//! at exactly that state or says it lagged (counted `skipped_lag`, never compared). Without a twin
//! the mirror goes to any debug node, whose state is its own. The two answers are compared minus
//! the noise filters (the mirror section's and the route's headers and JSON fields); a difference
//! the stable node itself shows between two answers at the same seq is noise (counted `noisy`);
//! the rest becomes a fault of kind `divergence` carrying both answers.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::capture::{self, Enrich, headers_json, route_label, unix_ms};
use crate::config::{Config, MirrorConfig};
use crate::faults::NewFault;
use crate::ids::Pool;
use crate::pool::Node;
use crate::rand;
use crate::router::Router;
use crate::upstream::{
    BufferedRequest, BufferedResponse, X_FAULT, X_MIRROR, X_MIRROR_SEQ, X_MIRROR_SKIPPED,
};

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
/// slot allow. The mirror goes to the primary node's shadow twin when it has one (carrying the
/// stable answer's seq, so both builds answer on the same state), else to any debug node.
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
    let topo = router.pools.current();
    let (debug, twin) = match topo.twin_of(&primary_node.id) {
        Some(twin) => (twin, true),
        None => match topo.pick_node(Pool::Debug, Some(&primary_node.id), rand::next_u64()) {
            Some(debug) => (debug, false),
            None => {
                router.metrics.mirror_dropped.inc();
                return;
            }
        },
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
        let mut extra = vec![(X_MIRROR, HeaderValue::from_static("1"))];
        let at_seq = primary.state_seq().filter(|_| twin);
        if let Some(seq) = at_seq {
            extra.push((X_MIRROR_SEQ, HeaderValue::from(seq)));
        }
        let shadow = crate::transport::forward(
            &cfg,
            &router.metrics,
            &debug,
            &req,
            &extra,
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
        if twin && shadow.headers.contains_key(X_MIRROR_SKIPPED) {
            router.metrics.mirror_skipped_lag.inc();
            return;
        }
        let filter = Filter::for_path(&cfg, &req.path);
        let diffs = compare_diffs(&filter, &primary, &shadow);
        if diffs.is_empty() {
            router.metrics.mirror_match.inc();
            return;
        }
        // Noise: the same request again on the stable node; where its two answers at the same
        // seq differ, the route is noisy there and the twin's difference there is no divergence.
        let diffs = match stable_noise(
            &cfg,
            &router.metrics,
            &req,
            &primary_node,
            &primary,
            &filter,
        )
        .await
        {
            Some(noise) => {
                let real: Vec<Diff> = diffs
                    .into_iter()
                    .filter(|d| !noise.iter().any(|n| n.key == d.key))
                    .collect();
                if real.is_empty() {
                    router.metrics.mirror_noisy.inc();
                    router.noisy.record(
                        &route_label(&cfg, &req.path),
                        &req.path,
                        noise.iter().map(|n| n.key.as_str()),
                        unix_ms(),
                    );
                    tracing::debug!(path = %req.path, "mirror: stable answers differ at the same seq: noisy, not divergent");
                    return;
                }
                real
            }
            None => diffs,
        };
        router.metrics.mirror_diverged.inc();
        let mut detail = describe(&diffs);
        match at_seq {
            Some(seq) => detail.push_str(&format!(" (twin {} at seq {seq})", debug.id)),
            None if twin => {}
            None => detail.push_str(" (debug node without the stable node's state)"),
        }
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
            debug_outcome: Some(if shadow.headers.contains_key(X_FAULT) {
                "panic".to_owned()
            } else {
                format!("ok_{}", shadow.status.as_u16())
            }),
            debug_status: Some(shadow.status.as_u16()),
            debug_trace_id: Some(req.trace_id.to_string()),
            stable_response_headers: Some(headers_json(&primary.headers, redact)),
            stable_response_body: Some(primary.body.to_vec()),
            debug_response_headers: Some(headers_json(&shadow.headers, redact)),
            debug_response_body: Some(shadow.body.to_vec()),
            detail: Some(detail),
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
    });
}

/// The differences between two answers of the stable node to the same request at the same seq
/// (`None` when the second answer is at another seq: noise cannot be told then).
async fn stable_noise(
    cfg: &Config,
    metrics: &crate::metrics::RouterMetrics,
    req: &BufferedRequest,
    node: &Node,
    primary: &BufferedResponse,
    filter: &Filter<'_>,
) -> Option<Vec<Diff>> {
    let seq = primary.state_seq()?;
    let again = crate::transport::forward(
        cfg,
        metrics,
        node,
        req,
        &[(X_MIRROR, HeaderValue::from_static("1"))],
        cfg.mirror.max_body_bytes,
    )
    .await
    .ok()?;
    (again.state_seq() == Some(seq)).then(|| compare_diffs(filter, primary, &again))
}

/// What a comparison ignores for one route: the mirror section's lists plus the route's own.
pub struct Filter<'a> {
    compare_headers: Vec<&'a str>,
    ignore_json_fields: Vec<&'a str>,
}

impl<'a> Filter<'a> {
    /// The filter of the route `path` falls in.
    pub fn for_path(cfg: &'a Config, path: &str) -> Filter<'a> {
        let route = cfg.route_for(path);
        let ignored_header = |h: &str| {
            route.is_some_and(|r| r.ignore_headers.iter().any(|i| i.eq_ignore_ascii_case(h)))
        };
        Filter {
            compare_headers: cfg
                .mirror
                .compare_headers
                .iter()
                .map(String::as_str)
                .filter(|h| !ignored_header(h))
                .collect(),
            ignore_json_fields: cfg
                .mirror
                .ignore_json_fields
                .iter()
                .chain(route.iter().flat_map(|r| r.ignore_json_fields.iter()))
                .map(String::as_str)
                .collect(),
        }
    }

    /// The mirror section's lists only.
    pub fn of(cfg: &'a MirrorConfig) -> Filter<'a> {
        Filter {
            compare_headers: cfg.compare_headers.iter().map(String::as_str).collect(),
            ignore_json_fields: cfg.ignore_json_fields.iter().map(String::as_str).collect(),
        }
    }
}

/// One difference: where (`status`, `header:<name>`, `body`, or a JSON path `$.a[1]`) and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    pub key: String,
    pub text: String,
}

fn describe(diffs: &[Diff]) -> String {
    diffs
        .iter()
        .take(20)
        .map(|d| d.text.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Compares two answers; `None` if equivalent, else a description of the first differences.
pub fn compare(cfg: &MirrorConfig, a: &BufferedResponse, b: &BufferedResponse) -> Option<String> {
    let diffs = compare_diffs(&Filter::of(cfg), a, b);
    (!diffs.is_empty()).then(|| describe(&diffs))
}

/// Every difference between two answers that the filter does not ignore.
pub fn compare_diffs(filter: &Filter<'_>, a: &BufferedResponse, b: &BufferedResponse) -> Vec<Diff> {
    let mut diffs = Vec::new();
    if a.status != b.status {
        diffs.push(Diff {
            key: "status".to_owned(),
            text: format!(
                "status: stable {} vs debug {}",
                a.status.as_u16(),
                b.status.as_u16()
            ),
        });
    }
    for name in &filter.compare_headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        let va: Vec<_> = a.headers.get_all(&name).iter().collect();
        let vb: Vec<_> = b.headers.get_all(&name).iter().collect();
        if va != vb {
            diffs.push(Diff {
                key: format!("header:{name}"),
                text: format!("header {name}: stable {va:?} vs debug {vb:?}"),
            });
        }
    }
    if a.body != b.body {
        match (
            serde_json::from_slice::<serde_json::Value>(&a.body),
            serde_json::from_slice::<serde_json::Value>(&b.body),
        ) {
            (Ok(ja), Ok(jb)) => json_diff("$", &ja, &jb, &filter.ignore_json_fields, &mut diffs),
            _ => diffs.push(Diff {
                key: "body".to_owned(),
                text: format!(
                    "body: {} bytes vs {} bytes, contents differ",
                    a.body.len(),
                    b.body.len()
                ),
            }),
        }
    }
    diffs
}

/// Field-by-field JSON comparison. A field is ignored when its name or its path (`$.a.b`) is listed.
fn json_diff(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    ignore: &[&str],
    out: &mut Vec<Diff>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            let mut keys: Vec<&String> = ma.keys().chain(mb.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = format!("{path}.{k}");
                if ignore.iter().any(|i| *i == k || *i == p) {
                    continue;
                }
                match (ma.get(k), mb.get(k)) {
                    (Some(x), Some(y)) => json_diff(&p, x, y, ignore, out),
                    (x, y) => out.push(Diff {
                        text: format!("{p}: stable {x:?} vs debug {y:?}"),
                        key: p,
                    }),
                }
            }
        }
        (Value::Array(va), Value::Array(vb)) if va.len() == vb.len() => {
            for (i, (x, y)) in va.iter().zip(vb).enumerate() {
                json_diff(&format!("{path}[{i}]"), x, y, ignore, out);
            }
        }
        _ if a == b => {}
        _ => out.push(Diff {
            key: path.to_owned(),
            text: format!("{path}: stable {a} vs debug {b}"),
        }),
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
    fn route_filters_add_to_the_mirror_section_and_defaults_drop_ids() {
        let mut cfg = Config::default();
        cfg.routes.push(crate::config::RouteConfig {
            prefix: "/r".into(),
            ignore_headers: vec!["Content-Type".into()],
            ignore_json_fields: vec!["$.gen".into()],
            ..Default::default()
        });
        let a = resp(
            r#"{"v":1,"gen":1,"trace_id":"x","node":"uk-1","timestamp":5}"#,
            "Mon",
        );
        let mut b = resp(
            r#"{"v":1,"gen":2,"trace_id":"y","node":"dbg","timestamp":6}"#,
            "Tue",
        );
        b.headers
            .insert("content-type", HeaderValue::from_static("text/plain"));
        let on_route = compare_diffs(&Filter::for_path(&cfg, "/r/x"), &a, &b);
        assert_eq!(on_route, [], "route filter and default ids/timestamps");
        let elsewhere = compare_diffs(&Filter::for_path(&cfg, "/other"), &a, &b);
        let keys: Vec<&str> = elsewhere.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["header:content-type", "$.gen"]);
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
