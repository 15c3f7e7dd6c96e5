//! Server-side behaviour: every status, pipelining, split feeds, chunked, limits, smuggling.

mod common;

use common::*;
use janus_http1::{Error, Event, Limits, Method, Response, ServerConn, Version};

const L: Limits = Limits::DEFAULT;

fn one_error(input: &[u8]) -> (Error, Outcome) {
    let out = run_whole(L, input, false);
    let errs = errors(&out.events);
    assert_eq!(
        errs.len(),
        1,
        "expected one error for {:?}: {:?}",
        String::from_utf8_lossy(input),
        out.events
    );
    // The error is always the last event.
    assert!(matches!(out.events.last(), Some(Event::Error(_))));
    (errs[0], out)
}

fn assert_status(input: &[u8], status: u16) -> Error {
    let (e, out) = one_error(input);
    assert_eq!(
        e.status(),
        status,
        "error {e:?} for {:?}",
        String::from_utf8_lossy(input)
    );
    let text = String::from_utf8_lossy(&out.output);
    let line = format!("HTTP/1.1 {status} ");
    assert!(
        text.starts_with(&line) || text.contains(&format!("\r\n\r\n{line}")),
        "output {text:?}"
    );
    assert!(
        text.contains("Connection: close\r\n"),
        "error responses close: {text:?}"
    );
    assert!(out.should_close, "connection must close after an error");
    // Same result byte by byte.
    let bytewise = run_bytewise(L, input, false);
    assert_eq!(errors(&bytewise.events), vec![e], "byte-by-byte differs");
    e
}

#[test]
fn simple_get() {
    let out = run_whole(
        L,
        b"GET /kv/a?x=1&y=2 HTTP/1.1\r\nHost: h\r\nX-Custom:  Value \r\n\r\n",
        false,
    );
    let reqs = requests(&out.events);
    assert_eq!(reqs.len(), 1);
    let r = reqs[0];
    assert_eq!(r.method, Method::Get);
    assert_eq!(r.target, "/kv/a?x=1&y=2");
    assert_eq!(r.path, "/kv/a");
    assert_eq!(r.query.as_deref(), Some("x=1&y=2"));
    assert_eq!(r.version, Version::Http11);
    assert_eq!(r.headers.get("x-custom"), Some(&b"Value"[..]));
    assert_eq!(r.headers.get_str("X-CUSTOM"), Some("Value"));
    assert_eq!(r.headers.get("host"), Some(&b"h"[..]));
    assert!(r.headers.get("missing").is_none());
    assert!(r.body.is_empty());
    assert!(r.keep_alive);
    assert!(!r.is_head());
    assert!(!out.should_close);
    assert_eq!(
        out.output,
        b"HTTP/1.1 200 OK\r\nX-Path: /kv/a\r\nContent-Length: 0\r\n\r\n".to_vec()
    );
}

#[test]
fn empty_query_and_no_query() {
    let out = run_whole(
        L,
        b"GET /a? HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
        false,
    );
    let reqs = requests(&out.events);
    assert_eq!(reqs[0].query.as_deref(), Some(""));
    assert_eq!(reqs[1].query, None);
}

#[test]
fn absolute_form_and_asterisk_targets() {
    let out = run_whole(
        L,
        b"GET http://example.com:8080/p/q?z HTTP/1.1\r\nHost: example.com\r\n\r\n\
          GET HTTP://h HTTP/1.1\r\nHost: h\r\n\r\n\
          OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        false,
    );
    let reqs = requests(&out.events);
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        (reqs[0].path.as_str(), reqs[0].query.as_deref()),
        ("/p/q", Some("z"))
    );
    assert_eq!(reqs[1].path, "/");
    assert_eq!(reqs[2].path, "*");
    assert_eq!(reqs[2].method, Method::Options);
}

#[test]
fn invalid_targets_are_400() {
    for input in [
        &b"GET * HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET a/b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http:/// HTTP/1.1\r\nHost: h\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert_eq!(assert_status(input, 400), Error::InvalidTarget);
    }
}

#[test]
fn post_with_content_length() {
    let out = run_whole(
        L,
        b"POST /kv HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        false,
    );
    let reqs = requests(&out.events);
    assert_eq!(reqs[0].method, Method::Post);
    assert_eq!(reqs[0].body, b"hello");
    assert!(out.output.ends_with(b"\r\n\r\nhello"));
}

