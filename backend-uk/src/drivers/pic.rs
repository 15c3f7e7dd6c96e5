//! The legacy 8259 PIC pair, remapped to vectors 32..48, in auto-EOI mode (the CPL0 stubs write
//! no EOI: every port access is a costly VM exit on nested KVM). Level-triggered lines are masked
//! by their stub when they fire and re-armed with [`unmask`] once the device is acknowledged.

use crate::arch::port::{inb, outb};

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;

/// Remaps the PICs to vectors 32..48 in auto-EOI mode. Initialisation leaves every line
/// unmasked, and an unwanted edge only sets its pending bit in a stub, so the masks are written
/// (once, with their final values) only when `exact`: level-triggered lines must stay masked
/// unless wanted, or when the slave is left alone (no line of it wanted), to mask it off at the
/// cascade line. Every write is a VM exit: 4 writes for the master alone, 8 with the slave, one
/// more per mask.
pub fn init(lines: u16, exact: bool) {
    let slave_lines = (lines >> 8) as u8;
    let master_lines = (lines as u8) | if slave_lines != 0 { 1 << 2 } else { 0 };
    // SAFETY: standard 8259 initialisation words (ICW1 edge + ICW4, ICW2 vector base, ICW3
    // cascade wiring, ICW4 8086 + auto-EOI) and the mask register; no memory side effects.
    unsafe {
        outb(MASTER_CMD, 0x11);
        outb(MASTER_DATA, 32);
        outb(MASTER_DATA, 4);
        outb(MASTER_DATA, 0x03);
        if exact || slave_lines == 0 {
            outb(MASTER_DATA, !master_lines);
        }
        if slave_lines != 0 {
            outb(SLAVE_CMD, 0x11);
            outb(SLAVE_DATA, 40);
            outb(SLAVE_DATA, 2);
            outb(SLAVE_DATA, 0x03);
            if exact {
                outb(SLAVE_DATA, !slave_lines);
            }
        }
    }
}

/// Unmasks PIC line `irq` (0..16) (a level-triggered line after its device was acknowledged).
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
