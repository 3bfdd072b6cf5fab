//! Reading and writing a PV guest's memory by guest-virtual address.
//!
//! The hypervisor never dereferences a guest address. It walks the guest's page tables in
//! software (through the direct map), requires every level to be present and reachable
//! from ring 3 (a guest kernel runs in ring 3, so anything it can touch is user-mapped),
//! has the caller hold the final frame (a general reference to read it, a `Writable` type
//! reference to write it: so it is the domain's, and no page or descriptor table, for the
//! whole copy), and copies through views of that handle. So SMAP stays on, a bad address is an error (`-EFAULT`), never a fault.

use ferrovisor::mm::{
    frame_table::{L4Ref, PageRef, WritableFrame},
    layout::phys_to_virt,
    Mfn, PAGE_SIZE,
};

use super::phys::{FrameReader, SharedFrame};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// A canonical address outside the range Xen's PV ABI reserves for the hypervisor
/// (`HYPERVISOR_VIRT_START`..`HYPERVISOR_VIRT_END`, PML4 slots 256..=271): the walks never
/// enter the hypervisor's own tables.
fn is_guest_va(va: u64) -> bool {
    const LOWER_END: u64 = 0x0000_8000_0000_0000;
    const HYPERVISOR_VIRT_END: u64 = 0xffff_8800_0000_0000;
    !(LOWER_END..HYPERVISOR_VIRT_END).contains(&va)
}

/// Why an access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// Not mapped for the guest, not writable for a write, or a superpage (PV guests have
    /// none), at this address.
    NotMapped(u64),
    /// Mapped, but to a frame the domain does not own.
    NotOwned(u64),
}

/// How a guest access holds the frame it copies to or from, for the duration of the copy:
/// a general reference for a read, a `Writable` type reference for a write (refused if
/// the frame is not the domain's, or is a page or descriptor table now). Held, the frame
/// can be neither freed, nor given to another owner, nor (for a write) retyped by another
/// vCPU between the translation and the copy.
pub trait GuestFrames {
    fn hold_read(&self, mfn: Mfn) -> Option<PageRef>;
    fn hold_write(&self, mfn: Mfn) -> Option<WritableFrame>;
    fn release_read(&self, page: PageRef);
    fn release_write(&self, page: WritableFrame);
}

/// A guest address space: a held L4 of the domain (borrowed, so the walk never outlives the
/// base pointer's references) and how its frames are held.
pub struct GuestSpace<'a, H: GuestFrames> {
    l4: Mfn,
    frames: H,
    _l4: core::marker::PhantomData<&'a L4Ref>,
}

impl<'a, H: GuestFrames> GuestSpace<'a, H> {
    pub fn new(l4: &'a L4Ref, frames: H) -> Self {
        GuestSpace {
            l4: l4.mfn(),
            frames,
            _l4: core::marker::PhantomData,
        }
    }

    fn entry(&self, table: Mfn, index: usize) -> u64 {
        let p = (phys_to_virt(table.addr()) as *const u64).wrapping_add(index % 512);
        // SAFETY: `table` is the held, validated L4, or a frame named by a present entry of
        // a table reached from it. The frame table only ever lets validated entries into
        // such tables (the guest maps them read-only), and a validated entry names a frame
        // of the domain, so RAM, which stays direct-mapped whatever becomes of it; another
        // CPU changing the tables meanwhile only changes which RAM frame is read (the
        // final frame is then held and checked before any copy). The aligned 8-byte read
        // sees either value of a concurrent update.
        unsafe { p.read_volatile() }
    }

    /// The frame `va` maps to, checked for ring-3 access (and writability if `write`).
    fn translate(&self, va: u64, write: bool) -> Result<Mfn, GuestFault> {
        if !is_guest_va(va) {
            return Err(GuestFault::NotMapped(va));
        }
        let mut table = self.l4;
        for shift in [39u32, 30, 21, 12] {
            let e = self.entry(table, ((va >> shift) & 0x1ff) as usize);
            let need = PRESENT | USER | if write { WRITABLE } else { 0 };
            if e & need != need || (shift != 12 && e & HUGE != 0) {
                return Err(GuestFault::NotMapped(va));
            }
            table = Mfn::containing(e & ADDR);
        }
        Ok(table)
    }

    /// The L1 table and index holding the entry for `va` (the tables above must be present).
    pub fn l1_slot(&self, va: u64) -> Result<(Mfn, usize), GuestFault> {
        if !is_guest_va(va) {
            return Err(GuestFault::NotMapped(va));
        }
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
            let page = self
                .frames
                .hold_read(mfn)
                .ok_or(GuestFault::NotOwned(addr))?;
            let off = (addr % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(out.len() - done);
            FrameReader::new(&page).read_bytes(off, &mut out[done..done + n]);
            self.frames.release_read(page);
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
            let page = self
                .frames
                .hold_write(mfn)
                .ok_or(GuestFault::NotOwned(addr))?;
            let off = (addr % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - off).min(bytes.len() - done);
            SharedFrame::new(&page).write_bytes(off, &bytes[done..done + n]);
            self.frames.release_write(page);
            done += n;
        }
        Ok(())
    }
}
