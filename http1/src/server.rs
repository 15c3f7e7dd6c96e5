//! Server side: one [`ServerConn`] per TCP connection; bytes in, events out, bytes out.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::body::{BodyDecoder, consume_front};
use crate::error::{Error, RespondError};
use crate::limits::Limits;
use crate::response::{Response, ResponseContext, encode_error};
use crate::wire::{
    HeadScan, Request, RequestHead, parse_request_head, request_framing, strip_leading_empty_lines,
};

/// The interim response sent for `Expect: 100-continue`.
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What [`ServerConn::poll`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete request. Answer it with [`ServerConn::respond`]; answers must follow the order
    /// in which requests were delivered (several may be delivered before the first answer when
    /// the client pipelines).
    Request(Request),
    /// The input was invalid or too slow. The error response ([`Error::status`]) is queued in
    /// the output (after the answers still owed to earlier requests); no further request is
    /// parsed, and [`ServerConn::should_close`] becomes true once the output is written.
    Error(Error),
    /// The connection sat idle (no byte of a new request) for `head_timeout_ms` after at least
    /// one exchange. Nothing is sent; close the connection once the output is written.
    IdleTimeout,
}

#[derive(Debug)]
enum State {
    /// Waiting for a request head. `since` is when the idle timer was armed (lazily, at the
    /// first `poll` in this state while nothing is owed and no byte is buffered); `first_byte`
    /// when the head timer was (at the first `poll` that saw a byte of the head).
    Head {
        since: Option<u64>,
        first_byte: Option<u64>,
    },
    /// Head received; reading the body.
    Body {
        head: Box<RequestHead>,
        decoder: BodyDecoder,
        since: u64,
    },
    /// No more requests are read (error, `Connection: close`, end of input, idle timeout).
    Closing,
}

/// The HTTP/1.1 server state of one connection (sans-IO).
///
/// See the crate docs for the driving loop. Contract:
/// - `feed` may be called with any bytes at any time; it returns how many it took.
/// - `poll(now_ms)` must be called after feeding and whenever `next_deadline` passes; it returns
///   at most one event per call, so call it until it returns `None`.
/// - Every [`Event::Request`] must be answered once with `respond`, in order.
/// - Write `output()` to the socket and `consume_output(n)` what was written; when
///   `should_close()` is true, close the connection.
#[derive(Debug)]
pub struct ServerConn {
    limits: Limits,
    input: Vec<u8>,
    output: Vec<u8>,
    state: State,
    /// Requests delivered and not yet answered, oldest first.
    owed: VecDeque<ResponseContext>,
    /// Error response to write once nothing is owed.
    pending_error: Option<Error>,
    /// `100 Continue` to write once nothing is owed (cancelled when body bytes arrive).
    pending_continue: bool,
    /// Requests delivered so far.
    served: u64,
    eof: bool,
    /// Where the head parser got to (avoids re-parsing per byte).
    scan: HeadScan,
    /// Builds the answer to a refused request (see [`ServerConn::set_error_response`]).
    error_response: Option<ErrorResponder>,
}

/// The embedder's builder of error answers.
pub type ErrorResponseFn = dyn FnMut(&Error) -> Response + Send;

struct ErrorResponder(Box<ErrorResponseFn>);

impl core::fmt::Debug for ErrorResponder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ErrorResponder")
    }
}

impl ServerConn {
    /// A new connection with these limits. The head timer starts at the first `poll`.
    pub fn new(limits: Limits) -> Self {
        ServerConn {
            limits,
            input: Vec::new(),
            output: Vec::new(),
            state: State::Head {
                since: None,
                first_byte: None,
            },
            owed: VecDeque::new(),
            pending_error: None,
            pending_continue: false,
            served: 0,
            eof: false,
            scan: HeadScan::default(),
            error_response: None,
        }
    }

