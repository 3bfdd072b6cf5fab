/*
 * Application-processor start-up.
 *
 * The bytes from `ap_trampoline_start` to `ap_trampoline_end` are copied to a page below
 * 1 MiB, whose number is the STARTUP IPI's vector: each application processor starts
 * there in real mode with CS = page << 8, IP = 0. The code is position-independent in
 * real mode (it patches its GDT pointer and far jumps from CS), switches to protected
 * mode, turns on PAE + long mode (+ NX when the CPU has it) with the boot page tables of
 * `entry.S` (which identity-map the first 4 GiB, so the copied code keeps running, and map
 * the image high), and jumps to `ap_entry64` in the image.
 *
 * `ap_entry64` takes a ticket (its CPU index minus one) and waits until the boot CPU has
 * prepared that CPU (its stack) and released it: then it loads the hypervisor's final
 * page tables and stack and calls `ap_main(ticket)`. A CPU the boot CPU does not want
 * (over `maxcpus=`) gets no stack and halts for good.
 */
    .set AP_CODE32, 0x08
    .set AP_DATA, 0x10
    .set AP_CODE64, 0x18

    .section .rodata.ap_trampoline, "a"
    .globl ap_trampoline_start
    .globl ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    xorl %ebx, %ebx
    movw %ax, %bx
    shll $4, %ebx                               /* EBX = the page's physical address */
    leal (ap_gdt - ap_trampoline_start)(%ebx), %eax
    movl %eax, (ap_gdt_ptr + 2 - ap_trampoline_start)
    leal (ap_start32 - ap_trampoline_start)(%ebx), %eax
    movl %eax, (ap_far32 - ap_trampoline_start)
    leal (ap_start64 - ap_trampoline_start)(%ebx), %eax
    movl %eax, (ap_far64 - ap_trampoline_start)
    lgdtl (ap_gdt_ptr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax                                /* PE */
    movl %eax, %cr0
    ljmpl *(ap_far32 - ap_trampoline_start)

    .code32
ap_start32:
    movw $AP_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax                         /* PAE */
    movl %eax, %cr4
    movl $early_pml4, %eax
    movl %eax, %cr3
    movl %ebx, %edi                             /* CPUID overwrites EBX */
    movl $0x80000001, %eax
    cpuid
    movl %edx, %esi
    movl $0xc0000080, %ecx                      /* IA32_EFER */
    rdmsr
    orl $(1 << 8), %eax                         /* LME */
    testl $(1 << 20), %esi
    jz 1f
    orl $(1 << 11), %eax                        /* NXE */
1:  wrmsr
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 16) | 1), %eax      /* PG | WP | PE */
    movl %eax, %cr0
    ljmpl *(ap_far64 - ap_trampoline_start)(%edi)

    .code64
ap_start64:
    movabsq $ap_entry64, %rax
    jmpq *%rax

    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff                    /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff                    /* 0x10: data */
    .quad 0x00af9a000000ffff                    /* 0x18: 64-bit code */
ap_gdt_end:
ap_gdt_ptr:
    .short ap_gdt_end - ap_gdt - 1
    .long 0
ap_far32:
    .long 0
    .short AP_CODE32
ap_far64:
    .long 0
    .short AP_CODE64
ap_trampoline_end:

    .section .text.ap_entry64, "ax"
    .code64
    .globl ap_entry64
ap_entry64:
    movabsq $boot_gdt_ptr, %rax
    lgdt (%rax)
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movl $1, %ecx
    movabsq $AP_ARRIVED, %rax
    lock xaddl %ecx, (%rax)                     /* ECX = ticket */
    movabsq $AP_RELEASED, %rax
2:  pause
    movl (%rax), %edx
    cmpl %ecx, %edx
    jbe 2b                                      /* wait until RELEASED > ticket */
    movabsq $AP_STACKS, %rax
    movq (%rax, %rcx, 8), %rsp
    testq %rsp, %rsp
    jz 3f
    movabsq $AP_CR3, %rax
    movq (%rax), %rax
    movq %rax, %cr3
    xorl %ebp, %ebp
    movl %ecx, %edi
    movabsq $ap_main, %rax
    callq *%rax
3:  cli
    hlt
    jmp 3b
