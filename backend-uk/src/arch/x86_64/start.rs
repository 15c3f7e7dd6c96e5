//! The first Rust code: `janus_rust_start` (entered at CPL3 from boot.s) and the trap upcall.

use crate::boot::{BootInfo, MemoryRegion};

unsafe extern "C" {
    static janus_entry_tsc: u64;
    static janus_trap_info: [u64; 7];
    static __kernel_end: u8;
    static janus_user_stack_bottom: u8;
    static mut janus_pd_low: [u64; 512];
    static mut janus_pd_high: [u64; 512];
}

/// Page-directory entry flags: present, writable, user, 2 MiB page.
const PDE_2M: u64 = 0x87;
const PAGE_2M: u64 = 1 << 21;
/// Physical base of the MMIO gigabyte mapped by `janus_pd_high` (PDPT slot 3).
const MMIO_GIB: u64 = 3 << 30;

/// Completes the identity map that boot.s started (it maps only the first 2 MiB, so that no loop
/// runs at CPL0): 2 MiB pages over 0..1 GiB (RAM) and 3..4 GiB (MMIO). Runs before anything above
/// 2 MiB is touched. The entries written were not present, so no TLB entry can be stale.
fn map_identity() {
    for i in 0..512u64 {
        // SAFETY: janus_pd_low/janus_pd_high are boot.s's page directories in .bss, inside the
        // first 2 MiB that boot.s maps user-writable; entry 0 of janus_pd_low (the page this
        // code runs from) is rewritten with the value it already holds. Volatile, and fenced
        // below, so that no access to the newly mapped memory is moved before these stores.
        unsafe {
            let low = &raw mut janus_pd_low;
            let high = &raw mut janus_pd_high;
            core::ptr::write_volatile(low.cast::<u64>().add(i as usize), (i * PAGE_2M) | PDE_2M);
            core::ptr::write_volatile(
                high.cast::<u64>().add(i as usize),
                (MMIO_GIB + i * PAGE_2M) | PDE_2M,
            );
        }
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

unsafe extern "Rust" {
    /// Defined by the image's wrapper crate through [`crate::entry!`]: exactly one per image,
    /// so a missing or duplicate entry fails at link time.
    fn __janus_uk_main(boot: BootInfo) -> !;
}

const HVM_START_MAGIC: u32 = 0x336e_c578;
const MAX_REGIONS: usize = 32;
const MAX_CMDLINE: usize = 4096;

/// Reads a value of type `T` from physical (= virtual, identity-mapped) address `paddr`.
///
/// # Safety
/// `paddr..paddr+size_of::<T>()` must be mapped, readable memory holding a valid `T`.
unsafe fn read_phys<T: Copy>(paddr: u64) -> T {
    // SAFETY: guaranteed by the caller; unaligned read because PVH structures are packed C.
    unsafe { core::ptr::read_unaligned(paddr as usize as *const T) }
}

/// Entered from boot.s at CPL3 with `start_info` = physical address of `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn janus_rust_start(start_info: u64) -> ! {
    let boot_tsc = crate::arch::cpu::rdtsc();
    map_identity();
    crate::arch::idt::init();
    crate::drivers::serial::init();
    // SAFETY: the boot code passes EBX unchanged; PVH guarantees it points at hvm_start_info,
    // which lies below 4 GiB (identity-mapped). Fields are read with their documented offsets.
    let (magic, cmdline_paddr, rsdp_paddr, memmap_paddr, memmap_entries) = unsafe {
        (
            read_phys::<u32>(start_info),
            read_phys::<u64>(start_info + 24),
            read_phys::<u64>(start_info + 32),
            read_phys::<u64>(start_info + 40),
            read_phys::<u32>(start_info + 48),
        )
    };
    if magic != HVM_START_MAGIC {
        crate::drivers::exit::exit_with(
            crate::drivers::exit::ExitCode::BootFailure,
            "bad hvm_start_info magic",
        );
    }
    let mut regions = [MemoryRegion::default(); MAX_REGIONS];
    let mut count = 0;
    for i in 0..(memmap_entries as usize).min(MAX_REGIONS) {
        let entry = memmap_paddr + (i as u64) * 24;
        // SAFETY: PVH memmap entries are {u64 addr, u64 size, u32 type, u32 reserved} and the
        // table lies in identity-mapped low memory.
        let (addr, size, kind) = unsafe {
            (
                read_phys::<u64>(entry),
                read_phys::<u64>(entry + 8),
                read_phys::<u32>(entry + 16),
            )
        };
        regions[count] = MemoryRegion { addr, size, kind };
        count += 1;
    }
    let mut cmdline = [0u8; MAX_CMDLINE];
    let mut cmdline_len = 0;
    if cmdline_paddr != 0 {
        while cmdline_len < MAX_CMDLINE {
            // SAFETY: the command line is a NUL-terminated string in identity-mapped memory.
            let byte: u8 = unsafe { read_phys(cmdline_paddr + cmdline_len as u64) };
            if byte == 0 {
                break;
            }
            cmdline[cmdline_len] = byte;
            cmdline_len += 1;
        }
    }
    let kernel_end = core::ptr::addr_of!(__kernel_end) as u64;
    let heap = crate::boot::pick_heap(&regions[..count], kernel_end, crate::boot::MAPPED_LIMIT);
    let low = crate::boot::low_heap(&regions[..count]);
    if heap.is_none() && low.is_none() {
        crate::drivers::exit::exit_with(
            crate::drivers::exit::ExitCode::BootFailure,
            "no usable RAM for the heap",
        );
    }
    for (base, size) in [heap, low].into_iter().flatten() {
        crate::mm::heap::init(base, size);
    }
    let cmdline = core::str::from_utf8(&cmdline[..cmdline_len]).unwrap_or("");
    let info = BootInfo {
        boot_tsc,
        cmdline: alloc::string::String::from(cmdline),
        rsdp_paddr,
        regions: regions[..count].to_vec(),
        heap: heap.unwrap_or((0, 0)),
        stack_bottom: core::ptr::addr_of!(janus_user_stack_bottom) as u64,
    };
    // SAFETY: `__janus_uk_main` is provided by the wrapper crate's `entry!` with this signature.
    unsafe { __janus_uk_main(info) }
}

/// Entered (at CPL3, on the trap stack) after a CPU exception in Rust code.
#[unsafe(no_mangle)]
extern "C" fn janus_trap_upcall() -> ! {
    // SAFETY: the CPL0 exception stub filled janus_trap_info before switching here; nothing
    // writes it concurrently (single CPU, interrupts off).
    let info: [u64; 7] = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(janus_trap_info)) };
    let name = crate::boot::exception_name(info[0]);
    let msg = alloc::format!(
        "CPU exception {} ({name}) error={:#x} rip={:#x} rsp={:#x} rflags={:#x} cr2={:#x}",
        info[0],
        info[1],
        info[2],
        info[5],
        info[4],
        info[6]
    );
    crate::rt::fatal(crate::drivers::exit::ExitCode::CpuException, &msg)
}

/// TSC value at the PVH entry point (first instruction).
pub fn entry_tsc() -> u64 {
    // SAFETY: written once by boot.s before any Rust code runs; read-only afterwards.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(janus_entry_tsc)) }
}
