//! The admin listener: health, metrics, log level, flight-recorder traces and store state. Every
//! request needs `Authorization: Bearer <token>` (compared in constant time), else 401.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use runtime_abi::{StoreError, node};

use crate::metrics::Metrics;
use crate::providers::NodeStore;
use crate::public::{FLAVOR, FLAVOR_HEADER, NODE_HEADER, SEQ_HEADER};
use crate::recorder::FlightRecorder;
use crate::telemetry::LogControl;

/// Largest `PUT /log-level` body.
const MAX_DIRECTIVE_BYTES: usize = 4096;
/// Default of `GET /traces?last=`.
const DEFAULT_LAST: usize = 20;

/// What the admin endpoints reach.
pub struct AdminCtx {
    /// The bearer token.
    pub token: String,
    /// Node id.
    pub node_id: String,
    /// Service name.
    pub service: &'static str,
    /// The store, when the manifest declares one.
    pub store: Option<Arc<NodeStore>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Flight recorder.
    pub recorder: FlightRecorder,
    /// Log level control.
    pub log: Arc<LogControl>,
    /// Set on a shadow twin.
    pub twin: Option<Arc<crate::twin::Twin>>,
}

type Resp = hyper::Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    reply(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: &str) -> Resp {
    json(status, &serde_json::json!({ "error": message }))
}

/// Answers one admin request.
pub async fn handle(ctx: Arc<AdminCtx>, req: hyper::Request<Incoming>) -> Result<Resp, Infallible> {
    let mut resp = route(&ctx, req).await;
    let headers = resp.headers_mut();
    headers.insert(FLAVOR_HEADER, HeaderValue::from_static(FLAVOR));
    if let Ok(v) = HeaderValue::from_str(&ctx.node_id) {
        headers.insert(NODE_HEADER, v);
    }
    Ok(resp)
}

async fn route(ctx: &AdminCtx, req: hyper::Request<Incoming>) -> Resp {
    let authorized = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| runtime_abi::node::token_matches(t, ctx.token.as_bytes()));
    if !authorized {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/health") => json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "node": ctx.node_id,
                "flavor": FLAVOR,
                "service": ctx.service,
                "seq": ctx.store.as_ref().map(|s| runtime_abi::StoreBackend::seq(&**s)),
                "in_flight": ctx.metrics.in_flight(),
                "panics": ctx.metrics.panics(),
                "twin": ctx.twin.as_ref().map(|t| t.health()),
                "envelope_bytes": crate::envelope::cap(),
            }),
        ),
        (Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            match &ctx.twin {
                None => ctx.metrics.render(),
                Some(t) => ctx.metrics.render() + &t.metrics_text(),
            },
        ),
        (Method::GET, "/log-level") => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            ctx.log.current(),
        ),
        (Method::PUT, "/log-level") => {
            let body = match read(req, MAX_DIRECTIVE_BYTES).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Ok(directive) = std::str::from_utf8(&body) else {
                return error(StatusCode::BAD_REQUEST, "log filter is not UTF-8");
            };
            match ctx.log.set(directive) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    ctx.log.current(),
                ),
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        (Method::GET, "/traces") => {
            let last = match query_param(query.as_deref(), "last") {
                None => DEFAULT_LAST,
                Some(v) => match v.parse::<usize>() {
                    Ok(n) => n,
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!("last='{v}' is not a non-negative integer"),
                        );
                    }
                },
            };
            let traces = ctx.recorder.last(last);
            match serde_json::to_value(&traces) {
                Ok(v) => json(StatusCode::OK, &serde_json::json!({ "traces": v })),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        (Method::GET, p) if p.starts_with("/traces/") => {
            let id = p["/traces/".len()..].to_ascii_lowercase();
            match ctx.recorder.get(&id) {
                Some(t) => match serde_json::to_value(&t) {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
                None => error(StatusCode::NOT_FOUND, &format!("no trace '{id}'")),
            }
        }
        (Method::GET, "/envelope") => json(
            StatusCode::OK,
            &serde_json::json!({ "envelope_bytes": crate::envelope::cap() }),
        ),
        (Method::PUT, "/envelope") => {
            let body = match read(req, 64).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match std::str::from_utf8(&body)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                Some(bytes) => {
                    crate::envelope::set_cap(bytes);
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "envelope_bytes": bytes }),
                    )
                }
                None => error(
                    StatusCode::BAD_REQUEST,
                    "the body is the envelope in bytes (0: none)",
                ),
            }
        }
        (_, "/envelope") => error(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT"),
        (Method::GET, "/state/log") => {
            let Some(store) = &ctx.store else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("service '{}' has no store", ctx.service),
                );
            };
            get_log(store, query.as_deref()).await
        }
        (_, "/state/log") => error(StatusCode::METHOD_NOT_ALLOWED, "GET"),
        (method, "/state") => {
            let Some(store) = &ctx.store else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("service '{}' has no store", ctx.service),
                );
            };
            match method {
                Method::GET => get_state(store, query.as_deref()),
                Method::PUT => {
                    let limits = store.limits();
                    // A snapshot holds the data plus 8 bytes of lengths per entry and a small frame.
                    let cap = limits
                        .max_total_bytes
                        .saturating_mul(2)
                        .saturating_add(1 << 20);
                    let body = match read(req, cap).await {
                        Ok(b) => b,
                        Err(r) => return r,
                    };
                    match store.restore(&body) {
                        Ok(seq) => {
                            let mut r = reply(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
                            r.headers_mut().insert(SEQ_HEADER, HeaderValue::from(seq));
                            r
                        }
                        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
                    }
                }
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT"),
            }
        }
        (_, "/health" | "/metrics" | "/log-level" | "/traces") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, &format!("no admin route {path}")),
    }
}

