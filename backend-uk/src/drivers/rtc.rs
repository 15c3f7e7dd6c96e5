//! CMOS real-time clock (ports 0x70/0x71): the wall clock at boot.

use crate::arch::port::{inb, outb};

fn read(reg: u8) -> u8 {
    // SAFETY: CMOS index/data ports; bit 7 of the index keeps NMIs disabled as before.
    unsafe {
        outb(0x70, reg | 0x80);
        inb(0x71)
    }
}

/// Reads the RTC as Unix seconds, or `None` if no RTC answers plausibly.
pub fn unix_seconds() -> Option<u64> {
    // An absent RTC reads as all-ones; an update in progress lasts under 2 ms.
    if read(0x0a) == 0xff {
        return None;
    }
    let mut spins = 0;
    while read(0x0a) & 0x80 != 0 {
        spins += 1;
        if spins > 2_000 {
            return None;
        }
    }
    let raw = [
        read(0x00),
        read(0x02),
        read(0x04),
        read(0x07),
        read(0x08),
        read(0x09),
        read(0x32),
    ];
    let status_b = read(0x0b);
    crate::clock::rtc_to_unix(raw, status_b)
}
