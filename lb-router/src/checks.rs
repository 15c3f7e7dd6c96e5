//! Active health checks: every `health.interval_ms` (jittered), each node (ejected ones once their
//! backoff is over) gets `GET /health` on its admin listener, at most one check per node at a time.
//! `health.unhealthy_threshold` failures in a row make a node unhealthy (no traffic, in-flight
//! requests abandoned; never capped), `health.healthy_threshold` passes healthy again; a pass after the
//! backoff also readmits a passively ejected node.

use std::sync::Arc;
use std::time::Duration;

use crate::health::{ActiveEffect, FailureEffect};
use crate::pool::Node;
use crate::router::Router;

/// One probe of one node: `Ok` if `/health` answered 200 with `"status":"ok"`.
pub async fn probe(router: &Router, node: &Node) -> Result<(), String> {
    let cfg = router.config();
    let timeout = Duration::from_millis(cfg.health.timeout_ms);
    let resp = router
        .upstream
        .admin_get(node, &cfg.upstream.admin_token, "/health", timeout)
        .await?;
    if !resp.status.is_success() {
        return Err(format!(
            "node {}: /health answered {}",
            node.id, resp.status
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("node {}: /health is not JSON: {e}", node.id))?;
    if v.get("status").and_then(|s| s.as_str()) != Some("ok") {
        return Err(format!(
            "node {}: /health status is not \"ok\": {v}",
            node.id
        ));
    }
    // The node's current store seq: the best "last seen" value if the node dies before its next answer.
    if let Some(seq) = v.get("seq").and_then(serde_json::Value::as_u64) {
        node.observe_seq(seq);
    }
    Ok(())
}

/// Starts one round of checks over the current topology and returns without waiting for them: each
/// due node not already being checked gets its probe in a task of its own, so a wedged node's check
/// (waiting for `health.timeout_ms`) never delays another node's.
pub fn check_round(router: &Arc<Router>, set: &mut tokio::task::JoinSet<()>) {
    let topo = router.pools.current();
    let now = router.now_ms();
    for node in topo.nodes.iter().filter(|n| n.health.due_for_check(now)) {
        if !node.health.begin_probe() {
            continue;
        }
        let (router, node) = (router.clone(), node.clone());
        set.spawn(async move {
            let result = probe(&router, &node).await;
            node.health.end_probe();
            judge_probe(&router, &node, result);
        });
    }
}

/// What one probe's result does to the node: the active state (thresholds, uncapped) and, for a
/// passively ejected node, readmission or a longer backoff.
fn judge_probe(router: &Router, node: &Node, result: Result<(), String>) {
    let now = router.now_ms();
    let cfg = router.config();
    let ejections = router.pools.ejections(node.pool);
    match result {
        Ok(()) => {
            if node.health.active_passed(cfg.health.healthy_threshold)
                == ActiveEffect::BecameHealthy
            {
                router.metrics.turned_healthy.inc();
                tracing::info!(node = %node.id, pool = %node.pool, "node healthy again (active checks)");
            }
            if node.health.check_passed(ejections, now) {
                tracing::info!(node = %node.id, pool = %node.pool, "node readmitted after passing a health check");
            }
        }
        Err(reason) => {
            if node.health.active_failed(cfg.health.unhealthy_threshold)
                == ActiveEffect::BecameUnhealthy
            {
                router.metrics.turned_unhealthy.inc();
                node.abandon_in_flight();
                tracing::warn!(node = %node.id, pool = %node.pool, reason, in_flight = node.in_flight(), "node unhealthy (active checks): no new requests, in-flight ones abandoned");
            }
            if node.health.is_ejected() {
                // Still failing after its backoff: stays ejected, with a longer backoff.
                let effect = node.health.extend_ejection(&router.pools.policy(), now);
                log_effect(node, effect, &reason);
            }
        }
    }
}

pub fn log_effect(node: &Node, effect: FailureEffect, reason: &str) {
    match effect {
        FailureEffect::Ejected { until_ms } => {
            tracing::warn!(node = %node.id, pool = %node.pool, until_ms, reason, "node ejected");
        }
        FailureEffect::CapReached => {
            tracing::warn!(node = %node.id, pool = %node.pool, reason, "node would be ejected but the pool's ejection cap is reached");
        }
        FailureEffect::Counted => tracing::debug!(node = %node.id, reason, "node failure counted"),
    }
}

/// Runs checks forever, a round every `health.interval_ms` plus a random `0..=interval_jitter_ms`.
pub async fn run_active_checks(router: Arc<Router>) {
    let mut probes = tokio::task::JoinSet::new();
    loop {
        let h = router.config().health.clone();
        // The probes are owned here (aborted with this task); finished ones are reaped each round.
        while probes.try_join_next().is_some() {}
        check_round(&router, &mut probes);
        let jitter = crate::rand::below(h.interval_jitter_ms + 1);
        tokio::time::sleep(Duration::from_millis(h.interval_ms + jitter)).await;
    }
}
