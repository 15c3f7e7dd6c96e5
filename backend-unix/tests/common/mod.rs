//! Test helpers: in-process nodes on 127.0.0.1:0 and a tiny raw-TCP HTTP/1.1 client that can send
//! malformed or partial requests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use backend_unix::{Node, NodeConfig};
use runtime_abi::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Safety net for reads: a broken server fails the test instead of hanging it.
const IO_GUARD: Duration = Duration::from_secs(30);

pub const TOKEN: &str = "test-token";

/// A config for an in-process test node.
pub fn config(node_id: &str) -> NodeConfig {
    NodeConfig {
        node_id: Some(node_id.to_string()),
        admin_token: Some(TOKEN.to_string()),
        ..NodeConfig::ephemeral()
    }
}

pub async fn start<S: Service>(config: NodeConfig) -> Node {
    Node::start::<S>(config).await.expect("node starts")
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts the node headers every public answer carries.
    pub fn assert_node_headers(&self, node_id: &str) {
        assert_eq!(self.header("x-janus-flavor"), Some("unix"), "{self:?}");
        assert_eq!(self.header("x-janus-node"), Some(node_id), "{self:?}");
        let trace = self.header("x-janus-trace-id").expect("trace id header");
        assert_eq!(trace.len(), 32, "{trace}");
        assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()), "{trace}");
    }
}

/// A raw client connection with its own read buffer (keep-alive aware).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(IO_GUARD, self.stream.read(&mut chunk))
            .await
            .expect("server answered within the safety bound")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads one response; `None` when the server closed without one.
    pub async fn read_response(&mut self, head: bool) -> Option<Resp> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill().await == 0 {
                return None;
            }
        };
        let head_text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        if head || status == 204 || status == 304 {
            return Some(resp);
        }
        match len {
            Some(len) => {
                while self.buf.len() < len {
                    if self.fill().await == 0 {
                        panic!("connection closed inside a body");
                    }
                }
                resp.body = self.buf.drain(..len).collect();
            }
            None => {
                while self.fill().await > 0 {}
                resp.body = std::mem::take(&mut self.buf);
            }
        }
        Some(resp)
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT") {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes).await;
        self.read_response(method == "HEAD")
            .await
            .expect("a response")
    }

    /// Whether the server closed the connection (EOF or reset).
    pub async fn closed(&mut self) -> bool {
        self.fill().await == 0
    }
}

/// One request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    Conn::connect(addr)
        .await
        .request(method, path, headers, body)
        .await
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").await
}

/// An admin request with the test token.
pub async fn admin(node: &Node, method: &str, path: &str, body: &[u8]) -> Resp {
    let auth = format!("Bearer {}", node.admin_token());
    request(
        node.admin_addr(),
        method,
        path,
        &[("authorization", &auth)],
        body,
    )
    .await
}

/// Polls `check` until it returns `Some`, yielding briefly between tries (bounded, never a fixed wait).
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..2000 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting for {what}");
}

/// A metric's value from the admin exposition.
pub async fn metric(node: &Node, line_prefix: &str) -> Option<f64> {
    let text = admin(node, "GET", "/metrics", b"").await.text();
    text.lines()
        .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
