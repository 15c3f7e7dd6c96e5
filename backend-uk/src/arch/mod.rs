//! Architecture support. Each architecture is re-exported under the same names so callers write
//! no `cfg`. Only x86-64 exists; all of its `unsafe` is documented at the call site.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
