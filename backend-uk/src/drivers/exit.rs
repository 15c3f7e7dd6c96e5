//! VM exit through QEMU's isa-debug-exit device (port 0xf4): writing v exits with status (v<<1)|1.

use crate::arch::port::outl;

const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the VM exits. The QEMU process exit status is `(code << 1) | 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Orderly shutdown: QEMU exits 1.
    Shutdown = 0,
    /// A Rust panic in the service or the kernel: QEMU exits 33.
    Panic = 0x10,
    /// A CPU exception in Rust code (page fault, #GP...): QEMU exits 35.
    CpuException = 0x11,
    /// Boot could not complete (no NIC, bad command line, no memory): QEMU exits 37.
    BootFailure = 0x12,
    /// Heap exhausted: QEMU exits 39.
    OutOfMemory = 0x13,
}

impl ExitCode {
    /// The status the QEMU process exits with.
    pub const fn qemu_status(self) -> i32 {
        ((self as i32) << 1) | 1
    }
}

/// Exits the VM. If no isa-debug-exit device is present, halts forever.
pub fn exit(code: ExitCode) -> ! {
    // SAFETY: port 0xf4 is isa-debug-exit (or nothing); the write has no memory effects.
    unsafe { outl(DEBUG_EXIT_PORT, code as u32) };
    loop {
        crate::drivers::pic::mask_all();
        crate::arch::cpu::halt_until_interrupt();
    }
}

/// Prints `msg` on the serial console, then exits.
pub fn exit_with(code: ExitCode, msg: &str) -> ! {
    crate::drivers::serial::write_bytes(b"janus-uk: fatal: ");
    crate::drivers::serial::write_bytes(msg.as_bytes());
    crate::drivers::serial::write_bytes(b"\n");
    exit(code)
}
