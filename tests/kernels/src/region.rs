//! The bootstrap region (`xen.h`, "Start-of-day memory layout"): `VIRT_BASE` onwards, pfn
//! = (va - `VIRT_BASE`) / 4 KiB, ending with the bootstrap stack page and at least 512 KiB
//! of padding up to a 4 MiB boundary, every page mapped. The padding is the test kernels'
//! scratch memory: its last 512 KiB hold [`SCRATCH_PAGES`] pages whose L1 entries exist,
//! which the kernels remap (shared_info) or turn into page tables.
//!
//! The region's end follows from `start_info`: the page tables start at `pt_base`, the
//! stack page follows them, and the end is the first 4 MiB boundary at least 512 KiB past
//! the stack (Ferrovisor's builder and Xen 4.17's `dom0_construct_pv` agree on this).

use core::sync::atomic::{AtomicU64, Ordering};

use ferrovisor_abi::xen::{
    arch_x86::{_PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_USER},
    xen::StartInfo,
};

use crate::contract::VIRT_BASE;

pub const PAGE_SIZE: u64 = 4096;
const REGION_ALIGN: u64 = 4 << 20;
const MIN_PADDING: u64 = 512 << 10;
/// Scratch pages: the last 512 KiB of the padding.
pub const SCRATCH_PAGES: u64 = MIN_PADDING / PAGE_SIZE;

/// A present, accessed, guest-kernel mapping (64-bit PV kernels run in ring 3, so every
/// mapping they use carries `_PAGE_USER`).
pub const PTE_RO: u64 = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED;
/// As [`PTE_RO`], writable and dirty.
pub const PTE_RW: u64 = PTE_RO | _PAGE_RW | _PAGE_DIRTY;
/// An intermediate table entry (L4, L3, L2).
pub const PTE_TABLE: u64 = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED;

/// The end (exclusive) of the bootstrap region.
pub fn region_end(si: &StartInfo) -> u64 {
    end_after_tables(si.pt_base, si.nr_pt_frames)
}

fn end_after_tables(pt_base: u64, nr_pt_frames: u64) -> u64 {
    let stack_end = pt_base + nr_pt_frames * PAGE_SIZE + PAGE_SIZE;
    (stack_end + MIN_PADDING).div_ceil(REGION_ALIGN) * REGION_ALIGN
}

/// The machine frame behind bootstrap-region address `va`, from the phys-to-machine list.
pub fn mfn_of(si: &StartInfo, va: u64) -> u64 {
    let pfn = (va - VIRT_BASE) / PAGE_SIZE;
    // SAFETY: `mfn_list` is the start-of-day p2m list (one u64 per page of the domain)
    // in the bootstrap region, which stays mapped; pfn is below nr_pages because `va` is
    // in the region, which is no larger than the domain.
    unsafe { core::ptr::read_volatile((si.mfn_list as *const u64).add(pfn as usize)) }
}

/// A page of scratch memory: its address in the bootstrap region and its machine frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScratchPage {
    pub va: u64,
    pub mfn: u64,
}

impl ScratchPage {
    /// The page's machine address.
    pub fn maddr(&self) -> u64 {
        self.mfn * PAGE_SIZE
    }

    /// The page as 512 entries. It must still be mapped writable.
    pub fn words(&self) -> *mut u64 {
        self.va as *mut u64
    }
}

/// Scratch pages handed out so far.
static NEXT_SCRATCH: AtomicU64 = AtomicU64::new(0);

/// The next unused scratch page (the last one of the region is kept for shared_info,
/// [`shared_info_va`]), or `None` when all are used.
pub fn alloc_scratch(si: &StartInfo) -> Option<ScratchPage> {
    let i = NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed);
    if i + 1 >= SCRATCH_PAGES {
        return None;
    }
    let va = region_end(si) - MIN_PADDING + i * PAGE_SIZE;
    Some(ScratchPage {
        va,
        mfn: mfn_of(si, va),
    })
}

/// Where [`crate::shared_info::map`] maps shared_info: the region's last page.
pub fn shared_info_va(si: &StartInfo) -> u64 {
    region_end(si) - PAGE_SIZE
}

/// The bootstrap page tables: L4 at `pt_base`, the L1 entry mapping a scratch page.
pub struct Tables {
    pub l4_mfn: u64,
    pub l4_va: u64,
    /// (va, mfn) of every bootstrap page-table frame.
    frames: [(u64, u64); 64],
    count: usize,
}

impl Tables {
    pub fn new(si: &StartInfo) -> Self {
        let mut frames = [(0, 0); 64];
        let count = (si.nr_pt_frames as usize).min(frames.len());
        for (i, f) in frames.iter_mut().take(count).enumerate() {
            let va = si.pt_base + i as u64 * PAGE_SIZE;
            *f = (va, mfn_of(si, va));
        }
        Tables {
            l4_mfn: frames[0].1,
            l4_va: si.pt_base,
            frames,
            count,
        }
    }

    /// The machine frame of the last bootstrap page-table frame.
    pub fn last_mfn(&self) -> u64 {
        self.frames[self.count.saturating_sub(1)].1
    }

    pub fn va_of(&self, mfn: u64) -> Option<u64> {
        self.frames[..self.count]
            .iter()
            .find(|f| f.1 == mfn)
            .map(|f| f.0)
    }

    /// Reads entry `index` of the bootstrap table at `va` (mapped read-only).
    pub fn entry(va: u64, index: u64) -> u64 {
        // SAFETY: `va` is a bootstrap page-table frame, mapped read-only in the region.
        unsafe { core::ptr::read_volatile((va as *const u64).add(index as usize)) }
    }

    /// The machine address of the L1 entry that maps `va`.
    pub fn l1e_maddr(&self, va: u64) -> Option<u64> {
        let mut table_va = self.l4_va;
        for shift in [39u32, 30, 21] {
            let e = Self::entry(table_va, (va >> shift) & 511);
            table_va = self.va_of((e & 0x000f_ffff_ffff_f000) >> 12)?;
        }
        let l1_mfn = self.frames[..self.count]
            .iter()
            .find(|f| f.0 == table_va)
            .map(|f| f.1)?;
        Some(l1_mfn * PAGE_SIZE + ((va >> 12) & 511) * 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_end_is_aligned_with_the_padding() {
        // The stack ends at +0x305000; +512 KiB = +0x385000: the end is 4 MiB.
        assert_eq!(
            end_after_tables(VIRT_BASE + 0x30_0000, 4),
            VIRT_BASE + 0x40_0000
        );
        // The stack ends at +0x3a5000; +512 KiB crosses 4 MiB: the end is 8 MiB.
        assert_eq!(
            end_after_tables(VIRT_BASE + 0x3a_0000, 4),
            VIRT_BASE + 0x80_0000
        );
    }
}
