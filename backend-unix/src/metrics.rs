//! Node metrics: the shared implementation of the node protocol's `/metrics` (same names, buckets and
//! layout as backend-uk, by construction).

pub use runtime_abi::node::{Metrics, StoreOp};

/// A latency as the microseconds [`Metrics::record_request`] takes.
pub fn micros(latency: std::time::Duration) -> u64 {
    u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)
}
