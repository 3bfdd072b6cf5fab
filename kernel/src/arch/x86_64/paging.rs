//! Page-table writes and CR3: the hypervisor's page tables live in frames reached through
//! the direct map.

use ferrovisor::mm::{
    frame_alloc::FrameAllocator,
    frame_table::{CheckedFrame, L4Ref},
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

/// Loads a guest address space: `l4` is a validated L4 of a domain, held, whose hypervisor
/// slots map the hypervisor (the frame table writes them at validation), so the running
/// code, its stacks and everything it references stay mapped. The holder must keep the
/// reference until this CPU has loaded another root.
pub fn activate_guest(l4: &L4Ref) {
    // SAFETY: as above: every hypervisor mapping is present in a validated L4.
    unsafe { activate(l4.mfn()) }
}

/// Guest page tables (and descriptor pages), read and written through the direct map on
/// behalf of the PV MMU's frame table (`ferrovisor::mm::frame_table`), which decides what
/// may be read and written: every access takes a `CheckedFrame`, which only the frame table
/// makes, for a frame it tracks as a domain's (RAM, all direct-mapped). So making one is
/// safe: there is nothing it can be pointed at but what the frame table vouched for.
pub struct GuestTables(());

impl GuestTables {
    pub fn new() -> GuestTables {
        GuestTables(())
    }
}

impl Default for GuestTables {
    fn default() -> Self {
        Self::new()
    }
}

impl ferrovisor::mm::frame_table::PageTableMemory for GuestTables {
    fn read(&self, table: CheckedFrame, index: usize) -> u64 {
        assert!(index < ENTRIES);
        let p = (phys_to_virt(table.mfn().addr()) as *const u64).wrapping_add(index);
        // SAFETY: a `CheckedFrame` names a frame the frame table tracks as a domain's: RAM,
        // direct-mapped; the index is inside it. The guest may write it concurrently (it is
        // its memory): the volatile, aligned 8-byte read sees either value.
        unsafe { p.read_volatile() }
    }

    fn write(&mut self, table: CheckedFrame, index: usize, value: u64) {
        assert!(index < ENTRIES);
        let p = (phys_to_virt(table.mfn().addr()) as *mut u64).wrapping_add(index);
        // SAFETY: as in `read`: a domain's frame of RAM, direct-mapped. What is written (a
        // validated entry, a checked descriptor, a plain write to the domain's own page) is
        // the frame table's decision.
        unsafe { p.write_volatile(value) }
    }

    fn write_bytes(&mut self, frame: CheckedFrame, offset: usize, bytes: &[u8]) {
        assert!(offset
            .checked_add(bytes.len())
            .is_some_and(|end| end <= PAGE_SIZE as usize));
        let p = (phys_to_virt(frame.mfn().addr()) + offset as u64) as *mut u8;
        // SAFETY: inside a domain's frame (checked above, and by the frame table, which
        // allows this only on a frame nothing references or maps).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) }
    }
}

/// The hypervisor's entries for PML4 slots 256..=271, to be copied into every guest L4.
pub fn hypervisor_l4_slots() -> [u64; 16] {
    let root = super::cpu::read_cr3() & !0xfff;
    let mut slots = [0u64; 16];
    for (i, slot) in slots.iter_mut().enumerate() {
        let p = (phys_to_virt(root) as *const u64).wrapping_add(256 + i);
        // SAFETY: CR3 holds the hypervisor's own L4 (this runs at boot, before any guest
        // address space is loaded); reading it through the direct map is side-effect free.
        *slot = unsafe { p.read_volatile() };
    }
    slots
}

/// Flushes this CPU's whole TLB, global entries included (guests may map global pages).
pub fn flush_tlb_local() {
    let cr4 = super::cpu::read_cr4();
    let pge = x86::controlregs::Cr4::CR4_ENABLE_GLOBAL_PAGES;
    // SAFETY: toggling CR4.PGE only invalidates TLB entries; every mapping stays valid in
    // the page tables.
    unsafe {
        x86::controlregs::cr4_write(cr4 & !pge);
        x86::controlregs::cr4_write(cr4);
    }
}

/// Invalidates the TLB entry for `va` on this CPU.
pub fn invlpg(va: u64) {
    // SAFETY: invalidating a TLB entry never breaks a mapping.
    unsafe { x86::tlb::flush(va as usize) }
}
