//! The response reader: one node answer read out of a connection buffer as its bytes arrive (the
//! head, 1xx interim answers skipped, then the body by its framing: length, chunked decoded with
//! `janus-http1`'s strict chunk parser, or until close), for exclusive connections and lanes alike.

use std::ops::Range;

use bytes::Bytes;
use http::StatusCode;

use super::{field_slots, header_map, parse_decimal};
use crate::upstream::BufferedResponse;

/// Largest response head accepted from a node.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Longest chunk-size line accepted from a node.
const MAX_CHUNK_LINE: usize = 4096;

/// A node's answer read to its end, in its connection's buffer.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub(crate) head_len: usize,
    pub(crate) body: RawBody,
    /// The connection can carry another request.
    pub(crate) reusable: bool,
}

#[derive(Debug)]
pub(crate) enum RawBody {
    /// The body as sent, at this range of the buffer.
    InBuf(Range<usize>),
    /// A chunked body, decoded.
    Decoded(Vec<u8>),
}

impl RawResponse {
    pub(crate) fn body<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match &self.body {
            RawBody::InBuf(r) => &buf[r.clone()],
            RawBody::Decoded(v) => v,
        }
    }
}

/// How one exchange failed: `Unsent`, the request could not be written; `Unanswered`, it was
/// written and nothing at all came back.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// No connection to the node could be made (lanes connect in their own task).
    Connect(String),
    Unsent(String),
    Unanswered(String),
    /// Written on a lane that had carried earlier batches, which ended before any byte of this
    /// batch's answers: most likely a stale keep-alive connection (see `transport::send`).
    Stale(String),
    Reset(String),
    CutOff(String),
    TooLarge,
}

/// How the body of an answer ends.
enum Framing {
    Empty,
    Length(usize),
    Chunked(ChunkedBody),
    UntilClose,
}

/// Reads one answer out of a connection buffer as its bytes arrive: the head (1xx interim answers
/// skipped), then the body by its framing. Shared by the exclusive connections and the lanes.
#[derive(Default)]
pub(crate) struct AnswerReader {
    /// The final answer's head once parsed: its length, body framing, whether the node closes after.
    head: Option<(usize, Framing, bool)>,
}

impl AnswerReader {
    /// The answer if `buf` (which starts with it) holds all of it, with the offset where it ends.
    pub(crate) fn step(
        &mut self,
        buf: &mut Vec<u8>,
        head_request: bool,
        max_body: usize,
    ) -> Result<Option<(RawResponse, usize)>, ExchangeError> {
        loop {
            if self.head.is_some() {
                break;
            }
            match parse_response_head(buf, head_request, max_body)? {
                HeadParse::Partial if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(ExchangeError::Reset(format!(
                        "response head larger than {MAX_RESPONSE_HEAD} bytes"
                    )));
                }
                HeadParse::Partial => return Ok(None),
                HeadParse::Interim(n) => {
                    buf.drain(..n);
                }
                HeadParse::Complete(n, framing, close) => self.head = Some((n, framing, close)),
            }
        }
        let Some((head_len, framing, close)) = &mut self.head else {
            return Ok(None);
        };
        let (head_len, close) = (*head_len, *close);
        let done = match framing {
            Framing::Empty => Some((RawBody::InBuf(head_len..head_len), head_len)),
            Framing::Length(n) => (buf.len() >= head_len + *n)
                .then(|| (RawBody::InBuf(head_len..head_len + *n), head_len + *n)),
            Framing::Chunked(chunked) => {
                if chunked.advance(buf, max_body)? {
                    Some((
                        RawBody::Decoded(std::mem::take(&mut chunked.body)),
                        chunked.pos,
                    ))
                } else {
                    None
                }
            }
            Framing::UntilClose if buf.len() - head_len > max_body => {
                return Err(ExchangeError::TooLarge);
            }
            Framing::UntilClose => None,
        };
        Ok(done.map(|(body, end)| {
            self.head = None;
            (
                RawResponse {
                    head_len,
                    body,
                    reusable: !close,
                },
                end,
            )
        }))
    }

    /// The node closed the connection: the answer if it is close-delimited, else how it failed.
    pub(crate) fn at_close(&self, buf: &[u8]) -> Result<RawResponse, ExchangeError> {
        match &self.head {
            None if buf.is_empty() => Err(ExchangeError::Unanswered(
                "connection closed before any answer".into(),
            )),
            None => Err(ExchangeError::Reset(
                "connection closed in the middle of the response head".into(),
            )),
            Some((head_len, Framing::UntilClose, _)) => Ok(RawResponse {
                head_len: *head_len,
                body: RawBody::InBuf(*head_len..buf.len()),
                reusable: false,
            }),
            Some(_) => Err(ExchangeError::CutOff(
                "connection closed before the end of the body".into(),
            )),
        }
    }

    /// A read failed: how the answer failed, by how far it had come.
    pub(crate) fn on_error(&self, buf: &[u8], e: std::io::Error) -> ExchangeError {
        match &self.head {
            None if buf.is_empty() => ExchangeError::Unanswered(e.to_string()),
            None => ExchangeError::Reset(e.to_string()),
            Some(_) => ExchangeError::CutOff(e.to_string()),
        }
    }
}

enum HeadParse {
    Partial,
    /// A 1xx interim answer of this many bytes, to skip.
    Interim(usize),
    /// A final answer's head: its length, body framing, and whether the node closes afterwards.
    Complete(usize, Framing, bool),
}

fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    max_body: usize,
) -> Result<HeadParse, ExchangeError> {
    let mut slots = field_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(HeadParse::Partial),
        Err(e) => {
            return Err(ExchangeError::Reset(format!(
                "malformed response head: {e}"
            )));
        }
    };
    let code = parsed.code.unwrap_or(0);
    if (100..200).contains(&code) {
        if code == 101 {
            return Err(ExchangeError::Reset(
                "unexpected 101 Switching Protocols".into(),
            ));
        }
        return Ok(HeadParse::Interim(n));
    }
    let mut close = parsed.version != Some(1);
    let mut length = None;
    let mut coding = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(v) = parse_decimal(h.value) else {
                return Err(ExchangeError::Reset("invalid content-length".into()));
            };
            if length.is_some_and(|l| l != v) {
                return Err(ExchangeError::Reset("conflicting content-length".into()));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            coding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let framing = if head_request || code == 204 || code == 304 {
        Framing::Empty
    } else if let Some(chunked) = coding {
        if chunked {
            Framing::Chunked(ChunkedBody {
                pos: n,
                body: Vec::new(),
                trailers: false,
            })
        } else {
            close = true;
            Framing::UntilClose
        }
    } else if let Some(len) = length {
        let len = usize::try_from(len).map_err(|_| ExchangeError::TooLarge)?;
        if len > max_body {
            return Err(ExchangeError::TooLarge);
        }
        Framing::Length(len)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok(HeadParse::Complete(n, framing, close))
}

/// Incremental decoding of a chunked body within the connection buffer.
struct ChunkedBody {
    /// Next undecoded byte in the buffer.
    pos: usize,
    body: Vec<u8>,
    trailers: bool,
}

impl ChunkedBody {
    /// Decodes what has arrived; `true` once the last chunk and the trailer section are in.
    fn advance(&mut self, buf: &[u8], max_body: usize) -> Result<bool, ExchangeError> {
        let bad = |e: janus_http1::Error| ExchangeError::CutOff(format!("bad chunked body: {e}"));
        loop {
            let rest = &buf[self.pos..];
            if self.trailers {
                let limits = janus_http1::Limits::default();
                return match janus_http1::chunked::parse_trailers(rest, &limits).map_err(bad)? {
                    Some((_, n)) => {
                        self.pos += n;
                        Ok(true)
                    }
                    None => Ok(false),
                };
            }
            let Some((size, line)) =
                janus_http1::chunked::parse_chunk_line(rest, MAX_CHUNK_LINE).map_err(bad)?
            else {
                return Ok(false);
            };
            if size == 0 {
                self.pos += line;
                self.trailers = true;
                continue;
            }
            let size = usize::try_from(size).map_err(|_| ExchangeError::TooLarge)?;
            if self.body.len().saturating_add(size) > max_body {
                return Err(ExchangeError::TooLarge);
            }
            let Some(data) = rest.get(line..line + size + 2) else {
                return Ok(false);
            };
            if !data.ends_with(b"\r\n") {
                return Err(ExchangeError::CutOff(
                    "bad chunked body: chunk not followed by CRLF".into(),
                ));
            }
            self.body.extend_from_slice(&data[..size]);
            self.pos += line + size + 2;
        }
    }
}

/// The node's answer in the buffered form of the general path.
pub(crate) fn buffered_response(buf: &[u8], raw: &RawResponse) -> BufferedResponse {
    let mut slots = field_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let _ = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        &buf[..raw.head_len],
        &mut slots,
    );
    BufferedResponse {
        status: parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY),
        headers: header_map(parsed.headers),
        body: Bytes::copy_from_slice(raw.body(buf)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_answers_are_decoded_incrementally() {
        let wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n";
        let HeadParse::Complete(n, Framing::Chunked(mut c), close) =
            parse_response_head(wire, false, 1024).expect("parses")
        else {
            panic!("chunked framing expected");
        };
        assert!(!close);
        assert_eq!(c.pos, n);
        for cut in n..wire.len() {
            let mut part = ChunkedBody {
                pos: n,
                body: Vec::new(),
                trailers: false,
            };
            assert!(
                !part.advance(&wire[..cut], 1024).expect("valid so far"),
                "done at {cut}"
            );
        }
        assert!(c.advance(wire, 1024).expect("valid"));
        assert_eq!(c.body, b"hello world");
        assert_eq!(c.pos, wire.len());
        let mut small = ChunkedBody {
            pos: n,
            body: Vec::new(),
            trailers: false,
        };
        assert!(matches!(
            small.advance(wire, 8),
            Err(ExchangeError::TooLarge)
        ));
    }

    #[test]
    fn response_framing() {
        let frame = |wire: &[u8], head: bool| match parse_response_head(wire, head, 100) {
            Ok(HeadParse::Complete(_, f, close)) => (
                match f {
                    Framing::Empty => "empty".to_owned(),
                    Framing::Length(n) => format!("len {n}"),
                    Framing::Chunked(_) => "chunked".into(),
                    Framing::UntilClose => "close".into(),
                },
                close,
            ),
            Ok(HeadParse::Interim(_)) => ("interim".into(), false),
            Ok(HeadParse::Partial) => ("partial".into(), false),
            Err(ExchangeError::TooLarge) => ("too large".into(), true),
            Err(_) => ("error".into(), true),
        };
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            ("len 5".into(), false)
        );
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            ("empty".into(), false)
        );
        assert_eq!(
            frame(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            ("empty".into(), false)
        );
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\n\r\n", false),
            ("close".into(), true)
        );
        assert_eq!(
            frame(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            ("len 1".into(), true)
        );
        assert_eq!(
            frame(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            ("len 1".into(), true)
        );
        assert_eq!(frame(b"HTTP/1.1 100 Continue\r\n\r\n", false).0, "interim");
        assert_eq!(
            frame(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", false).0,
            "too large"
        );
        assert_eq!(
            frame(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .0,
            "error"
        );
        assert_eq!(frame(b"HTTP/1.1 200 OK\r\nContent-Len", false).0, "partial");
    }
}
