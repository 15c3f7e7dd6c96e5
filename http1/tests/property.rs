//! Property-style tests with a deterministic PRNG: generated valid traffic must parse back to
//! what was generated; random and mutated traffic must never panic and must give the same
//! events whatever the split points.

mod common;

use common::*;
use janus_http1::{ClientResponse, Error, Event, Limits, Method, ResponseParser, ServerConn};

const L: Limits = Limits::DEFAULT;

/// `JANUS_PROP_SCALE=N` multiplies the case counts; `JANUS_PROP_SEED=S` changes the seeds.
fn scale(cases: usize) -> usize {
    let n: usize = std::env::var("JANUS_PROP_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    cases * n.max(1)
}

fn rng(stream: u64) -> Rng {
    let seed: u64 = std::env::var("JANUS_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Rng::new(seed.wrapping_mul(1000).wrapping_add(stream))
}

struct Generated {
    wire: Vec<u8>,
    method: Method,
    target: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    trailers: Vec<(String, String)>,
}

fn token(rng: &mut Rng, max: usize) -> String {
    const CHARS: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~";
    (0..1 + rng.below(max))
        .map(|_| *rng.pick(CHARS) as char)
        .collect()
}

fn value(rng: &mut Rng) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ,;=/\"()<>@:?[]{}";
    let v: String = (0..rng.below(40))
        .map(|_| *rng.pick(CHARS) as char)
        .collect();
    v.trim().to_string()
}

fn generate(rng: &mut Rng, last: bool) -> Generated {
    let method = rng
        .pick(&[
            Method::Get,
            Method::Post,
            Method::Put,
            Method::Delete,
            Method::Patch,
            Method::Other("PURGE".into()),
        ])
        .clone();
    let mut target = format!("/{}", token(rng, 20).replace(['#', '%'], "x"));
    if rng.chance(50) {
        target.push('?');
        target.push_str(&token(rng, 20).replace(['#', '%'], "y"));
    }
    let mut wire = format!(
        "{} {} HTTP/1.1\r\nHost: h{}\r\n",
        method,
        target,
        rng.below(9)
    )
    .into_bytes();
    let mut headers = vec![];
    for i in 0..rng.below(10) {
        let name = format!("X-{}-{i}", token(rng, 10));
        let v = value(rng);
        let sep = *rng.pick(&[":", ": ", ":\t", ":  "]);
        wire.extend(format!("{name}{sep}{v}{}\r\n", rng.pick(&["", " ", "\t"])).into_bytes());
        headers.push((name, v));
    }
    if last {
        wire.extend(b"Connection: close\r\n");
    }
    let body: Vec<u8> = if rng.chance(60) {
        (0..rng.below(5000)).map(|_| rng.below(256) as u8).collect()
    } else {
        Vec::new()
    };
    let mut trailers = vec![];
    if rng.chance(50) {
        wire.extend(b"Transfer-Encoding: chunked\r\n\r\n");
        let mut rest = body.as_slice();
        while !rest.is_empty() {
            let n = (1 + rng.below(700)).min(rest.len());
            let size = if rng.chance(50) {
                format!("{n:x}")
            } else {
                format!("{n:X}")
            };
            let zeros = "0".repeat(rng.below(3));
            let ext = if rng.chance(30) {
                format!(";{}={}", token(rng, 5), token(rng, 5))
            } else {
                String::new()
            };
            wire.extend(format!("{zeros}{size}{ext}\r\n").into_bytes());
            wire.extend(&rest[..n]);
            wire.extend(b"\r\n");
            rest = &rest[n..];
        }
        wire.extend(b"0\r\n");
        for i in 0..rng.below(3) {
            let name = format!("T-{}-{i}", token(rng, 5));
            let v = value(rng);
            wire.extend(format!("{name}: {v}\r\n").into_bytes());
            trailers.push((name, v));
        }
        wire.extend(b"\r\n");
    } else {
        if !body.is_empty() || rng.chance(30) {
            wire.extend(format!("Content-Length: {}\r\n", body.len()).into_bytes());
        }
        wire.extend(b"\r\n");
        wire.extend(&body);
    }
    Generated {
        wire,
        method,
        target,
        body,
        headers,
        trailers,
    }
}

#[test]
fn generated_pipelines_parse_back_exactly() {
    let mut rng = rng(1);
    for case in 0..scale(400) {
        let n = 1 + rng.below(5);
        let close_last = rng.chance(50);
        let generated: Vec<Generated> = (0..n)
            .map(|i| generate(&mut rng, close_last && i == n - 1))
            .collect();
        let wire: Vec<u8> = generated
            .iter()
            .flat_map(|g| g.wire.iter().copied())
            .collect();
        let cuts = random_cuts(&mut rng, wire.len());
        let out = run_split(L, &wire, &cuts, false);
        let reqs = requests(&out.events);
        assert!(
            errors(&out.events).is_empty(),
            "case {case}: {:?}",
            errors(&out.events)
        );
        assert_eq!(reqs.len(), n, "case {case}");
        for (g, r) in generated.iter().zip(&reqs) {
            assert_eq!(r.method, g.method, "case {case}");
            assert_eq!(r.target, g.target);
            let (p, q) = match g.target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (g.target.as_str(), None),
            };
            assert_eq!((r.path.as_str(), r.query.as_deref()), (p, q));
            assert_eq!(r.body, g.body, "case {case}");
            for (name, v) in &g.headers {
                assert_eq!(
                    r.headers.get(name),
                    Some(v.as_bytes()),
                    "case {case} header {name}"
                );
            }
            assert_eq!(r.trailers.len(), g.trailers.len());
            for (name, v) in &g.trailers {
                assert_eq!(r.trailers.get(name), Some(v.as_bytes()));
            }
        }
        assert_eq!(statuses(&out.output).len(), n);
        assert_eq!(out.should_close, close_last);
    }
}

const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /kv/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\n",
    b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET http://h/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
];

const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"0",
    b"9",
    b"f",
    b"ffffffffffffffffff",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"chunked",
    b"0\r\n\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"HTTP/1.0",
    b"\x00",
    b"\xff",
    b"Host: x\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.below(256) as u8;
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.below(256) as u8);
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(16)).min(len);
                input.drain(a..b);
            }
            3 => {
                let i = rng.below(len + 1);
                let s = *rng.pick(INTERESTING);
                input.splice(i..i, s.iter().copied());
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(64)).min(len);
                let copy = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, copy);
            }
            5 => {
                let other = *rng.pick(SEEDS);
                input.extend_from_slice(other);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            _ => {}
        }
    }
}

fn check_outcome_invariants(out: &Outcome, limits: &Limits) {
    let errs = errors(&out.events);
    assert!(errs.len() <= 1);
    if !errs.is_empty() {
        assert!(
            matches!(out.events.last(), Some(Event::Error(_))),
            "error is the last event"
        );
        assert!(out.should_close);
    }
    for r in requests(&out.events) {
        assert!(r.body.len() <= limits.max_body_bytes);
        assert!(r.headers.len() <= limits.max_headers);
    }
    let n_responses = statuses(&strip_continue(&out.output)).len();
    assert!(n_responses >= requests(&out.events).len() + errs.len());
}

#[test]
fn mutated_requests_never_panic_and_ignore_split_points() {
    let mut rng = rng(2);
    let small = Limits {
        max_head_bytes: 256,
        max_headers: 8,
        max_body_bytes: 300,
        max_chunk_line_bytes: 32,
        ..L
    };
    let (mut with_requests, mut with_errors) = (0, 0);
    let cases = scale(4000);
    for case in 0..cases {
        let mut input = rng.pick(SEEDS).to_vec();
        mutate(&mut rng, &mut input);
        let limits = if rng.chance(50) { L } else { small };
        let eof = rng.chance(50);
        let whole = run_whole(limits, &input, eof);
        check_outcome_invariants(&whole, &limits);
        with_requests += usize::from(!requests(&whole.events).is_empty());
        with_errors += usize::from(!errors(&whole.events).is_empty());
        for _ in 0..2 {
            let cuts = random_cuts(&mut rng, input.len());
            let split = run_split(limits, &input, &cuts, eof);
            assert_eq!(
                split.events,
                whole.events,
                "case {case}: {:?} cuts {cuts:?}",
                String::from_utf8_lossy(&input)
            );
            assert_eq!(
                strip_continue(&split.output),
                strip_continue(&whole.output),
                "case {case}"
            );
            assert_eq!(split.should_close, whole.should_close);
        }
    }
    // The mutations must exercise both paths, or this test proves little.
    assert!(
        with_requests > cases / 10,
        "only {with_requests} of {cases} inputs gave a request"
    );
    assert!(
        with_errors > cases / 10,
        "only {with_errors} of {cases} inputs gave an error"
    );
}

#[test]
fn random_bytes_and_random_clocks_never_panic() {
    let mut rng = rng(3);
    for _ in 0..scale(2000) {
        let len = rng.below(600);
        let input: Vec<u8> = (0..len)
            .map(|_| {
                if rng.chance(70) {
                    *rng.pick(b"GET /HTP1.\r\n:; 0a-chunkedContent-Length")
                } else {
                    rng.below(256) as u8
                }
            })
            .collect();
        let limits = Limits {
            max_head_bytes: rng.below(300),
            max_headers: rng.below(10),
            max_body_bytes: rng.below(300),
            max_chunk_line_bytes: rng.below(40),
            head_timeout_ms: rng.below(100) as u64,
            idle_timeout_ms: rng.below(100) as u64,
            body_timeout_ms: rng.below(100) as u64,
            max_buffer_bytes: rng.below(500),
            max_pipelined: rng.below(4),
            require_host: rng.chance(50),
        };
        let mut conn = ServerConn::new(limits);
        let mut now: u64 = rng.next_u64() >> rng.below(64);
        let mut rest = input.as_slice();
        let mut steps = 0;
        while steps < 10_000 {
            steps += 1;
            let n = rng.below(rest.len() + 1);
            let took = conn.feed(&rest[..n]);
            rest = &rest[took..];
            now = match rng.below(4) {
                0 => now.wrapping_sub(rng.below(50) as u64),
                1 => now.saturating_add(rng.below(200) as u64),
                2 => rng.next_u64(),
                _ => now,
            };
            let _ = conn.next_deadline();
            while let Some(ev) = conn.poll(now) {
                if matches!(ev, Event::Request(_)) && rng.chance(80) {
                    let _ = conn.respond(&echo_response(&ev).expect("request"));
                }
            }
            if rng.chance(30) {
                let _ = conn.respond(&janus_http1::Response::new(rng.below(1100) as u16));
            }
            conn.consume_output(rng.below(300));
            if rest.is_empty() && rng.chance(20) {
                conn.feed_eof();
            }
            if conn.should_close() || (rest.is_empty() && rng.chance(10)) {
                break;
            }
        }
    }
}

fn client_run(
    input: &[u8],
    cuts: &[usize],
    method: &Method,
    limits: Limits,
    eof: bool,
) -> Option<Result<ClientResponse, Error>> {
    let mut p = ResponseParser::new(limits, method);
    let mut result = None;
    let mut rest = input;
    let mut cuts = cuts.iter();
    while !rest.is_empty() {
        let n = cuts
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let took = p.feed(piece);
        if took < piece.len() {
            // Buffer full: stop feeding; what we have decides.
            break;
        }
        if let Some(r) = p.poll(0) {
            assert!(result.is_none());
            result = Some(r);
        }
    }
    if eof {
        p.feed_eof();
    }
    if let Some(r) = p.poll(0) {
        assert!(result.is_none());
        result = Some(r);
    }
    result
}

#[test]
fn mutated_responses_never_panic_and_ignore_split_points() {
    let seeds: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ];
    let mut rng = rng(4);
    let small = Limits {
        max_head_bytes: 128,
        max_headers: 4,
        max_body_bytes: 64,
        max_chunk_line_bytes: 16,
        ..L
    };
    for case in 0..scale(3000) {
        let mut input = rng.pick(seeds).to_vec();
        mutate(&mut rng, &mut input);
        let method = rng.pick(&[Method::Get, Method::Head]).clone();
        let limits = if rng.chance(50) { L } else { small };
        let eof = rng.chance(50);
        let whole = client_run(&input, &[], &method, limits, eof);
        if let Some(Ok(r)) = &whole {
            assert!(r.body.len() <= limits.max_body_bytes);
            assert!(!(100..200).contains(&r.status));
        }
        let cuts = random_cuts(&mut rng, input.len());
        let split = client_run(&input, &cuts, &method, limits, eof);
        assert_eq!(
            split,
            whole,
            "case {case}: {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}
