//! x86-64: PVH boot (boot.s), CPU privilege layout, port I/O, TSC/RDRAND/CPUID and the CPL0 gates.
//!
//! Privilege layout (see /work/shared/UK-NOTES.md): the boot code enters long mode, installs a
//! GDT/TSS/IDT and drops to CPL3 with IOPL=3 and interrupts disabled. All Rust code runs at CPL3;
//! port I/O works there because of IOPL=3. Interrupts and exceptions enter tiny assembly stubs at
//! CPL0 on the TSS.RSP0 stack. Privileged work is reached through two DPL3 software-interrupt
//! gates: `int 0x80` (enable interrupts and `hlt` until the next interrupt) and `int 0x81`
//! (`wrmsr`).

pub mod cpu;
pub mod port;
#[cfg(not(test))]
pub mod start;

#[cfg(not(test))]
core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));
