/* Janus unikernel boot code (AT&T syntax), included by boot.rs.
 *
 * PVH entry (32-bit protected mode, paging off, EBX = hvm_start_info), identity paging of the first
 * 4 GiB with 2 MiB pages (user bit set), GDT/TSS/IDT, SSE, then iretq to CPL3 with IOPL=3 and IF=0.
 * Everything that must run at CPL0 lives here: interrupt and exception entry stubs, the halt gate
 * (int 0x80) and the wrmsr gate (int 0x81). None of it uses SSE (this host's nested KVM emulates
 * CPL0 code and cannot execute SSE there).
 */

    .section .note.Xen, "a"
    .p2align 2
    .long 4                     /* namesz */
    .long 8                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .quad janus_pvh_start32
    .p2align 2

    .section .text.boot, "ax"
    .code32
    .global janus_pvh_start32
janus_pvh_start32:
    /* Every instruction here is emulated (~2 us each on this nested host): the machine state is
     * written as constants, with no read-modify-write. The PVH entry state: IF=0, paging off,
     * CR4 = 0, CR0 = PE, EFER = 0. DF is cleared by the popfq below, before any Rust code. */
    rdtsc                       /* boot-time figure: TSC at the PVH entry */
    mov %eax, janus_entry_tsc
    mov %edx, janus_entry_tsc + 4
    mov %ebx, janus_start_info_paddr
    mov $janus_boot_stack_top, %esp
    /* .bss is not zeroed here: PVH loaders (QEMU, Firecracker, cloud-hypervisor) place the image
     * in fresh, zeroed guest RAM. */

    /* Page tables live in .bss (zeroed by the loader). Boot maps the first 2 MiB only (the
     * image, its stacks and the PVH start info) through janus_pd_boot. No loop runs at CPL0:
     * arch::x86_64::start::map_identity fills janus_pd_low and janus_pd_high from CPL3 while no
     * page table points at them (a write to a page the MMU walks traps to the hypervisor: ~2 us
     * each, 2 ms for 1024 entries), links them and reloads CR3 through the #GP gate, before
     * anything above 2 MiB is touched. */
    movl $(janus_pdpt + 7), janus_pml4
    movl $(janus_pd_boot + 7), janus_pdpt
    movl $0x87, janus_pd_boot
    mov $0x620, %eax            /* CR4: PAE | OSFXSR | OSXMMEXCPT (SSE) */
    mov %eax, %cr4
    mov $janus_pml4, %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx       /* EFER = LME */
    mov $0x100, %eax
    xor %edx, %edx
    wrmsr
    mov $0x80000033, %eax       /* CR0: PG | NE | ET | MP | PE (EM, TS clear: SSE) */
    mov %eax, %cr0
    lgdt janus_gdt_ptr
    ljmp $0x08, $janus_long_mode

    .code64
janus_long_mode:
    /* Data segment registers keep the loader's flat selectors (ignored in 64-bit mode, nulled by
     * the iretq to CPL3). No XSAVE/XCR0: the kernel never uses AVX state. The TSS descriptor is a
     * link-time constant (linker.ld); its RSP0/IST1 fields are written by the first Rust code,
     * before anything can trap. */
    mov $0x28, %ax
    ltr %ax
    /* The IDT is filled from CPL3 by arch::x86_64::idt::init before anything traps (its page
     * is user-mapped); the first Rust code runs with an all-absent IDT. */
    lidt janus_idt_ptr

    /* drop to CPL3, IOPL=3, IF=0. IOPL is also set with popfq first: this host's nested KVM
     * does not take IOPL from the iretq image. */
    pushq $0x3002
    popfq
    mov %ebx, %edi
    pushq $0x1b
    pushq $(janus_user_stack_top - 8)
    pushq $0x3002
    pushq $0x23
    pushq $janus_rust_start
    iretq

/* ---- CPL0 stubs ---- */
    .text
    .p2align 4
