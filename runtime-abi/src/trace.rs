//! Trace ids: 128-bit W3C trace-context ids, shared by both backends and the router.
//!
//! MUST rules for backends: a backend MUST take a request's trace id from a valid `traceparent` header,
//! else from a valid `x-janus-trace-id` header, else generate one from its entropy source
//! ([`TraceId::from_request_headers`] implements this order), and MUST echo it in `x-janus-trace-id`.

use alloc::string::String;
use core::fmt;

use crate::http::Headers;

/// A 128-bit trace id, printed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

impl TraceId {
    /// The all-zero id (invalid in W3C trace context; used before a backend assigns one).
    pub const ZERO: TraceId = TraceId([0; 16]);

    /// Parses 32 hex digits (either case); the all-zero id is rejected as W3C requires.
    pub fn parse_hex(s: &str) -> Option<TraceId> {
        let s = s.trim();
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, chunk) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16)?;
            let lo = (chunk[1] as char).to_digit(16)?;
            out[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        let id = TraceId(out);
        (id != TraceId::ZERO).then_some(id)
    }

    /// Parses a W3C `traceparent` value `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
    pub fn from_traceparent(value: &str) -> Option<TraceId> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(version, 2) || version == "ff" || !hex(parent, 16) || !hex(flags, 2) {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        TraceId::parse_hex(trace)
    }

    /// The trace id a request carries: `traceparent` first, then `x-janus-trace-id`.
    pub fn from_request_headers(headers: &Headers) -> Option<TraceId> {
        headers
            .get("traceparent")
            .and_then(TraceId::from_traceparent)
            .or_else(|| headers.get("x-janus-trace-id").and_then(TraceId::parse_hex))
    }

    /// A fresh id from 16 random bytes (never the zero id).
    pub fn from_random(mut bytes: [u8; 16]) -> TraceId {
        if bytes == [0; 16] {
            bytes[15] = 1;
        }
        TraceId(bytes)
    }

    /// 32 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(hex_digit(b >> 4));
            s.push(hex_digit(b & 0xf));
        }
        s
    }
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_traceparent_and_fallback_header() {
        let mut h = Headers::new();
        h.append("x-janus-trace-id", "0123456789abcdef0123456789ABCDEF");
        let id = TraceId::from_request_headers(&h).expect("fallback header");
        assert_eq!(id.to_hex(), "0123456789abcdef0123456789abcdef");
        h.append(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let id = TraceId::from_request_headers(&h).expect("traceparent wins");
        assert_eq!(id.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn rejects_invalid_ids() {
        assert_eq!(TraceId::parse_hex("00000000000000000000000000000000"), None);
        assert_eq!(TraceId::parse_hex("0123"), None);
        assert_eq!(TraceId::parse_hex("g123456789abcdef0123456789abcdef"), None);
        assert_eq!(
            TraceId::from_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
            None
        );
        assert_eq!(TraceId::from_random([0; 16]).to_hex().len(), 32);
        assert_ne!(TraceId::from_random([0; 16]), TraceId::ZERO);
    }
}
