//! Memory: the global heap allocator and the libc memory primitives `core` expects.
#![allow(unsafe_code)]

pub mod heap;
#[cfg(not(test))]
pub mod mem;
