//! The 8254 PIT: TSC calibration (channel 2) and one-shot wake-up timers (channel 0, IRQ0).

use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::port::{inb, outb};

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// Measures the TSC frequency against PIT channel 0 (read back with latch commands) over
/// `ms` milliseconds. Channel 2's gate (port 0x61) does not exist on microvm, channel 0 does.
pub fn calibrate_tsc(ms: u64) -> u64 {
    let target = PIT_HZ * ms / 1000;
    ONESHOT_MODE.store(false, Ordering::Relaxed);
    // SAFETY: channel 0, lobyte/hibyte, mode 2 (rate generator), count 65536. No memory effects.
    unsafe {
        outb(0x43, 0x34);
        outb(0x40, 0);
        outb(0x40, 0);
    }
    let mut last = latch_read();
    let t0 = crate::arch::cpu::rdtsc();
    let mut elapsed: u64 = 0;
    let mut reads = 0u32;
    while elapsed < target {
        let now = latch_read();
        // The counter counts down and wraps at 0 -> 65535.
        elapsed += u64::from(last.wrapping_sub(now));
        last = now;
        reads += 1;
        if reads > 5_000_000 {
            return 0;
        }
    }
    let t1 = crate::arch::cpu::rdtsc();
    crate::clock::tsc_hz_from_pit(t1.wrapping_sub(t0), elapsed)
}

/// Whether channel 0 is in the one-shot mode [`oneshot_us`] sets (hibyte-only count, mode 0).
static ONESHOT_MODE: AtomicBool = AtomicBool::new(false);

/// Arms channel 0 to raise IRQ0 once after about `us` microseconds (rounded up to the count's
/// 256-tick (~215 us) steps, clamped to 215 us..54 ms). The count is written as its high byte
/// only: one port write (one VM exit) per arming instead of three, the mode word once.
pub fn oneshot_us(us: u64) {
    let steps = (PIT_HZ * us / 1_000_000).div_ceil(256).clamp(1, 0xff) as u8;
    // SAFETY: channel 0, access "high byte only", mode 0 (interrupt on terminal count); writing
    // the count (re)starts the countdown. No memory effects.
    unsafe {
        if !ONESHOT_MODE.swap(true, Ordering::Relaxed) {
            outb(0x43, 0x20);
        }
        outb(0x40, steps);
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
