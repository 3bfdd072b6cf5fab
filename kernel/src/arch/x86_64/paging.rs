//! Page-table writes and CR3: the hypervisor's page tables live in frames reached through
//! the direct map.

use ferrovisor::mm::{
    frame_alloc::FrameAllocator,
    layout::phys_to_virt,
    paging::{TableMemory, ENTRIES},
    Mfn, PAGE_SIZE,
};

/// Page tables in frames from the frame allocator, edited through the direct map.
pub struct DirectMapTables<'a, 'b> {
    frames: &'a mut FrameAllocator<'b>,
    /// New tables come from below this address (during early boot only the first 4 GiB
    /// are direct-mapped).
    below: u64,
}

impl<'a, 'b> DirectMapTables<'a, 'b> {
    /// # Safety
    /// Every table this is asked to read or write (the root it is used with and the tables
    /// reachable from it) must be a page-table frame of the hypervisor's own address
    /// space, direct-mapped, and edited by nothing else meanwhile.
    pub unsafe fn new(frames: &'a mut FrameAllocator<'b>, below: u64) -> Self {
        DirectMapTables { frames, below }
    }

    /// The allocator the tables come from.
    pub fn frames(&mut self) -> &mut FrameAllocator<'b> {
        self.frames
    }
}

impl TableMemory for DirectMapTables<'_, '_> {
    fn alloc_table(&mut self) -> Option<Mfn> {
        let mfn = self.frames.alloc_below(self.below)?;
        // SAFETY: the frame was just taken from the allocator, so it is ours alone; all
        // RAM is direct-mapped.
        unsafe { super::phys::zero(mfn.addr(), PAGE_SIZE) };
        Some(mfn)
    }

    fn read(&self, table: Mfn, index: usize) -> u64 {
        assert!(index < ENTRIES);
        let p = (phys_to_virt(table.addr()) as *const u64).wrapping_add(index);
        // SAFETY: `table` is one of the hypervisor's page-table frames (the contract of
        // `new`); the index is inside it.
        unsafe { p.read_volatile() }
    }

    fn write(&mut self, table: Mfn, index: usize, value: u64) {
        assert!(index < ENTRIES);
        let p = (phys_to_virt(table.addr()) as *mut u64).wrapping_add(index);
        // SAFETY: as in `read`; a table being built is not yet in use by the MMU, and
        // entries of a live table are only ever added (a TLB flush follows when needed).
        unsafe { p.write_volatile(value) }
    }
}

/// Switches to the address space rooted at `root`.
///
/// # Safety
/// The tables must map the running code, its stack and everything referenced afterwards.
pub unsafe fn activate(root: Mfn) {
    // SAFETY: as the caller guarantees.
    unsafe { x86::controlregs::cr3_write(root.addr()) }
}
