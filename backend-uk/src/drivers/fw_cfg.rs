//! QEMU's fw_cfg device through its I/O ports (selector 0x510, data 0x511): how the host hands the
//! guest a file (`-fw_cfg name=opt/janus/token,file=PATH`) without putting it on the kernel
//! command line, which every user of the host reads in `/proc/<pid>/cmdline` of the QEMU process.
//!
//! Protocol (QEMU `docs/specs/fw_cfg.rst`): write a 16-bit key to the selector port, then read the
//! item's bytes in order from the data port. Key 0x0000 is the signature `QEMU`; key 0x0019 the file
//! directory: a big-endian u32 count, then one 64-byte entry per file (`be32 size, be16 select,
//! be16 reserved, char name[56]`, NUL-padded). QEMU's microvm and q35 machines both have the device;
//! a hypervisor without it (Firecracker) reads back all-ones and [`read_file`] returns `None`.
//!
//! Reads use `rep insb` (string port input), which KVM completes in one exit per page instead of
//! one per byte.

use alloc::vec;
use alloc::vec::Vec;

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
const KEY_FILE_DIR: u16 = 0x0019;
/// Files longer than this are not read (a token or a seed is tens of bytes).
pub const MAX_FILE_BYTES: u32 = 4096;
/// Directory entries looked at, at most (QEMU has a few dozen); a larger count means there is
/// no device (its ports read as all-ones).
const MAX_ENTRIES: u32 = 4096;
const ENTRY_BYTES: usize = 64;

fn select(key: u16) {
    // SAFETY: the fw_cfg selector port only chooses which item the data port returns; `out` touches
    // no memory. Without the device the write goes nowhere.
    unsafe {
        core::arch::asm!("out dx, ax", in("dx") SELECTOR, in("ax") key, options(nomem, nostack, preserves_flags));
    }
}

fn read_into(buf: &mut [u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: `rep insb` writes exactly `rcx = buf.len()` bytes from the data port to `rdi =
    // buf.as_mut_ptr()` upwards (the ABI guarantees DF = 0), all inside `buf`, which we borrow
    // mutably; reading the data port only advances the device's offset in the selected item.
    unsafe {
        core::arch::asm!(
            "rep insb",
            in("dx") DATA,
            inout("rdi") buf.as_mut_ptr() => _,
            inout("rcx") buf.len() => _,
            options(nostack, preserves_flags)
        );
    }
}

/// One file directory entry: (size, key, name).
pub fn parse_entry(entry: &[u8; ENTRY_BYTES]) -> (u32, u16, &[u8]) {
    let size = u32::from_be_bytes([entry[0], entry[1], entry[2], entry[3]]);
    let key = u16::from_be_bytes([entry[4], entry[5]]);
    let name = &entry[8..];
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    (size, key, &name[..len])
}

/// The contents of the fw_cfg file `name`, if the device exists and has it (and it is at most
/// [`MAX_FILE_BYTES`] long). Three port accesses (VM exits) when the file is absent: select the
/// directory, read its count, read all its entries in one string read (string reads cost per
/// byte too, so no more than the entries). Without a device the ports read as all-ones, a count
/// no fw_cfg has, so no signature read is needed.
pub fn read_file(name: &str) -> Option<Vec<u8>> {
    select(KEY_FILE_DIR);
    let mut count = [0u8; 4];
    read_into(&mut count);
    let count = u32::from_be_bytes(count);
    if count > MAX_ENTRIES {
        return None;
    }
    let mut dir = vec![0u8; count as usize * ENTRY_BYTES];
    read_into(&mut dir);
    for entry in dir.chunks_exact(ENTRY_BYTES) {
        let Ok(entry) = <&[u8; ENTRY_BYTES]>::try_from(entry) else {
            continue;
        };
        let (size, key, entry_name) = parse_entry(entry);
        if entry_name == name.as_bytes() {
            if size > MAX_FILE_BYTES {
                return None;
            }
            select(key);
            let mut data = vec![0u8; size as usize];
            read_into(&mut data);
            return Some(data);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entries_are_big_endian_and_nul_padded() {
        let mut e = [0u8; ENTRY_BYTES];
        e[..4].copy_from_slice(&32u32.to_be_bytes());
        e[4..6].copy_from_slice(&0x0021u16.to_be_bytes());
        e[8..8 + 15].copy_from_slice(b"opt/janus/token");
        assert_eq!(parse_entry(&e), (32, 0x21, &b"opt/janus/token"[..]));
        let mut full = [b'a'; ENTRY_BYTES];
        full[..8].fill(0);
        assert_eq!(parse_entry(&full).2.len(), 56);
    }
}
