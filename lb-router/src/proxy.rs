//! The request path, as a short named sequence of phases (drawn in `lb-router/README.md`):
//!
//! ```text
//! read request -> classify channel -> pick pool -> pick node -> forward -> judge outcome
//!              -> retry-on-debug (stable faults only) -> record (faults, mirror, metrics) -> respond
//! ```
//!
//! Each phase is a function below; [`handle`] only strings them together.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::capture::{self, FaultContext};
use crate::config::{ChannelConfig, Config, MixConfig};
use crate::ids::{NodeId, Pool, TraceId};
use crate::pool::{Node, Topology};
use crate::rand;
use crate::router::Router;
use crate::upstream::{
    BufferedRequest, BufferedResponse, FaultKind, UpstreamError, Verdict, X_FAULT, X_TRACE_ID,
    judge,
};

pub const X_POOL: HeaderName = HeaderName::from_static("x-janus-pool");
pub const X_RETRIED_FROM: HeaderName = HeaderName::from_static("x-janus-retried-from");
pub const X_FAULT_ID: HeaderName = HeaderName::from_static("x-janus-fault-id");
pub const X_ROUTER_ERROR: HeaderName = HeaderName::from_static("x-janus-router-error");
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Errors the router answers itself. Each says who failed and whether retrying is safe.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("downstream: request body larger than {limit} bytes (not retryable as is)")]
    BodyTooLarge { limit: usize },
    #[error("downstream: request body not received within {timeout_ms} ms (retry is safe)")]
    BodyTimeout { timeout_ms: u64 },
    #[error("downstream: malformed request body: {0} (not retryable as is)")]
    BadBody(String),
    #[error("downstream: {1} (not retryable as is)")]
    BadRequest(StatusCode, String),
    #[error("internal: no available node in either pool (retry later is safe)")]
    NoNode,
    #[error(
        "upstream: {failure}; not replayed on a debug node: {refusal}; the request may or may not have been applied, retry only if it is safe for your operation"
    )]
    UpstreamNotReplayed { failure: String, refusal: String },
    #[error("upstream: {0} (retry is safe for idempotent requests)")]
    Upstream(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BadRequest(status, _) => *status,
            ProxyError::NoNode => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamNotReplayed { failure, .. } | ProxyError::Upstream(failure) => {
                if failure.contains("no complete response within") {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                }
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyTimeout { .. } => "body_timeout",
            ProxyError::BadBody(_) => "bad_body",
            ProxyError::BadRequest(..) => "bad_request",
            ProxyError::NoNode => "no_node",
            ProxyError::UpstreamNotReplayed { .. } => "upstream_not_replayed",
            ProxyError::Upstream(_) => "upstream",
        }
    }
}

/// A plain-text answer from the router itself.
pub fn router_response(
    router: &Router,
    err: &ProxyError,
    trace_id: Option<&TraceId>,
) -> Response<Full<Bytes>> {
    let status = err.status();
    router.metrics.record_router_response(status.as_u16());
    let mut resp = Response::new(Full::new(Bytes::from(format!("{err}\n"))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_ROUTER_ERROR, HeaderValue::from_static(err.code()));
    if matches!(err, ProxyError::BadRequest(..)) {
        // What follows a refused request cannot be framed safely: close, as the nodes do.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(t) = trace_id.and_then(|t| HeaderValue::from_str(t.as_str()).ok()) {
        h.insert(X_TRACE_ID, t);
    }
    resp
}

/// Phase *read request*: the whole body, within the size and time limits.
pub async fn read_request(
    cfg: &Config,
    req: http::Request<Incoming>,
    client_ip: Option<IpAddr>,
) -> Result<BufferedRequest, (ProxyError, TraceId)> {
    let (parts, body) = req.into_parts();
    let trace_id = trace_id_of(&parts.headers);
    if let Err((status, reason)) = check_request(&parts) {
        return Err((ProxyError::BadRequest(status, reason), trace_id));
    }
    let limit = cfg.downstream.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err((ProxyError::BodyTooLarge { limit }, trace_id));
    }
    let timeout = cfg.body_read_timeout();
    let body = match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => {
            return Err((
                ProxyError::BodyTimeout {
                    timeout_ms: timeout.as_millis() as u64,
                },
                trace_id,
            ));
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err((ProxyError::BodyTooLarge { limit }, trace_id));
        }
        Ok(Err(e)) => return Err((ProxyError::BadBody(e.to_string()), trace_id)),
        Ok(Ok(b)) => b.to_bytes(),
    };
    // `check_request` let only origin-form and absolute-form targets through: both have a path.
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    Ok(BufferedRequest {
        method: parts.method,
        path,
        headers: parts.headers,
        body,
        trace_id,
        client_ip,
    })
}

