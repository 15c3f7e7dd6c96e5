//! Differential target: the unix build's HTTP front (`backend_unix::conn::Front`, the sans-IO part
//! of its tokio connection loop) against janus-http1's `ServerConn` driven the way the uk build's
//! connection loop drives it (`backend-uk/src/conn.rs`, `serve_conn`; that crate is a no_std kernel
//! and cannot be linked here, so its loop is restated below step for step). The same bytes, cut at
//! different places for each side (a socket may deliver them in any pieces), must give the same
//! verdicts (requests with their method, target and body, or the refusal status), the same answer
//! bytes (ignoring `100 Continue`, which depends on timing) and the same close decision.
#![no_main]

use backend_unix::conn::Front;
use janus_http1::{Event, Limits, Response, ServerConn};
use janus_http1_fuzz::SMALL;
use libfuzzer_sys::fuzz_target;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[derive(Debug, PartialEq)]
enum Verdict {
    Request(String, String, Vec<u8>),
    Refused(u16),
    Idle,
}

#[derive(Debug, PartialEq)]
struct Outcome {
    verdicts: Vec<Verdict>,
    output: Vec<u8>,
    closed: bool,
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn cuts(data: &[u8], mut h: u64) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        // Mostly small pieces, sometimes a whole socket read's worth.
        let n = if h % 7 == 0 {
            8192
        } else {
            1 + (h % 29) as usize
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fn answer(event: &Event) -> Option<Response> {
    match event {
        Event::Request(req) => Some(Response::new(200).with_body(req.body.clone())),
        _ => None,
    }
}

fn verdict(event: &Event) -> Verdict {
    match event {
        Event::Request(r) => Verdict::Request(
            r.method.as_str().to_string(),
            r.target.clone(),
            r.body.clone(),
        ),
        Event::Error(e) => Verdict::Refused(e.status()),
        Event::IdleTimeout => Verdict::Idle,
    }
}

/// The uk build's loop (`serve_conn`), with reads coming from `pieces` then EOF (if `eof`).
fn uk(limits: Limits, pieces: &[&[u8]], eof: bool) -> Outcome {
    let mut conn = ServerConn::new(limits);
    let mut pending: Vec<u8> = Vec::new();
    let mut verdicts = Vec::new();
    let mut output = Vec::new();
    let mut reads = pieces.iter();
    let mut eof_sent = false;
    let mut spins = 0;
    loop {
        if !pending.is_empty() {
            let taken = conn.feed(&pending);
            pending.drain(..taken);
        }
        while let Some(event) = conn.poll(0) {
            verdicts.push(verdict(&event));
            if let Some(resp) = answer(&event) {
                conn.respond(&resp).expect("valid answer");
            }
            if !pending.is_empty() {
                let taken = conn.feed(&pending);
                pending.drain(..taken);
            }
        }
        output.extend_from_slice(&conn.take_output());
        if conn.should_close() {
            return Outcome {
                verdicts,
                output,
                closed: true,
            };
        }
        if !pending.is_empty() {
            spins += 1;
            assert!(spins < 100_000, "uk loop makes no progress");
            continue;
        }
        match reads.next() {
            Some(piece) => pending.extend_from_slice(piece),
            None if eof && !eof_sent => {
                eof_sent = true;
                conn.feed_eof();
            }
            // The socket has nothing more (or the peer is gone and the codec saw it).
            None => {
                return Outcome {
                    verdicts,
                    output,
                    closed: conn.should_close() || eof,
                };
            }
        }
    }
}

/// The unix build's loop (`backend_unix::conn::serve`) over its sans-IO `Front`.
fn unix(limits: Limits, pieces: &[&[u8]], eof: bool) -> Outcome {
    let mut front = Front::new(limits);
    let mut verdicts = Vec::new();
    let mut output = Vec::new();
    let mut reads = pieces.iter();
    loop {
        while let Some(event) = front.next_event(0) {
            verdicts.push(verdict(&event));
            if let Some(resp) = answer(&event) {
                front.conn().respond(&resp).expect("valid answer");
            }
        }
        output.extend_from_slice(&front.conn().take_output());
        if front.done() {
            return Outcome {
                verdicts,
                output,
                closed: true,
            };
        }
        assert!(
            front.wants_read(),
            "the unix loop would wait for room in the codec with nothing to do"
        );
        match reads.next() {
            Some(piece) => front.on_bytes(piece),
            None if eof => front.on_eof(),
            None => {
                return Outcome {
                    verdicts,
                    output,
                    closed: false,
                };
            }
        }
    }
}

fn strip_continue(mut out: Vec<u8>) -> Vec<u8> {
    while let Some(i) = out.windows(CONTINUE.len()).position(|w| w == CONTINUE) {
        out.drain(i..i + CONTINUE.len());
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let h = fnv1a(data, 0);
    let limits = if h & 1 == 0 { Limits::DEFAULT } else { SMALL };
    let eof = h & 2 == 0;
    let a = uk(limits, &cuts(data, fnv1a(data, 1)), eof);
    let b = unix(limits, &cuts(data, fnv1a(data, 2)), eof);
    assert_eq!(a.verdicts, b.verdicts, "verdicts differ");
    assert_eq!(
        strip_continue(a.output),
        strip_continue(b.output),
        "answers differ"
    );
    assert_eq!(a.closed, b.closed, "close decisions differ");
});
