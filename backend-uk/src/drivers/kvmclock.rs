//! kvmclock (pvclock): the TSC frequency from KVM, with no calibration delay.

use crate::arch::cpu::cpuid;

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;

/// The pvclock page KVM fills in (32-byte aligned).
#[repr(C, align(64))]
struct PvClock {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

static mut PVCLOCK: PvClock = PvClock {
    version: 0,
    pad0: 0,
    tsc_timestamp: 0,
    system_time: 0,
    tsc_to_system_mul: 0,
    tsc_shift: 0,
    flags: 0,
    pad: [0; 2],
};

/// Whether this is KVM with kvmclock.
pub fn available() -> bool {
    let sig = cpuid(0x4000_0000, 0);
    let is_kvm = sig.ebx == 0x4b4d_564b && sig.ecx == 0x564b_4d56 && sig.edx == 0x4d;
    is_kvm && sig.eax >= 0x4000_0001 && cpuid(0x4000_0001, 0).eax & KVM_FEATURE_CLOCKSOURCE2 != 0
}

/// Converts pvclock scaling (ns = ((tsc << shift) * mul) >> 32) to a TSC frequency in Hz.
pub fn hz_from_scale(mul: u32, shift: i8) -> u64 {
    if mul == 0 {
        return 0;
    }
    let mut hz = (1_000_000_000u128 << 32) / u128::from(mul);
    if shift >= 0 {
        hz >>= shift;
    } else {
        hz <<= -shift;
    }
    hz as u64
}

/// Enables kvmclock and returns the TSC frequency, or `None` without KVM.
pub fn tsc_hz() -> Option<u64> {
    if !available() {
        return None;
    }
    let addr = core::ptr::addr_of!(PVCLOCK) as u64;
    // SAFETY: PVCLOCK is a static, suitably aligned pvclock structure that only KVM writes (we
    // only read it, volatile); the MSR tells KVM where it is. Bit 0 enables it.
    unsafe { crate::arch::cpu::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, addr | 1) };
    // SAFETY: reading fields KVM wrote during the MSR write (volatile: KVM may update them).
    let (mul, shift) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!(PVCLOCK.tsc_to_system_mul)),
            core::ptr::read_volatile(core::ptr::addr_of!(PVCLOCK.tsc_shift)),
        )
    };
    let hz = hz_from_scale(mul, shift);
    (hz > 10_000_000).then_some(hz)
}

const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;

/// The wall clock KVM fills in: the time at which kvmclock's system time was zero.
#[repr(C, align(16))]
struct WallClock {
    version: u32,
    sec: u32,
    nsec: u32,
}

static mut WALL: WallClock = WallClock {
    version: 0,
    sec: 0,
    nsec: 0,
};

/// Nanoseconds since the Unix epoch now, from kvmclock (one MSR write instead of a dozen CMOS
/// port exits), or `None` without kvmclock. Call after [`tsc_hz`] enabled the system time.
pub fn wall_ns() -> Option<u64> {
    if !available() {
        return None;
    }
    let addr = core::ptr::addr_of!(WALL) as u64;
    // SAFETY: WALL is a static that only KVM writes (we read it volatile); the MSR write asks
    // KVM to fill it in now.
    unsafe { crate::arch::cpu::wrmsr(MSR_KVM_WALL_CLOCK_NEW, addr) };
    // SAFETY: volatile reads of fields KVM wrote during the MSR write, and of the pvclock page
    // enabled by `tsc_hz`.
    let (sec, nsec, system_time, tsc_timestamp, mul, shift) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!(WALL.sec)),
            core::ptr::read_volatile(core::ptr::addr_of!(WALL.nsec)),
            core::ptr::read_volatile(core::ptr::addr_of!(PVCLOCK.system_time)),
            core::ptr::read_volatile(core::ptr::addr_of!(PVCLOCK.tsc_timestamp)),
            core::ptr::read_volatile(core::ptr::addr_of!(PVCLOCK.tsc_to_system_mul)),
            core::ptr::read_volatile(core::ptr::addr_of!(PVCLOCK.tsc_shift)),
        )
    };
    if mul == 0 || sec == 0 {
        return None;
    }
    let delta = crate::arch::cpu::rdtsc().saturating_sub(tsc_timestamp);
    Some(
        u64::from(sec) * 1_000_000_000
            + u64::from(nsec)
            + system_time
            + scale_delta(delta, mul, shift),
    )
}

/// pvclock's TSC delta to nanoseconds: `((delta << shift) * mul) >> 32`.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let delta = if shift >= 0 {
        delta << shift
    } else {
        delta >> -shift
    };
    ((u128::from(delta) * u128::from(mul)) >> 32) as u64
}
