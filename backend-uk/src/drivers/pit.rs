//! The 8254 PIT: TSC calibration (channel 2) and one-shot wake-up timers (channel 0, IRQ0).

use crate::arch::port::{inb, outb};

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Measures the TSC frequency against PIT channel 2 over `ms` milliseconds (max 50).
pub fn calibrate_tsc(ms: u64) -> u64 {
    let count = (PIT_HZ * ms.min(50) / 1000) as u16;
    // SAFETY: port 0x61 gates channel 2 (speaker off); 0x42/0x43 program channel 2. No memory
    // effects.
    let (t0, t1) = unsafe {
        outb(0x61, (inb(0x61) & !0x02) | 0x01);
        outb(0x43, 0xb0);
        outb(0x42, count as u8);
        outb(0x42, (count >> 8) as u8);
        let t0 = crate::arch::cpu::rdtsc();
        let mut spins = 0u64;
        while inb(0x61) & 0x20 == 0 && spins < 50_000_000 {
            spins += 1;
        }
        (t0, crate::arch::cpu::rdtsc())
    };
    crate::clock::tsc_hz_from_pit(t1.wrapping_sub(t0), u64::from(count))
}

/// Arms channel 0 to raise IRQ0 once after `us` microseconds (clamped to 1 us..54 ms).
pub fn oneshot_us(us: u64) {
    let ticks = (PIT_HZ * us / 1_000_000).clamp(2, 0xffff) as u16;
    // SAFETY: channel 0, lobyte/hibyte, mode 0 (interrupt on terminal count).
    unsafe {
        outb(0x43, 0x30);
        outb(0x40, ticks as u8);
        outb(0x40, (ticks >> 8) as u8);
    }
}

/// Latches and reads channel 0's counter (used as a jitter source).
pub fn latch_read() -> u16 {
    // SAFETY: latch command for channel 0 then two reads of its counter; no memory effects.
    unsafe {
        outb(0x43, 0x00);
        let lo = inb(0x40);
        let hi = inb(0x40);
        u16::from_le_bytes([lo, hi])
    }
}
