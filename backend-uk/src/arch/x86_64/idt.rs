//! The IDT, filled at CPL3 (its page is user-mapped) before interrupts are enabled, from the
//! stub table in boot.s. Vector 2 (NMI) and 8 (double fault) use IST1.

unsafe extern "C" {
    static janus_idt_handlers: [u64; 256];
    static mut janus_idt: [u64; 512];
}

/// Encodes one 64-bit interrupt gate (present, DPL0, selector 0x08).
pub const fn gate(handler: u64, ist: u8) -> [u64; 2] {
    let low = (handler & 0xffff)
        | (0x08 << 16)
        | ((ist as u64) << 32)
        | (0x8e << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// Writes every IDT entry.
#[allow(clippy::needless_range_loop)] // the index is also the vector number
pub fn init() {
    for vector in 0..256 {
        // SAFETY: janus_idt_handlers is a read-only table of 256 stub addresses in boot.s.
        let handler =
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!(janus_idt_handlers[vector])) };
        let ist = if vector == 2 || vector == 8 { 1 } else { 0 };
        let [low, high] = gate(handler, ist);
        // SAFETY: janus_idt is the 4 KiB IDT that IDTR points at; nothing else writes it, and
        // no interrupt can arrive yet (IF=0, no exception expected while filling it).
        unsafe {
            let base = core::ptr::addr_of_mut!(janus_idt).cast::<u64>();
            core::ptr::write_volatile(base.add(vector * 2), low);
            core::ptr::write_volatile(base.add(vector * 2 + 1), high);
        }
    }
}