#[test]
fn pipelined_requests_in_one_read_are_in_order() {
    let input = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n\
                  POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
                  POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n\
                  GET /4 HTTP/1.1\r\nHost: h\r\n\r\nGET /5 HTTP/1.1\r\nHo";
    for out in [run_whole(L, input, false), run_bytewise(L, input, false)] {
        let reqs = requests(&out.events);
        let paths: Vec<_> = reqs.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/1", "/2", "/3", "/4"]);
        assert_eq!(reqs[1].body, b"abc");
        assert_eq!(reqs[2].body, b"xy");
        assert_eq!(statuses(&out.output), [200, 200, 200, 200]);
        let text = String::from_utf8_lossy(&out.output);
        let order: Vec<_> = text
            .match_indices("X-Path: /")
            .map(|(i, _)| &text[i + 9..i + 10])
            .collect();
        assert_eq!(order, ["1", "2", "3", "4"]);
        assert!(!out.should_close);
    }
}

#[test]
fn pipelined_requests_wait_for_answers_beyond_max_pipelined() {
    let limits = Limits {
        max_pipelined: 2,
        ..L
    };
    let mut conn = ServerConn::new(limits);
    let input = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(conn.feed(input), input.len());
    assert!(matches!(conn.poll(0), Some(Event::Request(_))));
    assert!(matches!(conn.poll(0), Some(Event::Request(_))));
    assert_eq!(conn.poll(0), None, "third request must wait");
    assert_eq!(conn.pending_responses(), 2);
    conn.respond(&Response::new(204)).unwrap();
    match conn.poll(0) {
        Some(Event::Request(r)) => assert_eq!(r.path, "/3"),
        other => panic!("expected /3, got {other:?}"),
    }
}

#[test]
fn leading_empty_lines_are_ignored() {
    let out = run_whole(
        L,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
        false,
    );
    assert_eq!(requests(&out.events).len(), 2);
    assert!(errors(&out.events).is_empty());
}

#[test]
fn byte_by_byte_equals_whole_feed() {
    let inputs: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789GET /y HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"BAD\r\n\r\n",
    ];
    for input in inputs {
        let whole = run_whole(L, input, true);
        let bytewise = run_bytewise(L, input, true);
        assert_eq!(whole.events, bytewise.events);
        assert_eq!(whole.output, bytewise.output);
    }
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let input = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n\
                  5;name=value;q=\"quoted ext\"\r\nhello\r\n\
                  00006 \t;x\r\n world\r\n\
                  0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n";
    let out = run_bytewise(L, input, false);
    let reqs = requests(&out.events);
    assert_eq!(reqs.len(), 1, "{:?}", out.events);
    assert_eq!(reqs[0].body, b"hello world");
    assert_eq!(reqs[0].trailers.get("x-checksum"), Some(&b"abc"[..]));
    assert_eq!(reqs[0].trailers.len(), 2);
    assert!(
        reqs[0].headers.get("x-checksum").is_none(),
        "trailers are kept apart"
    );
}

#[test]
fn chunked_uppercase_hex_and_empty_body() {
    let out = run_whole(
        L,
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        false,
    );
    let reqs = requests(&out.events);
    assert_eq!(reqs[0].body.len(), 26);
    assert!(reqs[1].body.is_empty());
}

#[test]
fn chunked_malformed_is_400() {
    let pre = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (chunks, what) in [
        ("5\nhello\r\n0\r\n\r\n", "bare LF after size"),
        ("5\r\nhelloX\r\n0\r\n\r\n", "data longer than the size"),
        ("5\r\nhello\n0\r\n\r\n", "bare LF after data"),
        ("g\r\nhello\r\n0\r\n\r\n", "non-hex size"),
        ("\r\nhello\r\n0\r\n\r\n", "empty size"),
        ("0x5\r\nhello\r\n0\r\n\r\n", "0x prefix"),
        ("-5\r\nhello\r\n0\r\n\r\n", "sign"),
        ("+5\r\nhello\r\n0\r\n\r\n", "plus sign"),
        ("5 5\r\nhello\r\n0\r\n\r\n", "space inside size"),
        (
            "5;a\u{1}b\r\nhello\r\n0\r\n\r\n",
            "control byte in extension",
        ),
        ("5;a\rb\r\nhello\r\n0\r\n\r\n", "CR in extension"),
        ("5x\r\nhello\r\n0\r\n\r\n", "garbage after size"),
        ("10000000000000000\r\n", "size overflows u64"),
        ("0\r\nbad trailer\r\n\r\n", "malformed trailer"),
    ] {
        let input = format!("{pre}{chunks}");
        let e = assert_status(input.as_bytes(), 400);
        assert!(matches!(e, Error::InvalidChunk(_)), "{what}: {e:?}");
    }
}

