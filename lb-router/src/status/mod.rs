//! The status page on the admin listener: `GET /` is a live HTML view of the cluster (pools and
//! nodes, the traffic split, recent faults and a fault's detail) for operators with the admin token.
//!
//! - Everything is in the binary (`page.html`, `app.css`, `app.js`; no framework, no external asset),
//!   served with a strict Content-Security-Policy (`'self'` only, no inline script).
//! - Authentication: the admin token, given once through the login form (`POST /login`), kept in an
//!   `HttpOnly; SameSite=Strict` cookie; the bearer header works too. The cookie authorises reads
//!   only (GET); everything that changes the router still needs the bearer header.
//! - `GET /status/data` is what the page polls (every second while visible): `/pools` as the admin
//!   API serves it, plus rates the page cannot get elsewhere, sampled only while someone watches:
//!   per node req/s and failures/s as the router counted them, p99 latency from the node's own
//!   `/metrics` histogram over the last [`WINDOW`], the effective split between pools, faults in
//!   the last minute and the newest faults.
//! - A fault's detail comes from the existing `GET /faults/{id}`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::faults::FaultFilter;
use crate::ids::Pool;
use crate::router::Router;

type Reply = Response<Full<Bytes>>;

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The cookie that carries the admin token.
pub const COOKIE: &str = "janus_admin";
/// Rates and p99 are computed over this much history.
pub const WINDOW: Duration = Duration::from_secs(10);
/// A new sample is taken when the newest is older than this.
const SAMPLE_EVERY: Duration = Duration::from_millis(900);
/// How long a node's `/metrics` may take before its p99 is left out of a sample.
const NODE_METRICS_TIMEOUT: Duration = Duration::from_millis(1000);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// One node's counters at one instant.
#[derive(Clone, Debug, Default)]
struct NodeSample {
    pool: Option<Pool>,
    requests: u64,
    failures: u64,
    /// The node's own latency histogram (`le` in seconds, cumulative count), when it answered.
    buckets: Option<Vec<(f64, u64)>>,
    /// `uk` when its metrics carry the unikernel's kernel counters, else `unix`.
    flavor: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    nodes: HashMap<String, NodeSample>,
}

/// The status page's state: a short history of samples, kept per admin listener.
#[derive(Default)]
pub struct Status {
    history: Mutex<VecDeque<Sample>>,
}

impl Status {
    /// A new, empty history.
    pub fn new() -> Arc<Status> {
        Arc::new(Status::default())
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn redirect(to: &'static str, cookie: Option<String>) -> Reply {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain", "");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// Constant-time equality of a presented secret with the configured token (never for an empty one).
pub fn token_matches(presented: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    // `ct_eq` on slices of different lengths is false at once (a token's length is no secret).
    !token.is_empty() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

/// Whether the request carries the token in the status page's cookie.
pub fn cookie_authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && token_matches(v, token))
}

/// Percent-decoding of an `application/x-www-form-urlencoded` value.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn login_page(status: StatusCode, message: &str) -> Reply {
    reply(
        status,
        "text/html; charset=utf-8",
        LOGIN.replace("{{message}}", message),
    )
}

/// The status page's own routes. `Err(req)` hands a request that is not one of them back to the
/// admin API. `bearer_ok` says whether the request carries the right bearer header.
pub async fn handle(
    router: &Arc<Router>,
    status: &Status,
    req: Request<Incoming>,
    bearer_ok: bool,
) -> Result<Reply, Request<Incoming>> {
    let token = router.config().admin.token.clone();
    let path = req.uri().path();
    let method = req.method().clone();
    let authed = bearer_ok || cookie_authorized(req.headers(), &token);
    let r = match (method, path) {
        (Method::GET, "/status/app.css") => {
            reply(StatusCode::OK, "text/css; charset=utf-8", APP_CSS)
        }
        (Method::GET, "/status/app.js") => {
            reply(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS)
        }
        (Method::GET, "/") if authed => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        (Method::GET, "/") => login_page(StatusCode::UNAUTHORIZED, ""),
        (Method::POST, "/login") => login(req, &token).await,
        (Method::POST, "/logout") => redirect(
            "/",
            Some(format!(
                "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
            )),
        ),
        (Method::GET, "/status/data") if authed => {
            let mut r = reply(
                StatusCode::OK,
                "application/json",
                data(router, status).await.to_string(),
            );
            r.headers_mut().remove(header::CONTENT_SECURITY_POLICY);
            r
        }
        _ => return Err(req),
    };
    Ok(r)
}

async fn login(req: Request<Incoming>, token: &str) -> Reply {
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return login_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."),
    };
    let presented = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| form_decode(v))
        .unwrap_or_default();
    if !token_matches(presented.trim(), token) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "Wrong token. It is admin.token in the router's config (janus up writes it to router.toml in the run directory).",
        );
    }
    // The cookie holds the token itself: a token rotation (config reload) logs everyone out.
    redirect(
        "/",
        Some(format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            presented.trim()
        )),
    )
}