janus_exc_common:
    push %rax
    mov 8(%rsp), %rax
    mov %rax, janus_trap_info
    mov 16(%rsp), %rax
    mov %rax, janus_trap_info + 8
    mov 24(%rsp), %rax
    mov %rax, janus_trap_info + 16
    mov 32(%rsp), %rax
    mov %rax, janus_trap_info + 24
    mov 40(%rsp), %rax
    mov %rax, janus_trap_info + 32
    mov 48(%rsp), %rax
    mov %rax, janus_trap_info + 40
    mov %cr2, %rax
    mov %rax, janus_trap_info + 48
    testb $3, 32(%rsp)
    jz 7f
    /* fault at CPL3: return into the Rust trap upcall on the trap stack */
    movabs $janus_trap_upcall, %rax
    mov %rax, 24(%rsp)
    movabs $janus_trap_stack_top - 8, %rax
    mov %rax, 48(%rsp)
    movq $0x3002, 40(%rsp)
    pop %rax
    add $16, %rsp
    iretq
7:
    /* fault inside a CPL0 stub: report '!' and exit QEMU with status 253 */
    mov $0x3f8, %dx
    mov $0x21, %al
    out %al, %dx
    mov $0xf4, %dx
    mov $0x7e, %eax
    out %eax, %dx
8:
    hlt
    jmp 8b

janus_isr_spurious:
    iretq

/* #GP from CPL3 doubles as the privileged-instruction gate: a `hlt` (F4) at CPL3 is performed
 * here as `sti; hlt; cli` (wake on the next interrupt), a `wrmsr` (0F 30) is performed with the
 * caller's ecx/edx:eax, a `mov %reg, %cr3` (0F 22 /3, register form) reloads CR3 with its own
 * value (flushes the TLB after the page tables changed); then the instruction is skipped.
 * Anything else is a real fault.
 * Stack on entry: err, rip, cs, rflags, rsp, ss. */
janus_exc_13:
    push %rax
    push %rbx
    testb $3, 32(%rsp)
    jz 9f
    mov 24(%rsp), %rax
    movzbl (%rax), %ebx
    cmp $0xf4, %ebx
    jne 8f
    incq 24(%rsp)
    sti
    hlt
    cli
    pop %rbx
    pop %rax
    add $8, %rsp
    iretq
8:
    movzwl (%rax), %ebx
    cmp $0x300f, %ebx
    jne 10f
    addq $2, 24(%rsp)
    pop %rbx
    pop %rax
    wrmsr
    add $8, %rsp
    iretq
10:
    cmp $0x220f, %ebx
    jne 9f
    movzbl 2(%rax), %ebx
    and $0xf8, %ebx
    cmp $0xd8, %ebx             /* ModRM 11 011 rrr: mov %r, %cr3 */
    jne 9f
    addq $3, 24(%rsp)
    mov %cr3, %rbx
    mov %rbx, %cr3
    pop %rbx
    pop %rax
    add $8, %rsp
    iretq
9:
    pop %rbx
    pop %rax
    pushq $13
    jmp janus_exc_common

janus_exc_0:
    pushq $0
    pushq $0
    jmp janus_exc_common
janus_exc_1:
    pushq $0
    pushq $1
    jmp janus_exc_common
janus_exc_2:
    pushq $0
    pushq $2
    jmp janus_exc_common
janus_exc_3:
    pushq $0
    pushq $3
    jmp janus_exc_common
janus_exc_4:
    pushq $0
    pushq $4
    jmp janus_exc_common
janus_exc_5:
    pushq $0
    pushq $5
    jmp janus_exc_common
janus_exc_6:
    pushq $0
    pushq $6
    jmp janus_exc_common
janus_exc_7:
    pushq $0
    pushq $7
    jmp janus_exc_common
janus_exc_8:
    pushq $8
    jmp janus_exc_common
janus_exc_9:
    pushq $0
    pushq $9
    jmp janus_exc_common
janus_exc_10:
    pushq $10
    jmp janus_exc_common
janus_exc_11:
    pushq $11
    jmp janus_exc_common
janus_exc_12:
    pushq $12
    jmp janus_exc_common
janus_exc_14:
    pushq $14
    jmp janus_exc_common
janus_exc_15:
    pushq $0
    pushq $15
    jmp janus_exc_common
janus_exc_16:
    pushq $0
    pushq $16
    jmp janus_exc_common
janus_exc_17:
    pushq $17
    jmp janus_exc_common
janus_exc_18:
    pushq $0
    pushq $18
    jmp janus_exc_common
janus_exc_19:
    pushq $0
    pushq $19
    jmp janus_exc_common
janus_exc_20:
    pushq $0
    pushq $20
    jmp janus_exc_common
janus_exc_21:
    pushq $21
    jmp janus_exc_common
janus_exc_22:
    pushq $0
    pushq $22
    jmp janus_exc_common
