//! The codec driven over real 127.0.0.1 TCP sockets: a blocking server loop (the same
//! feed/poll/respond/output contract backend-uk follows), talked to by curl (an independent
//! HTTP implementation; skipped with a message if curl is missing) and by our own client side.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use janus_http1::{ClientRequest, Event, Limits, Method, Response, ResponseParser, ServerConn};

/// What the server saw on one connection.
#[derive(Debug, Default)]
struct ConnLog {
    requests: Vec<String>,
    errors: Vec<u16>,
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Serves one connection until the codec says to close.
fn serve_conn(mut stream: TcpStream, limits: Limits) -> ConnLog {
    let start = Instant::now();
    let mut conn = ServerConn::new(limits);
    let mut log = ConnLog::default();
    let mut buf = vec![0u8; 4096];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let took = conn.feed(&pending);
        pending.drain(..took);
        while let Some(ev) = conn.poll(now_ms(start)) {
            match ev {
                Event::Request(req) => {
                    let summary = format!(
                        "{} {} q={} v={:?} body={} te={} expect={}",
                        req.method,
                        req.path,
                        req.query.as_deref().unwrap_or("-"),
                        req.version,
                        String::from_utf8_lossy(&req.body),
                        req.headers.get_str("transfer-encoding").unwrap_or("-"),
                        req.headers.get_str("expect").unwrap_or("-"),
                    );
                    let resp = Response::text(200, &format!("{summary}\n"))
                        .with_header("X-Seen", req.path.as_bytes());
                    conn.respond(&resp).expect("respond");
                    log.requests.push(summary);
                }
                Event::Error(e) => log.errors.push(e.status()),
                Event::IdleTimeout => {}
            }
        }
        if !conn.output().is_empty() {
            let out = conn.take_output();
            if stream.write_all(&out).is_err() {
                return log;
            }
        }
        if conn.should_close() {
            return log;
        }
        // Sleep until input or the codec's next deadline.
        let wait = conn
            .next_deadline()
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms(start)).max(1)));
        stream.set_read_timeout(wait).expect("set timeout");
        match stream.read(&mut buf) {
            Ok(0) => conn.feed_eof(),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return log,
        }
    }
}

/// A server on an ephemeral port serving connections one by one; logs go to the channel.
fn start_server(limits: Limits) -> (u16, mpsc::Receiver<ConnLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            if tx.send(serve_conn(stream, limits)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

fn curl_available() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP: curl not found; the curl interop tests do nothing");
    }
    ok
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "/dev/stderr"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn next_log(rx: &mpsc::Receiver<ConnLog>) -> ConnLog {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("server finished a connection")
}

#[test]
fn curl_interop() {
    if !curl_available() {
        return;
    }
    let (port, rx) = start_server(Limits::DEFAULT);
    let base = format!("http://127.0.0.1:{port}");

    // GET with a query; two URLs on one connection (curl reuses it: keep-alive works).
    let (body, headers) = curl(&[&format!("{base}/a?x=1"), &format!("{base}/b")]);
    assert!(body.contains("GET /a q=x=1 v=Http11"), "{body}");
    assert!(body.contains("GET /b q=-"), "{body}");
    assert!(headers.contains("HTTP/1.1 200 OK"), "{headers}");
    let log = next_log(&rx);
    assert_eq!(
        log.requests.len(),
        2,
        "both requests on one connection: {log:?}"
    );

    // POST with a body (Content-Length).
    let (body, _) = curl(&["--data-binary", "hello world", &format!("{base}/post")]);
    assert!(
        body.contains("POST /post q=- v=Http11 body=hello world te=-"),
        "{body}"
    );
    next_log(&rx);

    // Chunked upload.
    let (body, _) = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "chunky",
        &format!("{base}/chunked"),
    ]);
    assert!(body.contains("body=chunky te=chunked"), "{body}");
    next_log(&rx);

    // Expect: 100-continue: curl waits for our interim response before sending the body.
    let (body, headers) = curl(&[
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "5",
        "--data-binary",
        "after-100",
        &format!("{base}/expect"),
    ]);
    assert!(body.contains("body=after-100"), "{body}");
    assert!(headers.contains("HTTP/1.1 100 Continue"), "{headers}");
    next_log(&rx);

    // HEAD: headers with the length the body would have, no body.
    let (body, headers) = curl(&["-I", &format!("{base}/head")]);
    assert!(headers.contains("Content-Length: "), "{headers}");
    assert!(
        body.contains("Content-Length: ") && !body.contains("HEAD /head q="),
        "{body}"
    );
    next_log(&rx);

    // HTTP/1.0: the server closes after the response.
    let (body, headers) = curl(&["--http1.0", &format!("{base}/ten")]);
    assert!(body.contains("GET /ten q=- v=Http10"), "{body}");
    assert!(headers.contains("Connection: close"), "{headers}");
    next_log(&rx);
}

fn raw_exchange(port: u16, input: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(input).expect("write");
    let mut out = Vec::new();
    // The server closes the connection after an error response: read to EOF.
    s.read_to_end(&mut out).expect("read to close");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn raw_socket_errors_close_the_connection() {
    let limits = Limits {
        head_timeout_ms: 200,
        ..Limits::DEFAULT
    };
    let (port, rx) = start_server(limits);
    let out = raw_exchange(port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(
        out.contains("both Content-Length and Transfer-Encoding present"),
        "{out}"
    );
    assert_eq!(next_log(&rx).errors, [400]);

    // A head that never completes: 408 once the codec's deadline passes (the loop sleeps until
    // `next_deadline`, no busy waiting).
    let out = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: h\r\n");
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    assert_eq!(next_log(&rx).errors, [408]);

    // Pipelined requests in one write, answered in order, then a close.
    let out = raw_exchange(
        port,
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    let seen: Vec<_> = out
        .match_indices("X-Seen: /")
        .map(|(i, _)| &out[i + 9..i + 10])
        .collect();
    assert_eq!(seen, ["1", "2", "3"], "{out}");
    assert!(out.contains("Connection: close\r\n"));
    assert_eq!(next_log(&rx).requests.len(), 3);
}

#[test]
fn our_client_against_our_server_over_tcp() {
    let (port, rx) = start_server(Limits::DEFAULT);
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let start = Instant::now();
    for (i, method) in [Method::Post, Method::Get, Method::Head]
        .into_iter()
        .enumerate()
    {
        let mut out = Vec::new();
        ClientRequest::new(
            method.clone(),
            &format!("127.0.0.1:{port}"),
            &format!("/c{i}"),
        )
        .with_body(if method == Method::Post {
            b"payload".to_vec()
        } else {
            Vec::new()
        })
        .encode(&mut out)
        .expect("encode");
        s.write_all(&out).expect("write");
        let mut parser = ResponseParser::new(Limits::DEFAULT, &method);
        let mut buf = [0u8; 1024];
        let resp = loop {
            if let Some(r) = parser.poll(now_ms(start)) {
                break r.expect("valid response");
            }
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                parser.feed_eof();
            } else {
                assert_eq!(parser.feed(&buf[..n]), n);
            }
        };
        assert_eq!(resp.status, 200);
        assert!(resp.keep_alive);
        let body = String::from_utf8_lossy(&resp.body);
        match method {
            Method::Post => assert!(
                body.contains("POST /c0 q=- v=Http11 body=payload"),
                "{body}"
            ),
            Method::Get => assert!(body.contains("GET /c1"), "{body}"),
            _ => assert!(body.is_empty(), "HEAD response has no body: {body}"),
        }
        assert_eq!(
            resp.headers.get_str("x-seen"),
            Some(format!("/c{i}").as_str())
        );
    }
    drop(s);
    assert_eq!(next_log(&rx).requests.len(), 3);
}
