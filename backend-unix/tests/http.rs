//! The public listener over real TCP: node headers, trace ids, keep-alive, every limit, upstream calls.

mod common;

use common::{Conn, config, get, request, start};
use janus_samples_hello::Hello;
use janus_samples_kv::Kv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_node_headers_and_keep_alive_works() {
    let node = start::<Hello>(config("hello-h1")).await;
    let mut conn = Conn::connect(node.public_addr()).await;
    let first = conn.request("GET", "/", &[], b"").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "Hello from Janus!\n");
    first.assert_node_headers("hello-h1");
    assert_eq!(
        first.header("x-janus-state-seq"),
        None,
        "hello has no store"
    );
    // Same connection: a 404 and a HEAD still carry the headers.
    let missing = conn.request("GET", "/nope", &[], b"").await;
    assert_eq!(missing.status, 404);
    missing.assert_node_headers("hello-h1");
    let head = conn.request("HEAD", "/", &[], b"").await;
    assert_eq!(head.status, 200);
    head.assert_node_headers("hello-h1");
    assert_ne!(
        first.header("x-janus-trace-id"),
        missing.header("x-janus-trace-id"),
        "each request gets its own generated trace id"
    );
    let json = conn
        .request("POST", "/json", &[], br#"{"name":"n","values":[3,-1,10]}"#)
        .await;
    assert_eq!(json.status, 200);
    assert_eq!(json.json()["sum"], 12);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_answers_carry_the_seq_at_request_start() {
    let node = start::<Kv>(config("kv-h1")).await;
    let put = request(node.public_addr(), "PUT", "/kv/a", &[], b"1").await;
    assert_eq!(put.status, 200);
    assert_eq!(put.header("x-janus-state-seq"), Some("0"));
    assert_eq!(put.json()["seq"], 1);
    let got = get(node.public_addr(), "/kv/a").await;
    assert_eq!(got.header("x-janus-state-seq"), Some("1"));
    assert_eq!(got.text(), "1");
    got.assert_node_headers("kv-h1");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_id_comes_from_traceparent_then_x_janus_trace_id() {
    let node = start::<Hello>(config("hello-trace")).await;
    let addr = node.public_addr();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = request(addr, "GET", "/", &[("traceparent", tp)], b"").await;
    assert_eq!(
        r.header("x-janus-trace-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let own = "0123456789ABCDEF0123456789abcdef";
    let r = request(addr, "GET", "/", &[("x-janus-trace-id", own)], b"").await;
    assert_eq!(
        r.header("x-janus-trace-id"),
        Some("0123456789abcdef0123456789abcdef")
    );
    let r = request(
        addr,
        "GET",
        "/",
        &[("traceparent", tp), ("x-janus-trace-id", own)],
        b"",
    )
    .await;
    assert_eq!(
        r.header("x-janus-trace-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "traceparent wins"
    );
    let r = request(addr, "GET", "/", &[("x-janus-trace-id", "zz")], b"").await;
    let generated = r.header("x-janus-trace-id").expect("generated");
    assert_eq!(generated.len(), 32);
    assert_ne!(generated, "zz");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_head_is_400_with_node_headers() {
    let node = start::<Hello>(config("hello-400")).await;
    let mut conn = Conn::connect(node.public_addr()).await;
    conn.send(b"NOT HTTP AT ALL\r\n\r\n").await;
    let r = conn.read_response(false).await.expect("an answer");
    assert_eq!(r.status, 400);
    r.assert_node_headers("hello-400");
    assert!(
        r.json()["error"]
            .as_str()
            .expect("error")
            .contains("malformed")
    );
    assert!(
        conn.closed().await,
        "connection closed after a malformed head"
    );

    // A bad header line after a good request on the same connection.
    let mut conn = Conn::connect(node.public_addr()).await;
    assert_eq!(conn.request("GET", "/", &[], b"").await.status, 200);
    conn.send(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        .await;
    let r = conn.read_response(false).await.expect("an answer");
    assert_eq!(r.status, 400);

    // Unusable or conflicting body lengths.
    for head in [
        "POST /json HTTP/1.1\r\nhost: t\r\ncontent-length: abc\r\n\r\n",
        "POST /json HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
    ] {
        let mut conn = Conn::connect(node.public_addr()).await;
        conn.send(head.as_bytes()).await;
        let r = conn.read_response(false).await.expect("an answer");
        assert_eq!(r.status, 400, "{head:?}");
        r.assert_node_headers("hello-400");
        assert!(
            r.text().to_ascii_lowercase().contains("content-length"),
            "{}",
            r.text()
        );
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_431() {
    let mut cfg = config("hello-431");
    cfg.max_header_bytes = 1024;
    let node = start::<Hello>(cfg).await;
    let fill = "x".repeat(2000);
    let mut conn = Conn::connect(node.public_addr()).await;
    conn.send(format!("GET / HTTP/1.1\r\nx-fill: {fill}\r\n\r\n").as_bytes())
        .await;
    let r = conn.read_response(false).await.expect("an answer");
    assert_eq!(r.status, 431);
    r.assert_node_headers("hello-431");
    // Just under the limit is fine.
    let fill = "y".repeat(900);
    let ok = request(node.public_addr(), "GET", "/", &[("x-fill", &fill)], b"").await;
    assert_eq!(ok.status, 200);
    // Too many fields.
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..200 {
        many.push_str(&format!("h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut cfg = config("hello-431b");
    cfg.max_header_bytes = 64 * 1024;
    let node2 = start::<Hello>(cfg).await;
    let mut conn = Conn::connect(node2.public_addr()).await;
    conn.send(many.as_bytes()).await;
    assert_eq!(conn.read_response(false).await.expect("answer").status, 431);
    node.stop().await;
    node2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_declared_or_streamed() {
    let mut cfg = config("hello-413");
    cfg.max_body_bytes = 100;
    let node = start::<Hello>(cfg).await;
    // Declared length over the limit: refused before the body is read.
    let mut conn = Conn::connect(node.public_addr()).await;
    conn.send(b"POST /json HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\n\r\n")
        .await;
    let r = conn.read_response(false).await.expect("answer");
    assert_eq!(r.status, 413);
    r.assert_node_headers("hello-413");
    assert_eq!(r.header("connection"), Some("close"));
    // Chunked body that grows past the limit.
    let mut conn = Conn::connect(node.public_addr()).await;
    let chunk = "z".repeat(80);
    conn.send(
        format!(
            "POST /json HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n50\r\n{chunk}\r\n50\r\n{chunk}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let r = conn.read_response(false).await.expect("answer");
    assert_eq!(r.status, 413);
    // A chunked body within the limit reaches the service de-chunked.
    let body = r#"{"name":"c","values":[1,2]}"#;
    let mut conn = Conn::connect(node.public_addr()).await;
    conn.send(
        format!(
            "POST /json HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let r = conn.read_response(false).await.expect("answer");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sum"], 3);
    node.stop().await;

    // With the default 1 MiB limit, a client that sends its whole 1.1 MB body still reads the 413
    // (the node drains what it did not read instead of resetting the connection).
    let node = start::<Hello>(config("hello-413-default")).await;
    let mut conn = Conn::connect(node.public_addr()).await;
    let mut req = b"POST /json HTTP/1.1\r\nhost: t\r\ncontent-length: 1100000\r\n\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'x', 1_100_000));
    conn.send(&req).await;
    let r = conn.read_response(false).await.expect("answer");
    assert_eq!(r.status, 413);
    assert!(
        r.json()["error"]
            .as_str()
            .expect("error")
            .contains("1048576")
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_head_gets_408_and_idle_connection_is_closed_silently() {
    let mut cfg = config("hello-408");
    cfg.header_timeout_ms = 200;
    cfg.idle_timeout_ms = 1000;
    let node = start::<Hello>(cfg).await;
    let mut conn = Conn::connect(node.public_addr()).await;
    conn.send(b"GET / HTTP/1.1\r\nhost: t\r\n").await;
    let r = conn.read_response(false).await.expect("a 408 answer");
    assert_eq!(r.status, 408);
    r.assert_node_headers("hello-408");
    assert!(conn.closed().await);

    // On a kept-alive connection, the second head gets its own timeout.
    let mut conn = Conn::connect(node.public_addr()).await;
    assert_eq!(conn.request("GET", "/", &[], b"").await.status, 200);
    conn.send(b"GET /echo?msg=x HTTP/1.1\r\n").await;
    assert_eq!(conn.read_response(false).await.expect("answer").status, 408);

    // An idle connection that never sends a byte is closed without an answer.
    let mut idle = Conn::connect(node.public_addr()).await;
    assert!(idle.read_response(false).await.is_none());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_backend_reaches_a_real_second_node_and_forwards_the_trace_id() {
    let backend = start::<Hello>(config("hello-backend")).await;
    let mut cfg = config("hello-front");
    cfg.upstreams
        .insert("backend".to_string(), backend.public_addr());
    let front = start::<Hello>(cfg).await;
    let trace = "11111111111111111111111111111111";
    let r = request(
        front.public_addr(),
        "GET",
        "/via/backend",
        &[("x-janus-trace-id", trace)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["upstream"], "backend");
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], "Hello from Janus!\n");
    // The backend saw the same trace id.
    let t = common::poll("backend trace", || async {
        backend.recorder().get(trace).filter(|t| !t.in_flight)
    })
    .await;
    assert_eq!(t.spans[0].fields.get("path"), Some("/".into()));
    // The front's trace has the upstream.call span under the request span.
    let f = front.recorder().get(trace).expect("front trace");
    let call = f
        .spans
        .iter()
        .find(|s| s.name == "upstream.call")
        .expect("upstream.call span");
    assert_eq!(call.parent, Some(0));
    assert_eq!(call.fields.get("upstream"), Some("backend".into()));
    assert_eq!(call.fields.get("status"), Some(200.into()));
    // A mapped upstream that is down is a 502, not a hang or a panic.
    backend.stop().await;
    let r = get(front.public_addr(), "/via/backend").await;
    assert_eq!(r.status, 502);
    front.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_with_bodies_and_split_heads_are_all_answered() {
    let node = start::<Hello>(config("hello-pipe")).await;
    let mut conn = Conn::connect(node.public_addr()).await;
    let body = r#"{"name":"p","values":[4,5]}"#;
    // A GET, a POST with a body and the start of a third head, all in one write.
    conn.send(
        format!(
            "GET /echo?msg=one HTTP/1.1\r\nhost: t\r\n\r\nPOST /json HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}GET /echo?msg=th",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let one = conn.read_response(false).await.expect("first");
    assert_eq!(one.text(), "one");
    let two = conn.read_response(false).await.expect("second");
    assert_eq!(two.status, 200, "{}", two.text());
    assert_eq!(two.json()["sum"], 9);
    // The rest of the third head arrives later: it is a continuation, not a malformed head.
    conn.send(b"ree HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let three = conn.read_response(false).await.expect("third");
    assert_eq!(three.status, 200);
    assert_eq!(three.text(), "three");
    // A body sent in pieces after its head is not mistaken for a head.
    conn.send(
        format!(
            "POST /json HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    conn.send(&body.as_bytes()[..5]).await;
    conn.send(&body.as_bytes()[5..]).await;
    let four = conn.read_response(false).await.expect("fourth");
    assert_eq!(four.status, 200, "{}", four.text());
    four.assert_node_headers("hello-pipe");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_never_answers_is_bounded_by_the_timeout() {
    // Accepts connections and reads, but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut cfg = config("hello-timeout");
    cfg.upstream_timeout_ms = 300;
    cfg.upstreams.insert("backend".to_string(), silent_addr);
    let node = start::<Hello>(cfg).await;
    let r = get(node.public_addr(), "/via/backend").await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("timed out"), "{}", r.text());
    let trace = r.header("x-janus-trace-id").expect("trace id").to_string();
    let t = node.recorder().get(&trace).expect("trace");
    assert!(
        t.events
            .iter()
            .any(|e| e.message.as_deref() == Some("upstream call failed")),
        "the runtime's upstream.call span logged the failure: {:?}",
        t.events
    );
    node.stop().await;
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_are_atomic_and_counted() {
    let node = start::<Kv>(config("kv-concurrent")).await;
    let addr = node.public_addr();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await;
            for _ in 0..25 {
                let r = conn.request("POST", "/counter/c/incr", &[], b"").await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let r = get(addr, "/kv/counter%2Fc").await;
    assert_eq!(r.text(), "200");
    assert_eq!(r.header("x-janus-state-seq"), Some("200"));
    assert_eq!(
        common::metric(&node, "janus_store_ops_total{op=\"update\"}").await,
        Some(200.0)
    );
    assert_eq!(
        common::metric(&node, "janus_requests_total{status=\"200\"}").await,
        Some(201.0)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_trickled_byte_by_byte_or_after_blank_lines_are_accepted() {
    let node = start::<Hello>(config("hello-trickle")).await;
    let mut conn = Conn::connect(node.public_addr()).await;
    conn.stream.set_nodelay(true).expect("nodelay");
    for b in b"GET /echo?msg=slow HTTP/1.1\r\nhost: t\r\n\r\n" {
        conn.send(&[*b]).await;
        tokio::task::yield_now().await;
    }
    let r = conn.read_response(false).await.expect("answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    // RFC 9112 2.2: a server should ignore empty lines before a request line.
    conn.send(b"\r\nGET /echo?msg=blank HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    let r = conn.read_response(false).await.expect("answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "blank");
    node.stop().await;
}

/// A test service that tries to set the headers the backend owns, and panics with a formatted message.
struct Spoof;

impl runtime_abi::Service for Spoof {
    const MANIFEST: runtime_abi::Manifest = runtime_abi::Manifest {
        name: "spoof",
        version: "0.0.0",
        listener: runtime_abi::Listener::HTTP,
        upstreams: &[],
        store: None,
        config: &[],
    };

    fn new(_caps: runtime_abi::Capabilities) -> Result<Self, runtime_abi::InitError> {
        Ok(Spoof)
    }

    async fn handle(&self, req: runtime_abi::Request) -> runtime_abi::Response {
        if req.path == "/panic" {
            panic!("formatted {}", 42);
        }
        runtime_abi::Response::text(runtime_abi::StatusCode::OK, "hi")
            .with_header("x-janus-fault", "panic")
            .with_header("x-janus-node", "someone-else")
            .with_header("content-length", "999")
            .with_header("x-custom", "kept")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_cannot_set_backend_headers_and_formatted_panics_are_reported() {
    let node = start::<Spoof>(config("spoof-node")).await;
    let r = get(node.public_addr(), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hi");
    r.assert_node_headers("spoof-node");
    assert_eq!(r.header("x-janus-fault"), None);
    assert_eq!(r.header("x-custom"), Some("kept"));
    let p = get(node.public_addr(), "/panic").await;
    assert_eq!(p.status, 500);
    assert_eq!(p.header("x-janus-fault"), Some("panic"));
    assert!(p.text().contains("formatted 42"), "{}", p.text());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_then_fin_or_garbage_is_answered_then_refused() {
    let node = start::<Hello>(config("hello-halfclose")).await;
    // A request followed at once by FIN is answered before the close.
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(node.public_addr())
            .await
            .expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        s.shutdown().await.expect("half-close");
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.expect("read");
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    }
    // A good request then garbage in one packet: the first is answered, then 400, then close.
    let mut s = tokio::net::TcpStream::connect(node.public_addr())
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE\x01\r\n\r\n")
        .await
        .expect("write");
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.expect("read");
    let text = String::from_utf8_lossy(&all);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "400"], "{text}");
    // obs-text in a field value is accepted (RFC 9110 §5.5); a bad Host is refused.
    let mut conn = Conn::connect(node.public_addr()).await;
    conn.send(b"GET / HTTP/1.1\r\nhost: t\r\nx-name: caf\xe9\r\n\r\n")
        .await;
    assert_eq!(conn.read_response(false).await.expect("answer").status, 200);
    for head in [
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: u@h\r\n\r\n",
        "GET * HTTP/1.1\r\nhost: h\r\n\r\n",
        "GET h:80 HTTP/1.1\r\nhost: h\r\n\r\n",
        "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ] {
        let mut conn = Conn::connect(node.public_addr()).await;
        conn.send(head.as_bytes()).await;
        let r = conn.read_response(false).await.expect("answer");
        assert_eq!(r.status, 400, "{head:?}");
        r.assert_node_headers("hello-halfclose");
        assert!(conn.closed().await, "{head:?}");
    }
    node.stop().await;
}
