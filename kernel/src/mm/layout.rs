//! The hypervisor's virtual address layout.
//!
//! Every PV guest address space leaves PML4 slots 256..=271 to the hypervisor
//! (`HYPERVISOR_VIRT_START`..`HYPERVISOR_VIRT_END`, `arch-x86/xen-x86_64.h`); the guest
//! kernel owns slots 272..=511 and guest user space 0..=255. So everything the hypervisor
//! maps lives in those 16 slots, and the same top-level entries can later be copied into
//! each guest's L4:
//!
//! | slot | range start              | use                                          |
//! |------|--------------------------|----------------------------------------------|
//! | 256  | `0xffff_8000_0000_0000`  | read-only machine-to-phys table (guest-visible) |
//! | 260  | `0xffff_8200_0000_0000`  | the hypervisor image (`linker.ld`)           |
//! | 261  | `0xffff_8280_0000_0000`  | stacks with guard pages, MMIO, per-CPU GDTs  |
//! | 262–271 | `0xffff_8300_0000_0000` | direct map of all RAM (5 TiB)              |

use ferrovisor_abi::layout::{pml4_slot, HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START};

/// The image is linked at its physical address plus this offset (`linker.ld`).
pub const IMAGE_VIRT_OFFSET: u64 = 0xFFFF_8200_0000_0000;
/// Physical load address of the image (`linker.ld`).
pub const IMAGE_PHYS_BASE: u64 = 0x20_0000;

/// Direct map of physical memory: `virt = DIRECT_MAP_BASE + phys`.
pub const DIRECT_MAP_BASE: u64 = 0xFFFF_8300_0000_0000;
pub const DIRECT_MAP_SIZE: u64 = 5 << 40;
/// The early page tables (`boot/entry.S`) already direct-map this much.
pub const EARLY_DIRECT_MAP_SIZE: u64 = 4 << 30;

/// Hypervisor stacks: each is a guard page (never mapped) followed by the stack.
pub const STACKS_BASE: u64 = 0xFFFF_8280_0000_0000;
pub const STACKS_SIZE: u64 = 64 << 30;
/// Device MMIO windows (local APIC, later HPET and PCI BARs), mapped uncached.
pub const MMIO_BASE: u64 = STACKS_BASE + STACKS_SIZE;
pub const MMIO_SIZE: u64 = 64 << 30;
/// Per-CPU GDT windows: 16 pages each, as in Xen's PV ABI the guest's GDT frames fill the
/// first 14 pages and the hypervisor's descriptors the last 2 (`FIRST_RESERVED_GDT_PAGE`).
pub const GDT_WINDOWS_BASE: u64 = MMIO_BASE + MMIO_SIZE;
pub const GDT_WINDOW_SIZE: u64 = 16 * 4096;
/// Per-CPU LDT windows: the running vCPU's LDT pages (up to 8192 entries, 16 pages).
pub const LDT_WINDOWS_BASE: u64 = GDT_WINDOWS_BASE + (1 << 30);
pub const LDT_WINDOW_SIZE: u64 = 16 * 4096;

/// Size of each hypervisor stack and of the IST stacks (#DF, NMI, #MC).
pub const STACK_SIZE: u64 = 256 * 1024;
pub const IST_STACK_SIZE: u64 = 16 * 1024;

/// The direct-map address of a physical address.
pub const fn phys_to_virt(paddr: u64) -> u64 {
    DIRECT_MAP_BASE + paddr
}

/// The physical address of a direct-map address, if it is one.
pub const fn virt_to_phys(vaddr: u64) -> Option<u64> {
    if vaddr >= DIRECT_MAP_BASE && vaddr < DIRECT_MAP_BASE + DIRECT_MAP_SIZE {
        Some(vaddr - DIRECT_MAP_BASE)
    } else {
        None
    }
}

/// The physical address of an address inside the image.
pub const fn image_virt_to_phys(vaddr: u64) -> u64 {
    vaddr - IMAGE_VIRT_OFFSET
}

const _: () = assert!(pml4_slot(IMAGE_VIRT_OFFSET) == 260);
const _: () = assert!(pml4_slot(STACKS_BASE) == 261);
const _: () = assert!(pml4_slot(GDT_WINDOWS_BASE) == 261);
const _: () = assert!(pml4_slot(LDT_WINDOWS_BASE + LDT_WINDOW_SIZE) == 261);
const _: () = assert!(pml4_slot(DIRECT_MAP_BASE) == 262);
const _: () = assert!(DIRECT_MAP_BASE + DIRECT_MAP_SIZE == HYPERVISOR_VIRT_END);
const _: () = assert!(IMAGE_VIRT_OFFSET > HYPERVISOR_VIRT_START);

/// The machine-to-phys table is handed out in extents of this size
/// (`XENMEM_machphys_mfn_list` reports one frame per extent, as Xen does).
pub const M2P_EXTENT_BYTES: u64 = 2 << 20;

/// Bytes the machine-to-phys table takes for `entries` frames of RAM: one `u64` each,
/// rounded up to whole extents (so every extent it reports is backed).
pub const fn m2p_bytes(entries: u64) -> u64 {
    (entries * 8).div_ceil(M2P_EXTENT_BYTES) * M2P_EXTENT_BYTES
}

/// The frames `XENMEM_machphys_mfn_list` reports for a table of `entries` entries stored
/// contiguously from machine frame `first_mfn`: the first frame of each extent.
pub fn m2p_extents(first_mfn: u64, entries: u64) -> impl Iterator<Item = u64> {
    let frames_per_extent = M2P_EXTENT_BYTES / 4096;
    (0..m2p_bytes(entries) / M2P_EXTENT_BYTES).map(move |i| first_mfn + i * frames_per_extent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m2p_extents_cover_the_table() {
        assert_eq!(m2p_bytes(0), 0);
        assert_eq!(m2p_bytes(1), 2 << 20);
        // 256 MiB of RAM: 65536 entries, 512 KiB of table, one extent.
        assert_eq!(m2p_extents(0x400, 65536).collect::<Vec<_>>(), [0x400]);
        // Exactly one extent's worth, then one entry more.
        assert_eq!(m2p_extents(0x400, 262_144).count(), 1);
        assert_eq!(
            m2p_extents(0x400, 262_145).collect::<Vec<_>>(),
            [0x400, 0x400 + 512]
        );
        assert_eq!(m2p_extents(7, 0).count(), 0);
    }

    #[test]
    fn direct_map_round_trip() {
        assert_eq!(virt_to_phys(phys_to_virt(0x1234_5000)), Some(0x1234_5000));
        assert_eq!(virt_to_phys(IMAGE_VIRT_OFFSET), None);
        assert_eq!(virt_to_phys(HYPERVISOR_VIRT_END), None);
    }
}
