//! Boot information handed from the PVH entry to the runtime (host-testable parts).

use alloc::string::String;
use alloc::vec::Vec;

/// Highest RAM address the boot page tables map (identity, 2 MiB pages; 3..4 GiB is mapped too,
/// for MMIO).
pub const MAPPED_LIMIT: u64 = 1 << 30;

/// E820-style type of usable RAM.
pub const RAM: u32 = 1;

/// One entry of the PVH memory map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 = RAM).
    pub kind: u32,
}

/// What the boot path learned, passed to the runtime.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// TSC value at the first Rust instruction (for the boot-to-listen figure).
    pub boot_tsc: u64,
    /// Kernel command line.
    pub cmdline: String,
    /// ACPI RSDP physical address (0 if none).
    pub rsdp_paddr: u64,
    /// Memory map.
    pub regions: Vec<MemoryRegion>,
    /// Heap (base, size) in bytes.
    pub heap: (u64, u64),
    /// Lowest address of the main stack (for diagnostics).
    pub stack_bottom: u64,
}

/// Picks the largest RAM range above `kernel_end` and below `limit`, page-aligned.
pub fn pick_heap(regions: &[MemoryRegion], kernel_end: u64, limit: u64) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64)> = None;
    for region in regions.iter().filter(|r| r.kind == RAM) {
        let start = region.addr.max(kernel_end).checked_add(0xfff)? & !0xfff;
        let end = region.addr.saturating_add(region.size).min(limit) & !0xfff;
        if end > start && best.is_none_or(|(_, size)| end - start > size) {
            best = Some((start, end - start));
        }
    }
    best
}

/// Conventional memory the heap may also use: the RAM of `[64 KiB, 636 KiB)` (below the EBDA;
/// the first 64 KiB are left alone), page-aligned, if at least 64 KiB of it is RAM. The PVH start
/// info, memory map and command line that QEMU puts there are read before the heap exists.
pub fn low_heap(regions: &[MemoryRegion]) -> Option<(u64, u64)> {
    const LOW: (u64, u64) = (0x1_0000, 0x9_f000);
    let mut best: Option<(u64, u64)> = None;
    for region in regions.iter().filter(|r| r.kind == RAM) {
        let start = (region.addr.max(LOW.0).checked_add(0xfff)?) & !0xfff;
        let end = region.addr.saturating_add(region.size).min(LOW.1) & !0xfff;
        if end >= start + 0x1_0000 && best.is_none_or(|(_, size)| end - start > size) {
            best = Some((start, end - start));
        }
    }
    best
}

/// Human name of an x86 exception vector.
pub fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating point",
        _ => "reserved",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_is_largest_ram_above_kernel() {
        let regions = [
            MemoryRegion {
                addr: 0,
                size: 0x9fc00,
                kind: RAM,
            },
            MemoryRegion {
                addr: 0xf0000,
                size: 0x10000,
                kind: 2,
            },
            MemoryRegion {
                addr: 0x100000,
                size: 0x7f00000,
                kind: RAM,
            },
        ];
        let (base, size) = pick_heap(&regions, 0x123456, MAPPED_LIMIT).expect("heap");
        assert_eq!(base, 0x124000);
        assert_eq!(base + size, 0x8000000);
        // Conventional memory: 64 KiB up to the page below the EBDA.
        assert_eq!(low_heap(&regions), Some((0x10000, 0x9f000 - 0x10000)));
        assert_eq!(low_heap(&regions[1..]), None);
        let tiny = [MemoryRegion {
            addr: 0x90000,
            size: 0x8000,
            kind: RAM,
        }];
        assert_eq!(low_heap(&tiny), None, "under 64 KiB is not worth an arena");
    }

    #[test]
    fn heap_respects_mapping_limit_and_absence() {
        let regions = [MemoryRegion {
            addr: 0x100000,
            size: 2 << 30,
            kind: RAM,
        }];
        let (_, size) = pick_heap(&regions, 0x200000, MAPPED_LIMIT).expect("heap");
        assert_eq!(size, MAPPED_LIMIT - 0x200000);
        assert_eq!(
            pick_heap(
                &[MemoryRegion {
                    addr: 0,
                    size: 0x1000,
                    kind: RAM
                }],
                0x200000,
                MAPPED_LIMIT
            ),
            None
        );
    }
}
