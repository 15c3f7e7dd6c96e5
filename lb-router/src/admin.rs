//! The router's admin API (separate listener, loopback by default, every request needs
//! `Authorization: Bearer <admin.token>`):
//!
//! | method + path                    | what                                                       |
//! |----------------------------------|------------------------------------------------------------|
//! | `GET /health`                    | the router itself                                          |
//! | `GET /pools`                     | pools and nodes: health, weight, counters, last seq        |
//! | `PUT /nodes/{id}/weight`         | body `{"weight": N}`                                       |
//! | `POST /nodes/{id}/drain`         | stop sending new requests (`/undrain` reverses)            |
//! | `POST /nodes`                    | add a node, body = a `[[nodes]]` entry as JSON             |
//! | `DELETE /nodes/{id}`             | remove a node                                              |
//! | `GET /faults?kind=&route=&since_ms=&until_ms=&limit=` | list faults, newest first             |
//! | `GET /faults/{id}`               | one fault in full                                          |
//! | `POST /faults/{id}/replay?node=ID` | replay a captured request on a debug node                |
//! | `GET /metrics`                   | OpenMetrics text (`prometheus-client`), `janus_router_*`    |
//! | `POST /reload`                   | re-read the config (like SIGHUP); 400 names the bad key    |
//!
//! The status page (`GET /`, its login form and the data it polls) lives in [`crate::status`]; its
//! cookie authorises GETs only.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::NodeConfig;
use crate::faults::FaultFilter;
use crate::ids::{Pool, TraceId};
use crate::metrics::exposition::{self, Label};
use crate::router::Router;
use crate::upstream::BufferedRequest;

