//! The fixed x86-64 PV virtual-address layout (`arch-x86/xen-x86_64.h`).
//!
//! PML4 slots 256..=271 (`HYPERVISOR_VIRT_START`..`HYPERVISOR_VIRT_END`) belong to the
//! hypervisor in every guest address space; the read-only machine-to-phys table sits at the
//! start of that range, readable by guests.

pub const HYPERVISOR_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
pub const HYPERVISOR_VIRT_END: u64 = 0xFFFF_8800_0000_0000;
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
pub const MACH2PHYS_VIRT_END: u64 = 0xFFFF_8040_0000_0000;

/// PML4 slot of a canonical virtual address.
pub const fn pml4_slot(va: u64) -> usize {
    ((va >> 39) & 0x1ff) as usize
}

const _: () = assert!(pml4_slot(HYPERVISOR_VIRT_START) == 256);
const _: () = assert!(pml4_slot(HYPERVISOR_VIRT_END - 1) == 271);
