//! Wire layer for `Transfer-Encoding: chunked` (RFC 9112 §7.1): chunk-size lines and trailers.
//!
//! The grammar is applied strictly, since lenient chunk parsing is a classic source of request
//! smuggling between a proxy and a server that disagree: lines must end in CRLF (a bare LF is
//! rejected), the size is one or more hex digits with no sign or prefix, and extensions may only
//! contain visible characters, spaces and tabs.

use crate::error::Error;
use crate::headers::{Headers, trim_ows};
use crate::limits::Limits;

/// Parses a chunk-size line (`1a;name=value\r\n`) at the start of `buf`.
///
/// Returns the chunk size and the length of the line including CRLF, or `Ok(None)` when the line
/// is not complete yet. A line longer than `max_line` bytes (including CRLF) is an error.
pub fn parse_chunk_line(buf: &[u8], max_line: usize) -> Result<Option<(u64, usize)>, Error> {
    let window = buf.get(..max_line).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= max_line {
            Err(Error::InvalidChunk("chunk-size line too long"))
        } else {
            Ok(None)
        };
    };
    let line = window.get(..lf).unwrap_or_default();
    let Some(content) = line.strip_suffix(b"\r") else {
        return Err(Error::InvalidChunk(
            "chunk-size line not terminated by CRLF",
        ));
    };
    let digits = content
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(content.len());
    if digits == 0 {
        return Err(Error::InvalidChunk("missing chunk size"));
    }
    let (hex, rest) = content.split_at_checked(digits).unwrap_or((content, &[]));
    let mut size: u64 = 0;
    for &b in hex {
        let d = match b {
            b'0'..=b'9' => b.wrapping_sub(b'0'),
            b'a'..=b'f' => b.wrapping_sub(b'a').wrapping_add(10),
            b'A'..=b'F' => b.wrapping_sub(b'A').wrapping_add(10),
            _ => return Err(Error::InvalidChunk("invalid chunk size")),
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(Error::InvalidChunk("chunk size overflows"))?;
    }
    let rest = trim_ows(rest);
    if !rest.is_empty() {
        let valid_ext = rest.first() == Some(&b';')
            && rest
                .iter()
                .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80);
        if !valid_ext {
            return Err(Error::InvalidChunk("invalid chunk extension"));
        }
    }
    Ok(Some((size, lf.saturating_add(1))))
}

/// Parses the trailer section after the last chunk (zero or more fields and an empty line).
///
/// Returns the fields and the bytes consumed, or `Ok(None)` if incomplete. The section is bound
/// by `limits.max_head_bytes` and `limits.max_headers` (431 when over).
pub fn parse_trailers(buf: &[u8], limits: &Limits) -> Result<Option<(Headers, usize)>, Error> {
    let window = buf.get(..limits.max_head_bytes).unwrap_or(buf);
    // Only complete lines are examined (see `wire::parse_request_head`).
    let lines_end = window
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i.saturating_add(1));
    let window = window.get(..lines_end).unwrap_or_default();
    let mut raw = crate::wire::header_slots(window, limits);
    match httparse::parse_headers(window, &mut raw) {
        Ok(httparse::Status::Complete((n, fields))) => {
            let mut headers = Headers::new();
            for f in fields {
                headers.push(f.name, trim_ows(f.value));
            }
            Ok(Some((headers, n)))
        }
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                Err(Error::HeadTooLarge)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => Err(Error::TooManyHeaders),
        Err(_) => Err(Error::InvalidChunk("invalid trailer section")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lines() {
        assert_eq!(parse_chunk_line(b"a\r\n", 64), Ok(Some((10, 3))));
        assert_eq!(
            parse_chunk_line(b"FF;x=\"y z\"\r\nrest", 64),
            Ok(Some((255, 12)))
        );
        assert_eq!(
            parse_chunk_line(b"0000000000000000000001\r\n", 64),
            Ok(Some((1, 24)))
        );
        assert_eq!(
            parse_chunk_line(b"ffffffffffffffff\r\n", 64),
            Ok(Some((u64::MAX, 18)))
        );
        assert!(parse_chunk_line(b"10000000000000000\r\n", 64).is_err());
        assert_eq!(parse_chunk_line(b"a", 64), Ok(None));
        assert_eq!(parse_chunk_line(b"a\r", 64), Ok(None));
        assert_eq!(parse_chunk_line(b"", 64), Ok(None));
        assert!(parse_chunk_line(b"a\n", 64).is_err());
        assert!(parse_chunk_line(b"a;\x7f\r\n", 64).is_err());
        // Length limit includes CRLF: 4 bytes allowed, 5 refused.
        assert_eq!(parse_chunk_line(b"ab\r\n", 4), Ok(Some((0xab, 4))));
        assert!(parse_chunk_line(b"abc\r\n", 4).is_err());
        assert_eq!(parse_chunk_line(b"abc", 4), Ok(None));
        assert!(parse_chunk_line(b"abcd", 4).is_err());
        assert!(parse_chunk_line(b"a\r\n", 0).is_err());
    }

    #[test]
    fn trailers() {
        let l = Limits::DEFAULT;
        let (h, n) = parse_trailers(b"\r\nnext", &l).unwrap().unwrap();
        assert!(h.is_empty());
        assert_eq!(n, 2);
        let (h, n) = parse_trailers(b"A: 1\r\nB:2\r\n\r\n", &l).unwrap().unwrap();
        assert_eq!((h.len(), n), (2, 13));
        assert_eq!(parse_trailers(b"A: 1\r\n", &l), Ok(None));
    }
}
