//! The first Rust code: `janus_rust_start` (entered at CPL3 from boot.s) and the trap upcall.

use crate::boot::{BootInfo, MemoryRegion};

unsafe extern "C" {
    static janus_entry_tsc: u64;
    static janus_trap_info: [u64; 7];
    static __kernel_end: u8;
    static janus_user_stack_bottom: u8;
    static mut janus_pdpt: [u64; 512];
    static mut janus_tss: [u8; 104 + 8192 + 16];
    static janus_irq_stack_top: u8;
    static janus_ist1_stack_top: u8;
    static mut janus_pd_low: [u64; 512];
    static mut janus_pd_high: [u64; 512];
}

/// Page-directory entry flags: present, writable, user, 2 MiB page.
const PDE_2M: u64 = 0x87;
/// Page-directory-pointer entry flags: present, writable, user (points at a page directory).
const PDE_TABLE: u64 = 0x07;
const PAGE_2M: u64 = 1 << 21;
/// Physical base of the MMIO gigabyte mapped by `janus_pd_high` (PDPT slot 3).
const MMIO_GIB: u64 = 3 << 30;

/// Completes the identity map that boot.s started (the first 2 MiB, through a boot page
/// directory, so that no loop runs at CPL0): 2 MiB pages over 0..1 GiB (RAM) and 3..4 GiB
/// (MMIO). The two directories are filled while no page table points at them (on this nested
/// host a write to a page the MMU walks traps to the hypervisor, ~2 us each), then linked into
/// the PDPT (two writes) and the TLB flushed by reloading CR3 through the #GP gate: the PDPT's
/// first entry changes from the boot directory, which maps the same first 2 MiB, to the full
/// one. Runs before anything above 2 MiB is touched.
fn map_identity() {
    for i in 0..512u64 {
        // SAFETY: janus_pd_low/janus_pd_high are boot.s's page directories in .bss, inside the
        // first 2 MiB that boot.s maps user-writable, and no page table points at them yet.
        // Volatile, so the stores are not elided or moved past the linking below.
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
    // SAFETY: janus_pdpt is boot.s's PDPT (user-writable, first 2 MiB). Slot 0 goes from the boot
    // directory to janus_pd_low, whose first entry maps the same 2 MiB page identically, so the
    // code and data in use stay mapped throughout; slot 3 was not present. The CR3 reload (the
    // #GP stub reloads CR3 with its current value and skips the instruction) then drops every
    // cached translation of the old directory.
    unsafe {
        let pdpt = (&raw mut janus_pdpt).cast::<u64>();
        core::ptr::write_volatile(pdpt, (&raw const janus_pd_low) as u64 | PDE_TABLE);
        core::ptr::write_volatile(pdpt.add(3), (&raw const janus_pd_high) as u64 | PDE_TABLE);
        core::arch::asm!("mov cr3, rax", in("rax") 0u64, options(nostack, preserves_flags));
    }
}

/// Fills the TSS fields a privilege change reads (boot.s only loaded its descriptor, to keep
/// CPL0 code short): RSP0, the stack for interrupts and exceptions from CPL3; IST1, the stack for
/// NMI and double fault; the I/O bitmap (all ports open, after the 104-byte TSS) and its 0xff
/// terminator. Runs first: nothing traps before it.
fn init_tss() {
    let rsp0 = (&raw const janus_irq_stack_top) as u64;
    let ist1 = (&raw const janus_ist1_stack_top) as u64;
    // SAFETY: janus_tss is boot.s's TSS in .bss (user-mapped, first 2 MiB); the CPU reads these
    // fields only on a privilege change or an IST switch, and none can happen before this
    // returns (IF=0, no gate used yet). Unaligned writes: RSP0 is at offset 4, IST1 at 36.
    unsafe {
        let tss = (&raw mut janus_tss).cast::<u8>();
        core::ptr::write_unaligned(tss.add(4).cast::<u64>(), rsp0);
        core::ptr::write_unaligned(tss.add(36).cast::<u64>(), ist1);
        core::ptr::write_unaligned(tss.add(102).cast::<u16>(), 104);
        core::ptr::write_volatile(tss.add(104 + 8192), 0xff);
    }
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
    init_tss();
    // The IDT first: map_identity goes through the #GP gate.
    crate::arch::idt::init();
    map_identity();
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
    if let Some((base, size)) = heap {
        crate::mm::heap::init_growing(base, size);
    }
    if let Some((base, size)) = low {
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
