//! Retired node addresses: a connection made to an address before the address was retired is never
//! used again, by any worker.
//!
//! An address is retired when the node there leaves the topology or joins it (discovery, the admin
//! API, a reload that changes it), when the engine reports it stopped, and when health checks or
//! passive ejection take it out of rotation. A deployment engine may destroy a VM and start a new
//! one at the same address: the old VM sent no FIN (it vanished), so a pooled keep-alive connection
//! to it looks open and quiet, and the new node answers whatever is written on it with a reset. The
//! router would take that reset for the new node's fault.
//!
//! Every connection (exclusive or lane) carries the generation read before it connected; retiring
//! an address moves the one global generation on and records it for the address. A connection is
//! current while its generation is the global one (one atomic load: the common case), or, after
//! some retirement, while its address was not retired since it connected (then it carries the
//! newer generation, so the lookup happens once per connection and retirement).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

/// Moved on by every retirement.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Each retired address with the generation of its last retirement (a short list: one entry per
/// node address ever retired).
static RETIRED: RwLock<Vec<(SocketAddr, u64)>> = RwLock::new(Vec::new());

/// The generation a connection made now carries (read before connecting).
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Connections made to `addr` until now are not to be used again.
pub fn retire(addr: SocketAddr) {
    let mut retired = RETIRED.write().unwrap_or_else(PoisonError::into_inner);
    let g = GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    match retired.iter_mut().find(|(a, _)| *a == addr) {
        Some(entry) => entry.1 = g,
        None => retired.push((addr, g)),
    }
}

/// Whether a connection to `addr` made at generation `*made` may still be used; if so, `*made`
/// moves to the current generation.
pub(crate) fn still_current(addr: SocketAddr, made: &mut u64) -> bool {
    let now = generation();
    if *made == now {
        return true;
    }
    let retired = RETIRED.read().unwrap_or_else(PoisonError::into_inner);
    let at = retired.iter().find(|(a, _)| *a == addr).map_or(0, |e| e.1);
    if at > *made {
        return false;
    }
    *made = now;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_address_retires_older_connections_only() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let (mut old_a, mut old_b) = (generation(), generation());
        retire(a);
        let mut new_a = generation();
        assert!(!still_current(a, &mut old_a));
        assert!(still_current(b, &mut old_b), "another address stays usable");
        assert!(still_current(a, &mut new_a), "made after the retirement");
        retire(a);
        assert!(!still_current(a, &mut new_a));
    }
}