janus_exc_23:
    pushq $0
    pushq $23
    jmp janus_exc_common
janus_exc_24:
    pushq $0
    pushq $24
    jmp janus_exc_common
janus_exc_25:
    pushq $0
    pushq $25
    jmp janus_exc_common
janus_exc_26:
    pushq $0
    pushq $26
    jmp janus_exc_common
janus_exc_27:
    pushq $0
    pushq $27
    jmp janus_exc_common
janus_exc_28:
    pushq $0
    pushq $28
    jmp janus_exc_common
janus_exc_29:
    pushq $29
    jmp janus_exc_common
janus_exc_30:
    pushq $30
    jmp janus_exc_common
janus_exc_31:
    pushq $0
    pushq $31
    jmp janus_exc_common
/* IRQ stubs: the PICs run in auto-EOI mode (no EOI write); a level-triggered line is masked
 * until the driver has acknowledged its device (see cpu::set_irq_level_triggered). */
janus_irq_0:
    push %rax
    lock orq $1, janus_irq_pending
    pop %rax
    iretq
janus_irq_1:
    push %rax
    lock orq $2, janus_irq_pending
    testq $2, janus_irq_level
    jz 1f
    inb $0x21, %al
    orb $2, %al
    outb %al, $0x21
1:
    pop %rax
    iretq
janus_irq_2:
    push %rax
    lock orq $4, janus_irq_pending
    pop %rax
    iretq
janus_irq_3:
    push %rax
    lock orq $8, janus_irq_pending
    testq $8, janus_irq_level
    jz 1f
    inb $0x21, %al
    orb $8, %al
    outb %al, $0x21
1:
    pop %rax
    iretq
janus_irq_4:
    push %rax
    lock orq $16, janus_irq_pending
    testq $16, janus_irq_level
    jz 1f
    inb $0x21, %al
    orb $16, %al
    outb %al, $0x21
1:
    pop %rax
    iretq
janus_irq_5:
    push %rax
    lock orq $32, janus_irq_pending
    testq $32, janus_irq_level
    jz 1f
    inb $0x21, %al
    orb $32, %al
    outb %al, $0x21
1:
    pop %rax
    iretq
janus_irq_6:
    push %rax
    lock orq $64, janus_irq_pending
    testq $64, janus_irq_level
    jz 1f
    inb $0x21, %al
    orb $64, %al
    outb %al, $0x21
1:
    pop %rax
    iretq
janus_irq_7:
    push %rax
    lock orq $128, janus_irq_pending
    testq $128, janus_irq_level
    jz 1f
    inb $0x21, %al
    orb $128, %al
    outb %al, $0x21
1:
    pop %rax
    iretq
janus_irq_8:
    push %rax
    lock orq $256, janus_irq_pending
    testq $256, janus_irq_level
    jz 1f
    inb $0xa1, %al
    orb $1, %al
    outb %al, $0xa1
1:
    pop %rax
    iretq
janus_irq_9:
    push %rax
    lock orq $512, janus_irq_pending
    testq $512, janus_irq_level
    jz 1f
    inb $0xa1, %al
    orb $2, %al
    outb %al, $0xa1
1:
    pop %rax
    iretq
janus_irq_10:
    push %rax
    lock orq $1024, janus_irq_pending
    testq $1024, janus_irq_level
    jz 1f
    inb $0xa1, %al
    orb $4, %al
    outb %al, $0xa1
1:
    pop %rax
    iretq
janus_irq_11:
    push %rax
    lock orq $2048, janus_irq_pending
    testq $2048, janus_irq_level
    jz 1f
    inb $0xa1, %al
    orb $8, %al
    outb %al, $0xa1
1:
    pop %rax
    iretq
janus_irq_12:
    push %rax
    lock orq $4096, janus_irq_pending
    testq $4096, janus_irq_level
    jz 1f
    inb $0xa1, %al
    orb $16, %al
    outb %al, $0xa1
1:
    pop %rax
    iretq
janus_irq_13:
    push %rax
    lock orq $8192, janus_irq_pending
    testq $8192, janus_irq_level
    jz 1f
    inb $0xa1, %al
    orb $32, %al
    outb %al, $0xa1
1:
    pop %rax
    iretq
janus_irq_14:
    push %rax
    lock orq $16384, janus_irq_pending
    testq $16384, janus_irq_level
    jz 1f
    inb $0xa1, %al
    orb $64, %al
    outb %al, $0xa1
