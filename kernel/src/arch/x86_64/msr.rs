//! Model-specific registers the hypervisor uses, by name.

pub const IA32_APIC_BASE: u32 = 0x1b;
pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const X2APIC_BASE: u32 = 0x800;

pub const EFER_NXE: u64 = 1 << 11;

/// Reads an MSR.
///
/// # Safety
/// `msr` must exist on this CPU (reading an absent MSR raises #GP).
pub unsafe fn read(msr: u32) -> u64 {
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { x86::msr::rdmsr(msr) }
}

/// Writes an MSR.
///
/// # Safety
/// `msr` must exist and `value` must not break the hypervisor's invariants (paging,
/// segmentation, interrupt routing) in a way its owner does not expect.
pub unsafe fn write(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the write is valid and expected.
    unsafe { x86::msr::wrmsr(msr, value) }
}

/// Whether EFER.NXE is on (the boot trampoline sets it when the CPU has NX).
pub fn nx_enabled() -> bool {
    // SAFETY: IA32_EFER exists on every CPU in long mode.
    unsafe { read(IA32_EFER) & EFER_NXE != 0 }
}
