//! Incremental body decoding (`Content-Length`, chunked, until-close) bounded by the limits.

use alloc::vec::Vec;

use crate::chunked::{parse_chunk_line, parse_trailers};
use crate::error::Error;
use crate::headers::Headers;
use crate::limits::Limits;
use crate::wire::{BodyFraming, HeadScan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailers,
    UntilClose,
    Done,
}

/// Decodes one body from the front of an input buffer, as bytes arrive.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
    body: Vec<u8>,
    trailers: Headers,
    /// Where the trailer parser got to (the trailer section starts at the front of the buffer
    /// once reached, so offsets stay valid until it completes).
    trailer_scan: HeadScan,
}

/// Drains `n` bytes from the front of `buf` (clamped, so it cannot panic).
pub(crate) fn consume_front(buf: &mut Vec<u8>, n: usize) {
    let n = n.min(buf.len());
    buf.drain(..n);
}

impl BodyDecoder {
    /// Starts decoding a body with this framing. A `Content-Length` over the limit is refused
    /// here, before any body byte is read (413).
    pub(crate) fn new(framing: BodyFraming, limits: &Limits) -> Result<Self, Error> {
        let state = match framing {
            BodyFraming::None => State::Done,
            BodyFraming::Length(n) => {
                if n > u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX) {
                    return Err(Error::BodyTooLarge);
                }
                if n == 0 {
                    State::Done
                } else {
                    State::Length { remaining: n }
                }
            }
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::UntilClose => State::UntilClose,
        };
        Ok(BodyDecoder {
            state,
            body: Vec::new(),
            trailers: Headers::new(),
            trailer_scan: HeadScan::default(),
        })
    }

    /// Whether the whole body has been decoded.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Number of body bytes decoded so far.
    pub(crate) fn decoded_len(&self) -> usize {
        self.body.len()
    }

    /// Decodes as much as possible from the front of `buf`, removing what it used.
    /// Returns whether the body is complete.
    pub(crate) fn decode(&mut self, buf: &mut Vec<u8>, limits: &Limits) -> Result<bool, Error> {
        let mut pos: usize = 0;
        let result = self.decode_inner(buf, &mut pos, limits);
        consume_front(buf, pos);
        result.map(|()| self.is_done())
    }

    fn decode_inner(&mut self, buf: &[u8], pos: &mut usize, limits: &Limits) -> Result<(), Error> {
        let max_body = limits.max_body_bytes;
        loop {
            let rest = buf.get(*pos..).unwrap_or_default();
            match self.state {
                State::Done => return Ok(()),
                State::Length { remaining } | State::ChunkData { remaining } => {
                    if rest.is_empty() {
                        return Ok(());
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    let bytes = rest.get(..take).unwrap_or_default();
                    if self.body.len().saturating_add(bytes.len()) > max_body {
                        return Err(Error::BodyTooLarge);
                    }
                    self.body.extend_from_slice(bytes);
                    *pos = pos.saturating_add(take);
                    let left = remaining.saturating_sub(u64::try_from(take).unwrap_or(u64::MAX));
                    self.state = match (self.state, left) {
                        (State::Length { .. }, 0) => State::Done,
                        (State::Length { .. }, n) => State::Length { remaining: n },
                        (_, 0) => State::ChunkDataEnd,
                        (_, n) => State::ChunkData { remaining: n },
                    };
                }
                State::ChunkSize => {
                    let Some((size, used)) = parse_chunk_line(rest, limits.max_chunk_line_bytes)?
                    else {
                        return Ok(());
                    };
                    *pos = pos.saturating_add(used);
                    if size == 0 {
                        self.state = State::Trailers;
                    } else {
                        let total = u64::try_from(self.body.len())
                            .unwrap_or(u64::MAX)
                            .saturating_add(size);
                        if total > u64::try_from(max_body).unwrap_or(u64::MAX) {
                            return Err(Error::BodyTooLarge);
                        }
                        self.state = State::ChunkData { remaining: size };
                    }
                }
                State::ChunkDataEnd => match rest {
                    [] | [b'\r'] => return Ok(()),
                    [b'\r', b'\n', ..] => {
                        *pos = pos.saturating_add(2);
                        self.state = State::ChunkSize;
                    }
                    _ => return Err(Error::InvalidChunk("missing CRLF after chunk data")),
                },
                State::Trailers => {
                    if !self.trailer_scan.worth_parsing(rest, limits) {
                        return Ok(());
                    }
                    let Some((trailers, used)) = parse_trailers(rest, limits)? else {
                        self.trailer_scan.parsed_partial();
                        return Ok(());
                    };
                    *pos = pos.saturating_add(used);
                    self.trailers = trailers;
                    self.state = State::Done;
                }
                State::UntilClose => {
                    if self.body.len().saturating_add(rest.len()) > max_body {
                        return Err(Error::BodyTooLarge);
                    }
                    self.body.extend_from_slice(rest);
                    *pos = buf.len();
                    return Ok(());
                }
            }
        }
    }

    /// The peer closed its side: completes an until-close body, fails any other unfinished one.
    pub(crate) fn eof(&mut self) -> Result<(), Error> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(Error::UnexpectedEof),
        }
    }

    /// The decoded body and trailers.
    pub(crate) fn finish(self) -> (Vec<u8>, Headers) {
        (self.body, self.trailers)
    }
}
