//! Local APIC: enabled with LINT0 in ExtINT mode so the legacy PIC's interrupts reach the CPU.
//! (KVM delivers PIC interrupts only when LVT0 is an unmasked ExtINT or the APIC is disabled in
//! hardware; without firmware nobody sets LVT0 on microvm.)

const LAPIC_BASE: usize = 0xfee0_0000;
const SVR: usize = 0xf0;
const LVT0: usize = 0x350;

fn write(reg: usize, value: u32) {
    // SAFETY: the local APIC register page is identity-mapped (below 4 GiB); these registers are
    // 32-bit, 16-byte aligned; writing them has no effect on memory Rust owns.
    unsafe { core::ptr::write_volatile((LAPIC_BASE + reg) as *mut u32, value) }
}

/// Software-enables the APIC (spurious vector 0xff) and routes LINT0 as ExtINT. (LINT1 stays
/// masked, as at reset: nothing here raises NMIs; every write is a VM exit.)
pub fn route_pic() {
    write(SVR, 0x1ff);
    write(LVT0, 0x700);
}
