//! The CLI's blocking HTTP/1.1 client (health checks, admin calls, replays of captured requests):
//! `ureq` over plain HTTP, one connection per call, an answer of any status returned as a
//! [`Reply`]. Tests that must send exact (or malformed) bytes use the raw client in
//! `janus-integration` instead.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read or write may wait, unless the call says otherwise.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Reply {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", self.text()))
    }
}

/// Sends a request and reads the whole response (30 s per read or write).
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Reply> {
    request_timeout(addr, method, target, headers, body, IO_TIMEOUT)
}

/// `GET target` with optional headers.
pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    request(addr, "GET", target, headers, b"")
}

/// Sends a request and reads the whole response; connecting may take 5 s, each read or write
/// `timeout`. A timeout is an error whose chain holds a [`ureq::Error::Timeout`] (see
/// [`is_timeout`]).
pub fn request_timeout(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .max_idle_connections(0)
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{target}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let context = || format!("{method} {target} to {addr}");
    let sent = if body.is_empty() && !matches!(method, "POST" | "PUT" | "PATCH") {
        agent.run(req.body(()).with_context(context)?)
    } else {
        agent.run(req.body(body).with_context(context)?)
    };
    let mut resp = sent.with_context(context)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .with_context(context)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Whether a call failed because a read or write (or the connect) took longer than allowed.
pub fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ureq::Error>()
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
            || c.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-connection server: reads the request head, answers `answer` (if any), returns what
    /// it read.
    fn serve_once(answer: Option<&'static [u8]>) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            match answer {
                Some(a) => s.write_all(a).expect("write"),
                None => std::thread::sleep(Duration::from_millis(1500)),
            }
            String::from_utf8_lossy(&got).into_owned()
        });
        (addr, t)
    }

    #[test]
    fn any_status_is_a_reply_with_its_headers_and_dechunked_body() {
        let (addr, t) = serve_once(Some(
            b"HTTP/1.1 503 Service Unavailable\r\nX-Janus-Fault: panic\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        ));
        let r = request(
            addr,
            "PUT",
            "/state?seq=1",
            &[("authorization", "Bearer t")],
            b"xy",
        )
        .expect("reply");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-janus-fault"), Some("panic"));
        assert_eq!(r.text(), "abcde");
        let head = t.join().expect("server");
        assert!(head.starts_with("PUT /state?seq=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("authorization: Bearer t\r\n"), "{head}");
        assert!(head.contains("content-length: 2\r\n"), "{head}");
    }

    #[test]
    fn a_silent_server_is_a_timeout_and_a_closed_port_is_not() {
        let (addr, t) = serve_once(None);
        let e = request_timeout(addr, "GET", "/slow", &[], b"", Duration::from_millis(200))
            .expect_err("no answer");
        assert!(is_timeout(&e), "{e:#}");
        t.join().expect("server");
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let e = get(closed, "/health", &[]).expect_err("refused");
        assert!(!is_timeout(&e), "{e:#}");
        assert!(format!("{e:#}").contains(&closed.to_string()), "{e:#}");
    }
}
