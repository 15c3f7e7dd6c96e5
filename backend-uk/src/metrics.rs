//! Node metrics: the shared implementation of the node protocol's `/metrics` (same names, buckets and
//! layout as backend-unix, by construction).

pub use runtime_abi::node::{Metrics, StoreOp};
