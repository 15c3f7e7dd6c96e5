//! CPU helpers usable at CPL3: TSC, CPUID, RDRAND/RDSEED, and the CPL0 gates.

use core::sync::atomic::{AtomicU64, Ordering};

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads a counter; it is legal at CPL3 because CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Executes CPUID for `leaf`/`subleaf`.
#[inline]
pub fn cpuid(leaf: u32, subleaf: u32) -> core::arch::x86_64::CpuidResult {
    // CPUID exists on every x86-64 CPU and has no side effects.
    core::arch::x86_64::__cpuid_count(leaf, subleaf)
}

/// Whether CPUID reports RDRAND.
pub fn has_rdrand() -> bool {
    cpuid(1, 0).ecx & (1 << 30) != 0
}

/// One RDRAND attempt (retries up to 10 times, as Intel recommends).
pub fn rdrand64() -> Option<u64> {
    if !has_rdrand() {
        return None;
    }
    for _ in 0..10 {
        let mut value = 0u64;
        // SAFETY: CPUID reported RDRAND; the intrinsic writes only `value`.
        let ok = unsafe { core::arch::x86_64::_rdrand64_step(&mut value) };
        if ok == 1 {
            return Some(value);
        }
    }
    None
}

// Pending-IRQ bitmap written by the CPL0 interrupt stubs (bit n = PIC line n fired), and the
// lines the stubs mask when they fire (level-triggered ones; bit n = line n).
#[cfg(not(test))]
unsafe extern "C" {
    static janus_irq_pending: AtomicU64;
    static janus_irq_level: AtomicU64;
}

/// Marks PIC line `irq` level-triggered: its stub masks it when it fires (so it cannot storm
/// before the device is acknowledged) and [`crate::drivers::pic::unmask`] re-arms it.
#[cfg(not(test))]
pub fn set_irq_level_triggered(irq: u8) {
    // SAFETY: an 8-byte aligned .bss word the stubs only read.
    unsafe { janus_irq_level.fetch_or(1 << irq, Ordering::AcqRel) };
}

/// Whether PIC line `irq` was marked level-triggered.
#[cfg(not(test))]
pub fn irq_is_level(irq: u8) -> bool {
    // SAFETY: as above.
    unsafe { janus_irq_level.load(Ordering::Acquire) & (1 << irq) != 0 }
}

/// Takes (and clears) the set of PIC lines that fired since the last call.
#[cfg(not(test))]
pub fn take_pending_irqs() -> u64 {
    // SAFETY: `janus_irq_pending` is an 8-byte aligned .bss word that the stubs only update with
    // `lock or`; reading it as an AtomicU64 is sound.
    unsafe { janus_irq_pending.swap(0, Ordering::AcqRel) }
}

/// Host builds have no interrupt stubs.
#[cfg(test)]
pub fn take_pending_irqs() -> u64 {
    static NONE: AtomicU64 = AtomicU64::new(0);
    NONE.swap(0, Ordering::AcqRel)
}

/// Enables interrupts and halts at CPL0 (through the #GP gate) until the next interrupt, then
/// returns with interrupts disabled again. Race-free: an interrupt that became pending before the call wakes it at once.
#[cfg(not(test))]
#[inline]
pub fn halt_until_interrupt() {
    // SAFETY: `hlt` at CPL3 raises #GP; the CPL0 #GP stub recognises it, runs `sti; hlt; cli`
    // on the TSS.RSP0 stack and resumes after it. No register or memory of ours changes.
    unsafe { core::arch::asm!("hlt", options(nostack, preserves_flags)) }
}

/// Host builds: nothing to halt.
#[cfg(test)]
pub fn halt_until_interrupt() {}

/// Writes a model-specific register through the CPL0 gate.
///
/// # Safety
/// The caller must ensure the MSR write is sound (e.g. a kvmclock page address that stays valid
/// and is not otherwise used).
#[cfg(not(test))]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: `wrmsr` at CPL3 raises #GP; the CPL0 #GP stub performs it with our ecx/edx:eax
    // and resumes after it. The caller vouches for the MSR write.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    }
}
