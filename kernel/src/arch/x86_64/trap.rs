//! Trap entry: one 16-byte stub per vector pushes a dummy error code where the CPU pushes
//! none, then the vector, then every general-purpose register, and calls
//! [`crate::interrupts::dispatch`] with the resulting [`TrapFrame`]. Returning from it
//! restores the (possibly modified) frame with `iretq`.
//!
//! Only hypervisor-mode traps exist so far; guest entry (swapgs, the PV exception bounce)
//! will extend `trap_common`, keeping the frame layout.

core::arch::global_asm!(
    r#"
    .section .text.trap_entry, "ax"
    .balign 16
    .globl trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30
    .else
    pushq $0
    .endif
    pushq $vec
    jmp trap_common
    .set vec, vec + 1
    .endr

trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    call trap_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
"#,
    options(att_syntax)
);

extern "C" {
    static trap_stubs: u8;
}

/// The entry point of `vector`'s stub.
pub fn stub_address(vector: u8) -> u64 {
    // SAFETY: only the address of the assembly label is taken.
    let base = unsafe { &trap_stubs as *const u8 as u64 };
    base + vector as u64 * 16
}

/// The registers at the time of a trap, as `trap_common` and the CPU saved them.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    crate::interrupts::dispatch(frame);
}

/// Writes to `addr`, which must be unmapped: the resulting page fault is fatal by design
/// (used by `selftest=pagefault`).
pub fn provoke_page_fault(addr: u64) -> ! {
    // SAFETY: the store goes to an address the caller knows is unmapped, so it never
    // touches memory; the page fault it raises is fatal and does not return here.
    unsafe {
        core::arch::asm!("mov qword ptr [{0}], 0", in(reg) addr, options(nostack));
    }
    unreachable!("a write to an unmapped address returned")
}