type AdminResponse = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_reply(status: StatusCode, v: &serde_json::Value) -> AdminResponse {
    reply(status, "application/json", v.to_string())
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> AdminResponse {
    json_reply(status, &json!({ "error": msg.to_string() }))
}

/// Constant-time comparison of the presented token with the configured one.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(presented) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(presented) = presented.strip_prefix("Bearer ") else {
        return false;
    };
    crate::status::token_matches(presented, token)
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Serves the admin API forever.
pub async fn serve_admin(router: Arc<Router>, listener: TcpListener) {
    let status = crate::status::Status::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let router = router.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let router = router.clone();
                let status = status.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(router, &status, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    router: Arc<Router>,
    status: &crate::status::Status,
    req: Request<Incoming>,
) -> AdminResponse {
    let cfg = router.config();
    let bearer = authorized(req.headers(), &cfg.admin.token);
    let req = match crate::status::handle(&router, status, req, bearer).await {
        Ok(page) => return page,
        Err(req) => req,
    };
    let cookie = req.method() == Method::GET
        && crate::status::cookie_authorized(req.headers(), &cfg.admin.token);
    if !bearer && !cookie {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["health"]) => json_reply(
            StatusCode::OK,
            &json!({"status": "ok", "service": "lb-router"}),
        ),
        (Method::GET, ["pools"]) => json_reply(StatusCode::OK, &pools_json(&router)),
        (Method::GET, ["mirrors", "noisy"]) => {
            json_reply(StatusCode::OK, &json!({ "routes": router.noisy.list() }))
        }
        (Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            exposition::CONTENT_TYPE,
            render_metrics(router.clone()),
        ),
        (Method::POST, ["reload"]) => match router.reload().await {
            Ok(()) => json_reply(StatusCode::OK, &json!({"reloaded": true})),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (Method::PUT, ["nodes", id, "weight"]) => {
            let id = (*id).to_owned();
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(w) = body
                .get("weight")
                .and_then(serde_json::Value::as_u64)
                .filter(|w| *w <= 10_000)
            else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be {\"weight\": N} with 0 <= N <= 10000",
                );
            };
            match router.pools.current().get(&id) {
                Some(n) => {
                    n.set_weight(w as u32);
                    json_reply(StatusCode::OK, &json!({"node": id, "weight": w}))
                }
                None => error(StatusCode::NOT_FOUND, format!("no node `{id}`")),
            }
        }
        (Method::POST, ["nodes", id, action @ ("drain" | "undrain")]) => {
            match router.pools.current().get(id) {
                Some(n) => {
                    n.health.set_draining(*action == "drain");
                    json_reply(
                        StatusCode::OK,
                        &json!({"node": id, "draining": *action == "drain"}),
                    )
                }
                None => error(StatusCode::NOT_FOUND, format!("no node `{id}`")),
            }
        }
        (Method::DELETE, ["nodes", id]) => {
            if router.pools.remove_node(id) {
                json_reply(StatusCode::OK, &json!({"removed": id}))
            } else {
                error(StatusCode::NOT_FOUND, format!("no node `{id}`"))
            }
        }
        (Method::POST, ["nodes"]) => {
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match serde_json::from_value::<NodeConfig>(body) {
                Ok(nc) if !nc.id.as_str().is_empty() && nc.weight <= 10_000 => {
                    router.pools.add_node(&nc);
                    json_reply(StatusCode::CREATED, &json!({"added": nc.id}))
                }
                Ok(_) => error(
                    StatusCode::BAD_REQUEST,
                    "node id must be non-empty and weight <= 10000",
                ),
                Err(e) => error(StatusCode::BAD_REQUEST, format!("bad node: {e}")),
            }
        }
        (Method::GET, ["faults"]) => {
            let q = query(&req);
            let num = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
            let filter = FaultFilter {
                kind: q.get("kind").cloned(),
                route: q
                    .get("route")
                    .map(|r| r.replace("%2F", "/").replace("%2f", "/")),
                since_ms: num("since_ms"),
                until_ms: num("until_ms"),
                limit: num("limit").and_then(|l| u32::try_from(l).ok()),
            };
            let store = router.faults.clone();
            match tokio::task::spawn_blocking(move || store.list(&filter)).await {
                Ok(Ok(list)) => json_reply(StatusCode::OK, &json!({ "faults": list })),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        (Method::GET, ["faults", id]) => {
            let Ok(id) = id.parse::<i64>() else {
                return error(StatusCode::BAD_REQUEST, "fault id must be a number");
            };
            let store = router.faults.clone();
            match tokio::task::spawn_blocking(move || store.get(id)).await {
                Ok(Ok(Some(f))) => match serde_json::to_value(&f) {
                    Ok(v) => json_reply(StatusCode::OK, &v),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                },
                Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("no fault {id}")),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        (Method::POST, ["faults", id, "replay"]) => {
            let Ok(id) = id.parse::<i64>() else {
                return error(StatusCode::BAD_REQUEST, "fault id must be a number");
            };
            let q = query(&req);
            replay(&router, id, q.get("node").map(String::as_str)).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {} {}", req.method(), path),
        ),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, AdminResponse> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")))
}

async fn replay(router: &Arc<Router>, id: i64, node: Option<&str>) -> AdminResponse {
    let Some(node_id) = node else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameter `node` is required",
        );
    };
    let Some(node) = router.pools.current().get(node_id).cloned() else {
        return error(StatusCode::NOT_FOUND, format!("no node `{node_id}`"));
    };
    if node.pool != Pool::Debug {
        return error(
            StatusCode::BAD_REQUEST,
            format!("node `{node_id}` is not in the debug pool"),
        );
    }
    let store = router.faults.clone();
    let fault = match tokio::task::spawn_blocking(move || store.get(id)).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return error(StatusCode::NOT_FOUND, format!("no fault {id}")),
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let Ok(method) = Method::from_bytes(fault.summary.method.as_bytes()) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored method is invalid",
        );
    };
    let mut headers = HeaderMap::new();
    if let Ok(serde_json::Value::Object(map)) =
        serde_json::from_str::<serde_json::Value>(&fault.request_headers)
    {
        for (name, values) in map {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            for v in values
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
            {
                if v != "[redacted]"
                    && let Ok(v) = HeaderValue::from_str(v)
                {
                    headers.append(name.clone(), v);
                }
            }
        }
    }
    headers.remove("x-janus-trace-id");
    headers.remove("traceparent");
    let trace_id = TraceId::generate();
    let req = BufferedRequest {
        method,
        path: fault.summary.path.clone(),
        headers,
        body: Bytes::from(fault.request_body.clone()),
        trace_id,
        client_ip: None,
    };
    let attempt = crate::proxy::replay_on(router, node, &req).await;
    match attempt.result {
        Ok(r) => json_reply(
            StatusCode::OK,
            &json!({
                "fault_id": id,
                "node": node_id,
                "trace_id": trace_id.as_str(),
                "status": r.status.as_u16(),
                "verdict": format!("{:?}", attempt.verdict),
                "headers": crate::capture::headers_json(&r.headers, &[]),
                "body": String::from_utf8_lossy(&r.body),
            }),
        ),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

pub(crate) fn pools_json(router: &Router) -> serde_json::Value {
    let topo = router.pools.current();
    let cfg = router.config();
    let pools: Vec<_> = Pool::ALL
        .iter()
        .map(|&pool| {
            let nodes: Vec<_> = topo
                .pool(pool)
                .map(|n| {
                    let state = if n.health.is_unhealthy() {
                        "unhealthy"
                    } else if n.health.is_ejected() {
                        "ejected"
                    } else if n.health.is_draining() {
                        "draining"
                    } else {
                        "healthy"
                    };
                    json!({
                        "id": n.id, "pool": n.pool, "addr": n.addr, "admin_addr": n.admin_addr,
                        "weight": n.weight(), "state": state,
                        "consecutive_failures": n.health.consecutive_failures(),
                        "ejections": n.health.total_ejections(),
                        "requests": n.requests.get(), "failures": n.failures.get(),
                        "in_flight": n.in_flight(), "last_seq": n.last_seq(),
                    })
                })
                .collect();
            json!({
                "pool": pool,
                "mix_weight": if pool == Pool::Stable { cfg.mix.stable_weight } else { cfg.mix.debug_weight },
                "ejected": router.pools.ejections(pool).ejected(),
                "health_score": crate::proxy::health_score(topo.pool_capacity(pool), cfg.mix.overprovisioning_factor),
                "nodes": nodes,
            })
        })
        .collect();
    json!({ "pools": pools, "retry_budget_tokens": router.budget.tokens() })
}

/// The metrics exposition (OpenMetrics text): router-wide metrics plus the per-node families.
pub fn render_metrics(router: Arc<Router>) -> String {
    exposition::render(Metrics(router))
}

/// The admin API's metrics collector: read on each scrape.
#[derive(Debug)]
struct Metrics(Arc<Router>);

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let router = &self.0;
        router.metrics.encode(&mut enc)?;
        router.noisy.encode(&mut enc)?;
        let topo = router.pools.current();
        let per_node = |f: &dyn Fn(&crate::pool::Node) -> u64| {
            topo.nodes
                .iter()
                .map(|n| {
                    let labels = [
                        ("node", Label(n.id.as_str())),
                        ("pool", Label(n.pool.as_str())),
                    ];
                    (labels, f(n))
                })
                .collect::<Vec<_>>()
        };
        exposition::family(
            &mut enc,
            "janus_router_node_requests",
            "Requests sent to each node.",
            MetricType::Counter,
            per_node(&|n| n.requests.get()),
        )?;
        exposition::family(
            &mut enc,
            "janus_router_node_failures",
            "Faults of each node (any outcome judged a fault).",
            MetricType::Counter,
            per_node(&|n| n.failures.get()),
        )?;
        exposition::family(
            &mut enc,
            "janus_router_node_ejected",
            "1 while a node is ejected by outlier detection.",
            MetricType::Gauge,
            per_node(&|n| u64::from(n.health.is_ejected())),
        )?;
        exposition::family(
            &mut enc,
            "janus_router_node_unhealthy",
            "1 while a node fails its active health checks.",
            MetricType::Gauge,
            per_node(&|n| u64::from(n.health.is_unhealthy())),
        )?;
        exposition::family(
            &mut enc,
            "janus_router_node_weight",
            "Each node's weight within its pool.",
            MetricType::Gauge,
            per_node(&|n| u64::from(n.weight())),
        )?;
        enc.encode_descriptor(
            "janus_router_retry_budget_tokens",
            "Retries the budget allows right now.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&router.budget.tokens())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_checked() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "s3"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3"));
        assert!(authorized(&h, "s3"));
        assert!(!authorized(&h, "s4"));
        assert!(!authorized(&h, ""));
    }
}
