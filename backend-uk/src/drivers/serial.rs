//! 16550 UART on COM1 (port 0x3f8), polled, used as the console.

use crate::arch::port::{inb, outb, outsb};

const COM1: u16 = 0x3f8;

/// Turns COM1's FIFOs on (interrupts stay off, as at reset). The divisor and the line format
/// are left alone: a virtual UART has no baud rate and sends whole bytes whatever its word
/// length (QEMU's, Firecracker's), and every port write is a VM exit.
pub fn init() {
    // SAFETY: COM1's FIFO control register; programming the UART has no memory side effects.
    unsafe { outb(COM1 + 2, 0x07) };
}

/// Bytes the transmitter FIFO (enabled by [`init`]) takes once it is empty.
const TX_FIFO: usize = 16;

/// Writes bytes, waiting for the transmitter to be empty (bounded, so a missing UART cannot hang)
/// and then filling its FIFO with one string write: two VM exits per 16 bytes instead of two per
/// byte (a 16 MiB panic state dump is 22 MB of text).
pub fn write_bytes(bytes: &[u8]) {
    for chunk in bytes.chunks(TX_FIFO) {
        let mut spins = 0;
        // SAFETY: reading the line status register has no side effects.
        while unsafe { inb(COM1 + 5) } & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        // SAFETY: writing the data register only transmits the bytes.
        unsafe { outsb(COM1, chunk) };
    }
}
