//! x86-64: PVH boot (boot.s), CPU privilege layout, port I/O, TSC/RDRAND/CPUID and the CPL0 gates.
//!
//! Privilege layout (see /work/shared/UK-NOTES.md): the boot code enters long mode, installs a
//! GDT/TSS/IDT and drops to CPL3 with IOPL=3 and interrupts disabled. All Rust code runs at CPL3;
//! port I/O works there because of IOPL=3. Interrupts and exceptions enter tiny assembly stubs at
//! CPL0 on the TSS.RSP0 stack. Privileged work goes through the #GP stub, which doubles as a
//! gate: `hlt` executed at CPL3 is performed at CPL0 as `sti; hlt; cli` (so an idle VM sleeps
//! until the next interrupt) and `wrmsr` is performed with the caller's registers; both are
//! then skipped. (On this host's nested KVM, `int n` from CPL3 raises #UD and `syscall` does not
//! change privilege, while exceptions are delivered to CPL0 as on real hardware.)

pub mod cpu;
#[cfg(not(test))]
pub mod idt;
pub mod port;
#[cfg(not(test))]
pub mod start;

#[cfg(not(test))]
core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));
