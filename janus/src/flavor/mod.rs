//! What differs between the two builds of a service.
//!
//! - [`unix`]: a Linux process linked with backend-unix (tokio, hyper, tracing).
//! - [`uk`]: a PVH-bootable unikernel image linked with backend-uk, run under QEMU.

pub mod uk;
pub mod unix;
