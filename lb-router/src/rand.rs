//! A small, fast, non-cryptographic random source (per-thread xorshift seeded from the clock and a
//! counter) for load balancing and sampling decisions. Never used for anything secret.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    let s = h.finish();
    if s == 0 { 0x9E37_79B9_7F4A_7C15 } else { s }
}

/// Next pseudo-random u64 (xorshift64*).
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Uniform in `0..n` (n > 0); slight modulo bias is irrelevant for balancing.
pub fn below(n: u64) -> u64 {
    if n == 0 { 0 } else { next_u64() % n }
}

/// Uniform in `[0, 1)`.
pub fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A stable 64-bit hash (FNV-1a) used for consistent user -> channel/pool assignment. Stable across
/// runs and processes, so a user stays on their channel after a router restart.
pub fn stable_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche so that nearby ids spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}
