//! Active health checks: every `health.interval_ms`, each admitted node (and each ejected node whose
//! backoff is over) gets `GET /health` on its admin listener. A pass readmits an ejected node; a
//! failure counts like a failed request.

use std::sync::Arc;
use std::time::Duration;

use crate::health::FailureEffect;
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

/// Runs one round of checks over the current topology.
pub async fn check_round(router: &Arc<Router>) {
    let topo = router.pools.current();
    let now = router.now_ms();
    let mut set = tokio::task::JoinSet::new();
    for node in topo
        .nodes
        .iter()
        .filter(|n| n.health.due_for_check(now))
        .cloned()
    {
        let router = router.clone();
        set.spawn(async move {
            let result = probe(&router, &node).await;
            let now = router.now_ms();
            let ejections = router.pools.ejections(node.pool);
            match result {
                Ok(()) => {
                    if node.health.check_passed(ejections, now) {
                        tracing::info!(node = %node.id, pool = %node.pool, "node readmitted after passing a health check");
                    }
                }
                Err(reason) => {
                    let policy = router.pools.policy();
                    let effect = if node.health.is_ejected() {
                        // Still failing after its backoff: stays ejected, with a longer backoff.
                        node.health.extend_ejection(&policy, now)
                    } else {
                        node.health.record_failure(&policy, ejections, now)
                    };
                    log_effect(&node, effect, &reason);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
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

/// Runs checks forever at the configured interval.
pub async fn run_active_checks(router: Arc<Router>) {
    loop {
        let interval = Duration::from_millis(router.config().health.interval_ms);
        check_round(&router).await;
        tokio::time::sleep(interval).await;
    }
}
