//! Trap entry: one 16-byte stub per vector pushes a dummy error code where the CPU pushes
//! none, then the vector, then every general-purpose register, and calls
//! [`crate::interrupts::dispatch`] with the resulting [`TrapFrame`]. Returning from it
//! restores the (possibly modified) frame with `iretq`.
//!
//! Traps from ring 3 swap the GS base on the way in and out, so the hypervisor always
//! runs with its per-CPU area in GS. [`return_to`] enters ring 3 (or resumes anything)
//! from a frame, through the same exit path.

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
    /* From ring 3 (CS RPL 3 in the hardware frame): bring in the hypervisor's GS base. */
    testb $3, 24(%rsp)
    jz trap_save
    swapgs
    .globl trap_save
trap_save:
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
    .globl trap_exit
trap_exit:
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
    /* Back to ring 3: give the guest its GS base back. */
    testb $3, 8(%rsp)
    jz 1f
    swapgs
1:
    .globl trap_iretq
trap_iretq:
    iretq
"#,
    options(att_syntax)
);

extern "C" {
    static trap_stubs: u8;
    static trap_iretq: u8;
}

/// The address of the exit path's `iretq`: a fault there means the CPU refused the state a
/// guest is being resumed with (a bad selector or a non-canonical address).
pub fn iretq_address() -> u64 {
    // SAFETY: only the address of the assembly label is taken.
    unsafe { &trap_iretq as *const u8 as u64 }
}

/// After a fault on the exit path's `iretq` (`frame` is that fault, taken in ring 0 on
/// the same stack): the hardware frame the CPU refused, `[rip, cs, rflags, rsp, ss]`.
/// The general-purpose registers in `frame` are already the guest's (the exit path had
/// popped them).
pub fn refused_return(frame: &TrapFrame) -> [u64; 5] {
    assert!(frame.rip == iretq_address() && frame.cs & 3 == 0);
    let at = frame.rsp as *const [u64; 5];
    // SAFETY: a fault in ring 0 does not switch stacks (no IST for these vectors), so the
    // interrupted `rsp` is the address of the `iretq` frame the exit path left on this
    // CPU's stack, above the current frame and still mapped; it is read, not moved.
    unsafe { at.read() }
}

/// Resumes the context in `frame` (typically a guest in ring 3) through the trap exit
/// path. Nothing on the current stack is needed afterwards.
///
/// # Safety
/// `frame` must describe a valid context: for ring 3, the guest's selectors, an address
/// space mapping its code and stack, and RFLAGS with IF set and IOPL 0; for ring 0, a
/// hypervisor context that is safe to resume.
pub unsafe fn return_to(frame: &TrapFrame) -> ! {
    // SAFETY: as the caller guarantees; `trap_exit` pops exactly a `TrapFrame`.
    unsafe {
        core::arch::asm!(
            "mov rsp, {frame}",
            "jmp trap_exit",
            frame = in(reg) frame as *const TrapFrame,
            options(noreturn)
        )
    }
}

/// Whether `frame` is a fault the CPU raised on the exit path's `iretq` back to a guest
/// (it refused the state it was given); if so, the hypervisor's GS base is made active
/// again (the exit path had already swapped the guest's in) and the caller turns the frame
/// into the guest's fault.
pub fn recover_failed_return(frame: &TrapFrame) -> bool {
    const NMI: u64 = 2;
    let failed = frame.cs & 3 == 0
        && frame.vector < 32
        && frame.vector != NMI
        && frame.rip == iretq_address();
    if failed {
        // SAFETY: exactly that case: the entry from ring 0 did not swap GS, and the guest's
        // base is the active one.
        unsafe { super::percpu::recover_gs_after_failed_return() };
    }
    failed
}

/// Resumes a ring-3 context (a guest vCPU, or the ring-3 selftest). Whatever `frame`
/// holds, it cannot harm the hypervisor: the selectors are forced to RPL 3 and RFLAGS to
/// IF set and IOPL 0, so the CPU either runs ring-3 code in the current address space
/// (which, a validated guest root or the hypervisor's own, maps the hypervisor's exit
/// path) or refuses the `iretq`, which `interrupts::dispatch` turns into a fault for the
/// guest (`guest::failed_return`).
pub fn return_to_ring3(frame: &TrapFrame) -> ! {
    const IF: u64 = 1 << 9;
    const IOPL: u64 = 3 << 12;
    let sanitized = TrapFrame {
        cs: frame.cs | 3,
        ss: frame.ss | 3,
        rflags: (frame.rflags | IF) & !IOPL,
        ..*frame
    };
    // SAFETY: a ring-3 context, made so above; nothing on this stack is needed after.
    unsafe { return_to(&sanitized) }
}

/// The entry point of `vector`'s stub.
pub fn stub_address(vector: u8) -> u64 {
    // SAFETY: only the address of the assembly label is taken.
    let base = unsafe { &trap_stubs as *const u8 as u64 };
    base + vector as u64 * 16
}

/// The registers at the time of a trap, as `trap_common` and the CPU saved them.
#[derive(Clone, Copy, Debug, Default)]
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

/// An address nothing ever maps: the hypervisor maps nothing in the lower half except
/// the ring-3 selftest's pages at 0x400000, and guests' lower halves are their own.
pub const UNMAPPED_ADDRESS: u64 = 0x0dea_dbee_f000;

/// Writes to [`UNMAPPED_ADDRESS`]: the resulting page fault is fatal by design (used by
/// `selftest=pagefault`).
pub fn provoke_page_fault() -> ! {
    // SAFETY: the store goes to an address that is never mapped (see UNMAPPED_ADDRESS), so
    // it touches no memory; the page fault it raises is fatal and does not return here.
    unsafe {
        core::arch::asm!("mov qword ptr [{0}], 0", in(reg) UNMAPPED_ADDRESS, options(nostack));
    }
    unreachable!("a write to an unmapped address returned")
}
