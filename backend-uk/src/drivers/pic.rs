//! The legacy 8259 PIC pair, remapped to vectors 32..48, in auto-EOI mode (the CPL0 stubs write
//! no EOI: every port access is a costly VM exit on nested KVM). Level-triggered lines are masked
//! by their stub when they fire and re-armed with [`unmask`] once the device is acknowledged.

use crate::arch::port::{inb, outb};

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;

/// Remaps the PICs to vectors 32..48 and masks every line except the cascade (IRQ2).
pub fn init() {
    // SAFETY: standard 8259 initialisation words; no memory side effects.
    unsafe {
        outb(MASTER_CMD, 0x11);
        outb(SLAVE_CMD, 0x11);
        outb(MASTER_DATA, 32);
        outb(SLAVE_DATA, 40);
        outb(MASTER_DATA, 4);
        outb(SLAVE_DATA, 2);
        outb(MASTER_DATA, 0x03);
        outb(SLAVE_DATA, 0x03);
        outb(MASTER_DATA, 0xfb);
        outb(SLAVE_DATA, 0xff);
    }
}

/// Unmasks PIC line `irq` (0..16).
pub fn unmask(irq: u8) {
    let (port, bit) = if irq < 8 {
        (MASTER_DATA, irq)
    } else {
        (SLAVE_DATA, irq - 8)
    };
    if irq >= 16 {
        return;
    }
    // SAFETY: read-modify-write of the PIC mask register.
    unsafe { outb(port, inb(port) & !(1 << bit)) };
}

/// Masks every line.
pub fn mask_all() {
    // SAFETY: writing the PIC mask registers.
    unsafe {
        outb(MASTER_DATA, 0xff);
        outb(SLAVE_DATA, 0xff);
    }
}