    /// Lets the embedder add header fields and a body to the answers to refused requests (e.g.
    /// its own trace id). The verdict stays the codec's: the status is always [`Error::status`]
    /// and the connection closes after it (`Connection: close`), whatever `f` returns. Should the
    /// returned response not encode (an invalid header), the plain error answer is sent instead.
    pub fn set_error_response(&mut self, f: Box<ErrorResponseFn>) {
        self.error_response = Some(ErrorResponder(f));
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Offers received bytes; returns how many were taken (the rest must be offered again later).
    ///
    /// Takes everything while the buffer holds less than [`Limits::buffer_capacity`]; fewer bytes
    /// once it is full (back-pressure: call `poll` and answer requests to make room). Once the
    /// connection is closing, input is discarded and reported as taken.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        if matches!(self.state, State::Closing) {
            return data.len();
        }
        let room = self
            .limits
            .buffer_capacity()
            .saturating_sub(self.input.len());
        let take = room.min(data.len());
        self.input
            .extend_from_slice(data.get(..take).unwrap_or_default());
        if take > 0 {
            // Body bytes arrived: the client did not wait for 100 Continue, so it is not sent.
            if matches!(self.state, State::Body { .. }) {
                self.pending_continue = false;
            }
        }
        take
    }

    /// The peer closed its sending side. Requests already complete in the buffer are still
    /// delivered; a partial one is dropped (an unfinished head silently, an unfinished body
    /// as [`Error::UnexpectedEof`]).
    pub fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// Advances the state machine and returns the next event, if any.
    pub fn poll(&mut self, now_ms: u64) -> Option<Event> {
        let event = self.step(now_ms);
        self.flush_pending();
        event
    }

    fn step(&mut self, now_ms: u64) -> Option<Event> {
        loop {
            match &mut self.state {
                State::Closing => return None,
                State::Head { since, first_byte } => {
                    if self.owed.len() >= self.limits.max_pipelined.max(1) {
                        return None;
                    }
                    if strip_leading_empty_lines(&mut self.input) {
                        self.scan = HeadScan::default();
                    }
                    if self.input.is_empty() {
                        // No byte of the next head yet: the idle timer runs (unless an answer is
                        // owed: the client waits for us, so that time does not count).
                        *first_byte = None;
                        if self.eof {
                            self.state = State::Closing;
                            return None;
                        }
                        if !self.owed.is_empty() {
                            *since = None;
                            return None;
                        }
                        let idle_start = *since.get_or_insert(now_ms);
                        if elapsed(idle_start, now_ms) >= self.limits.idle_timeout_ms {
                            self.state = State::Closing;
                            return Some(Event::IdleTimeout);
                        }
                        return None;
                    }
                    // The head timer runs from the head's first byte.
                    let started = *first_byte.get_or_insert(now_ms);
                    let parsed = if self.scan.worth_parsing(&self.input, &self.limits) {
                        parse_request_head(&self.input, &self.limits)
                    } else {
                        Ok(None)
                    };
                    if let Ok(None) = parsed {
                        self.scan.parsed_partial();
                    }
                    match parsed {
                        Err(e) => return Some(self.fail(e)),
                        Ok(None) => {
                            if self.eof {
                                self.state = State::Closing;
                                return None;
                            }
                            if elapsed(started, now_ms) >= self.limits.head_timeout_ms {
                                return Some(self.fail(Error::HeadTimeout));
                            }
                            return None;
                        }
                        Ok(Some((head, used))) => {
                            consume_front(&mut self.input, used);
                            self.scan = HeadScan::default();
                            let framing = match request_framing(&head) {
                                Ok(f) => f,
                                Err(e) => return Some(self.fail(e)),
                            };
                            let expects = match head.expects_continue() {
                                Ok(x) => x,
                                Err(e) => return Some(self.fail(e)),
                            };
                            let decoder = match BodyDecoder::new(framing, &self.limits) {
                                Ok(d) => d,
                                Err(e) => return Some(self.fail(e)),
                            };
                            self.pending_continue =
                                expects && !decoder.is_done() && self.input.is_empty();
                            self.state = State::Body {
                                head: Box::new(head),
                                decoder,
                                since: now_ms,
                            };
                        }
                    }
                }
                State::Body { decoder, since, .. } => {
                    let started = *since;
                    let done = match decoder.decode(&mut self.input, &self.limits) {
                        Ok(done) => done,
                        Err(e) => return Some(self.fail(e)),
                    };
                    if decoder.decoded_len() > 0 {
                        self.pending_continue = false;
                    }
                    if !done {
                        if self.eof {
                            return Some(self.fail(Error::UnexpectedEof));
                        }
                        if elapsed(started, now_ms) >= self.limits.body_timeout_ms {
                            return Some(self.fail(Error::BodyTimeout));
                        }
                        return None;
                    }
                    self.pending_continue = false;
                    let State::Body { head, decoder, .. } = core::mem::replace(
                        &mut self.state,
                        State::Head {
                            since: None,
                            first_byte: None,
                        },
                    ) else {
                        return None;
                    };
                    let (body, trailers) = decoder.finish();
                    let request = Request::from_head(*head, body, trailers);
                    if !request.keep_alive {
                        self.state = State::Closing;
                        self.input.clear();
                    }
                    self.owed.push_back(ResponseContext::for_request(&request));
                    self.served = self.served.saturating_add(1);
                    return Some(Event::Request(request));
                }
            }
        }
    }

    fn fail(&mut self, e: Error) -> Event {
        self.state = State::Closing;
        self.input.clear();
        self.pending_continue = false;
        self.pending_error = Some(e);
        Event::Error(e)
    }

    /// Writes the queued `100 Continue` or error response once no answer is owed before it.
    fn flush_pending(&mut self) {
        if !self.owed.is_empty() {
            return;
        }
        if let Some(e) = self.pending_error.take() {
            let custom = self.error_response.as_mut().map(|f| (f.0)(&e));
            let ctx = ResponseContext {
                version: crate::wire::Version::Http11,
                is_head: false,
                keep_alive: false,
            };
            let written = custom.is_some_and(|mut resp| {
                resp.status = e.status();
                resp.encode(&ctx, &mut self.output).is_ok()
            });
            if !written {
                encode_error(&e, &mut self.output);
            }
        } else if self.pending_continue {
            self.pending_continue = false;
            self.output.extend_from_slice(CONTINUE_RESPONSE);
        }
    }

    /// Answers the oldest unanswered request: encodes `resp` into the output.
    ///
    /// A `Connection: close` in `resp` closes the connection after it. On error nothing is
    /// written and the request stays unanswered.
    pub fn respond(&mut self, resp: &Response) -> Result<(), RespondError> {
        if (100..200).contains(&resp.status) {
            return Err(RespondError::InterimStatus(resp.status));
        }
        let ctx = *self.owed.front().ok_or(RespondError::NoPendingRequest)?;
        let keep_alive = resp.encode(&ctx, &mut self.output)?;
        self.owed.pop_front();
        if !keep_alive && !matches!(self.state, State::Closing) {
            self.state = State::Closing;
            self.input.clear();
            self.pending_continue = false;
        }
        self.flush_pending();
        Ok(())
    }

    /// Bytes waiting to be written to the peer.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Marks the first `n` bytes of [`ServerConn::output`] as written (clamped to its length).
    pub fn consume_output(&mut self, n: usize) {
        consume_front(&mut self.output, n);
    }

    /// Takes all pending output at once (convenient for blocking writers and tests).
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.output)
    }

    /// Whether the connection should now be closed: it is closing (error, `Connection: close`,
    /// end of input or idle timeout), every delivered request is answered, and all output has
    /// been consumed.
    pub fn should_close(&self) -> bool {
        matches!(self.state, State::Closing)
            && self.owed.is_empty()
            && self.pending_error.is_none()
            && self.output.is_empty()
    }

    /// Number of delivered requests that still await `respond`.
    pub fn pending_responses(&self) -> usize {
        self.owed.len()
    }

    /// The earliest `now_ms` at which `poll` will report a timeout if no byte arrives, or `None`
    /// when no timer runs. Sleep until then (or until input arrives).
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.state {
            State::Head {
                first_byte: Some(s),
                ..
            } => Some(s.saturating_add(self.limits.head_timeout_ms)),
            State::Head { since: Some(s), .. } => {
                Some(s.saturating_add(self.limits.idle_timeout_ms))
            }
            State::Head { .. } => None,
            State::Body { since, .. } => Some(since.saturating_add(self.limits.body_timeout_ms)),
            State::Closing => None,
        }
    }
}

/// Milliseconds from `start` to `now`; zero if the clock went backwards.
fn elapsed(start: u64, now: u64) -> u64 {
    now.saturating_sub(start)
}
