/*
 * 32-bit entry and long-mode trampoline.
 *
 * GRUB enters `start32` in 32-bit protected mode, paging off, with EAX = the multiboot2
 * magic and EBX = the physical address of the boot information (Multiboot2 spec, 3.3).
 * We check the magic and that the CPU can run 64-bit code, build early page tables,
 * enable PAE + long mode + NX + write protection, and jump to Rust with
 * (magic, boot-info physical address) as arguments.
 *
 * Early page tables, 2 MiB pages, all covering physical 0..4 GiB:
 *   PML4[0]    identity map (this code runs there until it jumps high)
 *   PML4[262]  the start of the direct map (DIRECT_MAP_BASE), so Rust can read the boot
 *              information and modules (all below 4 GiB) before the final tables exist
 *   PML4[260]  the image window at IMAGE_VIRT_OFFSET (first GiB only)
 * Rust replaces them with the final tables as soon as the frame allocator is up.
 */
    .set MB2_BOOTLOADER_MAGIC, 0x36d76289
    .set COM1, 0x3f8
    .set EARLY_TABLE_PAGES, 7

    .section .boot.text, "ax"
    .code32
    .globl start32
start32:
    cli
    cld
    movl $boot32_stack_top, %esp
    movl %eax, mb2_magic
    movl %ebx, mb2_info

    cmpl $MB2_BOOTLOADER_MAGIC, %eax
    jne .Lbad_magic

    /* Long mode needs extended CPUID leaf 0x80000001 with the LM bit (EDX bit 29). */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb .Lno_long_mode
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz .Lno_long_mode
    movl %edx, %ebp                 /* keep: bit 20 = NX */

    /* Zero the early tables (PML4, two PDPTs, four PDs). */
    movl $early_pml4, %edi
    movl $(EARLY_TABLE_PAGES * 4096 / 4), %ecx
    xorl %eax, %eax
    rep stosl

    movl $early_pdpt_low, %eax
    orl $0x3, %eax                  /* present, writable */
    movl %eax, early_pml4 + 0 * 8
    movl %eax, early_pml4 + 262 * 8
    movl $early_pdpt_image, %eax
    orl $0x3, %eax
    movl %eax, early_pml4 + 260 * 8

    /* PDPT_low[0..4] -> PD[0..4]; PDPT_image[0] -> PD[0] */
    movl $early_pd, %eax
    orl $0x3, %eax
    movl %eax, early_pdpt_image
    xorl %ecx, %ecx
1:  movl %eax, early_pdpt_low(, %ecx, 8)
    addl $4096, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* PD entries: 2048 x 2 MiB = 4 GiB, present | writable | page size */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, early_pd(, %ecx, 8)
    movl $0, early_pd + 4(, %ecx, 8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    movl %cr4, %eax
    orl $(1 << 5), %eax             /* PAE */
    movl %eax, %cr4
    movl $early_pml4, %eax
    movl %eax, %cr3

    movl $0xc0000080, %ecx          /* IA32_EFER */
    rdmsr
    orl $(1 << 8), %eax             /* LME */
    testl $(1 << 20), %ebp
    jz 3f
    orl $(1 << 11), %eax            /* NXE, when the CPU has NX */
3:  wrmsr

    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16) | 1), %eax  /* PG | WP | PE */
    movl %eax, %cr0

    lgdt early_gdt_ptr
    ljmp $0x08, $start64

.Lbad_magic:
    movl $msg_bad_magic, %esi
    jmp boot_fail
.Lno_long_mode:
    movl $msg_no_long_mode, %esi
    jmp boot_fail

/* Print the NUL-terminated string at ESI on COM1 and the VGA text screen, then stop. */
boot_fail:
    movl $0xb8000, %edi
1:  lodsb
    testb %al, %al
    jz 3f
    movb %al, %bl
    movw $(COM1 + 5), %dx
2:  inb %dx, %al
    testb $0x20, %al
    jz 2b
    movw $COM1, %dx
    movb %bl, %al
    outb %al, %dx
    movb %bl, (%edi)
    movb $0x4f, 1(%edi)
    addl $2, %edi
    jmp 1b
3:  cli
    hlt
    jmp 3b

    .code64
start64:
    /* Switch to a copy of the GDT in the image's high mapping: the identity map (and
     * with it early_gdt) disappears when Rust installs the final page tables. */
    movabs $boot_gdt_ptr, %rax
    lgdt (%rax)
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs

    /* GRUB zero-fills .bss as the ELF asks, but do not rely on a loader for it. */
    movabs $__bss_start, %rdi
    movabs $__bss_end, %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb

    movabs $boot_stack_top, %rsp
    xorl %ebp, %ebp
    movl mb2_magic(%rip), %edi
    movl mb2_info(%rip), %esi
    movabs $kernel_entry, %rax
    call *%rax
4:  cli
    hlt
    jmp 4b

    .section .boot.data, "aw"
    .balign 8
early_gdt:
    .quad 0
    .quad 0x00af9b000000ffff        /* 0x08: 64-bit code, DPL 0, accessed */
    .quad 0x00cf93000000ffff        /* 0x10: data, accessed */
early_gdt_end:
early_gdt_ptr:
    .short early_gdt_end - early_gdt - 1
    .long early_gdt
mb2_magic:
    .long 0
mb2_info:
    .long 0
msg_bad_magic:
    .asciz "Ferrovisor: not started by a multiboot2 loader (bad magic in EAX); boot it with GRUB's multiboot2 command"
msg_no_long_mode:
    .asciz "Ferrovisor: this CPU cannot run 64-bit code (no long mode); an x86-64 CPU is required"

    .section .boot.bss, "aw", @nobits
    .balign 4096
    .globl early_pml4                   /* the application processors start on them too */
early_pml4:
    .skip 4096
early_pdpt_low:
    .skip 4096
early_pdpt_image:
    .skip 4096
early_pd:
    .skip 4 * 4096
boot32_stack:
    .skip 4096
boot32_stack_top:

    /* The same descriptors, in the high mapping, until the per-CPU GDT is loaded. The
     * accessed bits are preset so the CPU never writes to them. */
    .section .data.boot_gdt, "aw"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
boot_gdt_end:
    .balign 8
    .globl boot_gdt_ptr
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    /* The stack Rust starts on, until the guarded stacks exist. */
    .section .bss.boot_stack, "aw", @nobits
    .balign 16
boot_stack:
    .skip 65536
boot_stack_top:
