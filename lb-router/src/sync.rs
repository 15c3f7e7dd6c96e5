//! Synchronisation primitives, swapped for loom's under `cfg(loom)` (tokio's `src/loom/mod.rs` pattern),
//! so every shared structure of the router is model-checked by the very code that runs in production.

#[cfg(not(loom))]
#[allow(unused_imports)] // used by the loom tests' twins and kept for symmetry
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