/// The request rules of the nodes (janus-http1, docs/HTTP.md) applied to a request hyper accepted,
/// so the router refuses at least what the nodes refuse and never forwards a target it would have to
/// rewrite: HTTP/1.1 needs exactly one `Host` (at most one in HTTP/1.0), each `host[:port]`; the
/// target is origin-form or `http(s)` absolute-form with a valid authority (no `*`, no authority-form,
/// no `CONNECT`); a `Transfer-Encoding` must be exactly `chunked`, never with `Content-Length` nor in
/// HTTP/1.0; `Expect` may only be `100-continue` (else 417).
pub fn check_request(parts: &http::request::Parts) -> Result<(), (StatusCode, String)> {
    let bad = |why: &str| Err((StatusCode::BAD_REQUEST, why.to_owned()));
    let http10 = parts.version == http::Version::HTTP_10;
    let hosts: Vec<&HeaderValue> = parts.headers.get_all(header::HOST).iter().collect();
    let host_count_ok = if http10 {
        hosts.len() <= 1
    } else {
        hosts.len() == 1
    };
    if !host_count_ok
        || !hosts
            .iter()
            .all(|h| janus_http1::valid_host(h.as_bytes().trim_ascii()))
    {
        return bad("missing, repeated or invalid Host header");
    }
    if parts.method == Method::CONNECT {
        return bad("invalid request target (CONNECT is not served)");
    }
    let uri = &parts.uri;
    let target_ok = match uri.scheme_str() {
        Some(scheme) => {
            (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && uri.authority().is_some_and(|a| {
                    !a.as_str().is_empty() && janus_http1::valid_host(a.as_str().as_bytes())
                })
        }
        None => uri.authority().is_none() && uri.path().starts_with('/'),
    };
    if !target_ok {
        return bad("invalid request target (origin-form or absolute-form only)");
    }
    let te: Vec<&HeaderValue> = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .collect();
    if !te.is_empty() {
        if parts.headers.contains_key(header::CONTENT_LENGTH) {
            return bad("both Content-Length and Transfer-Encoding present");
        }
        let codings: Vec<&[u8]> = te
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        if http10 || codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            return bad("invalid Transfer-Encoding (only one chunked is accepted)");
        }
    }
    for expect in parts.headers.get_all(header::EXPECT) {
        let all_continue = expect
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
            .all(|e| e.eq_ignore_ascii_case(b"100-continue"));
        if !all_continue {
            return Err((
                StatusCode::EXPECTATION_FAILED,
                "unsupported Expect value".to_owned(),
            ));
        }
    }
    Ok(())
}

/// The trace id of a request: `x-janus-trace-id`, else the one in `traceparent`, else a new one.
pub fn trace_id_of(headers: &HeaderMap) -> TraceId {
    headers
        .get(X_TRACE_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceId::parse)
        .or_else(|| {
            headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(TraceId::from_traceparent)
        })
        .unwrap_or_else(TraceId::generate)
}

/// Which channel a request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// Beta users always go to the debug pool.
    Beta,
    /// Ordinary traffic, mixed by weight; `user_hash` keeps a known user on one pool.
    Ordinary { user_hash: Option<u64> },
}

/// Header lookup for [`classify_channel`], over `http` headers or raw parsed ones alike.
pub trait HeaderLookup {
    /// Whether `pred` holds for any value of the header `name` (case-insensitive); stops at the first.
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

impl HeaderLookup for HeaderMap {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.get_all(name).iter().any(|v| pred(v.as_bytes()))
    }
}

impl HeaderLookup for [httparse::Header<'_>] {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.iter()
            .any(|h| h.name.eq_ignore_ascii_case(name) && pred(h.value))
    }
}

/// Lowercase or uppercase hex to bytes (`None` for an odd length or a non-hex digit).
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    s.chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

fn hmac_of(key_hex: &str, msg: &str) -> Option<hmac::Hmac<sha2::Sha256>> {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&decode_hex(key_hex)?).ok()?;
    mac.update(msg.as_bytes());
    Some(mac)
}

/// A signed beta marker for `channels.beta_signing_key = key_hex`, valid until `expires` (Unix
/// seconds): `<beta_value>.<expires>.<64 hex digits of HMAC-SHA256(key, "<beta_value>.<expires>")>`.
pub fn sign_beta(key_hex: &str, beta_value: &str, expires: u64) -> Option<String> {
    use hmac::Mac as _;
    let msg = format!("{beta_value}.{expires}");
    let tag = hmac_of(key_hex, &msg)?.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{msg}.{hex}"))
}

