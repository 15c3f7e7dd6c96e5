//! The kernel heap: talc over the largest RAM range of the PVH memory map (grown on demand) and
//! conventional memory below 1 MiB.

#[cfg(not(test))]
use spinning_top::RawSpinlock;
#[cfg(not(test))]
use talc::TalcLock;

/// The heap's source of more memory: the rest of the main RAM range. [`init_growing`] claims only
/// its start; the first allocation that does not fit extends the heap over the rest. talc writes at
/// both ends of what it claims, and the first touch of a 2 MiB region the guest has not used yet
/// costs ~85 us on this nested host: the far end of a 128 MiB range is not touched at boot.
#[cfg(not(test))]
#[derive(Debug, Default)]
pub struct Grow {
    /// End of the main range as claimed so far (0: nothing to grow).
    end: usize,
    /// End of the main range.
    limit: usize,
}

#[cfg(not(test))]
// SAFETY: `acquire` only extends the heap through the `Talc` it is given, over memory `init_growing`
// vouched for, and never touches the allocator otherwise.
unsafe impl talc::source::Source for Grow {
    fn acquire<B: talc::base::binning::Binning>(
        talc: &mut talc::base::Talc<Self, B>,
        _layout: core::alloc::Layout,
    ) -> Result<(), ()> {
        let (end, limit) = (talc.source.end, talc.source.limit);
        let Some(heap_end) = core::ptr::NonNull::new(end as *mut u8) else {
            return Err(());
        };
        if limit <= end {
            return Err(());
        }
        // SAFETY: `heap_end` is the end `claim` returned for the main range (or a previous
        // extension), and `[end, limit)` is the rest of that range: RAM from the PVH memory map,
        // identity-mapped, used by nothing else (see `init_growing`).
        let new_end = unsafe { talc.extend(heap_end, limit as *mut u8) }.as_ptr() as usize;
        talc.source.end = new_end;
        if new_end > end { Ok(()) } else { Err(()) }
    }
}

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: TalcLock<RawSpinlock, Grow> = TalcLock::new(Grow { end: 0, limit: 0 });

static HEAP_SIZE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Hands `[base, base + size)` to the allocator whole (conventional memory; the main range goes
/// through [`init_growing`]).
#[cfg(not(test))]
pub fn init(base: u64, size: u64) {
    // SAFETY: the range comes from the PVH memory map (RAM), lies outside the kernel image
    // (above it, or conventional memory below 1 MiB whose boot data was already read) and
    // below the identity-mapped limit, and is claimed exactly once; nothing else uses it.
    let claimed = unsafe {
        ALLOCATOR
            .lock()
            .claim(base as usize as *mut u8, size as usize)
    };
    if claimed.is_none() {
        crate::drivers::exit::exit_with(
            crate::drivers::exit::ExitCode::BootFailure,
            "heap claim failed",
        );
    }
    HEAP_SIZE.fetch_add(size, core::sync::atomic::Ordering::Relaxed);
}

/// Hands the main RAM range `[base, base + size)` to the allocator, claiming only up to the end
/// of the 2 MiB region `base` lies in (at least 64 KiB); the rest is added the first time an
/// allocation does not fit ([`Grow`]). Called once, before [`init`] of any other range.
#[cfg(not(test))]
pub fn init_growing(base: u64, size: u64) {
    const REGION: u64 = 2 << 20;
    let limit = base + size;
    let mut first_end = (base + REGION) & !(REGION - 1);
    if first_end - base < 64 << 10 {
        first_end += REGION;
    }
    let first_end = first_end.min(limit);
    // SAFETY: as for `init`: the range is RAM from the PVH memory map, outside the image, below
    // the identity-mapped limit, claimed exactly once; `Grow` extends over the rest of it later.
    let claimed = unsafe {
        ALLOCATOR
            .lock()
            .claim(base as usize as *mut u8, (first_end - base) as usize)
    };
    let Some(end) = claimed else {
        crate::drivers::exit::exit_with(
            crate::drivers::exit::ExitCode::BootFailure,
            "heap claim failed",
        );
    };
    let mut talc = ALLOCATOR.lock();
    talc.source.end = end.as_ptr() as usize;
    talc.source.limit = limit as usize;
    drop(talc);
    HEAP_SIZE.fetch_add(size, core::sync::atomic::Ordering::Relaxed);
}

/// Host builds use the system allocator.
#[cfg(test)]
pub fn init(_base: u64, size: u64) {
    HEAP_SIZE.store(size, core::sync::atomic::Ordering::Relaxed);
}

/// Size of the heap in bytes.
pub fn size() -> u64 {
    HEAP_SIZE.load(core::sync::atomic::Ordering::Relaxed)
}

/// Host builds use the system allocator.
#[cfg(test)]
pub fn init_growing(base: u64, size: u64) {
    init(base, size);
}
