//! The router's HTTP/1.1 fast path against a node scripted byte by byte: answer framings the hyper
//! test nodes never produce (chunked, interim 1xx, close-delimited), a node that closes kept-alive
//! connections, pipelined and `Connection: close` clients, HTTP/1.0 (handed to the general path),
//! and the head the node receives.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A node whose answers are written by hand. Its admin listener answers every request with a
/// healthy `/health`.
struct RawNode {
    addr: std::net::SocketAddr,
    admin_addr: std::net::SocketAddr,
    /// Connections accepted on the service listener.
    connections: Arc<AtomicU64>,
    /// Requests that arrived with the one before them (read together: pipelined).
    pipelined: Arc<AtomicU64>,
    /// `/crash-once` and `/crash` requests received.
    crashes: Arc<AtomicU64>,
}

impl RawNode {
    async fn start() -> Self {
        let svc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, admin_addr) = (
            svc.local_addr().expect("addr"),
            admin.local_addr().expect("addr"),
        );
        let connections = Arc::new(AtomicU64::new(0));
        let pipelined = Arc::new(AtomicU64::new(0));
        let (count, together) = (connections.clone(), pipelined.clone());
        let crashes = Arc::new(AtomicU64::new(0));
        let crashed = crashes.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = svc.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_scripted(s, crashed.clone(), together.clone()));
            }
        });
        tokio::spawn(async move {
            while let Ok((mut s, _)) = admin.accept().await {
                tokio::spawn(async move {
                    let body = r#"{"status":"ok","node":"raw","flavor":"uk","seq":null}"#;
                    while read_head(&mut s).await.is_some() {
                        let out = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(out.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            admin_addr,
            connections,
            pipelined,
            crashes,
        }
    }

    fn toml(&self) -> String {
        format!(
            "[[nodes]]\nid = \"raw\"\npool = \"stable\"\naddr = \"{}\"\nadmin_addr = \"{}\"\n",
            self.addr, self.admin_addr
        )
    }
}

/// Reads one request head (and no body: the scripted paths take none). `None` at EOF.
async fn read_head(s: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// `crashes` counts `/crash-once` and `/crash` requests: the first `/crash-once` drops the connection
/// without an answer (a node dying on a request), later ones are answered (the node came back with
/// fresh state); every `/crash` drops its connection.
async fn serve_scripted(s: TcpStream, crashes: Arc<AtomicU64>, pipelined: Arc<AtomicU64>) {
    let mut s = BufReader::new(s);
    while let Some(head) = read_head(&mut s).await {
        if !s.buffer().is_empty() {
            pipelined.fetch_add(1, Ordering::SeqCst);
        }
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let fixed = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nx-janus-flavor: uk\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let (out, close) = match path.as_str() {
            "/chunked" => (
                "HTTP/1.1 200 OK\r\nx-janus-flavor: uk\r\ntransfer-encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
                    .to_owned(),
                false,
            ),
            "/interim" => (
                format!(
                    "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n{}",
                    fixed("final")
                ),
                false,
            ),
            "/until-close" => (
                "HTTP/1.1 200 OK\r\nx-janus-flavor: uk\r\n\r\nbody until close".to_owned(),
                true,
            ),
            // Answers, then closes without saying so: the next request must not be lost on it.
            "/close-after" => (fixed("closing"), true),
            "/head" => (fixed(&head), false),
            "/crash-once" if crashes.fetch_add(1, Ordering::SeqCst) == 0 => return,
            "/crash" => {
                crashes.fetch_add(1, Ordering::SeqCst);
                return;
            }
            _ => (fixed(&path), false),
        };
        if s.get_mut().write_all(out.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

async fn router_for(node: &RawNode, name: &str) -> RouterProcess {
    let dir = temp_dir(name);
    let cfg = format!("{}{}", config_head(&dir, ""), node.toml());
    RouterProcess::start(&dir, &cfg).await
}

/// The router's fault list.
async fn faults(router: &RouterProcess) -> serde_json::Value {
    HttpClient::new()
        .admin(router, Method::GET, "/faults", "")
        .await
        .expect("faults")
        .json()
}

/// Writes `req` on a new connection and reads until the router closes it (or 5 s pass).
async fn raw_exchange(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_interim_and_close_delimited_answers_are_relayed_with_a_length() {
    let node = RawNode::start().await;
    let router = router_for(&node, "framings").await;
    let client = HttpClient::new();
    for (path, body) in [
        ("/chunked", "hello world"),
        ("/interim", "final"),
        ("/until-close", "body until close"),
    ] {
        let r = client.get(&router, path, &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, body), "{path}: {r:?}");
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(r.header("transfer-encoding"), None, "{path}");
        assert_eq!(r.header("x-janus-node"), Some("raw"));
        assert_eq!(r.header("x-janus-pool"), Some("stable"));
        assert!(r.header("date").is_some(), "{path}: the router adds a date");
    }
    // A HEAD answer keeps the node's length and carries no body.
    let head = client
        .send(router.addr, Method::HEAD, "/abc", &[], bytes::Bytes::new())
        .await
        .expect("head");
    assert_eq!(head.header("content-length"), Some("4"));
    assert!(head.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_connections_are_reused_and_a_node_closing_them_costs_no_request() {
    let node = RawNode::start().await;
    let router = router_for(&node, "reuse").await;
    let client = HttpClient::new();
    for i in 0..40 {
        let r = client.get(&router, &format!("/n{i}"), &[]).await;
        assert_eq!(r.body, format!("/n{i}"));
    }
    let reused = node.connections.load(Ordering::SeqCst);
    assert!(
        reused <= 4,
        "40 sequential requests took {reused} node connections"
    );
    for _ in 0..10 {
        let r = client.get(&router, "/close-after", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "closing"), "{r:?}");
        let r = client.get(&router, "/after", &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "/after"), "{r:?}");
    }
    let faults = faults(&router).await;
    assert_eq!(
        faults["faults"].as_array().map(Vec::len),
        Some(0),
        "a closed idle connection is not a fault: {faults}"
    );
}

/// The head a node gets is written by one writer whichever path the request took: HTTP/1.1 on the
/// fast path, HTTP/1.0 on the general (hyper) path; a request without `Host` gets the node's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_gets_a_clean_head_with_trace_id_and_forwarded_for() {
    let node = RawNode::start().await;
    let router = router_for(&node, "head").await;
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let request = format!(
            "GET /head {version}\r\nHost: example.test\r\nConnection: keep-alive, close\r\nKeep-Alive: 5\r\n\
             TE: trailers\r\nX-Janus-Trace-Id: 0123456789ABCDEF0123456789abcdef\r\nX-Custom: 1\r\n\r\n"
        );
        let out = raw_exchange(router.addr, request.as_bytes()).await;
        assert!(out.contains(" 200 OK\r\n"), "{version}: {out}");
        if version == "HTTP/1.1" {
            assert!(out.contains("connection: close\r\n"), "{out}");
        }
        let seen = out
            .split_once("\r\n\r\n")
            .expect("body")
            .1
            .to_ascii_lowercase();
        assert!(
            seen.starts_with("get /head http/1.1\r\n"),
            "{version}: {seen}"
        );
        assert!(seen.contains("host: example.test\r\n"), "{version}: {seen}");
        assert!(seen.contains("x-custom: 1\r\n"), "{version}: {seen}");
        for gone in ["connection:", "keep-alive:", "te:", "content-length:"] {
            assert!(!seen.contains(gone), "{version}: {gone} forwarded: {seen}");
        }
        assert_eq!(
            seen.matches("x-janus-trace-id: 0123456789abcdef0123456789abcdef\r\n")
                .count(),
            1,
            "{version}: {seen}"
        );
        assert!(
            seen.contains("x-forwarded-for: 127.0.0.1\r\n"),
            "{version}: {seen}"
        );
    }
    let out = raw_exchange(router.addr, b"GET /head HTTP/1.0\r\n\r\n").await;
    let seen = out.split_once("\r\n\r\n").expect("body").1;
    assert!(
        seen.contains(&format!("host: {}\r\n", node.addr)),
        "no Host from the client: the node's address: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http11_and_http10_clients_are_answered_in_order() {
    let node = RawNode::start().await;
    let router = router_for(&node, "pipeline").await;
    let out = raw_exchange(
        router.addr,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\nGET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<&str> = out
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .filter_map(|a| a.split("\r\n\r\n").nth(1))
        .collect();
    assert_eq!(bodies, ["/one", "/two", "/three"], "{out}");
    // HTTP/1.0 goes to the general path and is answered all the same.
    let out = raw_exchange(router.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    assert!(out.ends_with("/old"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dying_on_a_request_is_a_fault_not_hidden_by_a_resend() {
    let node = RawNode::start().await;
    let router = router_for(&node, "crash").await;
    let client = HttpClient::new();
    // On a new node connection (the node's first request): never sent again.
    let r = client.get(&router, "/crash-once", &[]).await;
    assert_eq!(
        r.status, 502,
        "the node answers a second copy of the request: the router must not send one: {r:?}"
    );
    assert_eq!(node.crashes.load(Ordering::SeqCst), 1);
    // On a reused one, closed before any byte of the answer, the router cannot tell a crash from
    // a stale keep-alive connection: a GET goes once more on a new connection. A node that dies on
    // it there is a fault all the same.
    assert_eq!(client.get(&router, "/warm", &[]).await.status, 200);
    let r = client.get(&router, "/crash", &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        node.crashes.load(Ordering::SeqCst),
        3,
        "sent twice, not more"
    );
    let faults = faults(&router).await;
    let list = faults["faults"].as_array().expect("faults");
    let paths: Vec<_> = list.iter().map(|f| f["path"].as_str()).collect();
    assert_eq!(list.len(), 2, "{faults}");
    assert!(paths.contains(&Some("/crash")), "{faults}");
    assert!(
        list.iter().all(|f| f["stable_outcome"] == "reset"),
        "{faults}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_on_pipelined_node_connections_each_get_their_own_answer() {
    let node = RawNode::start().await;
    let router = Arc::new(router_for(&node, "lanes").await);
    let (clients, each) = (48, 40);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::new();
            for i in 0..each {
                // HEAD among GETs (on connections of their own; this node wrongly sends a body
                // with HEAD answers, which must not derail the pipelined GET answers).
                let (method, path) = if i % 7 == 3 {
                    (Method::HEAD, format!("/c{c}/head{i}"))
                } else {
                    (Method::GET, format!("/c{c}/r{i}"))
                };
                let r = client
                    .send(router.addr, method.clone(), &path, &[], bytes::Bytes::new())
                    .await
                    .expect("request through router");
                assert_eq!(r.status, 200, "{r:?}");
                if method == Method::HEAD {
                    assert_eq!(r.body, "", "{r:?}");
                    assert_eq!(
                        r.header("content-length"),
                        Some(path.len().to_string().as_str())
                    );
                } else {
                    assert_eq!(r.body, path, "an answer went to the wrong request");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    // Each HEAD takes a connection of its own and closes it (the body this node wrongly sends
    // after the head makes the connection unusable): the GETs must share the rest.
    let total = (clients * each) as u64;
    let heads = (clients * (0..each).filter(|i| i % 7 == 3).count()) as u64;
    let conns = node.connections.load(Ordering::SeqCst);
    assert!(
        conns.saturating_sub(heads) < (total - heads) / 4,
        "{} GETs took {} node connections besides the {heads} HEADs' ({conns} in all)",
        total - heads,
        conns.saturating_sub(heads),
    );
    // 48 clients at once: the router's workers find several requests ready together and pipeline
    // them (the lane unit tests check the rules; this checks it happens through the router).
    let pipelined = node.pipelined.load(Ordering::SeqCst);
    assert!(pipelined > 0, "no request was pipelined to the node");
    // The router's metrics say so too: more pipelined requests than batches.
    let metrics = HttpClient::new()
        .admin(&router, Method::GET, "/metrics", "")
        .await
        .expect("metrics")
        .body;
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let requests = counter("janus_router_upstream_pipelined_requests_total");
    let batches = counter("janus_router_upstream_pipelined_batches_total");
    assert!(
        requests > batches && batches > 0,
        "{requests} requests in {batches} batches"
    );
    let faults = faults(&router).await;
    assert_eq!(
        faults["faults"].as_array().map(Vec::len),
        Some(0),
        "{faults}"
    );
}