1:
    pop %rax
    iretq
janus_irq_15:
    push %rax
    lock orq $32768, janus_irq_pending
    testq $32768, janus_irq_level
    jz 1f
    inb $0xa1, %al
    orb $128, %al
    outb %al, $0xa1
1:
    pop %rax
    iretq

    .section .rodata
    .p2align 3
    .global janus_idt_handlers
janus_idt_handlers:
    .quad janus_exc_0
    .quad janus_exc_1
    .quad janus_exc_2
    .quad janus_exc_3
    .quad janus_exc_4
    .quad janus_exc_5
    .quad janus_exc_6
    .quad janus_exc_7
    .quad janus_exc_8
    .quad janus_exc_9
    .quad janus_exc_10
    .quad janus_exc_11
    .quad janus_exc_12
    .quad janus_exc_13
    .quad janus_exc_14
    .quad janus_exc_15
    .quad janus_exc_16
    .quad janus_exc_17
    .quad janus_exc_18
    .quad janus_exc_19
    .quad janus_exc_20
    .quad janus_exc_21
    .quad janus_exc_22
    .quad janus_exc_23
    .quad janus_exc_24
    .quad janus_exc_25
    .quad janus_exc_26
    .quad janus_exc_27
    .quad janus_exc_28
    .quad janus_exc_29
    .quad janus_exc_30
    .quad janus_exc_31
    .quad janus_irq_0
    .quad janus_irq_1
    .quad janus_irq_2
    .quad janus_irq_3
    .quad janus_irq_4
    .quad janus_irq_5
    .quad janus_irq_6
    .quad janus_irq_7
    .quad janus_irq_8
    .quad janus_irq_9
    .quad janus_irq_10
    .quad janus_irq_11
    .quad janus_irq_12
    .quad janus_irq_13
    .quad janus_irq_14
    .quad janus_irq_15
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious
    .quad janus_isr_spurious

    .section .data
    .p2align 4
janus_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08 kernel code64 */
    .quad 0x00CF92000000FFFF    /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF    /* 0x18 user data */
    .quad 0x00AFFA000000FFFF    /* 0x20 user code64 */
    .quad janus_tss_desc_low    /* 0x28 TSS (linker.ld computes the descriptor) */
    .quad 0                     /* TSS base bits 32..63: the image is below 4 GiB */
janus_gdt_end:
    .p2align 3
janus_gdt_ptr:
    .word janus_gdt_end - janus_gdt - 1
    .quad janus_gdt
    .p2align 3
janus_idt_ptr:
    .word 4095
    .quad janus_idt

    .section .bss
    /* Identity map, 2 MiB pages, user bit set: 0..1 GiB (RAM) and 3..4 GiB (MMIO: PCI BARs,
     * virtio-mmio, IOAPIC, LAPIC). The boot code maps the first 2 MiB through janus_pd_boot;
     * arch::x86_64::start::map_identity fills janus_pd_low/janus_pd_high and links them. */
    .p2align 12
janus_pml4: .skip 4096
    .global janus_pdpt
janus_pdpt: .skip 4096
janus_pd_boot: .skip 4096
    .global janus_pd_low
janus_pd_low: .skip 4096
    .global janus_pd_high
janus_pd_high: .skip 4096
    .p2align 12
    .global janus_idt
janus_idt: .skip 4096
    .p2align 4
    .global janus_tss
janus_tss: .skip 104 + 8192 + 16
    .global janus_trap_info
janus_trap_info: .skip 64
    .global janus_irq_pending
janus_irq_pending: .skip 8
    .global janus_irq_level
janus_irq_level: .skip 8
    .global janus_start_info_paddr
janus_start_info_paddr: .skip 8
    .global janus_entry_tsc
janus_entry_tsc: .skip 8
    .p2align 4
janus_boot_stack: .skip 8192
janus_boot_stack_top:
janus_irq_stack: .skip 16384
    .global janus_irq_stack_top
janus_irq_stack_top:
janus_ist1_stack: .skip 8192
    .global janus_ist1_stack_top
janus_ist1_stack_top:
    .p2align 4
    .global janus_trap_stack_top
janus_trap_stack: .skip 65536
janus_trap_stack_top:
    .p2align 4
    .global janus_user_stack_bottom
janus_user_stack_bottom:
janus_user_stack: .skip 262144
    .global janus_user_stack_top
janus_user_stack_top:
