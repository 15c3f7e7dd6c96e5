//! Differential fuzz harness for janus-http1, shared by the cargo-fuzz targets and by the
//! `corpus` test of janus-http1 (which includes this file with `#[path]`), so CI runs every
//! corpus file through the same checks without libFuzzer.
//!
//! For each input: parse it fed whole and fed in pieces (split points derived from a hash of
//! the input, so they are reproducible), and check that nothing panics, that both runs produce
//! the same events and output (ignoring `100 Continue`, whose emission legitimately depends on
//! timing), and that the limits hold. The limits (default or small) and whether EOF follows are
//! also derived from the hash, so the fuzzer explores both.

use janus_http1::{
    ClientResponse, Error, Event, Limits, Method, Response, ResponseParser, ServerConn,
};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// FNV-1a: a stable hash of the input, to derive the run configuration.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Small limits so the fuzzer reaches every limit with short inputs (also the differential target's).
pub const SMALL: Limits = Limits {
    max_head_bytes: 200,
    max_headers: 6,
    max_body_bytes: 100,
    max_chunk_line_bytes: 24,
    head_timeout_ms: 10,
    idle_timeout_ms: 10,
    body_timeout_ms: 10,
    max_buffer_bytes: 0,
    max_pipelined: 2,
    require_host: true,
};

struct Config {
    limits: Limits,
    eof: bool,
    cuts: Vec<usize>,
}

fn config(data: &[u8]) -> Config {
    let mut h = fnv1a(data);
    let limits = if h & 1 == 0 { Limits::DEFAULT } else { SMALL };
    let eof = h & 2 == 0;
    let mut cuts = Vec::new();
    let mut covered = 0;
    while covered < data.len() {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        let n = 1 + (h % 17) as usize;
        cuts.push(n);
        covered += n;
    }
    Config { limits, eof, cuts }
}

#[derive(Debug, PartialEq)]
struct ServerOutcome {
    events: Vec<Event>,
    output: Vec<u8>,
    should_close: bool,
}

fn drain(conn: &mut ServerConn, events: &mut Vec<Event>, output: &mut Vec<u8>) {
    while let Some(ev) = conn.poll(0) {
        if let Event::Request(req) = &ev {
            let resp = Response::new(200).with_body(req.body.clone());
            conn.respond(&resp)
                .expect("a delivered request accepts a valid response");
        }
        events.push(ev);
    }
    output.extend_from_slice(&conn.take_output());
}

fn run_server(limits: Limits, input: &[u8], cuts: &[usize], eof: bool) -> ServerOutcome {
    let mut conn = ServerConn::new(limits);
    let (mut events, mut output) = (Vec::new(), Vec::new());
    let mut rest = input;
    let mut cuts = cuts.iter();
    while !rest.is_empty() {
        let n = cuts
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (mut piece, tail) = rest.split_at(n);
        rest = tail;
        let mut stalls = 0;
        while !piece.is_empty() {
            let took = conn.feed(piece);
            piece = &piece[took..];
            drain(&mut conn, &mut events, &mut output);
            if took == 0 {
                stalls += 1;
                assert!(
                    stalls < 3,
                    "feed stalled although every request was answered"
                );
            }
        }
    }
    if eof {
        conn.feed_eof();
    }
    drain(&mut conn, &mut events, &mut output);
    ServerOutcome {
        events,
        output,
        should_close: conn.should_close(),
    }
}

/// A third run with a clock that jumps around (forwards, backwards, past every timeout) and
/// answers delayed by one poll: only the invariants are checked, since timeouts legitimately
/// depend on when bytes arrive.
fn run_server_timed(limits: Limits, input: &[u8], cuts: &[usize], seed: u64) {
    let mut conn = ServerConn::new(limits);
    let mut now = seed % 100_000;
    let mut owed = 0usize;
    let mut errors = 0usize;
    let mut after_error = 0usize;
    let mut rest = input;
    let mut cuts = cuts.iter();
    let mut step = seed;
    for iteration in 0.. {
        assert!(iteration < 1_000_000, "the connection never finished");
        step = step.rotate_left(7) ^ 0x9e37_79b9;
        now = match step % 5 {
            0 => now.wrapping_sub(step % 1000),
            1 => now.saturating_add(step % 40_000),
            _ => now.saturating_add(step % 50),
        };
        if owed > 0 {
            conn.respond(&Response::new(204))
                .expect("answer owed request");
            owed -= 1;
        }
        while let Some(ev) = conn.poll(now) {
            if errors > 0 {
                after_error += 1;
            }
            match ev {
                Event::Request(_) => owed += 1,
                Event::Error(_) => errors += 1,
                Event::IdleTimeout => {}
            }
        }
        let _ = conn.next_deadline();
        let n = conn.output().len();
        conn.consume_output(n / 2 + 1);
        if rest.is_empty() {
            conn.feed_eof();
            if owed == 0 && conn.poll(now).is_none() {
                break;
            }
        } else {
            let n = cuts
                .next()
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            let took = conn.feed(&rest[..n]);
            rest = &rest[took..];
        }
    }
    assert!(errors <= 1, "more than one error");
    assert_eq!(after_error, 0, "events after an error");
}

fn strip_continue(output: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(output.len());
    let mut i = 0;
    while i < output.len() {
        if output[i..].starts_with(CONTINUE) {
            i += CONTINUE.len();
        } else {
            out.push(output[i]);
            i += 1;
        }
    }
    out
}

/// Checks one server-side input (see the module docs). Panics on any violation.
pub fn check_server(data: &[u8]) {
    let cfg = config(data);
    run_server_timed(cfg.limits, data, &cfg.cuts, fnv1a(data));
    let whole = run_server(cfg.limits, data, &[], cfg.eof);
    let split = run_server(cfg.limits, data, &cfg.cuts, cfg.eof);
    assert_eq!(whole.events, split.events, "events depend on split points");
    assert_eq!(
        strip_continue(&whole.output),
        strip_continue(&split.output),
        "output depends on split points"
    );
    assert_eq!(whole.should_close, split.should_close);

    let errors = whole
        .events
        .iter()
        .filter(|e| matches!(e, Event::Error(_)))
        .count();
    assert!(errors <= 1, "more than one error");
    if errors == 1 {
        assert!(
            matches!(whole.events.last(), Some(Event::Error(_))),
            "events after an error"
        );
        assert!(whole.should_close, "connection stays open after an error");
    }
    for ev in &whole.events {
        match ev {
            Event::Request(r) => {
                assert!(
                    r.body.len() <= cfg.limits.max_body_bytes,
                    "body over the limit"
                );
                assert!(
                    r.headers.len() <= cfg.limits.max_headers,
                    "too many headers delivered"
                );
                assert!(
                    r.path.starts_with('/') || r.path == "*",
                    "bad path {:?}",
                    r.path
                );
            }
            Event::Error(e) => {
                let s = e.status();
                assert!((400..600).contains(&s), "error status {s}");
                let line = format!("HTTP/1.1 {s} ");
                assert!(
                    whole
                        .output
                        .windows(line.len())
                        .any(|w| w == line.as_bytes()),
                    "error response not written"
                );
            }
            Event::IdleTimeout => panic!("idle timeout without time passing"),
        }
    }
}

fn run_client(
    limits: Limits,
    input: &[u8],
    cuts: &[usize],
    head: bool,
    eof: bool,
) -> Option<Result<ClientResponse, Error>> {
    let method = if head { Method::Head } else { Method::Get };
    let mut p = ResponseParser::new(limits, &method);
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
        if p.feed(piece) < piece.len() {
            break;
        }
        if let Some(r) = p.poll(0) {
            assert!(result.is_none(), "two results for one response");
            result = Some(r);
        }
    }
    if eof {
        p.feed_eof();
    }
    if let Some(r) = p.poll(0) {
        assert!(result.is_none(), "two results for one response");
        result = Some(r);
    }
    result
}

/// Checks one client-side input (a response from upstream). Panics on any violation.
pub fn check_client(data: &[u8]) {
    let cfg = config(data);
    let head = fnv1a(data) & 4 == 0;
    let whole = run_client(cfg.limits, data, &[], head, cfg.eof);
    let split = run_client(cfg.limits, data, &cfg.cuts, head, cfg.eof);
    // A buffer that fills up mid-way (tiny limits) may stop the split run earlier; compare only
    // when the whole run fit in the buffer.
    if data.len() <= cfg.limits.buffer_capacity() {
        assert_eq!(whole, split, "result depends on split points");
    }
    if let Some(Ok(r)) = &whole {
        assert!(
            r.body.len() <= cfg.limits.max_body_bytes,
            "body over the limit"
        );
        assert!(r.status >= 200 && r.status <= 999, "status {}", r.status);
        if head {
            assert!(r.body.is_empty(), "body for HEAD");
        }
    }
}
