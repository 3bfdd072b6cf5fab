//! The fixed x86-64 PV virtual-address layout (`arch-x86/xen-x86_64.h`).
//!
//! PML4 slots 256..=271 (`HYPERVISOR_VIRT_START`..`HYPERVISOR_VIRT_END`) belong to the
//! hypervisor in every guest address space; the read-only machine-to-phys table sits at the
//! start of that range, readable by guests.

pub const HYPERVISOR_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
pub const HYPERVISOR_VIRT_END: u64 = 0xFFFF_8800_0000_0000;
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;
pub const MACH2PHYS_VIRT_END: u64 = 0xFFFF_8040_0000_0000;

/// Flat segment selectors a 64-bit PV guest uses (`FLAT_RING3_*`, `xen-x86_64.h`). Guest
/// kernels run in ring 3, so these are the kernel's selectors too.
pub const FLAT_RING3_CS32: u16 = 0xe023;
pub const FLAT_RING3_CS64: u16 = 0xe033;
pub const FLAT_RING3_DS32: u16 = 0xe02b;
pub const FLAT_RING3_DS64: u16 = 0x0000;
pub const FLAT_RING3_SS32: u16 = 0xe02b;
pub const FLAT_RING3_SS64: u16 = 0xe02b;

/// First GDT entry reserved for the hypervisor: guests own entries below it
/// (`FIRST_RESERVED_GDT_ENTRY`, `arch-x86/xen.h`).
pub const FIRST_RESERVED_GDT_PAGE: usize = 14;
pub const FIRST_RESERVED_GDT_BYTE: usize = FIRST_RESERVED_GDT_PAGE * 4096;
pub const FIRST_RESERVED_GDT_ENTRY: usize = FIRST_RESERVED_GDT_BYTE / 8;

/// PML4 slot of a canonical virtual address.
pub const fn pml4_slot(va: u64) -> usize {
    ((va >> 39) & 0x1ff) as usize
}

const _: () = assert!(pml4_slot(HYPERVISOR_VIRT_START) == 256);
const _: () = assert!(pml4_slot(HYPERVISOR_VIRT_END - 1) == 271);
