//! Reading and writing a PV guest's memory by guest-virtual address.
//!
//! The hypervisor never dereferences a guest address. It walks the guest's page tables in
//! software (through the direct map), requires every level to be present and reachable
//! from ring 3 (a guest kernel runs in ring 3, so anything it can touch is user-mapped),
//! asks the caller whether the final frame belongs to the domain, and copies through the
//! direct map. So SMAP stays on, a bad address is an error (`-EFAULT`), never a fault.

use ferrovisor::mm::{layout::phys_to_virt, Mfn, PAGE_SIZE};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Why an access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// Not mapped for the guest, not writable for a write, or a superpage (PV guests have
    /// none), at this address.
    NotMapped(u64),
    /// Mapped, but to a frame the domain does not own.
    NotOwned(u64),
}

/// A guest address space: its L4 and the test that a frame is the domain's.
pub struct GuestSpace<F: Fn(Mfn) -> bool> {
    l4: Mfn,
    owns: F,
}

impl<F: Fn(Mfn) -> bool> GuestSpace<F> {
    /// # Safety
    /// `l4` must be a validated L4 of the domain whose frames `owns` accepts, and `owns`
    /// must only accept frames of RAM (the frame table's domain frames).
    pub unsafe fn new(l4: Mfn, owns: F) -> Self {
        GuestSpace { l4, owns }
    }

    fn entry(&self, table: Mfn, index: usize) -> u64 {
        let p = (phys_to_virt(table.addr()) as *const u64).wrapping_add(index);
        // SAFETY: `table` is the validated L4 or a table it references (validated page
        // tables of the domain, so RAM, direct-mapped); index < 512.
        unsafe { p.read_volatile() }
    }

    /// The frame `va` maps to, checked for ring-3 access (and writability if `write`).
    fn translate(&self, va: u64, write: bool) -> Result<Mfn, GuestFault> {
        let mut table = self.l4;
        for shift in [39u32, 30, 21, 12] {
            let e = self.entry(table, ((va >> shift) & 0x1ff) as usize);
            let need = PRESENT | USER | if write { WRITABLE } else { 0 };
            if e & need != need || (shift != 12 && e & HUGE != 0) {
                return Err(GuestFault::NotMapped(va));
            }
            table = Mfn::containing(e & ADDR);
        }
        if !(self.owns)(table) {
            return Err(GuestFault::NotOwned(va));
        }
        Ok(table)
    }

    /// The L1 table and index holding the entry for `va` (the tables above must be present).
    pub fn l1_slot(&self, va: u64) -> Result<(Mfn, usize), GuestFault> {
        let mut table = self.l4;
        for shift in [39u32, 30, 21] {
            let e = self.entry(table, ((va >> shift) & 0x1ff) as usize);
            if e & PRESENT == 0 || e & HUGE != 0 {
                return Err(GuestFault::NotMapped(va));
            }
            table = Mfn::containing(e & ADDR);
        }
        Ok((table, ((va >> 12) & 0x1ff) as usize))
    }

    /// Copies guest memory at `va` into `out`.
    pub fn read(&self, va: u64, out: &mut [u8]) -> Result<(), GuestFault> {
        let mut done = 0;
        while done < out.len() {
            let addr = va.wrapping_add(done as u64);
            let mfn = self.translate(addr, false)?;
            let off = (addr % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(out.len() - done);
            let src = (phys_to_virt(mfn.addr()) + off as u64) as *const u8;
            for (i, b) in out[done..done + n].iter_mut().enumerate() {
                // SAFETY: a frame of the domain (checked by `translate`), direct-mapped;
                // volatile because the guest may write it concurrently.
                *b = unsafe { src.wrapping_add(i).read_volatile() };
            }
            done += n;
        }
        Ok(())
    }

    /// Copies `bytes` into guest memory at `va` (which must be mapped writable).
    pub fn write(&self, va: u64, bytes: &[u8]) -> Result<(), GuestFault> {
        let mut done = 0;
        while done < bytes.len() {
            let addr = va.wrapping_add(done as u64);
            let mfn = self.translate(addr, true)?;
            let off = (addr % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(bytes.len() - done);
            let dst = (phys_to_virt(mfn.addr()) + off as u64) as *mut u8;
            for (i, b) in bytes[done..done + n].iter().enumerate() {
                // SAFETY: a frame of the domain mapped writable for it, so never one of its
                // page tables (the PV MMU forbids writable mappings of those); direct-mapped.
                unsafe { dst.wrapping_add(i).write_volatile(*b) };
            }
            done += n;
        }
        Ok(())
    }
}
