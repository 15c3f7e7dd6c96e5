//! Newtypes for the things that must never travel as bare strings or integers: node ids, the pool a
//! node belongs to, its service and admin addresses, trace ids.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The id of one node, as configured and as the node reports it in `x-janus-node`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The two pools. `stable` holds lean (unikernel) nodes, `debug` holds instrumented (Linux process)
/// nodes. The router cares about a node's flavour only through its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    Stable,
    Debug,
}

impl Pool {
    pub const ALL: [Pool; 2] = [Pool::Stable, Pool::Debug];
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Stable => "stable",
            Pool::Debug => "debug",
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a node serves traffic (its service listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpstreamAddr(pub SocketAddr);

/// Where a node serves its admin API (`/health`, `/state`, `/traces/{id}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdminAddr(pub SocketAddr);

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A W3C-compatible trace id: 32 lowercase hex digits, never all zero. Kept inline (no allocation):
/// one is made for every request that arrives without one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 32]);

impl TraceId {
    /// Accepts exactly 32 hex digits (not all zero) and normalises them to lowercase.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; 32] = s.as_bytes().try_into().ok()?;
        if bytes.iter().all(u8::is_ascii_hexdigit) && bytes.iter().any(|&b| b != b'0') {
            Some(Self(bytes.map(|b| b.to_ascii_lowercase())))
        } else {
            None
        }
    }

    /// Takes the trace id out of a `traceparent` header: `00-<32hex>-<16hex>-<2hex>`.
    pub fn from_traceparent(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version.len() != 2 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        Self::parse(trace)
    }

    /// A fresh random trace id.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = [0u8; 32];
        // The low bit of the second word is set: never all zero.
        let words = [crate::rand::next_u64(), crate::rand::next_u64() | 1];
        for (i, digit) in id.iter_mut().enumerate() {
            let word = words[i / 16];
            let shift = (15 - i % 16) * 4;
            *digit = HEX[((word >> shift) & 0xf) as usize];
        }
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_parse_and_reject() {
        let t = TraceId::parse("0AF7651916CD43DD8448EB211C80319C").expect("valid");
        assert_eq!(t.as_str(), "0af7651916cd43dd8448eb211c80319c");
        assert!(TraceId::parse("00000000000000000000000000000000").is_none());
        assert!(TraceId::parse("xyz").is_none());
        let tp =
            TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            tp.expect("valid").as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            TraceId::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7")
                .is_none()
        );
        let g = TraceId::generate();
        assert_ne!(g, TraceId::generate());
        assert_eq!(
            TraceId::parse(g.as_str()),
            Some(g),
            "a generated id parses as itself"
        );
    }
}
