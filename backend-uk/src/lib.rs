//! Janus unikernel backend: a `no_std` kernel library that boots a `runtime_abi::Service` as a
//! PVH-bootable x86-64 ELF under QEMU/KVM (microvm or q35), Firecracker or cloud-hypervisor.
//!
//! Layers, bottom up:
//! - [`arch`] (unsafe): PVH entry, long mode, paging, GDT/TSS/IDT, the CPL3 drop, CPL0 gates.
//! - [`mm`] (unsafe): heap allocator and libc memory primitives.
//! - [`drivers`] (unsafe): serial, isa-debug-exit, PIC, PIT, RTC, PCI/virtio-mmio discovery,
//!   virtio-net as a smoltcp `phy::Device`.
//! - Safe, host-testable logic: [`cmdline`], [`clock`], [`entropy`], [`console`], [`executor`],
//!   [`idle`] (adaptive halt polling), [`metrics`], [`boot`] (memory map).
//! - [`net`]: smoltcp interface, TCP listener pools and async sockets.
//! - [`node`]: the Janus node protocol around a `runtime_abi::Service`; [`providers`]: the
//!   capabilities it hands the service (store, clock, entropy); [`panic_state`]: what the panic
//!   path reports (the request in flight, the state dump); `kernel`: the boot of a service and
//!   its listeners; `conn`: one connection's loop; [`rt`]: bring-up, run loop and the [`entry!`]
//!   macro.
//!
//! Everything runs at CPL3 on one CPU with interrupts disabled; the kernel loop polls the receive
//! ring briefly, then idles through the `hlt` gate (#GP from CPL3) and wakes on the PIT one-shot
//! timer or the NIC interrupt.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod arch;
pub mod boot;
pub mod clock;
pub mod cmdline;
#[cfg(not(test))]
pub mod conn;
pub mod console;
pub mod drivers;
pub mod entropy;
pub mod executor;
pub mod idle;
#[cfg(not(test))]
pub mod kernel;
pub mod log;
pub mod metrics;
pub mod mm;
#[cfg(not(test))]
pub mod net;
pub mod node;
pub mod panic_state;
pub mod providers;
pub mod rt;
#[cfg(not(test))]
pub mod upstream;