/// Whether `marker` is a valid signed beta marker (see [`sign_beta`]) at Unix time `now`; the tag
/// is checked in constant time.
pub fn verify_beta(key_hex: &str, beta_value: &str, marker: &[u8], now: u64) -> bool {
    use hmac::Mac as _;
    let Ok(marker) = std::str::from_utf8(marker) else {
        return false;
    };
    let Some((msg, tag_hex)) = marker.rsplit_once('.') else {
        return false;
    };
    let Some(expires) = msg
        .strip_prefix(beta_value)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|e| e.parse::<u64>().ok())
    else {
        return false;
    };
    let (Some(tag), Some(mac)) = (decode_hex(tag_hex), hmac_of(key_hex, msg)) else {
        return false;
    };
    mac.verify_slice(&tag).is_ok() && expires >= now
}

/// Whether a beta header value or cookie value marks a beta request.
fn is_beta_marker(cfg: &ChannelConfig, value: &[u8]) -> bool {
    if cfg.beta_signing_key.is_empty() {
        return value == cfg.beta_value.as_bytes();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    verify_beta(&cfg.beta_signing_key, &cfg.beta_value, value, now)
}

/// Phase *classify channel*.
pub fn classify_channel<H: HeaderLookup + ?Sized>(cfg: &ChannelConfig, headers: &H) -> Channel {
    if !cfg.beta_header.is_empty()
        && headers.any_value(&cfg.beta_header, &mut |v| is_beta_marker(cfg, v))
    {
        return Channel::Beta;
    }
    if !cfg.beta_cookie.is_empty()
        && headers.any_value(header::COOKIE.as_str(), &mut |v| {
            std::str::from_utf8(v).is_ok_and(|s| {
                s.split(';').any(|pair| {
                    pair.trim().split_once('=').is_some_and(|(k, v)| {
                        k == cfg.beta_cookie && is_beta_marker(cfg, v.as_bytes())
                    })
                })
            })
        })
    {
        return Channel::Beta;
    }
    let mut user_hash = None;
    if !cfg.user_id_header.is_empty() {
        headers.any_value(&cfg.user_id_header, &mut |v| {
            user_hash = Some(rand::stable_hash(v));
            true
        });
    }
    if let Some(h) = user_hash {
        // Low 32 bits decide beta membership, high 32 bits the pool: independent decisions.
        let bucket = (h & 0xffff_ffff) as f64 / 4_294_967_296.0 * 100.0;
        if bucket < cfg.beta_user_percent {
            return Channel::Beta;
        }
    }
    Channel::Ordinary { user_hash }
}

/// How a request's pool was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolChoice {
    /// The pool its channel and the mix weights gave.
    Wanted,
    /// Moved to the other pool: spill-over by health, or the wanted pool has no available node.
    Spilled,
    /// Both pools too degraded: any node of the pool in service, whatever its health.
    Panic,
}

/// A pool's health score: its available share by node weight times the overprovisioning factor,
/// capped at 1 (Envoy's priority-level health).
pub fn health_score((up, all): (u64, u64), overprovisioning: f64) -> f64 {
    if all == 0 {
        0.0
    } else {
        (up as f64 / all as f64 * overprovisioning).min(1.0)
    }
}

/// What happens to traffic meant for a pool of health score `h_a` when the other has `h_b`:
/// `None` is panic mode (`min(1, h_a + h_b)` below the panic threshold); else the probability of
/// staying on the wanted pool: `h_a` while the two scores cover all the traffic (`h_a + h_b >= 1`),
/// else `h_a / (h_a + h_b)` (both degraded: shared in proportion to health).
pub fn spill(h_a: f64, h_b: f64, panic_threshold_percent: f64) -> Option<f64> {
    let total = (h_a + h_b).min(1.0);
    if total * 100.0 < panic_threshold_percent || total == 0.0 {
        return None;
    }
    Some(if h_a + h_b >= 1.0 {
        h_a
    } else {
        h_a / (h_a + h_b)
    })
}

