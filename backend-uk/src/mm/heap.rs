//! The kernel heap: talc over the largest RAM range of the PVH memory map.

#[cfg(not(test))]
use spinning_top::RawSpinlock;
#[cfg(not(test))]
use talc::TalcLock;
#[cfg(not(test))]
use talc::source::Manual;

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: TalcLock<RawSpinlock, Manual> = TalcLock::new(Manual);

static HEAP_SIZE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Hands `[base, base + size)` to the allocator (one call per RAM range, by the boot path).
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

/// Host builds use the system allocator.
#[cfg(test)]
pub fn init(_base: u64, size: u64) {
    HEAP_SIZE.store(size, core::sync::atomic::Ordering::Relaxed);
}

/// Size of the heap in bytes.
pub fn size() -> u64 {
    HEAP_SIZE.load(core::sync::atomic::Ordering::Relaxed)
}
