//! Upstream calls: the `UpstreamTransport` provider. Only names mapped on the command line
//! (`janus.upstream.NAME=A.B.C.D:PORT`) are reachable; one TCP connection per call, with
//! `Connection: close`, a 10 s deadline and the request's trace id.

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::net::SocketAddrV4;

use janus_http1::{ClientRequest, Limits, ResponseParser};
use runtime_abi::{
    BoxFuture, Request, Response, StatusCode, TraceId, UpstreamError, UpstreamTransport,
};

use crate::executor::{Timers, timeout};
use crate::net;

/// Deadline of one upstream call.
pub const CALL_TIMEOUT_MS: u64 = 10_000;

/// The upstream map.
pub struct UkUpstreams {
    map: Vec<(String, SocketAddrV4)>,
    timers: Arc<Timers>,
}

impl UkUpstreams {
    /// Upstreams from the command line.
    pub fn new(map: Vec<(String, SocketAddrV4)>, timers: Arc<Timers>) -> Self {
        Self { map, timers }
    }
}

fn now_ms() -> u64 {
    crate::clock::monotonic_ns() / 1_000_000
}

async fn call(addr: SocketAddrV4, name: String, req: Request) -> Result<Response, UpstreamError> {
    let mut stream = net::connect(addr).map_err(|e| UpstreamError::Connect(e.to_string()))?;
    stream
        .established()
        .await
        .map_err(|e| UpstreamError::Connect(alloc::format!("{name} at {addr}: {e}")))?;
    let method = janus_http1::Method::from_token(req.method.as_str());
    let mut creq = ClientRequest::new(method.clone(), &addr.to_string(), &req.target());
    for (n, v) in req.headers.iter() {
        if !n.eq_ignore_ascii_case("connection") {
            creq = creq.with_header(n, v.as_bytes());
        }
    }
    if !req.headers.contains("x-janus-trace-id") && req.trace_id != TraceId::ZERO {
        creq = creq.with_header("x-janus-trace-id", req.trace_id.to_hex().as_bytes());
    }
    creq = creq.with_header("Connection", "close").with_body(req.body);
    let mut out = Vec::new();
    creq.encode(&mut out)
        .map_err(|e| UpstreamError::Protocol(alloc::format!("cannot encode request: {e}")))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let mut parser = ResponseParser::new(Limits::DEFAULT, &method);
    let mut buf = vec![0u8; 8192];
    loop {
        if let Some(result) = parser.poll(now_ms()) {
            let resp = result.map_err(|e| UpstreamError::Protocol(alloc::format!("{e}")))?;
            let status = StatusCode::new(resp.status)
                .ok_or_else(|| UpstreamError::Protocol(alloc::format!("status {}", resp.status)))?;
            let mut out = Response::new(status);
            for field in resp.headers.iter() {
                out.headers
                    .append(&field.name, &String::from_utf8_lossy(&field.value));
            }
            out.body = resp.body;
            return Ok(out);
        }
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        if n == 0 {
            parser.feed_eof();
        } else {
            let mut offered = &buf[..n];
            while !offered.is_empty() {
                let taken = parser.feed(offered);
                if taken == 0 {
                    return Err(UpstreamError::Protocol(String::from(
                        "response exceeds the buffer limit",
                    )));
                }
                offered = &offered[taken..];
            }
        }
    }
}

impl UpstreamTransport for UkUpstreams {
    fn call(&self, name: &str, req: Request) -> BoxFuture<'_, Result<Response, UpstreamError>> {
        let Some(addr) = self.map.iter().find(|(n, _)| n == name).map(|(_, a)| *a) else {
            let name = name.to_string();
            return Box::pin(async move { Err(UpstreamError::Unmapped(name)) });
        };
        let name = name.to_string();
        let timers = Arc::clone(&self.timers);
        Box::pin(async move {
            let deadline = now_ms().saturating_add(CALL_TIMEOUT_MS);
            timeout(&timers, deadline, call(addr, name, req))
                .await
                .unwrap_or(Err(UpstreamError::Timeout))
        })
    }
}
