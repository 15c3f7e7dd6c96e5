//! One HTTP behaviour on both builds: the same request bytes go over real sockets to a unix node (the
//! built binary, a child process) and to a uk node (the image under QEMU), and both must give the same
//! status classes, in the same order, and the same connection outcome (closed or still open), and
//! that outcome must be the one docs/HTTP.md states. One node of each build serves the whole table.
//!
//! A case is raw bytes, optionally followed at once by FIN (a half-close). The answers are read
//! until the expected number arrived, then the connection outcome is taken: for a case that expects
//! a close, the node must close within the bound; for one that expects the connection to stay open,
//! a probe request must be answered on it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use janus::{Flavor, NodeOpts};
use janus_integration::{Node, artifact};

/// What the table expects of a case.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// These statuses (compared by class), then the connection closed (`true`) or open (`false`).
    Answers(&'static [u16], bool),
    /// Any verdict, as long as both builds give the same one.
    Same,
}

struct Case {
    class: &'static str,
    name: String,
    bytes: Vec<u8>,
    fin: bool,
    expect: Expect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    statuses: Vec<u16>,
    closed: bool,
}

impl Outcome {
    fn classes(&self) -> Vec<u16> {
        self.statuses.iter().map(|s| s / 100).collect()
    }
}

const PROBE: &[u8] = b"GET / HTTP/1.1\r\nHost: probe\r\n\r\n";
const BOUND: Duration = Duration::from_secs(5);

/// Parses complete responses at the start of `buf` (1xx interim answers are skipped); returns their
/// statuses and the bytes they used.
fn parse_responses(buf: &[u8]) -> (Vec<u16>, usize) {
    let mut statuses = Vec::new();
    let mut used = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(&buf[used..]) else {
            return (statuses, used);
        };
        let status = resp.code.unwrap_or(0);
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            used += n;
            continue;
        }
        if buf.len() < used + n + len {
            return (statuses, used);
        }
        used += n + len;
        statuses.push(status);
    }
}

