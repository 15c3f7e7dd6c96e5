//! Client side: request encoding, response parsing, and round trips through the server side.

mod common;

use common::Rng;
use janus_http1::{
    ClientRequest, ClientResponse, EncodeError, Error, Event, Limits, Method, Response,
    ResponseParser, ServerConn,
};

const L: Limits = Limits::DEFAULT;

fn parse_split(
    input: &[u8],
    method: &Method,
    cut: usize,
    eof: bool,
) -> Option<Result<ClientResponse, Error>> {
    let mut p = ResponseParser::new(L, method);
    let mut result = None;
    for piece in input.chunks(cut.max(1)) {
        assert_eq!(p.feed(piece), piece.len());
        if let Some(r) = p.poll(0) {
            assert!(result.is_none());
            result = Some(r);
        }
    }
    if eof {
        p.feed_eof();
    }
    if let Some(r) = p.poll(0) {
        assert!(result.is_none(), "poll returned a second result");
        result = Some(r);
    }
    assert_eq!(p.poll(0), None);
    result
}

fn parse(input: &[u8], method: &Method, eof: bool) -> Option<Result<ClientResponse, Error>> {
    let whole = parse_split(input, method, input.len(), eof);
    for cut in [1, 2, 7] {
        assert_eq!(
            parse_split(input, method, cut, eof),
            whole,
            "split {cut} differs"
        );
    }
    whole
}

#[test]
fn encode_request() {
    let mut out = Vec::new();
    ClientRequest::new(Method::Post, "upstream:8080", "/kv/a?x=1")
        .with_header("X-Trace", "abc")
        .with_header("Content-Length", "999")
        .with_header("host", "ignored")
        .with_body("hello")
        .encode(&mut out)
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /kv/a?x=1 HTTP/1.1\r\nHost: upstream:8080\r\nX-Trace: abc\r\nContent-Length: 5\r\n\r\nhello"
    );
    let mut out = Vec::new();
    ClientRequest::new(Method::Get, "h", "/")
        .encode(&mut out)
        .unwrap();
    assert_eq!(out, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    let mut out = Vec::new();
    ClientRequest::new(Method::Put, "h", "/")
        .encode(&mut out)
        .unwrap();
    assert_eq!(
        out,
        b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn encode_request_rejects_bad_input_and_writes_nothing() {
    let cases = [
        (
            ClientRequest::new(Method::Other("BAD METHOD".into()), "h", "/"),
            EncodeError::InvalidMethod,
        ),
        (
            ClientRequest::new(Method::Get, "h", "no-slash"),
            EncodeError::InvalidPath,
        ),
        (
            ClientRequest::new(Method::Get, "h", "/a b"),
            EncodeError::InvalidPath,
        ),
        (
            ClientRequest::new(Method::Get, "h", "/a\r\nX: y"),
            EncodeError::InvalidPath,
        ),
        (
            ClientRequest::new(Method::Get, "", "/"),
            EncodeError::InvalidHost,
        ),
        (
            ClientRequest::new(Method::Get, "h\r\nX: y", "/"),
            EncodeError::InvalidHost,
        ),
        (
            ClientRequest::new(Method::Get, "h", "/").with_header("X", "a\nb"),
            EncodeError::InvalidHeader,
        ),
        (
            ClientRequest::new(Method::Get, "h", "/").with_header("X:", "a"),
            EncodeError::InvalidHeader,
        ),
    ];
    for (req, want) in cases {
        let mut out = Vec::new();
        assert_eq!(req.encode(&mut out), Err(want));
        assert!(out.is_empty());
    }
}

#[test]
fn content_length_response() {
    let r = parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        &Method::Get,
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (r.status, r.reason.as_str(), r.body.as_slice()),
        (200, "OK", &b"hello"[..])
    );
    assert_eq!(r.headers.get("x-a"), Some(&b"b"[..]));
    assert!(r.keep_alive);
}

#[test]
fn chunked_response_with_trailers() {
    let r = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nEtag: 1\r\n\r\n",
        &Method::Get,
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.body, b"abcde");
    assert_eq!(r.trailers.get("etag"), Some(&b"1"[..]));
}

#[test]
fn read_to_close_response() {
    let input = b"HTTP/1.0 200 OK\r\n\r\nall of this until close";
    assert_eq!(
        parse(input, &Method::Get, false),
        None,
        "not complete before EOF"
    );
    let r = parse(input, &Method::Get, true).unwrap().unwrap();
    assert_eq!(r.body, b"all of this until close");
    assert!(!r.keep_alive);
    // Too large even without a Content-Length.
    let limits = Limits {
        max_body_bytes: 4,
        ..L
    };
    let mut p = ResponseParser::new(limits, &Method::Get);
    p.feed(b"HTTP/1.1 200 OK\r\n\r\n12345");
    assert_eq!(p.poll(0), Some(Err(Error::BodyTooLarge)));
}

#[test]
fn no_body_responses() {
    let r = parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        &Method::Head,
        false,
    )
    .unwrap()
    .unwrap();
    assert!(r.body.is_empty());
    for status in ["204 No Content", "304 Not Modified"] {
        let input = format!("HTTP/1.1 {status}\r\n\r\nHTTP/1.1 200 OK\r\n");
        let mut p = ResponseParser::new(L, &Method::Get);
        p.feed(input.as_bytes());
        let r = p.poll(0).unwrap().unwrap();
        assert!(r.body.is_empty());
        assert_eq!(
            p.remaining(),
            b"HTTP/1.1 200 OK\r\n",
            "bytes after the response are kept"
        );
    }
}