#[test]
fn chunk_line_length_limit_at_and_over() {
    let limits = Limits {
        max_chunk_line_bytes: 16,
        ..L
    };
    let pre = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    // "1;" + 12 bytes + CRLF = 16 bytes: accepted.
    let ok = format!("{pre}1;aaaaaaaaaaaa\r\nx\r\n0\r\n\r\n");
    let out = run_bytewise(limits, ok.as_bytes(), false);
    assert_eq!(requests(&out.events)[0].body, b"x");
    let over = format!("{pre}1;aaaaaaaaaaaaa\r\nx\r\n0\r\n\r\n");
    let out = run_bytewise(limits, over.as_bytes(), false);
    assert_eq!(
        errors(&out.events),
        [Error::InvalidChunk("chunk-size line too long")]
    );
}

#[test]
fn content_length_at_and_over_body_limit() {
    let limits = Limits {
        max_body_bytes: 10,
        ..L
    };
    let ok = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
    assert_eq!(
        requests(&run_whole(limits, ok, false).events)[0].body.len(),
        10
    );
    // Over: refused as soon as the head is read, before any body byte.
    let mut conn = ServerConn::new(limits);
    conn.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n");
    assert_eq!(conn.poll(0), Some(Event::Error(Error::BodyTooLarge)));
    let out = String::from_utf8(conn.take_output()).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
        "{out}"
    );
    assert!(conn.should_close());
}

#[test]
fn default_body_limit_is_one_mebibyte() {
    let at = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024
    );
    let mut input = at.into_bytes();
    input.resize(input.len() + 1024 * 1024, b'z');
    let out = run_split(L, &input, &[1460; 800], false);
    assert_eq!(requests(&out.events)[0].body.len(), 1024 * 1024);
    let over = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024 + 1
    );
    assert_eq!(assert_status(over.as_bytes(), 413), Error::BodyTooLarge);
}

#[test]
fn chunked_body_at_and_over_limit() {
    let limits = Limits {
        max_body_bytes: 10,
        ..L
    };
    let pre = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    let ok = format!("{pre}5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n");
    assert_eq!(
        requests(&run_bytewise(limits, ok.as_bytes(), false).events)[0].body,
        b"0123456789"
    );
    // Growing over: the second chunk's declared size pushes it to 11 -> 413 before its data.
    let over = format!("{pre}5\r\n01234\r\n6\r\n");
    let out = run_whole(limits, over.as_bytes(), false);
    assert_eq!(errors(&out.events), [Error::BodyTooLarge]);
    assert_eq!(statuses(&out.output), [413]);
}

fn head_of_len(len: usize) -> Vec<u8> {
    let base = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: \r\n\r\n".len();
    let pad = "a".repeat(len - base);
    format!("GET / HTTP/1.1\r\nHost: h\r\nX-Pad: {pad}\r\n\r\n").into_bytes()
}

#[test]
fn head_size_limit_at_and_over() {
    let at = head_of_len(8192);
    assert_eq!(at.len(), 8192);
    let out = run_whole(L, &at, false);
    assert_eq!(requests(&out.events).len(), 1, "{:?}", errors(&out.events));
    let out = run_bytewise(L, &at, false);
    assert_eq!(requests(&out.events).len(), 1);
    let over = head_of_len(8193);
    assert_eq!(assert_status(&over, 431), Error::HeadTooLarge);
    // A head that never ends is refused once it passes the limit, without waiting for more.
    let mut conn = ServerConn::new(L);
    let mut endless = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
    endless.resize(8193, b'a');
    conn.feed(&endless);
    assert_eq!(conn.poll(0), Some(Event::Error(Error::HeadTooLarge)));
}

fn with_headers(n: usize) -> Vec<u8> {
    let mut s = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
    for i in 1..n {
        s.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

#[test]
fn header_count_limit_at_and_over() {
    let out = run_whole(L, &with_headers(64), false);
    assert_eq!(requests(&out.events)[0].headers.len(), 64);
    assert_eq!(assert_status(&with_headers(65), 431), Error::TooManyHeaders);
}

#[test]
fn trailer_limits_are_431() {
    let limits = Limits {
        max_headers: 2,
        ..L
    };
    let input = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    let out = run_whole(limits, input, false);
    assert_eq!(errors(&out.events), [Error::TooManyHeaders]);
    let limits = Limits {
        max_head_bytes: 100,
        ..L
    };
    let mut input =
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nA: ".to_vec();
    input.extend(vec![b'a'; 200]);
    let out = run_whole(limits, &input, false);
    assert_eq!(errors(&out.events), [Error::HeadTooLarge]);
}

#[test]
fn head_timeout_is_408() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"GET / HTTP/1.1\r\nHo");
    assert_eq!(conn.poll(1_000), None);
    assert_eq!(conn.next_deadline(), Some(11_000));
    assert_eq!(conn.poll(10_999), None);
    assert_eq!(conn.poll(11_000), Some(Event::Error(Error::HeadTimeout)));
    let out = String::from_utf8(conn.take_output()).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    assert!(out.contains("timed out waiting for the message head"));
    assert!(conn.should_close());
    // Nothing more is parsed after an error.
    conn.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(conn.poll(11_001), None);
    assert!(conn.output().is_empty());
}

#[test]
fn silent_connections_close_quietly_and_the_head_timer_starts_at_the_first_byte() {
    // A connection that never sends a byte is closed without an answer.
    let mut conn = ServerConn::new(L);
    assert_eq!(conn.poll(0), None);
    assert_eq!(conn.next_deadline(), Some(10_000));
    assert_eq!(conn.poll(10_000), Some(Event::IdleTimeout));
    assert!(conn.output().is_empty());
    assert!(conn.should_close());

    // The head timer starts with the head's first byte, not when the connection went idle.
    let mut conn = ServerConn::new(L);
    assert_eq!(conn.poll(0), None);
    conn.feed(b"GET / HT");
    assert_eq!(conn.poll(9_000), None);
    assert_eq!(conn.next_deadline(), Some(19_000));
    assert_eq!(conn.poll(18_999), None);
    assert_eq!(conn.poll(19_000), Some(Event::Error(Error::HeadTimeout)));

    let mut conn = ServerConn::new(L);
    conn.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(matches!(conn.poll(0), Some(Event::Request(_))));
    // While the app works on the answer, no timer runs.
    assert_eq!(conn.poll(50_000), None);
    assert_eq!(conn.next_deadline(), None);
    conn.respond(&Response::new(200)).unwrap();
    conn.take_output();
    assert_eq!(conn.poll(60_000), None);
    assert_eq!(conn.next_deadline(), Some(70_000));
    assert_eq!(conn.poll(70_000), Some(Event::IdleTimeout));
    assert!(conn.output().is_empty());
    assert!(conn.should_close());
}

#[test]
fn body_timeout_is_408() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234");
    assert_eq!(conn.poll(500), None);
    assert_eq!(conn.next_deadline(), Some(30_500));
    assert_eq!(conn.poll(30_499), None);
    assert_eq!(conn.poll(30_500), Some(Event::Error(Error::BodyTimeout)));
    assert_eq!(statuses(conn.output()), [408]);
}

#[test]
fn time_going_backwards_is_no_time() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"GET / HTTP/1.1\r\n");
    assert_eq!(conn.poll(u64::MAX - 5), None);
    assert_eq!(conn.poll(0), None);
    assert_eq!(conn.next_deadline(), Some(u64::MAX));
}

#[test]
fn expect_100_continue_emits_interim_response() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"PUT /k HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(conn.poll(0), None);
    assert_eq!(conn.take_output(), b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.feed(b"data");
    match conn.poll(0) {
        Some(Event::Request(r)) => assert_eq!(r.body, b"data"),
        other => panic!("{other:?}"),
    }
    conn.respond(&Response::new(201)).unwrap();
    let out = String::from_utf8(conn.take_output()).unwrap();
    assert!(out.starts_with("HTTP/1.1 201 Created\r\n"), "{out}");
}

#[test]
fn expect_100_continue_not_sent_when_body_already_here_or_too_large() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"PUT /k HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nda");
    assert_eq!(conn.poll(0), None);
    assert!(conn.output().is_empty());

    let limits = Limits {
        max_body_bytes: 3,
        ..L
    };
    let mut conn = ServerConn::new(limits);
    conn.feed(b"PUT /k HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(conn.poll(0), Some(Event::Error(Error::BodyTooLarge)));
    assert_eq!(statuses(conn.output()), [413]);

    // HTTP/1.0 clients never get 100 (RFC 9110 §10.1.1).
    let mut conn = ServerConn::new(L);
    conn.feed(b"PUT /k HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(conn.poll(0), None);
    assert!(conn.output().is_empty());
}

#[test]
fn expect_100_continue_waits_behind_owed_responses() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPUT /2 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
    assert!(matches!(conn.poll(0), Some(Event::Request(_))));
    assert_eq!(conn.poll(0), None);
    assert!(
        conn.output().is_empty(),
        "100 must not overtake the answer to /1"
    );
    conn.respond(&Response::new(200)).unwrap();
    let out = String::from_utf8(conn.take_output()).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(
        out.ends_with("\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"),
        "{out}"
    );
}

#[test]
fn unknown_expectation_is_417() {
    assert_eq!(
        assert_status(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: teapot\r\n\r\n", 417),
        Error::ExpectationFailed
    );
}

#[test]
fn http10_closes_unless_keep_alive() {
    let out = run_whole(L, b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n", false);
    let reqs = requests(&out.events);
    assert_eq!(reqs.len(), 1, "bytes after a closing request are dropped");
    assert_eq!(reqs[0].version, Version::Http10);
    assert!(!reqs[0].keep_alive);
    let text = String::from_utf8_lossy(&out.output);
    assert!(text.contains("Connection: close\r\n"));
    assert!(out.should_close);

    let out = run_whole(
        L,
        b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
        false,
    );
    let reqs = requests(&out.events);
    assert_eq!(reqs.len(), 2);
    assert!(reqs[0].keep_alive && !reqs[1].keep_alive);
    let text = String::from_utf8_lossy(&out.output);
    assert!(text.contains("Connection: keep-alive\r\n"));
    assert!(out.should_close);
}

#[test]
fn connection_close_on_http11() {
    let out = run_whole(L, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n", false);
    assert_eq!(requests(&out.events).len(), 1);
    assert!(String::from_utf8_lossy(&out.output).contains("Connection: close\r\n"));
    assert!(out.should_close);
}

#[test]
fn response_connection_close_closes() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(matches!(conn.poll(0), Some(Event::Request(_))));
    conn.respond(&Response::new(200).with_header("Connection", "close"))
        .unwrap();
    assert!(!conn.should_close(), "output still pending");
    let out = conn.take_output();
    assert_eq!(
        out.windows(19)
            .filter(|w| w == b"Connection: close\r\n")
            .count(),
        1
    );
    assert!(conn.should_close());
}

#[test]
fn head_request_gets_headers_without_body() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n");
    let Some(Event::Request(r)) = conn.poll(0) else {
        panic!("no request")
    };
    assert!(r.is_head());
    conn.respond(&Response::text(200, "twelve bytes")).unwrap();
    let out = String::from_utf8(conn.take_output()).unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\n\r\n"
    );
}

#[test]
fn no_body_statuses() {
    for status in [204u16, 304] {
        let mut conn = ServerConn::new(L);
        conn.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        conn.poll(0);
        conn.respond(&Response::new(status).with_body("ignored"))
            .unwrap();
        let out = String::from_utf8(conn.take_output()).unwrap();
        assert!(!out.contains("Content-Length"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }
    let mut conn = ServerConn::new(L);
    conn.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    conn.poll(0);
    assert_eq!(
        conn.respond(&Response::new(103)),
        Err(janus_http1::RespondError::InterimStatus(103))
    );
}

#[test]
fn respond_validates_and_writes_nothing_on_error() {
    let mut conn = ServerConn::new(L);
    conn.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(
        conn.respond(&Response::new(200)),
        Err(janus_http1::RespondError::NoPendingRequest)
    );
    conn.poll(0);
    let splitting = Response::new(200).with_header("X", "a\r\nSet-Cookie: evil");
    assert!(conn.respond(&splitting).is_err());
    assert!(
        conn.respond(&Response::new(200).with_header("Bad Name", "v"))
            .is_err()
    );
    assert!(conn.respond(&Response::new(1000)).is_err());
    assert!(conn.respond(&Response::new(42)).is_err());
    assert!(conn.output().is_empty());
    assert_eq!(conn.pending_responses(), 1);
    // Framing headers given by the app are replaced by the encoder's own.
    conn.respond(
        &Response::new(200)
            .with_header("Content-Length", "999")
            .with_header("Transfer-Encoding", "chunked")
            .with_body("ab"),
    )
    .unwrap();
    let out = String::from_utf8(conn.take_output()).unwrap();
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab");
}

#[test]
fn smuggling_attempts_are_refused() {
    let cases: &[(&[u8], u16)] = &[
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ];
    for (input, status) in cases {
        assert_status(input, *status);
    }
}

#[test]
fn content_length_variants_that_are_fine() {
    let out = run_whole(
        L,
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length:  3 \r\n\r\nabc\
          POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\ncontent-length: 3\r\n\r\nabc\
          POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 0003\r\n\r\nabc\
          POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        false,
    );
    let reqs = requests(&out.events);
    assert_eq!(reqs.len(), 4, "{:?}", errors(&out.events));
    assert!(reqs[..3].iter().all(|r| r.body == b"abc"));
    assert!(reqs[3].body.is_empty());
}

#[test]
fn malformed_heads_are_400_and_bad_versions_505() {
    for input in [
        &b"garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / FTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let e = assert_status(input, 400);
        assert!(
            matches!(e, Error::MalformedHead(_)),
            "{e:?} for {:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert_eq!(
        assert_status(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        Error::UnsupportedVersion
    );
    assert_eq!(
        assert_status(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
        Error::UnsupportedVersion
    );
}

#[test]
fn host_rules() {
    assert_eq!(
        assert_status(b"GET / HTTP/1.1\r\n\r\n", 400),
        Error::InvalidHost
    );
    let out = run_whole(
        Limits {
            require_host: false,
            ..L
        },
        b"GET / HTTP/1.1\r\n\r\n",
        false,
    );
    assert_eq!(requests(&out.events).len(), 1);
    let out = run_whole(L, b"GET / HTTP/1.0\r\n\r\n", false);
    assert_eq!(requests(&out.events).len(), 1);
}

#[test]
fn error_after_pipelined_requests_comes_after_their_answers() {
    let mut conn = ServerConn::new(L);
    conn.feed(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nBROKEN\r\n\r\n",
    );
    assert!(matches!(conn.poll(0), Some(Event::Request(_))));
    assert!(matches!(conn.poll(0), Some(Event::Request(_))));
    assert!(matches!(
        conn.poll(0),
        Some(Event::Error(Error::MalformedHead(_)))
    ));
    assert!(conn.output().is_empty());
    assert!(!conn.should_close());
    conn.respond(&Response::new(200)).unwrap();
    conn.respond(&Response::new(201)).unwrap();
    assert_eq!(statuses(conn.output()), [200, 201, 400]);
    // Written in pieces, then closed.
    let n = conn.output().len();
    conn.consume_output(n / 2);
    assert!(!conn.should_close());
    conn.consume_output(usize::MAX);
    assert!(conn.should_close());
}

#[test]
fn eof_handling() {
    // EOF in the middle of a head: nothing to answer, just close.
    let out = run_whole(L, b"GET / HTTP/1.1\r\nHo", true);
    assert!(out.events.is_empty());
    assert!(out.output.is_empty());
    assert!(out.should_close);
    // EOF in the middle of a body: 400.
    let out = run_whole(
        L,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab",
        true,
    );
    assert_eq!(errors(&out.events), [Error::UnexpectedEof]);
    // Complete requests before EOF are still served.
    let out = run_whole(L, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true);
    assert_eq!(requests(&out.events).len(), 1);
    assert_eq!(statuses(&out.output), [200]);
    assert!(out.should_close);
}

#[test]
fn feed_applies_back_pressure() {
    let limits = Limits {
        max_buffer_bytes: 0,
        max_head_bytes: 64,
        max_chunk_line_bytes: 16,
        ..L
    };
    let cap = limits.buffer_capacity();
    assert_eq!(cap, 64 + 16 + 1);
    let mut conn = ServerConn::new(limits);
    let big = vec![b'x'; 1000];
    assert_eq!(conn.feed(&big), cap);
    assert_eq!(conn.feed(&big), 0);
    // After an error, input is discarded (reported as taken so the caller can drain the socket).
    assert!(matches!(conn.poll(0), Some(Event::Error(_))));
    assert_eq!(conn.feed(&big), 1000);
}

#[test]
fn error_response_body_names_the_problem() {
    let (_, out) = one_error(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n");
    let text = String::from_utf8(out.output).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\n"));
    assert!(
        text.ends_with("\r\n\r\n400 Bad Request: invalid Content-Length\n"),
        "{text}"
    );
    let body_len = "400 Bad Request: invalid Content-Length\n".len();
    assert!(text.contains(&format!("Content-Length: {body_len}\r\n")));
}

#[test]
fn extreme_limits_do_not_panic_or_allocate_hugely() {
    let limits = Limits {
        max_head_bytes: usize::MAX,
        max_headers: usize::MAX,
        max_body_bytes: usize::MAX,
        max_chunk_line_bytes: usize::MAX,
        head_timeout_ms: u64::MAX,
        idle_timeout_ms: u64::MAX,
        body_timeout_ms: u64::MAX,
        max_buffer_bytes: usize::MAX,
        max_pipelined: usize::MAX,
        require_host: true,
    };
    let out = run_bytewise(
        limits,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
        false,
    );
    assert_eq!(requests(&out.events)[0].body, b"abc");
    let mut conn = ServerConn::new(limits);
    conn.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\nab");
    assert_eq!(conn.poll(u64::MAX), None);
    assert_eq!(conn.next_deadline(), Some(u64::MAX));

    let zero = Limits {
        max_head_bytes: 0,
        max_headers: 0,
        max_body_bytes: 0,
        max_chunk_line_bytes: 0,
        head_timeout_ms: 0,
        idle_timeout_ms: 0,
        body_timeout_ms: 0,
        max_buffer_bytes: 0,
        max_pipelined: 0,
        require_host: false,
    };
    let mut conn = ServerConn::new(zero);
    assert_eq!(conn.poll(0), Some(Event::IdleTimeout));
    let out = run_whole(zero, b"GET / HTTP/1.1\r\n\r\n", false);
    assert_eq!(errors(&out.events), [Error::HeadTooLarge]);
}

#[test]
fn embedder_error_answers_keep_the_codec_status_and_close() {
    let mut conn = ServerConn::new(L);
    conn.set_error_response(Box::new(|e: &Error| {
        // Tries to change the status and keep the connection open: both are ignored.
        Response::text(200, &format!("refused: {e}\n"))
            .with_header("x-trace", "t1")
            .with_header("Connection", "keep-alive")
    }));
    conn.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    let Some(Event::Request(_)) = conn.poll(0) else {
        panic!("first request delivered")
    };
    assert_eq!(conn.poll(0), Some(Event::Error(Error::InvalidHost)));
    conn.respond(&Response::new(204)).unwrap();
    let out = String::from_utf8(conn.take_output()).unwrap();
    assert_eq!(statuses(out.as_bytes()), [204, 400], "{out}");
    assert!(out.contains("x-trace: t1\r\n"), "{out}");
    assert!(out.contains("Connection: close\r\n"), "{out}");
    assert!(!out.contains("keep-alive"), "{out}");
    assert!(conn.should_close());

    // An answer that does not encode falls back to the plain one.
    let mut conn = ServerConn::new(L);
    conn.set_error_response(Box::new(|_: &Error| {
        Response::new(400).with_header("bad name", "x")
    }));
    conn.feed(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(conn.poll(0), Some(Event::Error(Error::InvalidTarget)));
    let out = String::from_utf8(conn.take_output()).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("invalid request target"), "{out}");
}
