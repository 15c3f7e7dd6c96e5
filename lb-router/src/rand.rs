//! Non-cryptographic randomness for load balancing, sampling and jitter (`fastrand`'s per-thread
//! generator), and the stable hash that keeps a user on one channel and pool. Never used for
//! anything secret.

/// Next pseudo-random u64.
pub fn next_u64() -> u64 {
    fastrand::u64(..)
}

/// Uniform in `0..n` (0 when `n` is 0).
pub fn below(n: u64) -> u64 {
    if n == 0 { 0 } else { fastrand::u64(..n) }
}

/// Uniform in `[0, 1)`.
pub fn unit() -> f64 {
    fastrand::f64()
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
