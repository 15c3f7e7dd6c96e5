//! Port I/O. Legal at CPL3 because the boot code sets IOPL=3.

/// Writes a byte to an I/O port.
///
/// # Safety
/// The caller must ensure the write has no effect on memory safety (e.g. it does not program a
/// DMA engine to overwrite memory Rust owns).
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller guarantees the device side effect is harmless; `out` touches no memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reading some ports has device side effects.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; `in` touches no memory.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Reads a 32-bit value from an I/O port.
///
/// # Safety
/// As for [`inb`].
#[inline]
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `inb`.
    unsafe {
        core::arch::asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes `bytes` to an I/O port with one `rep outsb` (KVM forwards a string write to the device
/// model in one exit instead of one per byte).
///
/// # Safety
/// As for [`outb`].
#[inline]
pub unsafe fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: as for `outb`; `outsb` only reads `bytes` (RSI..RSI+RCX, direction flag clear as
    // the ABI guarantees).
    unsafe {
        core::arch::asm!(
            "rep outsb",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(readonly, nostack, preserves_flags)
        )
    }
}