fn get_state(store: &NodeStore, query: Option<&str>) -> Resp {
    let (seq, bytes) = match query_param(query, "seq") {
        None => store.snapshot(),
        Some(v) => {
            let Ok(seq) = v.parse::<u64>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("seq='{v}' is not a non-negative integer"),
                );
            };
            match store.snapshot_at(seq) {
                Ok(bytes) => (seq, bytes),
                Err(e @ StoreError::NotRetained { .. }) => {
                    return error(StatusCode::GONE, &e.to_string());
                }
                Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
    };
    let mut r = reply(StatusCode::OK, "application/octet-stream", bytes);
    r.headers_mut().insert(SEQ_HEADER, HeaderValue::from(seq));
    r.headers_mut()
        .insert(node::STATE_EPOCH, HeaderValue::from(store.epoch()));
    r
}

/// `GET /state/log?since=N[&wait_ms=M]`: the mutations after N as an op log batch
/// (`runtime_abi::encode_ops`), long-polled up to M ms when there is none yet. 410 when the
/// retained log no longer reaches back to N, 409 when N is ahead of this store: either way the
/// follower takes a snapshot (`GET /state`). `x-janus-state-seq` is the seq the batch brings the
/// follower to, `x-janus-state-epoch` the history it belongs to.
async fn get_log(store: &NodeStore, query: Option<&str>) -> Resp {
    let since = match query_param(query, "since").map(str::parse::<u64>) {
        Some(Ok(n)) => n,
        Some(Err(_)) | None => {
            return error(
                StatusCode::BAD_REQUEST,
                "since=N (a non-negative integer) is required",
            );
        }
    };
    let wait_ms = match query_param(query, "wait_ms").map(str::parse::<u64>) {
        None => 0,
        Some(Ok(n)) if n <= node::LOG_MAX_WAIT_MS => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "wait_ms must be an integer from 0 to {}",
                    node::LOG_MAX_WAIT_MS
                ),
            );
        }
    };
    let (epoch, ops) = store
        .ops_since(since, std::time::Duration::from_millis(wait_ms))
        .await;
    let mut r = match ops {
        Ok(ops) => {
            let to = ops.last().map_or(since, |o| o.seq);
            let mut r = reply(
                StatusCode::OK,
                "application/octet-stream",
                runtime_abi::encode_ops(&ops),
            );
            r.headers_mut().insert(SEQ_HEADER, HeaderValue::from(to));
            r
        }
        Err(e @ StoreError::NotRetained { .. }) => error(StatusCode::GONE, &e.to_string()),
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    };
    r.headers_mut()
        .insert(node::STATE_EPOCH, HeaderValue::from(epoch));
    r
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

async fn read(req: hyper::Request<Incoming>, limit: usize) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body exceeds {limit} bytes"),
            ))
        }
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("body could not be read: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&seq=7"), "seq"), Some("7"));
        assert_eq!(query_param(Some("seq"), "seq"), Some(""));
        assert_eq!(query_param(None, "seq"), None);
    }
}
