//! Time: a TSC-based monotonic clock with a measured frequency, and the wall clock at boot.
//! The arithmetic is host-testable; the kernel feeds it TSC and RTC readings.

use core::sync::atomic::{AtomicU64, Ordering};

/// TSC frequency from a PIT measurement: `tsc_delta` TSC ticks elapsed over `pit_ticks` PIT ticks.
pub fn tsc_hz_from_pit(tsc_delta: u64, pit_ticks: u64) -> u64 {
    if pit_ticks == 0 {
        return 0;
    }
    (u128::from(tsc_delta) * u128::from(crate::drivers::pit::PIT_HZ) / u128::from(pit_ticks)) as u64
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0f)
}

/// Converts raw CMOS registers `[sec, min, hour, day, month, year, century]` to Unix seconds.
/// `status_b` bit 2 = binary mode, bit 1 = 24-hour mode. Returns `None` for implausible values.
pub fn rtc_to_unix(raw: [u8; 7], status_b: u8) -> Option<u64> {
    let binary = status_b & 0x04 != 0;
    let conv = |v: u8| if binary { v } else { bcd(v) };
    let sec = conv(raw[0]);
    let min = conv(raw[1]);
    let pm = raw[2] & 0x80 != 0;
    let mut hour = conv(raw[2] & 0x7f);
    if status_b & 0x02 == 0 {
        hour %= 12;
        if pm {
            hour += 12;
        }
    }
    let day = conv(raw[3]);
    let month = conv(raw[4]);
    let year = conv(raw[5]);
    let century = conv(raw[6]);
    let century = if (19..=21).contains(&century) {
        century
    } else {
        20
    };
    if sec > 59 || min > 59 || hour > 23 || !(1..=31).contains(&day) || !(1..=12).contains(&month) {
        return None;
    }
    let full_year = i64::from(century) * 100 + i64::from(year);
    let days = days_from_civil(full_year, u32::from(month), u32::from(day));
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec);
    u64::try_from(secs).ok()
}

/// The kernel clock: TSC frequency, TSC at boot and wall time at boot.
#[derive(Debug)]
pub struct Clock {
    tsc_hz: AtomicU64,
    boot_tsc: AtomicU64,
    wall_at_boot_ns: AtomicU64,
}

impl Clock {
    /// An uncalibrated clock (1 GHz assumed until [`Clock::calibrate`]).
    pub const fn new() -> Self {
        Self {
            tsc_hz: AtomicU64::new(1_000_000_000),
            boot_tsc: AtomicU64::new(0),
            wall_at_boot_ns: AtomicU64::new(0),
        }
    }

    /// Sets the calibration.
    pub fn calibrate(&self, tsc_hz: u64, boot_tsc: u64, wall_at_boot_ns: u64) {
        self.tsc_hz.store(tsc_hz.max(1), Ordering::Relaxed);
        self.boot_tsc.store(boot_tsc, Ordering::Relaxed);
        self.wall_at_boot_ns
            .store(wall_at_boot_ns, Ordering::Relaxed);
    }

    /// TSC frequency in Hz.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz.load(Ordering::Relaxed)
    }

    /// Nanoseconds between boot and the TSC reading `tsc`.
    pub fn ns_at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.boot_tsc.load(Ordering::Relaxed));
        (u128::from(delta) * 1_000_000_000 / u128::from(self.tsc_hz())) as u64
    }

    /// Wall-clock nanoseconds since the Unix epoch at the TSC reading `tsc`.
    pub fn wall_ns_at(&self, tsc: u64) -> u64 {
        self.wall_at_boot_ns
            .load(Ordering::Relaxed)
            .saturating_add(self.ns_at(tsc))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The kernel's clock.
pub static CLOCK: Clock = Clock::new();

/// Monotonic nanoseconds since boot.
pub fn monotonic_ns() -> u64 {
    CLOCK.ns_at(crate::arch::cpu::rdtsc())
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn wall_ns() -> u64 {
    CLOCK.wall_ns_at(crate::arch::cpu::rdtsc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 21), 20_778);
    }

    #[test]
    fn rtc_bcd_and_binary() {
        // 2026-11-21 23:31:05, BCD, 24h
        let t = rtc_to_unix([0x05, 0x31, 0x23, 0x21, 0x11, 0x26, 0x20], 0x02).expect("valid");
        assert_eq!(t, 20_778 * 86_400 + 23 * 3600 + 31 * 60 + 5);
        // same in binary, 12h PM
        let b = rtc_to_unix([5, 31, 0x80 | 11, 21, 11, 26, 20], 0x04).expect("valid");
        assert_eq!(b, t);
        assert_eq!(rtc_to_unix([0xff; 7], 0x02), None);
    }

    #[test]
    fn tsc_conversion() {
        // 30 000 000 TSC ticks during 11 932 PIT ticks (10 ms) => ~3 GHz
        let hz = tsc_hz_from_pit(30_000_000, 11_932);
        assert!((2_990_000_000..3_010_000_000).contains(&hz), "{hz}");
        let clock = Clock::new();
        clock.calibrate(2_000_000_000, 1000, 5);
        assert_eq!(clock.ns_at(1000 + 2_000_000_000), 1_000_000_000);
        assert_eq!(clock.wall_ns_at(1000), 5);
        assert_eq!(clock.ns_at(0), 0);
    }
}
