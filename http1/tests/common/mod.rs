//! Shared test helpers: a deterministic PRNG and drivers that run bytes through the codec.
#![allow(dead_code)]

use janus_http1::{Event, Limits, Response, ServerConn};

/// xorshift64* — tiny, deterministic, good enough to pick split points and mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What a connection produced: the events (in order) and every byte written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub output: Vec<u8>,
    pub should_close: bool,
}

/// The response the test app sends: 200 with the request body echoed and the path in a header.
pub fn echo_response(event: &Event) -> Option<Response> {
    match event {
        Event::Request(req) => Some(
            Response::new(200)
                .with_header("X-Path", req.path.as_bytes())
                .with_body(req.body.clone()),
        ),
        _ => None,
    }
}

/// Polls until no event, answering every request with `echo_response`.
pub fn drain(conn: &mut ServerConn, now: u64, events: &mut Vec<Event>, output: &mut Vec<u8>) {
    while let Some(ev) = conn.poll(now) {
        if let Some(resp) = echo_response(&ev) {
            conn.respond(&resp).expect("respond to a delivered request");
        }
        events.push(ev);
    }
    output.extend_from_slice(&conn.take_output());
}

/// Feeds `input` in pieces of the given sizes (the last piece takes the rest), polling after
/// each piece at time `now`, then signals EOF if `eof`.
pub fn run_split(limits: Limits, input: &[u8], cuts: &[usize], eof: bool) -> Outcome {
    let mut conn = ServerConn::new(limits);
    let mut events = Vec::new();
    let mut output = Vec::new();
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
        // Offer the piece until taken (feed may take fewer bytes: back-pressure).
        let mut stalls = 0;
        while !piece.is_empty() {
            let took = conn.feed(piece);
            piece = &piece[took..];
            drain(&mut conn, 0, &mut events, &mut output);
            if took == 0 {
                stalls += 1;
                assert!(
                    stalls < 3,
                    "feed made no progress although all requests were answered"
                );
            }
        }
    }
    if eof {
        conn.feed_eof();
    }
    drain(&mut conn, 0, &mut events, &mut output);
    Outcome {
        events,
        output,
        should_close: conn.should_close(),
    }
}

/// Feeds everything at once.
pub fn run_whole(limits: Limits, input: &[u8], eof: bool) -> Outcome {
    run_split(limits, input, &[], eof)
}

/// Feeds one byte at a time.
pub fn run_bytewise(limits: Limits, input: &[u8], eof: bool) -> Outcome {
    run_split(limits, input, &vec![1; input.len()], eof)
}

/// Random cut sizes covering `len` bytes.
pub fn random_cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut covered = 0;
    while covered < len {
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(8),
            2 => 1 + rng.below(64),
            _ => 1 + rng.below(len.max(1)),
        };
        cuts.push(n);
        covered += n;
    }
    cuts
}

/// Removes every `100 Continue` interim response (their presence depends on how bytes were split).
pub fn strip_continue(output: &[u8]) -> Vec<u8> {
    let needle = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut out = Vec::with_capacity(output.len());
    let mut i = 0;
    while i < output.len() {
        if output[i..].starts_with(needle) {
            i += needle.len();
        } else {
            out.push(output[i]);
            i += 1;
        }
    }
    out
}

/// The requests among the events.
pub fn requests(events: &[Event]) -> Vec<&janus_http1::Request> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Request(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The errors among the events.
pub fn errors(events: &[Event]) -> Vec<janus_http1::Error> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Error(e) => Some(*e),
            _ => None,
        })
        .collect()
}

/// Parses the status codes of every response in `output` (by scanning status lines).
pub fn statuses(output: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(output);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..].get(..3).and_then(|s| s.parse().ok()))
        .collect()
}
