//! Guest descriptor tables: `set_gdt` and `update_descriptor`. A guest GDT frame is typed
//! `SegDesc` by the frame table (so the guest can never map it writable), every
//! descriptor in it is checked (`pv::descriptor`: no system descriptors but checked call
//! gates, no ring-0 segments), and it is mapped into the running CPU's GDT window below
//! the hypervisor's own descriptors.

use ferrovisor::{
    mm::{frame_table::FrameTable, page_type::PageType, Mfn},
    pv::descriptor::{self, GuestGdt},
};
use ferrovisor_abi::errno::XenErrno;

use super::Result;
use crate::{
    arch::x86_64::memory,
    arch::x86_64::paging::GuestTables,
    domain::{self, Domain, FRAME_TABLE},
};

pub(super) fn tables() -> GuestTables {
    GuestTables::new()
}

/// `set_gdt(frame_list, entries)`.
pub fn set_gdt([list, entries, ..]: [u64; 5]) -> Result {
    let entries = u32::try_from(entries).map_err(|_| XenErrno::Einval)?;
    let n = descriptor::gdt_frame_count(entries).map_err(|e| e.errno())?;
    domain::with_current(|d| {
        let mut raw = [0u8; 14 * 8];
        d.read_guest(list, &mut raw[..n * 8])
            .map_err(|_| XenErrno::Efault)?;
        let frames: heapless::Vec<u64, 14> = raw[..n * 8]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let gdt = descriptor::validate_set_gdt(&frames, entries).map_err(|e| e.errno())?;
        load_gdt(d, gdt)?;
        Ok(0)
    })
    .ok_or(XenErrno::Esrch)?
}

/// Types every frame of `gdt` as a descriptor page of `dom` and checks its descriptors;
/// on failure nothing stays referenced.
pub fn take_gdt(
    ft: &mut FrameTable,
    dom: ferrovisor::mm::frame_table::DomId,
    gdt: &GuestGdt,
) -> core::result::Result<(), XenErrno> {
    let mut mem = tables();
    let mut taken = 0;
    let result = (|| {
        for &mfn in gdt.frames() {
            ft.get_page_and_type(mfn, dom, PageType::SegDesc, &mut mem)
                .map_err(|e| e.errno())?;
            taken += 1;
            check_frame(ft, &mut mem, dom, mfn)?;
        }
        Ok(())
    })();
    if result.is_err() {
        release(ft, &mut mem, &gdt.frames()[..taken]);
    }
    result
}

/// Types and checks the new GDT's frames, then swaps it in for the old one.
fn load_gdt(d: &mut Domain, gdt: GuestGdt) -> core::result::Result<(), XenErrno> {
    let mut guard = FRAME_TABLE.lock();
    let ft = guard.as_mut().ok_or(XenErrno::Esrch)?;
    take_gdt(ft, d.id, &gdt)?;
    let mut mem = tables();
    // No stale writable translation of the new descriptor pages may survive.
    crate::arch::x86_64::paging::flush_tlb_local();
    // Map the new table before dropping the old one: the window must never show frames
    // the guest could already write again.
    if memory::map_guest_gdt(gdt.frames()).is_err() {
        release(ft, &mut mem, gdt.frames());
        return Err(XenErrno::Enomem);
    }
    let old = core::mem::replace(&mut d.cur_mut().gdt, gdt);
    release(ft, &mut mem, old.frames());
    Ok(())
}

/// Checks (and fixes up) the 512 descriptors of a frame of `dom` already typed `SegDesc`.
pub(super) fn check_frame(
    ft: &FrameTable,
    mem: &mut GuestTables,
    dom: ferrovisor::mm::frame_table::DomId,
    mfn: Mfn,
) -> core::result::Result<(), XenErrno> {
    let mut page = ft.read_descriptors(mfn, dom, mem).map_err(|e| e.errno())?;
    let original = page;
    match descriptor::check_page(&mut page) {
        Ok(changed) => {
            if changed {
                for (i, (&new, &old)) in page.iter().zip(original.iter()).enumerate() {
                    if new != old {
                        ft.write_descriptor(mfn, dom, i, new, mem)
                            .map_err(|e| e.errno())?;
                    }
                }
            }
            Ok(())
        }
        Err((_, e)) => Err(e.errno()),
    }
}

pub(super) fn release(ft: &mut FrameTable, mem: &mut GuestTables, frames: &[Mfn]) {
    for &mfn in frames {
        let _ = ft.put_page_and_type(mfn, mem);
    }
}

/// `update_descriptor(maddr, desc)`: one checked descriptor into a frame of the domain
/// that is a GDT frame or an ordinary page (never a page table).
pub fn update_descriptor([maddr, desc, ..]: [u64; 5]) -> Result {
    let u = descriptor::validate_update_descriptor(maddr, desc).map_err(|e| e.errno())?;
    domain::with_current(|d| {
        let mut guard = FRAME_TABLE.lock();
        let ft = guard.as_mut().ok_or(XenErrno::Esrch)?;
        let ty = match ft.info(u.mfn).map(|i| i.type_info.ty) {
            Some(PageType::SegDesc) => PageType::SegDesc,
            _ => PageType::Writable,
        };
        let mut mem = tables();
        ft.get_page_and_type(u.mfn, d.id, ty, &mut mem)
            .map_err(|e| e.errno())?;
        let written = ft.write_descriptor(u.mfn, d.id, u.slot, u.desc.raw(), &mut mem);
        let _ = ft.put_page_and_type(u.mfn, &mut mem);
        written.map_err(|e| e.errno())?;
        Ok(0)
    })
    .ok_or(XenErrno::Esrch)?
}
