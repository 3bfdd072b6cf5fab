//! Per-CPU data, reached through the GS base while the hypervisor runs (the guest's GS
//! base is swapped in with `swapgs` on every return to ring 3). The first fields are read
//! by the assembly entry paths at fixed offsets.

use core::mem::offset_of;

use super::msr;

/// The part of the per-CPU area the entry assembly uses. `repr(C)`: offsets are ABI with
/// `trap.rs` and `syscall.rs`.
#[repr(C)]
pub struct PerCpu {
    /// Address of this structure (so Rust can find it from `gs:0`).
    pub self_ptr: u64,
    /// Top of this CPU's hypervisor stack: where a SYSCALL from ring 3 lands.
    pub stack_top: u64,
    /// The ring-3 stack pointer, saved by the SYSCALL entry before it switches stacks.
    pub scratch_rsp: u64,
    /// This CPU's index.
    pub cpu: u32,
    pub _pad: u32,
}

pub const OFFSET_STACK_TOP: usize = offset_of!(PerCpu, stack_top);
pub const OFFSET_SCRATCH_RSP: usize = offset_of!(PerCpu, scratch_rsp);
const _: () = assert!(OFFSET_STACK_TOP == 8 && OFFSET_SCRATCH_RSP == 16);

const IA32_GS_BASE: u32 = 0xc000_0101;
const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Installs `area` as this CPU's per-CPU area.
pub fn install(area: &'static mut PerCpu) {
    area.self_ptr = area as *mut PerCpu as u64;
    // SAFETY: the GS base MSRs exist on every x86-64 CPU; the area is 'static. The kernel
    // GS base (what `swapgs` brings in) starts as 0: the guest's GS base.
    unsafe {
        msr::write(IA32_GS_BASE, area.self_ptr);
        msr::write(IA32_KERNEL_GS_BASE, 0);
    }
}

/// This CPU's index (0 before `install`).
pub fn cpu() -> u32 {
    // SAFETY: reading the GS base MSR has no side effects.
    let base = unsafe { msr::read(IA32_GS_BASE) };
    if base == 0 {
        return 0;
    }
    // SAFETY: a non-zero GS base in hypervisor mode is the 'static area `install` set up
    // (entry paths swap the guest's base out before any Rust code runs).
    unsafe { (*(base as *const PerCpu)).cpu }
}

/// This CPU's index, or `None` before `install` ran on it.
pub fn try_cpu() -> Option<u32> {
    // SAFETY: reading the GS base MSR has no side effects.
    let base = unsafe { msr::read(IA32_GS_BASE) };
    // SAFETY: as in `cpu`.
    (base != 0).then(|| unsafe { (*(base as *const PerCpu)).cpu })
}

/// After a fault on the `iretq` back to a guest: the exit path had already swapped the
/// guest's GS base in; swap the hypervisor's back before any code relies on it.
///
/// # Safety
/// Only on that path (the faulting frame's RIP is `trap::iretq_address()` and its CS is the
/// hypervisor's, so the entry did not swap).
pub unsafe fn recover_gs_after_failed_return() {
    // SAFETY: as the caller guarantees, the guest's base is active; this restores ours.
    unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) }
}

/// The guest's active GS base. While the hypervisor runs it sits in IA32_KERNEL_GS_BASE
/// (the trap exit's `swapgs` makes it active again).
pub fn guest_gs_base() -> u64 {
    // SAFETY: reading IA32_KERNEL_GS_BASE has no side effects.
    unsafe { msr::read(IA32_KERNEL_GS_BASE) }
}

/// Sets the guest's active GS base (see [`guest_gs_base`]); false if not canonical.
pub fn set_guest_gs_base(va: u64) -> bool {
    if !super::cpu::is_guest_base(va) {
        return false;
    }
    // SAFETY: the hypervisor's own GS base is in IA32_GS_BASE while it runs; this one is
    // only swapped in on the return to ring 3. The value is canonical (checked).
    unsafe { msr::write(IA32_KERNEL_GS_BASE, va) };
    true
}