/// Phase *pick pool*: beta -> debug (the stable pool only if no debug node is available); ordinary
/// -> by mix weights (consistent per user), then spill-over to the other pool by health, or panic mode.
pub fn pick_pool(mix: &MixConfig, channel: Channel, topo: &Topology) -> (Pool, PoolChoice) {
    let (wanted, spill_r) = match channel {
        Channel::Beta => (Pool::Debug, None),
        Channel::Ordinary { user_hash } => {
            let total = u64::from(mix.stable_weight) + u64::from(mix.debug_weight);
            let (r, spill_r) = match user_hash {
                // High 32 bits: the pool; middle bits: the spill-over decision, so a user moves
                // between pools only as health changes.
                Some(h) => (
                    ((h >> 32) * total) >> 32,
                    ((h >> 8) & 0xff_ffff) as f64 / 16_777_216.0,
                ),
                None => (rand::below(total), rand::unit()),
            };
            let pool = if r < u64::from(mix.stable_weight) {
                Pool::Stable
            } else {
                Pool::Debug
            };
            (pool, Some(spill_r))
        }
    };
    let other = other_pool(wanted);
    if let Some(r) = spill_r {
        let f = mix.overprovisioning_factor;
        let h_a = health_score(topo.pool_capacity(wanted), f);
        let h_b = health_score(topo.pool_capacity(other), f);
        match spill(h_a, h_b, mix.panic_threshold_percent) {
            None if mix.panic_threshold_percent > 0.0 => return (wanted, PoolChoice::Panic),
            Some(stay) if r >= stay && topo.has_available(other) => {
                return (other, PoolChoice::Spilled);
            }
            _ => {}
        }
    }
    if topo.has_available(wanted) {
        return (wanted, PoolChoice::Wanted);
    }
    if topo.has_available(other) {
        (other, PoolChoice::Spilled)
    } else {
        (wanted, PoolChoice::Wanted)
    }
}

fn other_pool(pool: Pool) -> Pool {
    match pool {
        Pool::Stable => Pool::Debug,
        Pool::Debug => Pool::Stable,
    }
}

/// Whether requests of this method may be repeated (RFC 9110 9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Why a request may not be replayed, if it may not.
pub fn replay_refusal(cfg: &Config, req: &BufferedRequest) -> Option<String> {
    if !cfg.retry.enabled {
        return Some("retry is disabled (retry.enabled = false)".to_owned());
    }
    if !idempotent(&req.method) && !req.headers.contains_key(IDEMPOTENCY_KEY) {
        return Some(format!(
            "{} is not idempotent and carries no Idempotency-Key",
            req.method
        ));
    }
    if req.body.len() > cfg.retry.max_body_bytes {
        return Some(format!(
            "request body of {} bytes exceeds retry.max_body_bytes = {}",
            req.body.len(),
            cfg.retry.max_body_bytes
        ));
    }
    None
}

/// One attempt on one node and its judged outcome.
pub struct Attempt {
    pub node: Arc<Node>,
    pub result: Result<BufferedResponse, UpstreamError>,
    pub verdict: Verdict,
}

/// Phases *forward* and *judge outcome* on one node, with passive health accounting.
pub async fn attempt(
    router: &Router,
    cfg: &Config,
    node: Arc<Node>,
    req: &BufferedRequest,
) -> Attempt {
    let result = {
        let _in_flight = node.start_request();
        crate::transport::forward(
            cfg,
            &router.metrics,
            &node,
            req,
            &[],
            cfg.upstream.max_response_body_bytes,
        )
        .await
    };
    account(router, node, result)
}

/// Phase *judge outcome* for a finished forward: passive health accounting and the verdict.
pub fn account(
    router: &Router,
    node: Arc<Node>,
    result: Result<BufferedResponse, UpstreamError>,
) -> Attempt {
    let verdict = judge(&result);
    let seq = result.as_ref().ok().and_then(BufferedResponse::state_seq);
    match verdict {
        Verdict::Good => record_good(&node, seq),
        Verdict::Fault(kind) => {
            if let Some(seq) = seq {
                node.observe_seq(seq);
            }
            node.failures.inc();
            let effect = node.health.record_failure(
                &router.pools.policy(),
                router.pools.ejections(node.pool),
                router.now_ms(),
                kind.ejects_at_once(),
            );
            if matches!(effect, crate::health::FailureEffect::Ejected { .. }) {
                node.retire_connections();
            }
            crate::checks::log_effect(&node, effect, &kind.outcome());
        }
    }
    Attempt {
        node,
        result,
        verdict,
    }
}

/// Phase *judge outcome* for a good answer: passive health counts it, and the node's state seq
/// (`x-janus-state-seq`) is noted for state capture.
pub fn record_good(node: &Node, seq: Option<u64>) {
    node.health.record_success();
    if let Some(seq) = seq {
        node.observe_seq(seq);
    }
}

/// The whole request path.
pub async fn handle(
    router: Arc<Router>,
    req: http::Request<Incoming>,
    client_ip: Option<IpAddr>,
) -> Response<Full<Bytes>> {
    let started = tokio::time::Instant::now();
    let (cfg, topo) = router.snapshot();

    // Phase: read request.
    let req = match read_request(&cfg, req, client_ip).await {
        Ok(r) => r,
        Err((e, trace)) => return router_response(&router, &e, Some(&trace)),
    };
    router.budget.deposit();

    // Phase: classify channel.
    let channel = classify_channel(&cfg.channels, &req.headers);

    // Phases: pick pool, pick node.
    let Some(node) = choose_node(&router, &cfg, &topo, channel) else {
        return router_response(&router, &ProxyError::NoNode, Some(&req.trace_id));
    };

    // Phases: forward + judge outcome.
    let primary = attempt(&router, &cfg, node, &req).await;
    finish(router, cfg, req, primary, started).await
}

/// Phases *pick pool* and *pick node* for a classified request.
pub fn choose_node(
    router: &Router,
    cfg: &Config,
    topo: &Topology,
    channel: Channel,
) -> Option<Arc<Node>> {
    let (pool, choice) = pick_pool(&cfg.mix, channel, topo);
    match choice {
        PoolChoice::Wanted => topo.pick_node(pool, None, rand::next_u64()),
        PoolChoice::Spilled => {
            router.metrics.channel_fallbacks.inc();
            topo.pick_node(pool, None, rand::next_u64())
        }
        PoolChoice::Panic => {
            router.metrics.panic_routed.inc();
            topo.pick_node_in(pool, None, rand::next_u64(), true)
                .or_else(|| topo.pick_node_in(other_pool(pool), None, rand::next_u64(), true))
        }
    }
}

/// Everything after the first attempt: mirror a good stable answer, or retry a stable fault on a
/// debug node and record it; then the client's answer.
pub async fn finish(
    router: Arc<Router>,
    cfg: Arc<Config>,
    req: BufferedRequest,
    primary: Attempt,
    started: tokio::time::Instant,
) -> Response<Full<Bytes>> {
    let Verdict::Fault(kind) = primary.verdict else {
        // Phase: record (mirror a share of good stable traffic).
        let resp = match primary.result {
            Ok(r) => r,
            Err(e) => {
                return router_response(
                    &router,
                    &ProxyError::Upstream(e.to_string()),
                    Some(&req.trace_id),
                );
            }
        };
        if primary.node.pool == Pool::Stable {
            crate::mirror::maybe_mirror(&router, &cfg, &req, &primary.node, &resp);
        }
        return respond(&router, resp, &primary.node, None, None, started);
    };

    if primary.node.pool == Pool::Debug {
        // A debug node failed a request it was picked for first: nothing more instrumented to go to.
        // Recorded (kind `debug_fault`, with its trace and state), and its answer passed on honestly.
        let fault_id = capture::record_debug_fault(&router, &cfg, &req, &primary, kind).await;
        return match primary.result {
            Ok(resp) => respond(&router, resp, &primary.node, None, fault_id, started),
            Err(e) => with_fault_id(
                router_response(
                    &router,
                    &ProxyError::Upstream(e.to_string()),
                    Some(&req.trace_id),
                ),
                fault_id,
            ),
        };
    }

    // Phase: retry-on-debug.
    let retry = retry_on_debug(&router, &cfg, &req, &primary.node.id).await;

    // Phase: record.
    let ctx = FaultContext {
        cfg: &cfg,
        req: &req,
        stable: &primary,
        kind,
        retry: &retry,
    };
    let fault_id = capture::record_fault(&router, ctx).await;

    match retry {
        RetryOutcome::Answered(debug) => match debug.result {
            Ok(resp) => respond(
                &router,
                resp,
                &debug.node,
                Some(&primary.node.id),
                fault_id,
                started,
            ),
            Err(e) => {
                let err = ProxyError::Upstream(format!(
                    "stable node {} failed ({}) and debug node {} failed too: {e}",
                    primary.node.id,
                    kind.outcome(),
                    debug.node.id
                ));
                with_fault_id(
                    router_response(&router, &err, Some(&req.trace_id)),
                    fault_id,
                )
            }
        },
        RetryOutcome::NotReplayed(refusal) => {
            let failure = match &primary.result {
                Ok(r) => format!(
                    "stable node {} answered {} ({})",
                    primary.node.id,
                    r.status,
                    kind.outcome()
                ),
                Err(e) => e.to_string(),
            };
            match primary.result {
                // The node did answer (a 5xx): pass its answer on, with a note why it was not replayed.
                Ok(resp) => {
                    let mut out = respond(&router, resp, &primary.node, None, fault_id, started);
                    if let Ok(v) = HeaderValue::from_str(&format!("not replayed: {refusal}")) {
                        out.headers_mut().insert(X_ROUTER_ERROR, v);
                    }
                    out
                }
                Err(_) => with_fault_id(
                    router_response(
                        &router,
                        &ProxyError::UpstreamNotReplayed { failure, refusal },
                        Some(&req.trace_id),
                    ),
                    fault_id,
                ),
            }
        }
    }
}

fn with_fault_id(mut resp: Response<Full<Bytes>>, fault_id: Option<i64>) -> Response<Full<Bytes>> {
    if let Some(id) = fault_id {
        resp.headers_mut().insert(X_FAULT_ID, HeaderValue::from(id));
    }
    resp
}

