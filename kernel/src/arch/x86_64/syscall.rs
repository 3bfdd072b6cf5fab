//! The SYSCALL entry from ring 3. PV guest kernels run in ring 3 and make hypercalls with
//! `syscall` (directly or through the hypercall page); guest user space uses it for its
//! own system calls, which the hypervisor bounces to the guest kernel. Both arrive here,
//! are turned into a [`TrapFrame`](super::trap::TrapFrame) with `vector == SYSCALL_VECTOR`
//! and go through the common dispatcher; the return to ring 3 is always an `iretq`
//! (never `sysret`, which faults in ring 0 on a non-canonical RIP).

use super::{gdt::selector, msr};

/// The pseudo vector number of a SYSCALL entry in a trap frame (outside 0..=255).
pub const SYSCALL_VECTOR: u64 = 0x100;

core::arch::global_asm!(
    r#"
    .section .text.syscall_entry, "ax"
    .globl syscall_entry
syscall_entry:
    swapgs
    movq %rsp, %gs:{scratch}
    movq %gs:{stack_top}, %rsp
    pushq ${user_ss}
    pushq %gs:{scratch}
    pushq %r11
    pushq ${user_cs}
    pushq %rcx
    pushq $0
    pushq ${vector}
    jmp trap_save
"#,
    scratch = const super::percpu::OFFSET_SCRATCH_RSP,
    stack_top = const super::percpu::OFFSET_STACK_TOP,
    user_ss = const selector::FLAT_RING3_DS32 as u64,
    user_cs = const selector::FLAT_RING3_CS64 as u64,
    vector = const SYSCALL_VECTOR,
    options(att_syntax)
);

extern "C" {
    static syscall_entry: u8;
}

const IA32_STAR: u32 = 0xc000_0081;
const IA32_LSTAR: u32 = 0xc000_0082;
const IA32_CSTAR: u32 = 0xc000_0083;
const IA32_FMASK: u32 = 0xc000_0084;
const EFER_SCE: u64 = 1 << 0;
/// RFLAGS bits SYSCALL clears: IF (entry runs with interrupts off), TF, DF, AC, NT.
const FMASK: u64 = (1 << 9) | (1 << 8) | (1 << 10) | (1 << 18) | (1 << 14);

/// Enables SYSCALL on this CPU with the entry above.
pub fn init() {
    // SAFETY: only the address of the assembly label is taken.
    let entry = unsafe { &syscall_entry as *const u8 as u64 };
    let star =
        ((selector::FLAT_RING3_CS32 as u64) << 48) | ((selector::HYPERVISOR_CS as u64) << 32);
    // SAFETY: these MSRs exist on every x86-64 CPU; the entry point, selectors and flag
    // mask form a valid SYSCALL configuration, and the per-CPU area the entry uses is
    // installed before any ring-3 code can run. 32-bit (compat) SYSCALL is pointed at the
    // same entry for now: 64-bit guests only.
    unsafe {
        msr::write(IA32_STAR, star);
        msr::write(IA32_LSTAR, entry);
        msr::write(IA32_CSTAR, entry);
        msr::write(IA32_FMASK, FMASK);
        msr::write(msr::IA32_EFER, msr::read(msr::IA32_EFER) | EFER_SCE);
    }
}