/// Sends one case to `addr` and observes the answers and the connection outcome. `want` is how
/// many answers to wait for and whether to expect a close (the bound is the same either way; a node
/// that gives fewer answers or does something else is seen as such).
fn exchange(addr: SocketAddr, case: &Case, want: (usize, bool)) -> Outcome {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).ok();
    let _ = s.write_all(&case.bytes);
    if case.fin {
        let _ = s.shutdown(Shutdown::Write);
    }
    let deadline = Instant::now() + BOUND;
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 16384];
    // Answers, and for a case expected to close (or a half-closed one) the end of the stream.
    let read_until = |s: &mut TcpStream,
                      buf: &mut Vec<u8>,
                      statuses: &mut Vec<u16>,
                      chunk: &mut [u8],
                      want_n: usize,
                      want_eof: bool|
     -> bool {
        loop {
            let (got, used) = parse_responses(buf);
            if !got.is_empty() {
                statuses.extend(got);
                buf.drain(..used);
            }
            if statuses.len() >= want_n && !want_eof {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s.set_read_timeout(Some(left.min(Duration::from_millis(250))))
                .ok();
            match s.read(chunk) {
                Ok(0) => return true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
    };
    let (want_n, want_close) = want;
    if read_until(
        &mut s,
        &mut buf,
        &mut statuses,
        &mut chunk,
        want_n,
        want_close || case.fin,
    ) {
        closed = true;
        let (got, _) = parse_responses(&buf);
        statuses.extend(got);
    }
    if !closed && !case.fin {
        // Still open? A probe must be answered on it.
        let before = statuses.len();
        if s.write_all(PROBE).is_err() {
            closed = true;
        } else {
            closed = read_until(
                &mut s,
                &mut buf,
                &mut statuses,
                &mut chunk,
                before + 1,
                false,
            ) && statuses.len() == before;
            if !closed && statuses.len() > before {
                statuses.pop();
            } else {
                closed = true;
            }
        }
    }
    Outcome { statuses, closed }
}

fn h(host_line: &str) -> String {
    format!("GET / HTTP/1.1\r\n{host_line}\r\n\r\n")
}

const GET: &str = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
const JSON: &str = r#"{"name":"n","values":[1,2]}"#;

fn post_json(extra: &str) -> String {
    format!(
        "POST /json HTTP/1.1\r\nHost: t\r\n{extra}Content-Length: {}\r\n\r\n{JSON}",
        JSON.len()
    )
}

fn chunked(extra: &str, body: &str) -> String {
    format!("POST /json HTTP/1.1\r\nHost: t\r\n{extra}Transfer-Encoding: chunked\r\n\r\n{body}")
}

fn chunked_json() -> String {
    format!("{:x}\r\n{JSON}\r\n0\r\n\r\n", JSON.len())
}

#[allow(clippy::too_many_lines)]
fn table() -> Vec<Case> {
    use Expect::{Answers, Same};
    let mut cases = Vec::new();
    let mut add = |class: &'static str, name: &str, bytes: Vec<u8>, fin: bool, expect: Expect| {
        cases.push(Case {
            class,
            name: name.to_string(),
            bytes,
            fin,
            expect,
        });
    };
    let ok = Answers(&[200], false);
    let bad = Answers(&[400], true);

    // Host rules (RFC 9112 §3.2, RFC 9110 §7.2).
    for (name, line, expect) in [
        ("no host", "X-A: 1", bad),
        ("host twice, same", "Host: a\r\nHost: a", bad),
        ("host twice, different", "Host: a\r\nHost: b", bad),
        ("host twice, one empty", "Host: a\r\nHost: ", bad),
        ("space", "Host: a b", bad),
        ("userinfo", "Host: user@h", bad),
        ("userinfo and password", "Host: u:p@h:80", bad),
        ("path", "Host: h/path", bad),
        ("query", "Host: h?q", bad),
        ("fragment", "Host: h#f", bad),
        ("two ports", "Host: h:80:80", bad),
        ("port not digits", "Host: h:8x", bad),
        ("port too long", "Host: h:1234567", bad),
        ("unclosed ip-literal", "Host: [::1", bad),
        ("empty ip-literal", "Host: []", bad),
        ("after ip-literal", "Host: [::1]x", bad),
        ("tab inside", "Host: h\tx", bad),
        ("obs-text", "Host: caf\u{e9}", bad),
        ("bad pct", "Host: a%4", bad),
        ("bad pct digits", "Host: a%zz", bad),
        ("comma list", "Host: a, b", bad),
        ("ip-literal with port", "Host: [::1]:8080", ok),
        ("ipv4 with port", "Host: 127.0.0.1:8080", ok),
        ("name", "Host: example.com", ok),
        ("empty", "Host: ", ok),
        ("surrounding whitespace", "Host:    h   ", ok),
        ("name in capitals", "HOST: h", ok),
        ("pct-encoded", "Host: a%41", ok),
        ("unreserved", "Host: a_b-c.d~e", ok),
        ("empty port", "Host: h:", ok),
        ("port 0", "Host: h:0", ok),
        ("ipvfuture", "Host: [v1.fe]", ok),
        ("sub-delims", "Host: a!$&'()*+,;=b", ok),
        ("space before colon", "Host : h", bad),
        ("control byte", "Host: \u{1}h", bad),
    ] {
        // Written byte for byte (obs-text as one byte, not UTF-8).
        let bytes: Vec<u8> = h(line)
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
            .collect();
        add("host", name, bytes, false, expect);
    }
    add(
        "host",
        "http/1.0 without host",
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        false,
        Answers(&[200], true),
    );
    add(
        "host",
        "http/1.0 with two hosts",
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
        false,
        bad,
    );
    add(
        "host",
        "http/1.0 with a bad host",
        b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n".to_vec(),
        false,
        bad,
    );
    add(
        "host",
        "absolute-form without host",
        b"GET http://h/ HTTP/1.1\r\n\r\n".to_vec(),
        false,
        bad,
    );

    // Request-target forms (RFC 9112 §3.2).
    let long = |n: usize| format!("/{}", "a".repeat(n));
    for (name, line, expect) in [
        ("origin with query", "GET /echo?msg=hi".to_string(), ok),
        ("absolute http", "GET http://h/echo?msg=hi".to_string(), ok),
        ("absolute https", "GET https://h/".to_string(), ok),
        (
            "absolute scheme in capitals",
            "GET HTTP://H/".to_string(),
            ok,
        ),
        ("absolute without path", "GET http://h".to_string(), ok),
        (
            "absolute ip-literal",
            "GET http://[::1]:80/".to_string(),
            ok,
        ),
        ("absolute other scheme", "GET ftp://h/".to_string(), bad),
        ("absolute userinfo", "GET http://u@h/".to_string(), bad),
        ("absolute empty authority", "GET http:///x".to_string(), bad),
        ("absolute bad port", "GET http://h:123456/".to_string(), bad),
        ("asterisk with GET", "GET *".to_string(), bad),
        ("asterisk with HEAD", "HEAD *".to_string(), bad),
        ("asterisk with DELETE", "DELETE *".to_string(), bad),
        (
            "asterisk with OPTIONS",
            "OPTIONS *".to_string(),
            Answers(&[404], false),
        ),
        ("authority-form", "GET h:80".to_string(), bad),
        (
            "authority-form name",
            "GET example.com:443".to_string(),
            bad,
        ),
        ("CONNECT authority", "CONNECT h:443".to_string(), bad),
        ("CONNECT origin", "CONNECT /x".to_string(), bad),
        ("no leading slash", "GET echo".to_string(), bad),
        ("query only", "GET ?x=1".to_string(), bad),
        ("fragment", "GET /a#frag".to_string(), bad),
        ("double space", "GET  /".to_string(), bad),
        ("space in target", "GET / x".to_string(), bad),
        (
            "pct-encoded",
            "GET /%7Ex".to_string(),
            Answers(&[404], false),
        ),
        (
            "double slash",
            "GET //x".to_string(),
            Answers(&[404], false),
        ),
        (
            "dot segments",
            "GET /a/../".to_string(),
            Answers(&[404], false),
        ),
        (
            "unknown path",
            "GET /nope".to_string(),
            Answers(&[404], false),
        ),
        ("question marks", "GET /echo?msg=a?b".to_string(), ok),
        (
            "long target",
            format!("GET {}", long(7000)),
            Answers(&[404], false),
        ),
        (
            "target over the head limit",
            format!("GET {}", long(9000)),
            Answers(&[431], true),
        ),
        ("tab in target", "GET /\t".to_string(), Same),
        ("DEL in target", "GET /\u{7f}".to_string(), Same),
    ] {
        add(
            "target",
            name,
            format!("{line} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes(),
            false,
            expect,
        );
    }
    let mut obs_target = b"GET /caf".to_vec();
    obs_target.extend_from_slice(b"\xe9 HTTP/1.1\r\nHost: h\r\n\r\n");
    add("target", "obs-text in target", obs_target, false, Same);

    // Framing: Transfer-Encoding lists, Content-Length, both (RFC 9112 §6).
    let json_body = chunked_json();
    for (name, te, expect) in [
        ("chunked", "chunked", ok),
        ("chunked in capitals", "Chunked", ok),
        ("chunked with spaces", "  chunked  ", ok),
        ("chunked, chunked", "chunked, chunked", bad),
        ("gzip, chunked", "gzip, chunked", bad),
        ("identity, chunked", "identity, chunked", bad),
        ("gzip", "gzip", bad),
        ("identity", "identity", bad),
        ("chunked, gzip", "chunked, gzip", bad),
        ("leading comma", ",chunked", bad),
        ("empty", "", bad),
        ("not a coding", "x-chunked", bad),
        ("obs-text", "chunked\u{e9}", bad),
        ("chunked with a parameter", "chunked;q=1", Same),
    ] {
        let bytes: Vec<u8> = chunked("", &json_body)
            .replacen(
                "Transfer-Encoding: chunked",
                &format!("Transfer-Encoding: {te}"),
                1,
            )
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("latin-1"))
            .collect();
        add("framing", name, bytes, false, expect);
    }
    let framing: Vec<(&str, String, Expect)> = vec![
        (
            "te twice on two lines",
            chunked("Transfer-Encoding: chunked\r\n", &json_body),
            bad,
        ),
        (
            "te and cl",
            chunked("Content-Length: 5\r\n", &json_body),
            bad,
        ),
        (
            "cl and te, cl first",
            format!(
                "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n{json_body}"
            ),
            bad,
        ),
        (
            "te and cl 0",
            chunked("Content-Length: 0\r\n", &json_body),
            bad,
        ),
        (
            "te in http/1.0",
            format!("POST /json HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n{json_body}"),
            bad,
        ),
        (
            "te folded",
            chunked("", &json_body).replacen(
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: gzip\r\n chunked",
                1,
            ),
            bad,
        ),
        (
            "te space before colon",
            chunked("", &json_body).replacen("Transfer-Encoding:", "Transfer-Encoding :", 1),
            bad,
        ),
        ("cl", post_json(""), ok),
        (
            "cl list of equal values",
            post_json("").replacen(
                &format!("Content-Length: {}", JSON.len()),
                &format!("Content-Length: {0}, {0}", JSON.len()),
                1,
            ),
            ok,
        ),
        (
            "cl twice equal",
            post_json(&format!("Content-Length: {}\r\n", JSON.len())),
            ok,
        ),
        (
            "cl twice different",
            post_json(&format!("Content-Length: {}\r\n", JSON.len() + 1)),
            bad,
        ),
        (
            "cl list different",
            post_json("").replacen(
                &format!("Content-Length: {}", JSON.len()),
                &format!("Content-Length: {0}, {1}", JSON.len(), JSON.len() + 1),
                1,
            ),
            bad,
        ),
        (
            "cl not a number",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n".into(),
            bad,
        ),
        (
            "cl negative",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n".into(),
            bad,
        ),
        (
            "cl plus sign",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nabcde".into(),
            bad,
        ),
        (
            "cl hex",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 0x10\r\n\r\n".into(),
            bad,
        ),
        (
            "cl with inner space",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 1 0\r\n\r\n".into(),
            bad,
        ),
        (
            "cl empty",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: \r\n\r\n".into(),
            bad,
        ),
        (
            "cl overflow",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\n".into(),
            bad,
        ),
        (
            "cl over the body limit",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n".into(),
            Answers(&[413], true),
        ),
        (
            "cl space before colon",
            "POST /json HTTP/1.1\r\nHost: t\r\nContent-Length : 2\r\n\r\n{}".into(),
            bad,
        ),
        (
            "chunk size not hex",
            chunked("", "zz\r\nab\r\n0\r\n\r\n"),
            bad,
        ),
        (
            "chunk size overflow",
            chunked("", "ffffffffffffffffff\r\nab\r\n0\r\n\r\n"),
            Same,
        ),
        (
            "chunk extension",
            chunked(
                "",
                &format!("{:x};ext=1\r\n{JSON}\r\n0\r\n\r\n", JSON.len()),
            ),
            ok,
        ),
        (
            "chunk data without crlf",
            chunked("", &format!("{:x}\r\n{JSON}XX0\r\n\r\n", JSON.len())),
            bad,
        ),
        (
            "chunk line with bare lf",
            chunked("", &format!("{:x}\n{JSON}\r\n0\r\n\r\n", JSON.len())),
            bad,
        ),
        (
            "chunked with trailers",
            chunked(
                "",
                &format!("{:x}\r\n{JSON}\r\n0\r\nT: 1\r\n\r\n", JSON.len()),
            ),
            ok,
        ),
        (
            "chunked empty body",
            chunked("", "0\r\n\r\n"),
            Answers(&[400], false),
        ),
        ("chunk over the body limit", chunked("", "200000\r\n"), Same),
        (
            "expect 100-continue with the body",
            post_json("Expect: 100-continue\r\n"),
            ok,
        ),
        (
            "expect something else",
            post_json("Expect: teapot\r\n"),
            Answers(&[417], true),
        ),
    ];
    for (name, text, expect) in framing {
        add("framing", name, text.into_bytes(), false, expect);
    }

    // Field values: obs-text allowed (RFC 9110 §5.5), controls and obs-fold refused (RFC 9112 §5.2).
    for (name, raw, expect) in [
        ("obs-text latin-1", &b"X-A: caf\xe9"[..], ok),
        ("obs-text high bytes", b"X-A: \x80\xff", ok),
        ("obs-text nbsp", b"X-A: a\xa0b", ok),
        ("utf-8", b"User-Agent: \xe2\x9c\x93 ok", ok),
        ("obs-text first", b"X-A: \xffb", ok),
        ("obs-text in traceparent", b"traceparent: \xff", ok),
        (
            "obs-text in x-janus-trace-id",
            b"x-janus-trace-id: \xfe\xfe",
            ok,
        ),
        ("no space after colon", b"X-A:v", ok),
        ("tabs around value", b"X-A:\tv\t", ok),
        ("empty value", b"X-A:", ok),
        ("NUL", b"X-A: a\x00b", bad),
        ("CR inside", b"X-A: a\rb", bad),
        ("obs-fold", b"X-A: a\r\n b", bad),
        ("obs-fold with tab", b"X-A: a\r\n\tb", bad),
        ("obs-text in name", b"X\xe9: v", bad),
        ("empty name", b": v", bad),
        ("space in name", b"X A: v", bad),
        ("no colon", b"X-A v", bad),
        ("control byte", b"X-A: \x01", Same),
        ("DEL", b"X-A: a\x7fb", Same),
    ] {
        let mut bytes = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
        bytes.extend_from_slice(raw);
        bytes.extend_from_slice(b"\r\n\r\n");
        add("fields", name, bytes, false, expect);
    }
    add(
        "fields",
        "bare LF line endings",
        b"GET / HTTP/1.1\nHost: t\n\n".to_vec(),
        false,
        Same,
    );
    let many = |n: usize| {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
        for i in 1..n {
            s.push_str(&format!("h{i}: v\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    add("fields", "64 fields", many(64), false, ok);
    add(
        "fields",
        "65 fields",
        many(65),
        false,
        Answers(&[431], true),
    );
    let sized = |n: usize| {
        let base = "GET / HTTP/1.1\r\nHost: t\r\nX-Fill: \r\n\r\n".len();
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Fill: {}\r\n\r\n",
            "f".repeat(n - base)
        )
        .into_bytes()
    };
    add("fields", "head of 8192 bytes", sized(8192), false, ok);
    add(
        "fields",
        "head of 8193 bytes",
        sized(8193),
        false,
        Answers(&[431], true),
    );

    // Versions and methods (RFC 9112 §2.3, §9.3).
    for (name, text, expect) in [
        (
            "http/1.0",
            "GET / HTTP/1.0\r\nHost: t\r\n\r\n",
            Answers(&[200], true),
        ),
        (
            "http/1.0 keep-alive",
            "GET / HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n",
            ok,
        ),
        (
            "http/2.0",
            "GET / HTTP/2.0\r\nHost: t\r\n\r\n",
            Answers(&[505], true),
        ),
        (
            "http/1.2",
            "GET / HTTP/1.2\r\nHost: t\r\n\r\n",
            Answers(&[505], true),
        ),
        (
            "http/3",
            "GET / HTTP/3\r\nHost: t\r\n\r\n",
            Answers(&[505], true),
        ),
        (
            "version in lower case",
            "GET / http/1.1\r\nHost: t\r\n\r\n",
            bad,
        ),
        (
            "version with junk",
            "GET / HTTP/1.1x\r\nHost: t\r\n\r\n",
            Same,
        ),
        ("no version", "GET /\r\nHost: t\r\n\r\n", Same),
        (
            "method in lower case",
            "get / HTTP/1.1\r\nHost: t\r\n\r\n",
            Answers(&[404], false),
        ),
        (
            "unknown method",
            "PURGE / HTTP/1.1\r\nHost: t\r\n\r\n",
            Same,
        ),
        ("DELETE", "DELETE / HTTP/1.1\r\nHost: t\r\n\r\n", Same),
        (
            "method not a token",
            "G@T / HTTP/1.1\r\nHost: t\r\n\r\n",
            bad,
        ),
        (
            "extra field in request line",
            "GET / HTTP/1.1 x\r\nHost: t\r\n\r\n",
            Same,
        ),
        (
            "connection close",
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Answers(&[200], true),
        ),
        (
            "connection list with close",
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, close\r\n\r\n",
            Answers(&[200], true),
        ),
        (
            "upgrade asked",
            "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            Same,
        ),
        (
            "leading empty lines",
            "\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
            ok,
        ),
        (
            "http/1.0 post",
            "POST /json HTTP/1.0\r\nContent-Length: 27\r\n\r\n{\"name\":\"n\",\"values\":[1,2]}",
            Answers(&[200], true),
        ),
        (
            "http/1.0 ignores expect",
            "POST /json HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 27\r\n\r\n{\"name\":\"n\",\"values\":[1,2]}",
            Answers(&[200], true),
        ),
    ] {
        add("version", name, text.as_bytes().to_vec(), false, expect);
    }

    // Pipelined requests, and a valid request followed by garbage in the same packet.
    let two = |second: &str| format!("{GET}{second}").into_bytes();
    for (name, bytes, expect) in [
        ("two gets", two(GET), Answers(&[200, 200], false)),
        (
            "three gets",
            format!("{GET}{GET}{GET}").into_bytes(),
            Answers(&[200, 200, 200], false),
        ),
        (
            "then garbage",
            two("GARBAGE\r\n\r\n"),
            Answers(&[200, 400], true),
        ),
        (
            "then binary garbage",
            two("\u{0}\u{1}\u{2}\r\n\r\n"),
            Answers(&[200, 400], true),
        ),
        (
            "then no host",
            two("GET / HTTP/1.1\r\n\r\n"),
            Answers(&[200, 400], true),
        ),
        (
            "then a bad host",
            two("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            Answers(&[200, 400], true),
        ),
        (
            "then te and cl",
            two(&chunked("Content-Length: 3\r\n", "0\r\n\r\n")),
            Answers(&[200, 400], true),
        ),
        (
            "then te list",
            two(&chunked("", "0\r\n\r\n").replace("chunked", "gzip, chunked")),
            Answers(&[200, 400], true),
        ),
        (
            "then asterisk",
            two("GET * HTTP/1.1\r\nHost: t\r\n\r\n"),
            Answers(&[200, 400], true),
        ),
        (
            "then authority-form",
            two("GET h:80 HTTP/1.1\r\nHost: t\r\n\r\n"),
            Answers(&[200, 400], true),
        ),
        (
            "then http/2.0",
            two("GET / HTTP/2.0\r\nHost: t\r\n\r\n"),
            Answers(&[200, 505], true),
        ),
        (
            "then a bad field line",
            two("GET / HTTP/1.1\r\nHost: t\r\nbad line\r\n\r\n"),
            Answers(&[200, 400], true),
        ),
        (
            "then an oversized head",
            two(&format!(
                "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
                "x".repeat(9000)
            )),
            Answers(&[200, 431], true),
        ),
        (
            "then expect teapot",
            two("GET / HTTP/1.1\r\nHost: t\r\nExpect: teapot\r\n\r\n"),
            Answers(&[200, 417], true),
        ),
        (
            "then a body over the limit",
            two("POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n"),
            Answers(&[200, 413], true),
        ),
        (
            "404 then garbage",
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE\r\n\r\n".to_vec(),
            Answers(&[404, 400], true),
        ),
        (
            "garbage between gets",
            format!("{GET}GARBAGE\r\n\r\n{GET}").into_bytes(),
            Answers(&[200, 400], true),
        ),
        (
            "close in the middle",
            format!("{GET}GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n{GET}")
                .into_bytes(),
            Answers(&[200, 200], true),
        ),
        (
            "post then get",
            format!("{}{GET}", post_json("")).into_bytes(),
            Answers(&[200, 200], false),
        ),
        (
            "chunked post then get",
            format!("{}{GET}", chunked("", &json_body)).into_bytes(),
            Answers(&[200, 200], false),
        ),
        (
            "empty lines between",
            format!("{GET}\r\n\r\n{GET}").into_bytes(),
            Answers(&[200, 200], false),
        ),
        (
            "http/1.0 then get",
            format!("GET / HTTP/1.0\r\n\r\n{GET}").into_bytes(),
            Answers(&[200], true),
        ),
        (
            "http/1.0 keep-alive then get",
            format!("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n{GET}").into_bytes(),
            Answers(&[200, 200], false),
        ),
        (
            "ten gets",
            GET.repeat(10).into_bytes(),
            Answers(&[200; 10], false),
        ),
        (
            "twenty gets",
            GET.repeat(20).into_bytes(),
            Answers(&[200; 20], false),
        ),
    ] {
        add("pipeline", name, bytes, false, expect);
    }

    // A request followed at once by FIN (half-close) is answered, then the connection closes.
    for (name, bytes, expect) in [
        ("get", GET.as_bytes().to_vec(), Answers(&[200], true)),
        (
            "two gets",
            GET.repeat(2).into_bytes(),
            Answers(&[200, 200], true),
        ),
        (
            "twenty gets",
            GET.repeat(20).into_bytes(),
            Answers(&[200; 20], true),
        ),
        ("post", post_json("").into_bytes(), Answers(&[200], true)),
        (
            "chunked post",
            chunked("", &json_body).into_bytes(),
            Answers(&[200], true),
        ),
        (
            "404",
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            Answers(&[404], true),
        ),
        (
            "connection close",
            b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
            Answers(&[200], true),
        ),
        (
            "http/1.0",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            Answers(&[200], true),
        ),
        (
            "leading empty line",
            format!("\r\n{GET}").into_bytes(),
            Answers(&[200], true),
        ),
        ("nothing", Vec::new(), Answers(&[], true)),
        ("partial head", b"GET / HT".to_vec(), Answers(&[], true)),
        (
            "head without its empty line",
            b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec(),
            Answers(&[], true),
        ),
        (
            "get then partial head",
            format!("{GET}GET / HT").into_bytes(),
            Answers(&[200], true),
        ),
        (
            "partial body",
            b"POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            bad,
        ),
        (
            "partial chunked body",
            chunked("", "5\r\nab").into_bytes(),
            bad,
        ),
        (
            "get then garbage",
            two("GARBAGE\r\n\r\n"),
            Answers(&[200, 400], true),
        ),
        (
            "get then te and cl",
            two(&chunked("Content-Length: 3\r\n", "0\r\n\r\n")),
            Answers(&[200, 400], true),
        ),
        ("no host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), bad),
        (
            "expect without the body",
            b"POST /json HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
                .to_vec(),
            bad,
        ),
        (
            "bad request in the middle",
            format!("{GET}GET * HTTP/1.1\r\nHost: t\r\n\r\n{GET}").into_bytes(),
            Answers(&[200, 400], true),
        ),
    ] {
        add("half-close", name, bytes, true, expect);
    }
    cases
}

fn start(flavor: Flavor) -> Node {
    let a = artifact("hello", flavor);
    Node::start(&a, NodeOpts::default()).expect("node starts")
}

#[test]
fn unix_and_uk_give_every_request_the_same_verdict() {
    let cases = table();
    assert!(cases.len() >= 150, "{} cases", cases.len());
    for class in [
        "host",
        "target",
        "framing",
        "fields",
        "version",
        "pipeline",
        "half-close",
    ] {
        assert!(
            cases.iter().filter(|c| c.class == class).count() >= 10,
            "{class}"
        );
    }
    let (unix, uk) = std::thread::scope(|s| {
        let unix = s.spawn(|| start(Flavor::Unix));
        let uk = s.spawn(|| start(Flavor::Uk));
        (unix.join().expect("unix"), uk.join().expect("uk"))
    });
    let mut failures = Vec::new();
    for case in &cases {
        let want = match case.expect {
            Expect::Answers(statuses, closed) => (statuses.len(), closed),
            Expect::Same => (1, true),
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| exchange(unix.listen, case, want));
            let b = s.spawn(|| exchange(uk.listen, case, want));
            (
                a.join().expect("unix exchange"),
                b.join().expect("uk exchange"),
            )
        });
        let label = format!("[{}] {}", case.class, case.name);
        if a.classes() != b.classes() || a.closed != b.closed {
            failures.push(format!("{label}: unix {a:?} != uk {b:?}"));
            continue;
        }
        if let Expect::Answers(statuses, closed) = case.expect {
            let want: Vec<u16> = statuses.iter().map(|s| s / 100).collect();
            if a.classes() != want || a.closed != closed {
                failures.push(format!(
                    "{label}: both builds gave {a:?}, the policy says {statuses:?} closed={closed}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