#[test]
fn interim_responses_are_skipped_101_refused() {
    let r = parse(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        &Method::Post,
        false,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(
        parse(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            &Method::Get,
            false
        ),
        Some(Err(Error::InvalidStatus))
    );
}

#[test]
fn response_errors() {
    let cases: &[(&[u8], Error)] = &[
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            Error::ConflictingFraming,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            Error::InvalidContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Error::UnsupportedTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            Error::InvalidChunk("missing chunk size"),
        ),
        (
            b"HTTP/1.1 2000 OK\r\n\r\n",
            Error::MalformedHead("invalid status code"),
        ),
        (b"HTTP/1.1 099 Low\r\n\r\n", Error::InvalidStatus),
        (b"HTTP/2.0 200 OK\r\n\r\n", Error::UnsupportedVersion),
        (
            b"SPDY 200 OK\r\n\r\n",
            Error::MalformedHead("invalid HTTP version"),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            parse(input, &Method::Get, false),
            Some(Err(*want)),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn eof_and_timeouts() {
    assert_eq!(
        parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            &Method::Get,
            true
        ),
        Some(Err(Error::UnexpectedEof))
    );
    assert_eq!(
        parse(b"HTTP/1.1 200 O", &Method::Get, true),
        Some(Err(Error::UnexpectedEof))
    );
    let mut p = ResponseParser::new(L, &Method::Get);
    assert_eq!(p.poll(100), None);
    assert_eq!(p.next_deadline(), Some(10_100));
    assert_eq!(p.poll(10_100), Some(Err(Error::HeadTimeout)));
    let mut p = ResponseParser::new(L, &Method::Get);
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab");
    assert_eq!(p.poll(0), None);
    assert_eq!(p.poll(29_999), None);
    assert_eq!(p.poll(30_000), Some(Err(Error::BodyTimeout)));
}

#[test]
fn response_limits() {
    let limits = Limits {
        max_body_bytes: 3,
        ..L
    };
    let mut p = ResponseParser::new(limits, &Method::Get);
    p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(p.poll(0), Some(Err(Error::BodyTooLarge)));
    let mut p = ResponseParser::new(L, &Method::Get);
    let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    big.resize(9000, b'a');
    p.feed(&big);
    assert_eq!(p.poll(0), Some(Err(Error::HeadTooLarge)));
}

#[test]
fn keep_alive_decisions() {
    let cases: &[(&[u8], bool)] = &[
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            true,
        ),
    ];
    for (input, keep) in cases {
        assert_eq!(
            parse(input, &Method::Get, false)
                .unwrap()
                .unwrap()
                .keep_alive,
            *keep
        );
    }
}

/// Client encoder -> server parser -> server encoder -> client parser, for random requests.
#[test]
fn round_trip_through_both_sides() {
    let mut rng = Rng::new(7);
    let methods = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Other("PURGE".into()),
    ];
    for i in 0..300 {
        let method = rng.pick(&methods).clone();
        let path = format!("/p{}?q={}", rng.below(1000), rng.below(10));
        let body: Vec<u8> = (0..rng.below(3000)).map(|_| rng.below(256) as u8).collect();
        let mut req = ClientRequest::new(method.clone(), "up:1", &path).with_body(body.clone());
        for h in 0..rng.below(5) {
            req = req.with_header(&format!("X-H{h}"), format!("v{}", rng.below(100)));
        }
        let mut wire = Vec::new();
        req.encode(&mut wire).unwrap();

        let mut server = ServerConn::new(L);
        let mut events = Vec::new();
        for piece in wire.chunks(1 + rng.below(200)) {
            server.feed(piece);
            while let Some(e) = server.poll(0) {
                events.push(e);
            }
        }
        assert_eq!(events.len(), 1, "case {i}: {events:?}");
        let Event::Request(got) = &events[0] else {
            panic!("case {i}: {events:?}")
        };
        assert_eq!(got.method, method);
        assert_eq!(got.target, path);
        assert_eq!(got.body, body);
        assert_eq!(got.headers.get("host"), Some(&b"up:1"[..]));
        for f in &req.headers {
            assert_eq!(got.headers.get(&f.name), Some(f.value.as_slice()));
        }

        let status = *rng.pick(&[200u16, 201, 204, 304, 404, 500]);
        let resp_body: Vec<u8> = (0..rng.below(3000)).map(|_| rng.below(256) as u8).collect();
        server
            .respond(
                &Response::new(status)
                    .with_header("X-Echo", got.path.as_bytes())
                    .with_body(resp_body.clone()),
            )
            .unwrap();
        let out = server.take_output();
        let mut client = ResponseParser::new(L, &method);
        let mut result = None;
        for piece in out.chunks(1 + rng.below(200)) {
            client.feed(piece);
            if let Some(r) = client.poll(0) {
                result = Some(r);
            }
        }
        let resp = result
            .unwrap_or_else(|| panic!("case {i}: no response"))
            .unwrap();
        assert_eq!(resp.status, status);
        let expect_body = method != Method::Head && status != 204 && status != 304;
        assert_eq!(resp.body, if expect_body { resp_body } else { Vec::new() });
        assert!(resp.keep_alive);
        assert!(client.remaining().is_empty());
    }
}
