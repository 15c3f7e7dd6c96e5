//! 16550 UART on COM1 (port 0x3f8), polled, used as the console.

use crate::arch::port::{inb, outb};

const COM1: u16 = 0x3f8;

/// Programs COM1 for 115200 8N1, FIFOs on, interrupts off.
pub fn init() {
    // SAFETY: COM1 registers; programming the UART has no memory side effects.
    unsafe {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xC7);
        outb(COM1 + 4, 0x03);
    }
}

/// Writes bytes, waiting for the transmit holding register (bounded, so a missing UART cannot hang).
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        let mut spins = 0;
        // SAFETY: reading the line status register has no side effects.
        while unsafe { inb(COM1 + 5) } & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        // SAFETY: writing the data register only transmits the byte.
        unsafe { outb(COM1, b) };
    }
}