/// `GET /status/data`.
async fn data(router: &Arc<Router>, status: &Status) -> serde_json::Value {
    let due = {
        let h = status.history.lock().unwrap_or_else(|e| e.into_inner());
        h.back().is_none_or(|s| s.at.elapsed() >= SAMPLE_EVERY)
    };
    if due {
        let s = sample(router).await;
        let mut h = status.history.lock().unwrap_or_else(|e| e.into_inner());
        h.push_back(s);
        while h.len() > 2 && h.front().is_some_and(|f| f.at.elapsed() > WINDOW) {
            h.pop_front();
        }
    }
    let rates = {
        let h = status.history.lock().unwrap_or_else(|e| e.into_inner());
        rates(&h)
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let store = router.faults.clone();
    let faults = tokio::task::spawn_blocking(move || {
        let recent = store.list(&FaultFilter {
            limit: Some(20),
            ..FaultFilter::default()
        });
        let last_minute = store.list(&FaultFilter {
            since_ms: Some(now_ms - 60_000),
            limit: Some(10_000),
            ..FaultFilter::default()
        });
        (recent, last_minute)
    })
    .await;
    let (recent, last_minute, fault_error) = match faults {
        Ok((Ok(recent), Ok(last))) => (recent, last.len(), None),
        Ok((Err(e), _)) | Ok((_, Err(e))) => (Vec::new(), 0, Some(e.to_string())),
        Err(e) => (Vec::new(), 0, Some(e.to_string())),
    };
    let cfg = router.config();
    json!({
        "now_ms": now_ms,
        "window_s": WINDOW.as_secs(),
        "pools": crate::admin::pools_json(router),
        "rates": rates,
        "faults": recent,
        "faults_last_minute": last_minute,
        "fault_store_error": fault_error,
        "cluster": cluster_name(&cfg.faults.path),
        "router": {
            "listen": cfg.downstream.listen.to_string(),
            "admin": cfg.admin.listen.to_string(),
            "faults_path": cfg.faults.path.display().to_string(),
        },
    })
}

/// The `janus up` cluster a router belongs to: its fault store is `<run-dir>/<name>/faults.db`.
fn cluster_name(faults_path: &std::path::Path) -> Option<String> {
    let dir = faults_path.parent()?;
    let under_run = dir.parent()?.file_name()? == "run";
    under_run
        .then(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .flatten()
}

async fn sample(router: &Arc<Router>) -> Sample {
    let topo = router.pools.current();
    // One task per node, all at once: a slow node costs NODE_METRICS_TIMEOUT, not a sum of them.
    let tasks: Vec<_> = topo
        .nodes
        .iter()
        .map(|n| {
            let addr = n.admin_addr.0;
            let token = n.admin_token.clone();
            tokio::spawn(async move {
                tokio::time::timeout(NODE_METRICS_TIMEOUT, node_metrics(addr, token.as_deref()))
                    .await
                    .ok()
                    .flatten()
            })
        })
        .collect();
    let mut metrics = Vec::with_capacity(tasks.len());
    for t in tasks {
        metrics.push(t.await.ok().flatten());
    }
    let nodes = topo
        .nodes
        .iter()
        .zip(metrics)
        .map(|(n, m)| {
            let (buckets, flavor) = match m {
                Some((b, f)) => (Some(b), Some(f)),
                None => (None, None),
            };
            (
                n.id.to_string(),
                NodeSample {
                    pool: Some(n.pool),
                    requests: n.requests.get(),
                    failures: n.failures.get(),
                    buckets,
                    flavor,
                },
            )
        })
        .collect();
    Sample {
        at: Instant::now(),
        nodes,
    }
}

/// GET `/metrics` of a node's admin listener: the latency histogram in it, and the node's flavour.
async fn node_metrics(
    addr: std::net::SocketAddr,
    token: Option<&str>,
) -> Option<(Vec<(f64, u64)>, &'static str)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\n{auth}connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(16 * 1024);
    s.take(1 << 20).read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    let flavor = if body.contains("\njanus_uk_") {
        "uk"
    } else {
        "unix"
    };
    Some((
        parse_histogram(body, "janus_request_duration_seconds"),
        flavor,
    ))
}

/// The cumulative buckets of one Prometheus histogram family (summed over label sets), by `le`.
pub fn parse_histogram(text: &str, family: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{family}_bucket{{");
    let mut by_le: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == "le")
            .map(|(_, v)| v.trim_matches('"'))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Ok(count) = value.trim().parse::<f64>() else {
            continue;
        };
        match by_le.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += count as u64,
            None => by_le.push((le, count as u64)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// The q-quantile (upper bucket bound, seconds) of the requests between two cumulative snapshots of
/// one histogram; None when no request was observed in between.
pub fn quantile_between(old: &[(f64, u64)], new: &[(f64, u64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, u64)> = new
        .iter()
        .map(|(le, c)| {
            let before = old
                .iter()
                .find(|(l, _)| l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0);
            (*le, c.saturating_sub(before))
        })
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    delta.iter().find(|(_, c)| *c >= rank).map(|(le, _)| *le)
}

fn rates(h: &VecDeque<Sample>) -> serde_json::Value {
    let (Some(first), Some(last)) = (h.front(), h.back()) else {
        return json!({ "nodes": {}, "split": null });
    };
    let dt = last.at.duration_since(first.at).as_secs_f64();
    let per_s = |a: u64, b: u64| {
        if dt > 0.0 {
            Some(b.saturating_sub(a) as f64 / dt)
        } else {
            None
        }
    };
    let mut nodes = serde_json::Map::new();
    let mut pool_rate: HashMap<&'static str, f64> = HashMap::new();
    for (id, now) in &last.nodes {
        let before = first.nodes.get(id).cloned().unwrap_or_default();
        let rps = per_s(before.requests, now.requests);
        let fps = per_s(before.failures, now.failures);
        // p99 over the newest sample that has the node's histogram and the oldest one that has it.
        let old_hist = h
            .iter()
            .find_map(|s| s.nodes.get(id).and_then(|n| n.buckets.clone()));
        let p99 = match (&old_hist, &now.buckets) {
            (Some(o), Some(n)) => quantile_between(o, n, 0.99),
            _ => None,
        };
        if let (Some(pool), Some(r)) = (now.pool, rps) {
            *pool_rate.entry(pool.as_str()).or_default() += r;
        }
        nodes.insert(
            id.clone(),
            json!({
                "req_per_s": rps,
                "failures_per_s": fps,
                "p99_s": p99.filter(|v| v.is_finite()),
                "p99_over_last_bucket": p99.is_some_and(|v| v.is_infinite()),
                "metrics_ok": now.buckets.is_some(),
                "flavor": now.flavor,
            }),
        );
    }
    let total: f64 = pool_rate.values().sum();
    let split = (total > 0.0).then(|| {
        let share: serde_json::Map<String, serde_json::Value> = pool_rate
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v / total)))
            .collect();
        share
    });
    json!({ "window_s": dt, "nodes": nodes, "split": split, "total_req_per_s": total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_and_form() {
        let mut h = HeaderMap::new();
        assert!(!cookie_authorized(&h, "s3cret"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; janus_admin=s3cret; c=d"),
        );
        assert!(cookie_authorized(&h, "s3cret"));
        assert!(!cookie_authorized(&h, "s3creT"));
        assert!(!cookie_authorized(&h, ""));
        assert_eq!(form_decode("a+b%2Fc%zz%4"), "a b/c%zz%4");
    }

    #[test]
    fn histogram_quantiles() {
        let t0 = "janus_request_duration_seconds_bucket{le=\"0.001\"} 10\n\
                  janus_request_duration_seconds_bucket{le=\"0.01\"} 10\n\
                  janus_request_duration_seconds_bucket{le=\"+Inf\"} 10\n";
        let t1 = "# TYPE x histogram\njanus_request_duration_seconds_bucket{le=\"0.001\"} 108\n\
                  janus_request_duration_seconds_bucket{le=\"0.01\"} 110\n\
                  janus_request_duration_seconds_bucket{le=\"+Inf\"} 110\n\
                  janus_request_duration_seconds_sum 0.2\n";
        let (a, b) = (
            parse_histogram(t0, "janus_request_duration_seconds"),
            parse_histogram(t1, "janus_request_duration_seconds"),
        );
        assert_eq!(b.len(), 3);
        // 100 new requests: 98 under 1 ms, 2 under 10 ms -> p99 is the 10 ms bucket, p50 1 ms.
        assert_eq!(quantile_between(&a, &b, 0.99), Some(0.01));
        assert_eq!(quantile_between(&a, &b, 0.5), Some(0.001));
        assert_eq!(quantile_between(&b, &b, 0.99), None);
    }

    #[test]
    fn cluster_from_fault_store_path() {
        assert_eq!(
            cluster_name(std::path::Path::new("/x/target/janus/run/demo/faults.db")).as_deref(),
            Some("demo")
        );
        assert_eq!(
            cluster_name(std::path::Path::new("/var/lib/faults.db")),
            None
        );
    }
}