/// What the retry-on-debug phase did.
pub enum RetryOutcome {
    Answered(Attempt),
    NotReplayed(String),
}

/// Phase *retry-on-debug*: replay the buffered request on a debug node, if safe and within budget.
pub async fn retry_on_debug(
    router: &Router,
    cfg: &Config,
    req: &BufferedRequest,
    failed: &NodeId,
) -> RetryOutcome {
    if let Some(refusal) = replay_refusal(cfg, req) {
        router.metrics.retries_not_replayable.inc();
        return RetryOutcome::NotReplayed(refusal);
    }
    let topo = router.pools.current();
    let Some(debug) = topo.pick_node(Pool::Debug, Some(failed), rand::next_u64()) else {
        router.metrics.retries_no_debug_node.inc();
        return RetryOutcome::NotReplayed("no debug node is available".to_owned());
    };
    if !router.budget.try_withdraw() {
        router.metrics.retries_denied_budget.inc();
        return RetryOutcome::NotReplayed(
            "the retry budget is exhausted (retry storm protection)".to_owned(),
        );
    }
    router.metrics.retries_sent.inc();
    RetryOutcome::Answered(attempt(router, cfg, debug, req).await)
}

/// An answer a node marked as a fault (`x-janus-fault`: the backend caught a panic or a cancelled
/// handler) carries the panic message, maybe a backtrace: internals that stay in the node's trace
/// and the fault store, never for clients. The client gets the status, the fault kind and the
/// trace id under which the operator finds the rest.
pub fn redact_fault_answer(resp: &mut BufferedResponse) {
    let Some(kind) = resp.headers.get(X_FAULT).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if resp.body.is_empty() {
        return; // HEAD, or nothing to hide
    }
    let trace = resp
        .headers
        .get(X_TRACE_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = serde_json::json!({
        "error": format!("the service failed ({kind}); the details are in its trace"),
        "trace_id": trace,
    });
    resp.body = Bytes::from(format!("{body}\n"));
    resp.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers.remove(header::CONTENT_LENGTH);
}

/// Phase *respond*: the node's answer with the head every client gets (`relay`: hop-by-hop fields
/// dropped, who answered added), a fault answer without its details ([`redact_fault_answer`]).
pub fn respond(
    router: &Router,
    mut resp: BufferedResponse,
    node: &Node,
    retried_from: Option<&NodeId>,
    fault_id: Option<i64>,
    started: tokio::time::Instant,
) -> Response<Full<Bytes>> {
    redact_fault_answer(&mut resp);
    let status = resp.status.as_u16();
    let by = crate::relay::Answerer {
        node,
        retried_from,
        fault_id,
    };
    let (out, scan) = crate::relay::relay_buffered(resp, &by);
    router.metrics.record_response(
        node.pool,
        scan.flavor,
        status,
        started.elapsed().as_micros() as u64,
    );
    out
}

/// Used by the admin replay endpoint: one attempt on a chosen node, judged, no retry.
pub async fn replay_on(router: &Router, node: Arc<Node>, req: &BufferedRequest) -> Attempt {
    let cfg = router.config();
    attempt(router, &cfg, node, req).await
}

impl FaultKind {
    /// Faults where the stable node may still be alive to ask for its state.
    pub fn node_may_be_alive(&self) -> bool {
        !matches!(self, FaultKind::ConnectError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> http::request::Parts {
        // Builds the parts hyper would hand over: request line, then `name: value` lines.
        let mut lines = raw.split("\r\n");
        let line = lines.next().unwrap_or_default();
        let mut it = line.split(' ');
        let (m, t, v) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let mut b = http::Request::builder()
            .method(m)
            .uri(t)
            .version(if v == "HTTP/1.0" {
                http::Version::HTTP_10
            } else {
                http::Version::HTTP_11
            });
        for l in lines.filter(|l| !l.is_empty()) {
            let (n, v) = l.split_once(':').unwrap();
            b = b.header(n, v.trim());
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn requests_the_nodes_refuse_are_refused_and_targets_never_rewritten() {
        for ok in [
            "GET / HTTP/1.1\r\nhost: h",
            "GET /a?b HTTP/1.1\r\nhost: h:80",
            "GET http://h/x HTTP/1.1\r\nhost: h",
            "GET / HTTP/1.0",
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked",
            "POST / HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 1",
            "GET / HTTP/1.1\r\nhost: [::1]:8080",
        ] {
            assert_eq!(check_request(&parts(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "GET / HTTP/1.1",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: a",
            "GET / HTTP/1.1\r\nhost: u@h",
            "GET / HTTP/1.0\r\nhost: a\r\nhost: b",
            "GET * HTTP/1.1\r\nhost: h",
            "OPTIONS * HTTP/1.1\r\nhost: h",
            "GET h:80 HTTP/1.1\r\nhost: h",
            "CONNECT h:443 HTTP/1.1\r\nhost: h",
            "GET ftp://h/ HTTP/1.1\r\nhost: h",
            "GET http://u@h/ HTTP/1.1\r\nhost: h",
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked, chunked",
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked",
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked",
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\ncontent-length: 3",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked",
        ] {
            let r = check_request(&parts(bad));
            assert!(
                matches!(r, Err((StatusCode::BAD_REQUEST, _))),
                "{bad}: {r:?}"
            );
        }
        let r = check_request(&parts("GET / HTTP/1.1\r\nhost: h\r\nexpect: teapot"));
        assert!(
            matches!(r, Err((StatusCode::EXPECTATION_FAILED, _))),
            "{r:?}"
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn channels_from_header_cookie_and_user_hash() {
        let mut cfg = ChannelConfig::default();
        assert_eq!(
            classify_channel(&cfg, &headers(&[("x-janus-channel", "beta")])),
            Channel::Beta
        );
        assert_eq!(
            classify_channel(&cfg, &headers(&[("cookie", "a=b; janus_channel=beta")])),
            Channel::Beta
        );
        assert!(matches!(
            classify_channel(&cfg, &headers(&[("cookie", "janus_channel=stable")])),
            Channel::Ordinary { user_hash: None }
        ));
        cfg.beta_user_percent = 30.0;
        let mut beta = 0;
        for i in 0..2000 {
            let mut h = HeaderMap::new();
            h.insert(
                "x-user-id",
                HeaderValue::from_str(&format!("user-{i}")).expect("value"),
            );
            let first = classify_channel(&cfg, &h);
            // Sticky: the same user always lands on the same channel.
            assert_eq!(first, classify_channel(&cfg, &h));
            beta += usize::from(first == Channel::Beta);
        }
        assert!(
            (500..700).contains(&beta),
            "beta share {beta}/2000 not near 30%"
        );
    }

    #[test]
    fn spill_formula() {
        assert_eq!(spill(1.0, 1.0, 50.0), Some(1.0));
        assert_eq!(spill(0.7, 1.0, 50.0), Some(0.7));
        assert_eq!(spill(0.0, 1.0, 50.0), Some(0.0));
        // Both degraded: shared in proportion to health.
        assert_eq!(spill(0.3, 0.3, 50.0), Some(0.5));
        // Below the panic threshold: panic mode (None); with the threshold at 0, never.
        assert_eq!(spill(0.2, 0.2, 50.0), None);
        assert_eq!(spill(0.2, 0.2, 0.0), Some(0.5));
        assert_eq!(spill(0.0, 0.0, 0.0), None);
        assert!((health_score((1, 3), 1.4) - 1.4 / 3.0).abs() < 1e-9);
        assert_eq!(health_score((3, 4), 1.4), 1.0);
        assert_eq!(health_score((0, 0), 1.4), 0.0);
    }

    /// 2 of 3 stable nodes out: ordinary traffic meant for stable spills to debug in proportion
    /// (1/3 * 1.4 stays), beta still goes to debug, all of it comes back as the nodes recover; with
    /// both pools degraded past the threshold, panic mode.
    #[test]
    fn pools_spill_by_health_and_panic() {
        use crate::config::NodeConfig;
        use crate::ids::{AdminAddr, UpstreamAddr};
        let node = |id: &str, pool| NodeConfig {
            id: NodeId::new(id),
            pool,
            addr: UpstreamAddr("127.0.0.1:1".parse().expect("addr")),
            admin_addr: AdminAddr("127.0.0.1:2".parse().expect("addr")),
            weight: 1,
            admin_token: None,
            twin_of: None,
        };
        let cfg = Config {
            mix: MixConfig {
                stable_weight: 100,
                debug_weight: 0,
                ..MixConfig::default()
            },
            nodes: vec![
                node("s1", Pool::Stable),
                node("s2", Pool::Stable),
                node("s3", Pool::Stable),
                node("d1", Pool::Debug),
                node("d2", Pool::Debug),
            ],
            ..Config::default()
        };
        let pools = crate::pool::Pools::new(&cfg);
        let t = pools.current();
        let ordinary = Channel::Ordinary { user_hash: None };
        let stable_share = |n: u32| {
            let stable = (0..n)
                .filter(|_| pick_pool(&cfg.mix, ordinary, &t).0 == Pool::Stable)
                .count();
            stable as f64 / f64::from(n)
        };
        assert_eq!(stable_share(1000), 1.0);
        for id in ["s1", "s2"] {
            t.get(id).expect("node").health.active_failed(1);
        }
        let share = stable_share(20_000);
        assert!((share - 1.4 / 3.0).abs() < 0.02, "stable share {share}");
        for _ in 0..100 {
            assert_eq!(
                pick_pool(&cfg.mix, Channel::Beta, &t),
                (Pool::Debug, PoolChoice::Wanted)
            );
        }
        // Debug degraded too (h_d = 0.7), but h_s + h_d >= 1: the debug pool still takes the rest.
        t.get("d1").expect("node").health.active_failed(1);
        let share = stable_share(20_000);
        assert!((share - 1.4 / 3.0).abs() < 0.02, "stable share {share}");
        // Worse: all stable out, h_d = 0.7 alone still >= 50%: everything on debug; then d2 out too.
        t.get("s3").expect("node").health.active_failed(1);
        assert_eq!(stable_share(1000), 0.0);
        t.get("d2").expect("node").health.active_failed(1);
        assert_eq!(pick_pool(&cfg.mix, ordinary, &t).1, PoolChoice::Panic);
        // Recovery.
        for id in ["s1", "s2", "s3", "d1", "d2"] {
            t.get(id).expect("node").health.active_passed(1);
        }
        assert_eq!(stable_share(1000), 1.0);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        use hmac::Mac as _;
        // RFC 4231 test case 2: key "Jefe".
        let tag = hmac_of("4a656665", "what do ya want for nothing?")
            .expect("key")
            .finalize()
            .into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signed_beta_markers() {
        let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let other = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let good = sign_beta(key, "beta", 2_000_000_000).expect("sign");
        assert!(good.starts_with("beta.2000000000."), "{good}");
        assert_eq!(good.len(), "beta.2000000000.".len() + 64);
        let now = 1_900_000_000;
        assert!(verify_beta(key, "beta", good.as_bytes(), now));
        // Expired, wrong key, tampered tag, tampered expiry, missing or truncated tag.
        assert!(!verify_beta(key, "beta", good.as_bytes(), 2_000_000_001));
        assert!(!verify_beta(other, "beta", good.as_bytes(), now));
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(!verify_beta(key, "beta", &flipped, now));
        let later = good.replace("2000000000", "2000000001");
        assert!(!verify_beta(key, "beta", later.as_bytes(), now));
        for bad in [
            "beta",
            "beta.2000000000",
            "beta.2000000000.",
            "beta..",
            "",
            "x.1.00",
        ] {
            assert!(!verify_beta(key, "beta", bad.as_bytes(), now), "{bad}");
        }
        assert!(!verify_beta(
            key,
            "beta",
            &good.as_bytes()[..good.len() - 2],
            now
        ));
        assert!(!verify_beta(key, "gamma", good.as_bytes(), now));

        // Through classification: header and cookie need the signature once a key is set.
        let mut cfg = ChannelConfig {
            beta_signing_key: key.into(),
            ..ChannelConfig::default()
        };
        let far = sign_beta(key, "beta", u64::MAX).expect("sign");
        let mut h = HeaderMap::new();
        h.insert("x-janus-channel", HeaderValue::from_str(&far).expect("v"));
        assert_eq!(classify_channel(&cfg, &h), Channel::Beta);
        let mut h = HeaderMap::new();
        let cookie = format!("a=b; janus_channel={far}");
        h.insert("cookie", HeaderValue::from_str(&cookie).expect("v"));
        assert_eq!(classify_channel(&cfg, &h), Channel::Beta);
        for unsigned in [
            headers(&[("x-janus-channel", "beta")]),
            headers(&[("cookie", "janus_channel=beta")]),
        ] {
            assert!(matches!(
                classify_channel(&cfg, &unsigned),
                Channel::Ordinary { .. }
            ));
        }
        cfg.beta_signing_key = other.into();
        assert!(matches!(
            classify_channel(&cfg, &h),
            Channel::Ordinary { .. }
        ));
    }

    #[test]
    fn replay_rules() {
        let cfg = Config::default();
        let mut req = BufferedRequest {
            method: Method::POST,
            path: "/".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            trace_id: TraceId::generate(),
            client_ip: None,
        };
        assert!(
            replay_refusal(&cfg, &req)
                .expect("refused")
                .contains("Idempotency-Key")
        );
        req.headers
            .insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
        assert!(replay_refusal(&cfg, &req).is_none());
        req.method = Method::GET;
        req.body = Bytes::from(vec![0; cfg.retry.max_body_bytes + 1]);
        assert!(
            replay_refusal(&cfg, &req)
                .expect("refused")
                .contains("max_body_bytes")
        );
    }
}
