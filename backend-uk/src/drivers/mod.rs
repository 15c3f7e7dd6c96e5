//! Device drivers: serial console, isa-debug-exit, PIC, PIT, CMOS RTC, PCI and virtio glue, and
//! QEMU's fw_cfg (files from the host, such as the admin token).
#![allow(unsafe_code)]

pub mod exit;
pub mod fw_cfg;
#[cfg(not(test))]
pub mod kvmclock;
#[cfg(not(test))]
pub mod lapic;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod serial;
#[cfg(not(test))]
pub mod virtio;
pub mod virtio_mmio;
