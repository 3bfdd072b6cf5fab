//! The fixed x86-64 PV virtual-address layout (`arch-x86/xen-x86_64.h`), as the hypervisor
//! core uses it. The definitions live in [`crate::xen::arch_x86`]; this module re-exports
//! them next to the slot arithmetic.
//!
//! PML4 slots 256..=271 (`HYPERVISOR_VIRT_START`..`HYPERVISOR_VIRT_END`) belong to the
//! hypervisor in every guest address space; the read-only machine-to-phys table sits at the
//! start of that range, readable by guests.

pub use crate::xen::arch_x86::{
    FIRST_RESERVED_GDT_BYTE, FIRST_RESERVED_GDT_ENTRY, FIRST_RESERVED_GDT_PAGE, FLAT_RING3_CS32,
    FLAT_RING3_CS64, FLAT_RING3_DS32, FLAT_RING3_DS64, FLAT_RING3_SS32, FLAT_RING3_SS64,
    HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START,
};

/// PML4 slot of a canonical virtual address.
pub const fn pml4_slot(va: u64) -> usize {
    ((va >> 39) & 0x1ff) as usize
}

const _: () = assert!(pml4_slot(HYPERVISOR_VIRT_START) == 256);
const _: () = assert!(pml4_slot(HYPERVISOR_VIRT_END - 1) == 271);
